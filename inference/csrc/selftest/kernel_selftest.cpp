// Standalone check of every kernel table this CPU can run against the scalar reference, without
// Python: used to test the NEON path under emulation (tests/inference/test_kernels.py builds it
// with an aarch64 cross compiler and runs it with qemu-aarch64). Exit status 0 = all equal.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels.h"
#include "model.h"

using namespace bitnet;

namespace {

std::mt19937 rng(1234);
int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

int check_ternary(const Kernels& k, int out, int K, int T) {
  const int R = out / 4, MB = (out + 15) / 16, KB = (K + 15) / 16, Mp = MB * 16;
  const int ldx = (KB * 16 + kXAlign - 1) / kXAlign * kXAlign;
  std::vector<uint8_t> packed(static_cast<size_t>(R) * K);
  for (auto& b : packed) {
    uint8_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint8_t>(rand_int(0, 2) << (2 * i));
    b = v;
  }
  AlignedBuf<TernaryTile> tiles(static_cast<size_t>(MB) * KB);
  ThreadPool pool(1);
  if (!repack_ternary(packed.data(), out, K, tiles.data(), &pool)) return 1;
  std::vector<int8_t> x(static_cast<size_t>(T) * ldx, 0);
  std::vector<int32_t> xsum(T, 0);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < K; ++c) {
      x[static_cast<size_t>(t) * ldx + c] = static_cast<int8_t>(rand_int(-128, 127));
      xsum[t] += x[static_cast<size_t>(t) * ldx + c];
    }
  std::vector<int32_t> a(static_cast<size_t>(T) * Mp), b(a.size());
  kKernelsRef.ternary_gemm(tiles.data(), KB, 0, MB, x.data(), ldx, xsum.data(), T, a.data(), Mp);
  k.ternary_gemm(tiles.data(), KB, 0, MB, x.data(), ldx, xsum.data(), T, b.data(), Mp);
  for (int t = 0; t < T; ++t)
    for (int m = 0; m < out; ++m)
      if (a[static_cast<size_t>(t) * Mp + m] != b[static_cast<size_t>(t) * Mp + m]) return 1;
  return 0;
}

int check_heads(const Kernels& k) {
  const int V = 37, C = 200, Cp = 256, T = 3;
  std::vector<int8_t> E(static_cast<size_t>(V) * Cp, 0), x(static_cast<size_t>(T) * Cp, 0);
  std::vector<int32_t> rowsum(V, 0);
  for (int r = 0; r < V; ++r)
    for (int c = 0; c < C; ++c) {
      E[static_cast<size_t>(r) * Cp + c] = static_cast<int8_t>(rand_int(-127, 127));
      rowsum[r] += E[static_cast<size_t>(r) * Cp + c];
    }
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < C; ++c) x[static_cast<size_t>(t) * Cp + c] = static_cast<int8_t>(rand_int(-127, 127));
  std::vector<int32_t> a(static_cast<size_t>(T) * V), b(a.size());
  kKernelsRef.head_i8(E.data(), rowsum.data(), Cp, 0, V, x.data(), T, a.data(), V);
  k.head_i8(E.data(), rowsum.data(), Cp, 0, V, x.data(), T, b.data(), V);
  if (a != b) return 1;
  std::vector<uint16_t> W(static_cast<size_t>(V) * C);
  std::vector<float> h(static_cast<size_t>(T) * C), fa(static_cast<size_t>(T) * V), fb(fa.size());
  for (auto& w : W) w = static_cast<uint16_t>(0x3c00 | rand_int(0, 0x3ff) | (rand_int(0, 1) << 15));  // f16 / bf16 patterns
  for (auto& v : h) v = std::uniform_real_distribution<float>(-1.f, 1.f)(rng);
  for (int pass = 0; pass < 2; ++pass) {
    auto fr = pass ? kKernelsRef.dot_rows_f16 : kKernelsRef.dot_rows_bf16;
    auto fk = pass ? k.dot_rows_f16 : k.dot_rows_bf16;
    fr(W.data(), C, 0, V, h.data(), T, fa.data(), V);
    fk(W.data(), C, 0, V, h.data(), T, fb.data(), V);
    for (size_t i = 0; i < fa.size(); ++i)
      if (std::fabs(fa[i] - fb[i]) > 1e-4f * (1.f + std::fabs(fa[i]))) return 1;
  }
  std::vector<int8_t> qa(C), qb(C);
  int32_t sa, sb;
  const float s1 = kKernelsRef.quantize_row(h.data(), C, C, qa.data(), &sa);
  const float s2 = k.quantize_row(h.data(), C, C, qb.data(), &sb);
  if (s1 != s2 || sa != sb || qa != qb) return 1;
  // One head over n = T positions of K = V = h rows (hd = C).
  std::vector<float> sc(T), oa(C), ob(C);
  kKernelsRef.attend(h.data(), h.data(), h.data(), C, T, C, 0.1f, sc.data(), oa.data());
  k.attend(h.data(), h.data(), h.data(), C, T, C, 0.1f, sc.data(), ob.data());
  for (int i = 0; i < C; ++i)
    if (std::fabs(oa[i] - ob[i]) > 1e-4f * (1.f + std::fabs(oa[i]))) return 1;
  return 0;
}

// int4 head: random blocks, then the extremes (q = -8 or 7 everywhere, scale 255, x = +-127, at
// the widest Cp) for every token count 1..11 (single token, groups of 4 and remainders).
int check_head_i4(const Kernels& k) {
  for (int pass = 0; pass < 3; ++pass) {
    const int V = pass == 0 ? 37 : 5, Cp = pass == 0 ? 384 : kHeadI4MaxCols, nb = Cp / kHeadI4Cols;
    std::vector<HeadI4Block> W(static_cast<size_t>(V) * nb);
    std::vector<int32_t> bias(V, 0);
    for (int r = 0; r < V; ++r) {
      int64_t b = 0;
      for (int j = 0; j < nb; ++j) {
        HeadI4Block& blk = W[static_cast<size_t>(r) * nb + j];
        for (int i = 0; i < 64; ++i)
          blk.qs[i] = pass == 0 ? static_cast<uint8_t>(rand_int(0, 255)) : pass == 1 ? 0x00 : 0xff;
        for (int g = 0; g < 4; ++g) blk.sc[g] = pass == 0 ? static_cast<uint8_t>(rand_int(0, 255)) : 255;
        for (int c = 0; c < kHeadI4Cols; ++c) {
          const int nib = c < 64 ? (blk.qs[c] & 15) : (blk.qs[c - 64] >> 4);
          b += static_cast<int64_t>(blk.sc[c / kHeadI4Group]) * (nib - 8);
        }
      }
      bias[r] = static_cast<int32_t>(128 * b);
    }
    for (int T = 1; T <= 11; ++T) {
      std::vector<int8_t> x(static_cast<size_t>(T) * Cp);
      for (size_t i = 0; i < x.size(); ++i)
        x[i] = pass == 0 ? static_cast<int8_t>(rand_int(-127, 127)) : static_cast<int8_t>((i / Cp) % 2 ? 127 : -127);
      std::vector<int32_t> a(static_cast<size_t>(T) * V), b(a.size());
      kKernelsRef.head_i4(W.data(), bias.data(), Cp, 0, V, x.data(), T, a.data(), V);
      k.head_i4(W.data(), bias.data(), Cp, 0, V, x.data(), T, b.data(), V);
      if (a != b) return 1;
    }
  }
  return 0;
}

}  // namespace

int main() {
  int fails = 0;
  for (const std::string& name : available_isas()) {
    const Kernels& k = *find_kernels(name);
    int f = check_heads(k);
    const int shapes[][3] = {{16, 16, 1}, {36, 50, 3}, {100, 333, 9}, {64, 2560, 1}, {48, 200, 70}};
    for (const auto& s : shapes) f += check_ternary(k, s[0], s[1], s[2]);
    const int f4 = check_head_i4(k);
    std::printf("%s head_i4 %s\n", name.c_str(), f4 ? "MISMATCH" : "ok");
    f += f4;
    std::printf("%s %s\n", name.c_str(), f ? "MISMATCH" : "ok");
    fails += f;
  }
  return fails ? 1 : 0;
}
