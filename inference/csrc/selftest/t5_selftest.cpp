// Standalone check of every t5 kernel (TernaryTile5, kernels.h) this CPU can run against the
// scalar reference, and of the reference against a direct q.x, without Python: used to test the
// NEON path under emulation (tests/inference/test_kernels_t5.py builds it with an aarch64 cross
// compiler and runs it with qemu-aarch64). Exit status 0 = all equal; one line per path.
#include <cstdio>
#include <random>
#include <vector>

#include "kernels.h"
#include "model.h"
#include "pack_codes_inl.h"

using namespace bitnet;

namespace {

std::mt19937 rng(5);
int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

// mode 0: random codes and x; 1: all +1 weights; 2: all -1; x extreme (-128 or 127) in modes 1, 2.
int check(const Kernels& k, int out, int K, int T, int mode, int xv) {
  const int MB = (out + 15) / 16, KB = (K + kTile5Cols - 1) / kTile5Cols, Mp = MB * 16;
  const int ldx = (KB * kTile5Cols + kXAlign - 1) / kXAlign * kXAlign;
  std::vector<int> c(static_cast<size_t>(out) * K);
  for (int& v : c) v = mode == 0 ? rand_int(0, 2) : mode == 1 ? 2 : 0;
  const std::vector<uint8_t> packed = pack_codes(c, out, K);
  AlignedBuf<TernaryTile5> tiles(static_cast<size_t>(MB) * KB);
  ThreadPool pool(1);
  if (!repack_ternary5(packed.data(), out, K, tiles.data(), &pool)) return 1;
  std::vector<int8_t> x(static_cast<size_t>(T) * ldx, 0);
  std::vector<int32_t> xsum(T, 0);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < K; ++i) {
      x[static_cast<size_t>(t) * ldx + i] = static_cast<int8_t>(mode == 0 ? rand_int(-128, 127) : xv);
      xsum[t] += x[static_cast<size_t>(t) * ldx + i];
    }
  std::vector<int32_t> a(static_cast<size_t>(T) * Mp), b(a.size());
  kKernelsRef.ternary5_gemm(tiles.data(), KB, 0, MB, x.data(), ldx, xsum.data(), T, a.data(), Mp);
  k.ternary5_gemm(tiles.data(), KB, 0, MB, x.data(), ldx, xsum.data(), T, b.data(), Mp);
  for (int t = 0; t < T; ++t)
    for (int m = 0; m < out; ++m) {
      int64_t want = 0;  // the definition, straight from the codes
      for (int i = 0; i < K; ++i) want += (c[static_cast<size_t>(m) * K + i] - 1) * x[static_cast<size_t>(t) * ldx + i];
      const size_t j = static_cast<size_t>(t) * Mp + m;
      if (a[j] != want || b[j] != want) return 1;
    }
  return 0;
}

// Every one of the 243 five-code tuples through t5_encode / t5_code.
int check_codec() {
  for (int v = 0; v < 243; ++v) {
    int c[kTile5Digits];
    for (int i = 0, r = v; i < kTile5Digits; ++i, r /= 3) c[kTile5Digits - 1 - i] = r % 3;
    const uint8_t s = t5_encode(c);
    for (int i = 0; i < kTile5Digits; ++i)
      if (t5_code(s, i) != c[i]) return 1;
  }
  return 0;
}

}  // namespace

int main() {
  int fails = check_codec();
  std::printf("codec %s\n", fails ? "MISMATCH" : "ok");
  for (const std::string& name : available_isas()) {
    const Kernels& k = *find_kernels(name);
    int f = 0;
    // (out, K, T): tile-aligned, odd shapes (padding rows / columns), decode and every token-tile
    // remainder up to 11, K = 6912 (pads to 6920).
    const int shapes[][3] = {{16, 20, 1}, {16, 16, 1}, {36, 50, 3}, {100, 333, 9}, {64, 2560, 1}, {12, 21, 17},
                             {48, 200, 70}, {32, 6912, 2}, {20, 45, 11}, {28, 99, 5}};
    for (const auto& s : shapes) f += check(k, s[0], s[1], s[2], 0, 0);
    for (int T = 1; T <= 11; ++T) f += check(k, 24, 57, T, 0, 0);
    for (int mode = 1; mode <= 2; ++mode)
      for (int xv : {-128, 127})
        for (int T : {1, 2, 9}) f += check(k, 32, 4100, T, mode, xv);
    std::printf("%s %s\n", name.c_str(), f ? "MISMATCH" : "ok");
    fails += f;
  }
  return fails ? 1 : 0;
}
