// Runtime dispatch: the kernel table is chosen once from cpuid; BITNET_ISA forces a path.
#include <atomic>
#include <cstdlib>
#if defined(__linux__) && (defined(__x86_64__) || defined(_M_X64))
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <stdexcept>

#include "cpu_features.h"
#include "kernels.h"
#include "kernel_choice.h"
#include <cstring>

namespace bitnet {
namespace {

// t with the measured lut_classes of its path (kernel_choice.h; none listed: mac everywhere).
Kernels with_choice(Kernels t, const char* isa) {
  t.lut_classes_i2 = t.lut_classes_t5 = 0;
  for (const KernelChoice& c : kKernelChoice)
    if (std::strcmp(c.isa, isa) == 0) {
      t.lut_classes_i2 = t.ternary_gemm_lut ? c.lut_i2 : 0;
      t.lut_classes_t5 = t.ternary5_gemm_lut ? c.lut_t5 : 0;
    }
  return t;
}

#if defined(__x86_64__) || defined(_M_X64)
// The avx512 table as this CPU runs it: its t5 kernel decodes with VBMI byte tables; a VNNI CPU
// without VBMI (Cascade Lake) takes the AVX2 t5 kernel instead.
const Kernels& avx512_kernels() {
  static const Kernels k = [] {
    Kernels t = with_choice(kKernelsAvx512, "avx512");
    if (!cpu_features().avx512_vbmi) t.ternary5_gemm = kKernelsAvx2.ternary5_gemm;
    return t;
  }();
  return k;
}
#endif

#if defined(__x86_64__) || defined(_M_X64)
const Kernels& avx2_kernels() {
  static const Kernels k = with_choice(kKernelsAvx2, "avx2");
  return k;
}
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(BITNET_NO_AVXVNNI)
#define BITNET_HAVE_AVXVNNI 1
// The avxvnni table: AVX2 everywhere except the integer products, which use the 256-bit vpdpbusd.
const Kernels& avxvnni_kernels() {
  static const Kernels k = [] {
    Kernels t = with_choice(kKernelsAvx2, "avxvnni");
    t.name = "avxvnni";
    t.ternary_gemm = ternary_gemm_avxvnni;
    t.ternary5_gemm = ternary5_gemm_avxvnni;
    t.head_i8 = head_i8_avxvnni;
    return t;
  }();
  return k;
}
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(BITNET_NO_AMX)
#define BITNET_HAVE_AMX 1
#endif

#if defined(__aarch64__)
// The neon table with its measured lut classes (none listed in kernel_choice.h: mac everywhere).
const Kernels& neon_kernels() {
  static const Kernels k = with_choice(kKernelsNeon, "neon");
  return k;
}
#endif

#if defined(BITNET_HAVE_AMX)
// Linux hands out the 8 KB AMX tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM).
bool request_amx() {
#if defined(__linux__)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /*ARCH_REQ_XCOMP_PERM*/, 18 /*XFEATURE_XTILEDATA*/) == 0;
  return ok;
#else
  return false;
#endif
}

// The AMX table: AVX-512 VNNI everywhere except the products of several tokens (ternary linears, int8 head).
const Kernels& amx_kernels() {
  static const Kernels k = [] {
    Kernels t = with_choice(avx512_kernels(), "amx");
    t.name = "amx";
    t.ternary_gemm = ternary_gemm_amx;
    if (cpu_features().avx512_vbmi) t.ternary5_gemm = ternary5_gemm_amx;
    t.head_i8 = head_i8_amx;
    return t;
  }();
  return k;
}
#endif

bool can_run(const std::string& name) {
  const CpuFeatures& f = cpu_features();
  if (name == "ref") return true;
#if defined(__x86_64__) || defined(_M_X64)
  if (name == "avx2") return f.avx2 && f.fma && f.f16c;
#if defined(BITNET_HAVE_AVXVNNI)
  if (name == "avxvnni") return can_run("avx2") && f.avx_vnni;
#endif
  if (name == "avx512") return f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni;
#if defined(BITNET_HAVE_AMX)
  if (name == "amx") return can_run("avx512") && f.amx_tile && f.amx_int8 && request_amx();
#endif
#endif
#if defined(__aarch64__)
  if (name == "neon") return f.neon && f.dotprod;
#endif
  (void)f;
  return false;
}

const Kernels* pick_initial() {
  (void)lut_wide_tables();  // a bad BITNET_LUT_L1 fails here, on the caller's thread, not in a kernel
  if (const char* env = std::getenv("BITNET_ISA")) {
    const std::string name(env);
    if (!name.empty()) {
      const Kernels* k = find_kernels(name);
      if (k == nullptr || !can_run(name))
        throw std::invalid_argument("BITNET_ISA=" + name + " is not available on this CPU/build (available: ref" +
                                    std::string(can_run("avx2") ? ", avx2" : "") +
                                    std::string(can_run("avxvnni") ? ", avxvnni" : "") +
                                    std::string(can_run("avx512") ? ", avx512" : "") +
                                    std::string(can_run("amx") ? ", amx" : "") +
                                    std::string(can_run("neon") ? ", neon" : "") + ")");
      return k;
    }
  }
  const std::vector<std::string> names = available_isas();
  return find_kernels(names.back());
}

std::atomic<const Kernels*> g_current{nullptr};

bool read_lut_wide() {
  if (const char* env = std::getenv("BITNET_LUT_L1"); env != nullptr && *env != 0) {
    const std::string v(env);
    if (v == "small" || v == "wide") return v == "wide";
    throw std::invalid_argument("BITNET_LUT_L1 must be small or wide, got '" + v + "'");
  }
  return cpu_features().l1d_bytes >= 48 * 1024;
}

// 0: auto, 1: mac, 2: lut; -1: not read from BITNET_KERNEL yet.
std::atomic<int> g_family{-1};
const char* const kFamilies[] = {"auto", "mac", "lut"};

int parse_family(const std::string& name) {
  for (int i = 0; i < 3; ++i)
    if (name == kFamilies[i]) return i;
  throw std::invalid_argument("kernel family must be auto, mac or lut, got '" + name + "'");
}

int family() {
  int f = g_family.load(std::memory_order_acquire);
  if (f < 0) {
    const char* env = std::getenv("BITNET_KERNEL");
    f = env && *env ? parse_family(env) : 0;
    g_family.store(f, std::memory_order_release);
  }
  return f;
}

template <typename Fn>
Fn pick(Fn mac, Fn lut, uint8_t classes, int T) {
  if (lut == nullptr) return mac;
  switch (family()) {
    case 1: return mac;
    case 2: return lut;
    default: return (classes >> shape_class(T)) & 1 ? lut : mac;
  }
}

}  // namespace

const Kernels* find_kernels(const std::string& name) {
  if (name == "ref") return &kKernelsRef;
#if defined(__x86_64__) || defined(_M_X64)
  if (name == "avx2") return &avx2_kernels();
#if defined(BITNET_HAVE_AVXVNNI)
  if (name == "avxvnni") return &avxvnni_kernels();
#endif
  if (name == "avx512") return &avx512_kernels();
#if defined(BITNET_HAVE_AMX)
  if (name == "amx") return &amx_kernels();
#endif
#endif
#if defined(__aarch64__)
  if (name == "neon") return &neon_kernels();
#endif
  return nullptr;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const char* n : {"ref", "neon", "avx2", "avxvnni", "avx512", "amx"})
    if (find_kernels(n) != nullptr && can_run(n)) out.emplace_back(n);
  return out;
}

bool lut_wide_tables() {
  static const bool wide = read_lut_wide();
  return wide;
}

const Kernels& kernels() {
  const Kernels* k = g_current.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = pick_initial();
    g_current.store(k, std::memory_order_release);
  }
  return *k;
}

void set_isa(const std::string& name) {
  const Kernels* k = find_kernels(name);
  if (k == nullptr || !can_run(name))
    throw std::invalid_argument("ISA '" + name + "' is not available on this CPU/build");
  g_current.store(k, std::memory_order_release);
}

void set_kernel_family(const std::string& name) { g_family.store(parse_family(name), std::memory_order_release); }
std::string kernel_family() { return kFamilies[family()]; }

TernaryGemmFn ternary_gemm_for(const Kernels& k, int T) {
  return pick(k.ternary_gemm, k.ternary_gemm_lut, k.lut_classes_i2, T);
}
Ternary5GemmFn ternary5_gemm_for(const Kernels& k, int T) {
  return pick(k.ternary5_gemm, k.ternary5_gemm_lut, k.lut_classes_t5, T);
}

}  // namespace bitnet
