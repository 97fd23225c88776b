// Lookup-table ternary products for a tile of tokens (prefill, batched decode steps), written once
// with GCC/Clang vector extensions and compiled inside each SIMD translation unit with that unit's
// flags (kernels_avx2.cpp: 128/256-bit vectors, kernels_avx512.cpp: up to 512-bit). Everything
// here has internal linkage, so no copy built with one file's flags is linked into another.
// Scalar twin: ternary_gemm_lut_ref / ternary5_gemm_lut_ref (kernels_ref.cpp); exactness against
// the multiply reference is tested in tests/inference/test_kernels_lut.py.
//
// The idea (after Vec-LUT): a weight byte of either layout already is the index of a group of g
// trits of one row (i2: g = 4 codes of 2 bits, columns 16 kb + 4 i + j for i = 0..3; t5: g = 5
// base-3 digits, columns 20 kb + 4 i + j for i = 0..4; layouts in kernels.h). For a tile of VT
// tokens, the table of a group holds, for every byte value b, the VT-lane int16 vector
//   E[b][t] = sum_i q_i(b) * x[t][col_i]
// so one lookup is one vector add of E[b] into the row's int16 accumulator: g * VT products per
// add, with no multiply. Tables are built once per group and token tile and shared by every row
// of the call (the build costs 3 + 9 + ... + 3^g vector adds per group; a call covers hundreds of
// rows). Bytes that no weight holds (13 of 256 for t5, 175 for i2) are never looked up, never built.
//
// Overflow: |E[b][t]| <= 128 * g (x may be -128, q = -1 on every column: +128 g), so n lookups sum
// to at most 128 g n in magnitude; int16 holds it while 128 g n <= 32767: n <= 63 for i2 (g = 4:
// 63 * 512 = 32256) and n <= 51 for t5 (g = 5: 51 * 640 = 32640). A flush (int16 -> int32) happens
// after every kLutChunk* tiles of 4 groups (i2 15 tiles = 60 lookups, t5 12 tiles = 48 lookups),
// and the int16 adds wrap (unsigned lanes) so their order does not matter: the wrapped sum equals
// the exact one because the exact one lies in [-32768, 32767].
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels.h"

namespace bitnet {
namespace {

// Tiles per flush: 4 * tiles lookups per flush, within the bounds above (static_asserts below).
constexpr int kLutChunkI2 = 15;
constexpr int kLutChunkT5 = 12;
static_assert(4 * kLutChunkI2 * 128 * 4 <= 32767, "i2: 4 lookups per tile, each at most 128 * 4 in magnitude");
static_assert(4 * kLutChunkT5 * 128 * 5 <= 32767, "t5: 4 lookups per tile, each at most 128 * 5 in magnitude");

// Table bytes a block may look up (L1D is 32-48 KiB on the CPUs these kernels target).
constexpr int kLutL1Bytes = 32 * 1024;

template <int VT>
struct LutTypes {
  typedef uint16_t V __attribute__((vector_size(2 * VT)));  // int16 lanes, wrapping adds
};

// acc[0..VT) += the VT int16 lanes of s (as signed), widened NB bytes of int32 at a time: NB is the
// translation unit's vector width (32: AVX2, 64: AVX-512), so every piece is one vpmovsxwd and one
// vpaddd on registers (a VT-lane int32 vector type wider than the unit's registers was lowered
// through the stack, with store-forwarding stalls that cost more than the lookups).
template <int N>
struct WidenTypes {
  typedef int16_t H __attribute__((vector_size(2 * N)));
  typedef int32_t I __attribute__((vector_size(4 * N)));
};
template <int VT, int NB>
inline void widen_add(int32_t* acc, const typename LutTypes<VT>::V& s) {
  constexpr int n = VT < NB / 4 ? VT : NB / 4;  // lanes per piece
  using H = typename WidenTypes<n>::H;
  using I = typename WidenTypes<n>::I;
  for (int p = 0; p < VT / n; ++p) {
    H h;
    I a;
    std::memcpy(&h, reinterpret_cast<const char*>(&s) + 2 * n * p, sizeof h);
    std::memcpy(&a, acc + n * p, sizeof a);
    a += __builtin_convertvector(h, I);
    std::memcpy(acc + n * p, &a, sizeof a);
  }
}

// Per-thread scratch, grown on demand: 0 the tables of a block of tiles, 1 the int32 sums of a
// call, 2 its activations by column.
inline uint8_t* lut_scratch(size_t bytes, int which) {
  struct Buf {
    std::unique_ptr<uint8_t[]> p;
    size_t n = 0;
  };
  thread_local Buf bufs[3];
  Buf& b = bufs[which];
  if (b.n < bytes + 64) {
    b.p.reset(new uint8_t[bytes + 64]);
    b.n = bytes + 64;
  }
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(b.p.get()) + 63) & ~uintptr_t(63));
}

// The stored t5 byte of base-3 value v (TernaryTile5).
inline const std::array<uint8_t, 243>& t5_bytes() {
  static const std::array<uint8_t, 243> enc = [] {
    std::array<uint8_t, 243> e{};
    for (int v = 0; v < 243; ++v) e[v] = static_cast<uint8_t>((v * 256 + 242) / 243);
    return e;
  }();
  return enc;
}

struct LutI2 {
  using Tile = TernaryTile;
  static constexpr int kCols = kTileCols, kDigits = 4, kChunk = kLutChunkI2, kUsed = 81;
  // The table of group j of a tile: tab[b] for the 81 bytes b = c0 | c1 << 2 | c2 << 4 | c3 << 6
  // (c_i = q_i + 1 of column 4 i + j); a[i] = activations of that column.
  template <typename V>
  static void build(const V* a, V* tab) {
    const V z = {};
    const V d[4][3] = {{z - a[0], z, a[0]}, {z - a[1], z, a[1]}, {z - a[2], z, a[2]}, {z - a[3], z, a[3]}};
    for (int c3 = 0; c3 < 3; ++c3)
      for (int c2 = 0; c2 < 3; ++c2) {
        const V s2 = d[3][c3] + d[2][c2];
        for (int c1 = 0; c1 < 3; ++c1) {
          const V s1 = s2 + d[1][c1];
          for (int c0 = 0; c0 < 3; ++c0) tab[c0 | c1 << 2 | c2 << 4 | c3 << 6] = s1 + d[0][c0];
        }
      }
  }
};

struct LutT5 {
  using Tile = TernaryTile5;
  static constexpr int kCols = kTile5Cols, kDigits = 5, kChunk = kLutChunkT5, kUsed = 243;
  // tab[t5 byte of v] for v = sum c_i 3^(4 - i) (c_i = q_i + 1 of column 4 i + j).
  template <typename V>
  static void build(const V* a, V* tab) {
    const V z = {};
    const std::array<uint8_t, 243>& enc = t5_bytes();
    int v = 0;
    for (int c0 = 0; c0 < 3; ++c0) {
      const V s0 = c0 == 0 ? z - a[0] : c0 == 1 ? z : a[0];
      for (int c1 = 0; c1 < 3; ++c1) {
        const V s1 = s0 + (c1 == 0 ? z - a[1] : c1 == 1 ? z : a[1]);
        for (int c2 = 0; c2 < 3; ++c2) {
          const V s2 = s1 + (c2 == 0 ? z - a[2] : c2 == 1 ? z : a[2]);
          for (int c3 = 0; c3 < 3; ++c3) {
            const V s3 = s2 + (c3 == 0 ? z - a[3] : c3 == 1 ? z : a[3]);
            tab[enc[v++]] = s3 - a[4];
            tab[enc[v++]] = s3;
            tab[enc[v++]] = s3 + a[4];
          }
        }
      }
    }
  }
};

// Rows [16 mb0, 16 mb1) against nt <= VT tokens (x rows t0 .. t0 + nt - 1), exact, into y.
// The columns go in blocks of tiles whose tables fit L1 (chunk below; never past the flush interval
// above): the block's tables are built, then every row of the call sums its 4 chunk lookups in
// int16 registers and adds them, widened, into its int32 sums (acc32, VT lanes per row, in L2).
template <typename F, int VT, int NB>
void lut_token_tile(const typename F::Tile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx, int nt,
                    int32_t* y, int ldy) {
  using V = typename LutTypes<VT>::V;
  const int rows = (mb1 - mb0) * kTileRows;
  // Tiles per block: as many as keep the block's table rows that weights can index (81 of 256 per
  // group for i2, 243 for t5) within kLutL1Bytes, at least one, at most the flush interval.
  const int chunk = std::min({F::kChunk, KB, std::max(1, kLutL1Bytes / (4 * F::kUsed * static_cast<int>(sizeof(V))))});
  V* tab = reinterpret_cast<V*>(lut_scratch(sizeof(V) * 256 * 4 * chunk, 0));
  int32_t* acc32 = reinterpret_cast<int32_t*>(lut_scratch(sizeof(int32_t) * VT * rows, 1));  // [row][lane]
  std::memset(acc32, 0, sizeof(int32_t) * VT * rows);
  // The tile's activations by column: xT[c] = lanes x[0..nt)[c] as int16, zero lanes past nt.
  const int cols = KB * F::kCols;
  V* xT = reinterpret_cast<V*>(lut_scratch(sizeof(V) * cols, 2));
  for (int c = 0; c < cols; ++c) xT[c] = V{};
  for (int t = 0; t < nt; ++t) {
    const int8_t* xt = x + static_cast<size_t>(t) * ldx;
    for (int c = 0; c < cols; ++c) xT[c][t] = static_cast<uint16_t>(static_cast<int16_t>(xt[c]));
  }
  for (int kb0 = 0; kb0 < KB; kb0 += chunk) {
    const int nk = std::min(chunk, KB - kb0);
    // Tables of the block's 4 nk groups: tab[(4 k + j) * 256 + b].
    for (int k = 0; k < nk; ++k) {
      const V* xc = xT + (kb0 + k) * F::kCols;
      for (int j = 0; j < 4; ++j) {
        V a[F::kDigits];
        for (int i = 0; i < F::kDigits; ++i) a[i] = xc[4 * i + j];
        F::build(a, tab + (4 * k + j) * 256);
      }
    }
    // Every row: four lookups per tile (each index byte loaded by itself: a movzx, a shift and an
    // add from memory per lookup), two chains, then one flush.
    for (int mb = mb0; mb < mb1; ++mb) {
      const uint8_t* wb = w[static_cast<size_t>(mb) * KB + kb0].b;
      for (int r = 0; r < kTileRows; ++r) {
        V s0 = {}, s1 = {};
        for (int k = 0; k < nk; ++k) {
          const uint8_t* b = wb + 64 * k + 4 * r;
          const V* tk = tab + 4 * k * 256;
          s0 += tk[b[0]];
          s1 += tk[256 + b[1]];
          s0 += tk[512 + b[2]];
          s1 += tk[768 + b[3]];
        }
        widen_add<VT, NB>(acc32 + static_cast<size_t>((mb - mb0) * kTileRows + r) * VT, s0 + s1);
      }
    }
  }
  for (int t = 0; t < nt; ++t) {
    int32_t* yt = y + static_cast<size_t>(t) * ldy + mb0 * kTileRows;
    for (int r = 0; r < rows; ++r) yt[r] = acc32[static_cast<size_t>(r) * VT + t];
  }
}

// The whole product (ternary_gemm's contract; xsum unused: the tables hold signed sums): tokens in
// tiles of VTmax, the remainder in the narrowest tile that holds it (8, 16, ... lanes). NB: the
// translation unit's vector width in bytes (widen_add).
template <typename F, int VTmax, int NB>
void lut_gemm(const typename F::Tile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx, int T, int32_t* y,
              int ldy) {
  for (int t0 = 0; t0 < T; t0 += VTmax) {
    const int nt = std::min(VTmax, T - t0);
    const int8_t* xt = x + static_cast<size_t>(t0) * ldx;
    int32_t* yt = y + static_cast<size_t>(t0) * ldy;
    if (nt <= 8) lut_token_tile<F, 8, NB>(w, KB, mb0, mb1, xt, ldx, nt, yt, ldy);
    else if (VTmax >= 16 && nt <= 16) lut_token_tile<F, (VTmax >= 16 ? 16 : 8), NB>(w, KB, mb0, mb1, xt, ldx, nt, yt, ldy);
    else lut_token_tile<F, VTmax, NB>(w, KB, mb0, mb1, xt, ldx, nt, yt, ldy);
  }
}

// The LUT bound: iters x kLutLoopLookups lookups exactly as the kernels' inner step does them (a
// 32-bit load of four index bytes, four table rows added into two int16 chains) on tables that
// stay in L1 (four groups of 64 rows: 8 KiB at VT = 16, 16 KiB at VT = 32) and 1 KiB of index
// bytes (idx, values below 64). Returns a value that depends on every lookup.
template <int VT>
uint32_t lut_peak_loop(const uint8_t* idx, int64_t iters) {
  using V = typename LutTypes<VT>::V;
  alignas(64) V tab[4 * 64];
  for (int i = 0; i < 4 * 64; ++i)
    for (int t = 0; t < VT; ++t) tab[i][t] = static_cast<uint16_t>(i + t);
  V s0 = {}, s1 = {}, s2 = {}, s3 = {};
  static_assert(kLutLoopLookups == 16, "four 4-lookup steps per iteration");
  for (int64_t it = 0; it < iters; ++it) {
    const uint8_t* p = idx + 16 * (it & 63);
    for (int k = 0; k < 4; ++k) {
      uint32_t b;
      std::memcpy(&b, p + 4 * k, 4);
      V& a = (k & 1) ? s2 : s0;
      V& c = (k & 1) ? s3 : s1;
      a += tab[b & 63];
      c += tab[64 + ((b >> 8) & 63)];
      a += tab[128 + ((b >> 16) & 63)];
      c += tab[192 + ((b >> 24) & 63)];
    }
  }
  const V s = s0 + s1 + s2 + s3;
  uint32_t r = 0;
  for (int t = 0; t < VT; ++t) r += s[t];
  return r;
}

}  // namespace
}  // namespace bitnet
