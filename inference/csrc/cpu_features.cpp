#include "cpu_features.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#include <unistd.h>

namespace bitnet {

namespace {

#if defined(__x86_64__) || defined(_M_X64)
// XCR0 tells whether the OS saves the wide registers; cpuid alone is not enough.
unsigned long long read_xcr0() {
  unsigned int eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#if defined(_SC_LEVEL1_DCACHE_SIZE)  // glibc
  const long l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE);
  f.l1d_bytes = l1d > 0 ? static_cast<int>(l1d) : 0;
#endif
#if defined(__x86_64__) || defined(_M_X64)
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  const bool osxsave = (ecx >> 27) & 1;
  f.fma = (ecx >> 12) & 1;
  f.f16c = (ecx >> 29) & 1;
  const bool avx = (ecx >> 28) & 1;
  if (!osxsave || !avx) return f;
  const unsigned long long xcr0 = read_xcr0();
  const bool ymm_ok = (xcr0 & 0x6) == 0x6;     // SSE + AVX state
  const bool zmm_ok = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!ymm_ok) return f;
  unsigned int max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  f.avx2 = (ebx >> 5) & 1;
  if (zmm_ok) {
    f.avx512f = (ebx >> 16) & 1;
    f.avx512bw = (ebx >> 30) & 1;
    f.avx512vl = (ebx >> 31) & 1;
    f.avx512_vnni = (ecx >> 11) & 1;
    f.avx512_vbmi = (ecx >> 1) & 1;
  }
  const bool tiles_ok = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
  if (tiles_ok) {
    f.amx_tile = (edx >> 24) & 1;
    f.amx_int8 = (edx >> 25) & 1;
  }
  __cpuid_count(7, 1, eax, ebx, ecx, edx);
  f.avx_vnni = (eax >> 4) & 1;
#elif defined(__aarch64__)
  f.neon = true;  // Advanced SIMD is mandatory on AArch64
#if defined(__linux__)
  f.dotprod = (getauxval(AT_HWCAP) & (1UL << 20)) != 0;  // HWCAP_ASIMDDP: SDOT/UDOT
#elif defined(__ARM_FEATURE_DOTPROD)
  f.dotprod = true;
#endif
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

std::string cpu_arch() {
#if defined(__x86_64__) || defined(_M_X64)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

}  // namespace bitnet
