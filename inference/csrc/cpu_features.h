// CPU feature detection, done once at start-up; the kernel dispatch table reads it.
#pragma once
#include <string>

namespace bitnet {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_vnni = false;
  bool avx512_vbmi = false;  // vpermb / vpermi2b (the t5 kernel's byte tables)
  bool avx_vnni = false;
  bool amx_tile = false;  // AMX tiles (cpuid) and OS support (XCR0 bits 17-18)
  bool amx_int8 = false;
  bool neon = false;
  bool dotprod = false;  // ARMv8.2 SDOT/UDOT
  int l1d_bytes = 0;     // L1 data cache per core (sysconf where glibc reports it; 0: unknown)
};

// Detected features of the running CPU (cpuid + xgetbv on x86, compile-time on ARM).
const CpuFeatures& cpu_features();

// "x86_64", "aarch64" or "unknown".
std::string cpu_arch();

}  // namespace bitnet
