// Standalone check of the fp16 KV cache's pieces on every kernel table this CPU can run, without
// Python: tests/inference/test_kv_f16.py cross-compiles it for aarch64 and runs it under
// qemu-aarch64 (the NEON path). Prints one line per check; exit status 0 = all passed.
//  - attend_f16 over fp16 rows equals attend over the same rows widened to fp32, bit for bit (the
//    widening is exact and both run one loop, attend_with / attend_regs, over the same order of
//    fp32 operations), for head sizes on the register path, the generic loop and odd tails;
//  - f32_to_f16 (the scalar converter the cache is written with) equals the hardware conversion
//    (aarch64 FCVT, round to nearest even) on every fp16 value, every midpoint between two
//    neighbours and the floats either side of it, the overflow / subnormal edges, and random
//    bit patterns.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels.h"

using namespace bitnet;

namespace {

std::mt19937 rng(4321);

int check_attend(const Kernels& k) {
  const int hds[] = {7, 16, 64, 72, 128, 256};
  const int ns[] = {1, 3, 9, 37, 200};
  int fails = 0;
  for (int hd : hds)
    for (int n : ns) {
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<float> q(hd), sc(n), a(hd), b(hd), r(hd);
      std::vector<uint16_t> K(static_cast<size_t>(n) * hd), V(K.size());
      std::vector<float> Kf(K.size()), Vf(K.size());
      for (float& x : q) x = nd(rng);
      for (size_t i = 0; i < K.size(); ++i) {
        K[i] = f32_to_f16(3.f * nd(rng));  // peaked scores: the max shift matters
        V[i] = f32_to_f16(nd(rng));
        Kf[i] = f16_to_f32(K[i]);
        Vf[i] = f16_to_f32(V[i]);
      }
      const float scale = 1.f / std::sqrt(static_cast<float>(hd));
      k.attend_f16(q.data(), K.data(), V.data(), hd, n, hd, scale, sc.data(), a.data());
      k.attend(q.data(), Kf.data(), Vf.data(), hd, n, hd, scale, sc.data(), b.data());
      kKernelsRef.attend_f16(q.data(), K.data(), V.data(), hd, n, hd, scale, sc.data(), r.data());
      for (int i = 0; i < hd; ++i) {
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) ++fails;
        if (std::fabs(a[i] - r[i]) > 1e-4f * (1.f + std::fabs(r[i]))) ++fails;
      }
    }
  return fails;
}

#if defined(__aarch64__)
uint16_t hw_f16(float x) {
  const __fp16 h = static_cast<__fp16>(x);  // FCVT Hd, Sd: round to nearest even (default FPCR)
  uint16_t bits;
  std::memcpy(&bits, &h, sizeof bits);
  return bits;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// NaNs are compared as NaNs (payload handling is not part of the contract).
int check_convert_one(float x) {
  const uint16_t a = f32_to_f16(x), b = hw_f16(x);
  if (std::isnan(x)) return ((a & 0x7c00u) == 0x7c00u && (a & 0x3ffu) != 0) ? 0 : 1;
  if (a != b) {
    std::printf("f32_to_f16(%a) = %04x, hardware %04x\n", static_cast<double>(x), a, b);
    return 1;
  }
  return 0;
}

int check_convert() {
  int fails = 0;
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float v = f16_to_f32(static_cast<uint16_t>(h));
    fails += check_convert_one(v);
    if ((h & 0x7fffu) >= 0x7c00u) continue;  // inf / nan: no upper neighbour
    // Midpoint to the next value away from zero (exact in fp32) and the floats either side of it.
    const float w = f16_to_f32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(v) + static_cast<double>(w)) / 2);
    fails += check_convert_one(mid);
    fails += check_convert_one(from_bits(to_bits(mid) + 1));
    fails += check_convert_one(from_bits(to_bits(mid) - 1));
  }
  const float edges[] = {0.f, -0.f, 65504.f, 65519.996f, 65520.f, 1e30f, INFINITY, -INFINITY, NAN,
                         0x1p-14f, 0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1.8p-25f, 0x1p-26f, 0x1p-149f,
                         std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min()};
  for (float e : edges) fails += check_convert_one(e) + check_convert_one(-e);
  for (int i = 0; i < 1000000; ++i) fails += check_convert_one(from_bits(static_cast<uint32_t>(rng())));
  return fails;
}
#endif

}  // namespace

int main() {
  int fails = 0;
  for (const std::string& name : available_isas()) {
    const int f = check_attend(*find_kernels(name));
    std::printf("%s attend_f16 %s\n", name.c_str(), f ? "MISMATCH" : "ok");
    fails += f;
  }
#if defined(__aarch64__)
  const int f = check_convert();
  std::printf("f32_to_f16 vs hardware %s\n", f ? "MISMATCH" : "ok");
  fails += f;
#endif
  return fails ? 1 : 0;
}
