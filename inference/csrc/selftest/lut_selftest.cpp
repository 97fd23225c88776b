// Standalone check of every lookup-table kernel (kernels_lut_inl.h) this CPU can run, both layouts,
// against the definition sum_k q[m][k] * x[t][k] and the same path's multiply kernel, without
// Python: used to test the NEON tables under emulation (tests/inference/test_kernels_lut.py builds it
// with an aarch64 cross compiler and runs it with qemu-aarch64, once per BITNET_LUT_L1 table budget).
// Cases as test_kernels_lut.py has them for x86: every token count 1..64 with K not a multiple of
// the group, all +1 / all -1 rows against x = -128 / 127 over 2B4T's longest K (the flushes at their
// largest int16 magnitude), and rows of mixed extremes. Exit status 0 = all equal; one line per path.
#include <cstdio>
#include <random>
#include <vector>

#include "kernels.h"
#include "model.h"
#include "pack_codes_inl.h"

using namespace bitnet;

namespace {

std::mt19937 rng(21);
int rand_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); }

// Products of one layout (Tile, Cols columns a tile) through a path's mac and lut kernels.
template <typename Tile, int Cols, typename Gemm>
int check_layout(bool (*repack)(const uint8_t*, int, int, Tile*, ThreadPool*), Gemm mac, Gemm lut,
                 const std::vector<int>& c, int out, int K, const std::vector<int8_t>& xs, int T) {
  const int MB = (out + 15) / 16, KB = (K + Cols - 1) / Cols, Mp = MB * 16;
  const int ldx = (KB * Cols + kXAlign - 1) / kXAlign * kXAlign;
  const std::vector<uint8_t> packed = pack_codes(c, out, K);
  AlignedBuf<Tile> tiles(static_cast<size_t>(MB) * KB);
  ThreadPool pool(1);
  if (!repack(packed.data(), out, K, tiles.data(), &pool)) return 1;
  std::vector<int8_t> x(static_cast<size_t>(T) * ldx, 0);
  std::vector<int32_t> xsum(T, 0);
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) xsum[t] += x[static_cast<size_t>(t) * ldx + k] = xs[static_cast<size_t>(t) * K + k];
  std::vector<int32_t> a(static_cast<size_t>(T) * Mp), b(a.size());
  mac(tiles.data(), KB, 0, MB, x.data(), ldx, xsum.data(), T, a.data(), Mp);
  lut(tiles.data(), KB, 0, MB, x.data(), ldx, xsum.data(), T, b.data(), Mp);
  for (int t = 0; t < T; ++t)
    for (int m = 0; m < out; ++m) {
      int64_t want = 0;
      for (int k = 0; k < K; ++k)
        want += (c[static_cast<size_t>(m) * K + k] - 1) * static_cast<int64_t>(xs[static_cast<size_t>(t) * K + k]);
      const size_t j = static_cast<size_t>(t) * Mp + m;
      if (a[j] != want || b[j] != want) {
        static int shown = 0;  // the first few mismatches of the run
        if (shown++ < 5)
          std::printf("  out %d K %d T %d: row %d token %d: want %lld, mac %d, lut %d\n", out, K, T, m, t,
                      static_cast<long long>(want), a[j], b[j]);
        return 1;
      }
    }
  return 0;
}

int check_both(const Kernels& k, const std::vector<int>& c, int out, int K, const std::vector<int8_t>& x, int T) {
  return check_layout<TernaryTile, kTileCols>(repack_ternary, k.ternary_gemm, k.ternary_gemm_lut, c, out, K, x, T) +
         check_layout<TernaryTile5, kTile5Cols>(repack_ternary5, k.ternary5_gemm, k.ternary5_gemm_lut, c, out, K, x, T);
}

int check_path(const Kernels& k) {
  int fails = 0;
  {  // every token count 1..64 (8-, 16- and 32-lane tiles and their remainders), K = 333, 36 rows
    const int out = 36, K = 333;
    std::vector<int> c(static_cast<size_t>(out) * K);
    for (int& v : c) v = rand_int(0, 2);
    std::vector<int8_t> x(static_cast<size_t>(64) * K);
    for (auto& v : x) v = static_cast<int8_t>(rand_int(-128, 127));
    for (int T = 1; T <= 64; ++T) fails += check_both(k, c, out, K, x, T);
  }
  for (int T : {1, 9, 33}) {  // all +1 / all -1 rows against all -128 / all 127 over K = 6912
    const int out = 32, K = 6912;
    for (int code : {2, 0})
      for (int xv : {-128, 127}) {
        const std::vector<int> c(static_cast<size_t>(out) * K, code);
        const std::vector<int8_t> x(static_cast<size_t>(T) * K, static_cast<int8_t>(xv));
        fails += check_both(k, c, out, K, x, T);
      }
  }
  {  // rows of extremes beside random rows, x mixing -128 / 127 columns, K = 2561
    const int out = 52, K = 2561, T = 20;
    std::vector<int> c(static_cast<size_t>(out) * K);
    for (int& v : c) v = rand_int(0, 2);
    for (int kk = 0; kk < K; ++kk) {
      c[kk] = 2;
      c[K + kk] = 0;
      if (kk % 2 == 0) c[2 * static_cast<size_t>(K) + kk] = 0;
    }
    std::vector<int8_t> x(static_cast<size_t>(T) * K);
    for (auto& v : x) v = static_cast<int8_t>(rand_int(-128, 127));
    for (int kk = 0; kk < K; ++kk) {
      x[kk] = -128;
      x[K + kk] = 127;
      if (kk % 2 == 0) x[2 * static_cast<size_t>(K) + kk] = -128;
    }
    fails += check_both(k, c, out, K, x, T);
  }
  return fails;
}

}  // namespace

int main() {
  int fails = 0, paths = 0;
  for (const std::string& name : available_isas()) {
    const Kernels& k = *find_kernels(name);
    if (k.ternary_gemm_lut == nullptr || k.ternary5_gemm_lut == nullptr) continue;
    const int f = check_path(k);
    std::printf("%s lut %s (tables of %s blocks)\n", name.c_str(), f ? "MISMATCH" : "ok",
                lut_wide_tables() ? "wide" : "small");
    fails += f;
    ++paths;
  }
  if (paths == 0) std::printf("no path with lookup-table kernels\n");
  return fails || paths == 0 ? 1 : 0;
}
