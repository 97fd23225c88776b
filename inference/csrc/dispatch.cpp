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

namespace bitnet {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
// The avx512 table as this CPU runs it: its t5 kernel decodes with VBMI byte tables; a VNNI CPU
// without VBMI (Cascade Lake) takes the AVX2 t5 kernel instead.
const Kernels& avx512_kernels() {
  static const Kernels k = [] {
    Kernels t = kKernelsAvx512;
    if (!cpu_features().avx512_vbmi) t.ternary5_gemm = kKernelsAvx2.ternary5_gemm;
    return t;
  }();
  return k;
}
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(BITNET_NO_AMX)
#define BITNET_HAVE_AMX 1
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
    Kernels t = avx512_kernels();
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
  if (const char* env = std::getenv("BITNET_ISA")) {
    const std::string name(env);
    if (!name.empty()) {
      const Kernels* k = find_kernels(name);
      if (k == nullptr || !can_run(name))
        throw std::invalid_argument("BITNET_ISA=" + name + " is not available on this CPU/build (available: ref" +
                                    std::string(can_run("avx2") ? ", avx2" : "") +
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

}  // namespace

const Kernels* find_kernels(const std::string& name) {
  if (name == "ref") return &kKernelsRef;
#if defined(__x86_64__) || defined(_M_X64)
  if (name == "avx2") return &kKernelsAvx2;
  if (name == "avx512") return &avx512_kernels();
#if defined(BITNET_HAVE_AMX)
  if (name == "amx") return &amx_kernels();
#endif
#endif
#if defined(__aarch64__)
  if (name == "neon") return &kKernelsNeon;
#endif
  return nullptr;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const char* n : {"ref", "neon", "avx2", "avx512", "amx"})
    if (find_kernels(n) != nullptr && can_run(n)) out.emplace_back(n);
  return out;
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

}  // namespace bitnet
