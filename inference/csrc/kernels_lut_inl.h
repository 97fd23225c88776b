// Lookup-table ternary products for a tile of tokens (prefill, batched decode steps), written once
// with GCC/Clang vector extensions (plus intrinsics for the index offsets, the int32 widening and
// the output transpose: AVX2 on x86, NEON on aarch64) and compiled inside each SIMD translation unit
// with that unit's flags (kernels_avx2.cpp: 128/256-bit vectors, kernels_avx512.cpp: up to 512-bit,
// kernels_neon.cpp: 128-bit). Everything here has internal linkage, so no copy built with one
// file's flags is linked into another.
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
// rows). t5 tables are indexed by the byte itself (13 of 256 rows never built nor read); i2 ones by
// the 81 byte values that occur, compacted (LutI2::index32 / index16). VT = 32 (a table row is two
// 256-bit vectors on AVX2, one 512-bit on AVX-512, four 128-bit on NEON; t5 takes 16 on AVX2 and
// NEON), 16 or 8 for a short remainder of tokens.
//
// Where the time goes (AVX2, 2B4T shapes, 128 tokens, one thread's half of a layer, about 18 ms
// on the Xeon of docs/benchmarks.md): per row and tile 4 offset loads, 8 table adds and the load /
// store of the row's running int16 sum (lut_rows16). Timing-only variants of this file: without
// the running sums' round trip (wrong results) 15% faster; with every offset made once per call
// and read back (the four token tiles share them) 3%; table builds and transpositions alone
// (no lookups) take 1.1 ms, the other 17 are the row loop. The rate follows the 256-bit loads
// (tables and sums: about 1.5 a cycle here, the 16-bit offset loads come nearly free): 32 B table
// rows (16 tokens) run nearly twice the lookups a cycle of 64 B ones, so the products per second
// hardly depend on the tokens per row, and what would pay is fewer 256-bit loads per product:
// 5 trits a lookup (t5) or fewer round trips. t5 does not fit L1 at 32 tokens (61 KiB of tables a
// tile), and at 16 tokens a row loses in table builds what it gains in lookups; 48 or 64 tokens a
// row, six groups a block: at most a few percent faster. Also no faster: offsets taken apart from
// 32- or 64-bit loads in integer registers, weight prefetch at other distances.
//
// Since then (same Xeon, shared; single-thread CPU time of one thread's work, weights on 2 MiB
// pages as the engine has them):
// - Two i2 tiles a block at 32 tokens (kLutL1Bytes, 41 KiB of tables): 3% less time at 128
//   tokens, 2% at 24 and 48; three (61 KiB) 10% more. lut_gemm<.., 64, 32> (64 tokens a row, 41
//   KiB of tables a tile, as this file's generic code compiles it): 2.4x the time.
// - Passes over rows of at most kLutL2Bytes of running sums: 1.5-2% less at 128 tokens on 2B4T's
//   gate|up span (13824 rows).
// - The engine (Model::linear_forward) runs q|k|v and gate|up as one call each (their tiles are
//   adjacent in the weight arena) and, from 32 tokens a thread, splits the tokens over the threads
//   rather than the rows: each thread builds the tables of its own tokens, once per span. Builds
//   per thread and layer fell from 4 calls x 4 token tiles (thread 0) and 6 x 4 (thread 1) to
//   5 x 2 (gate|up in two passes). Whole-model pp128 (10 layers, 2 threads): 4% faster from this
//   alone, 12-16% with the two changes above (avx2 and avxvnni alike: both run these kernels at
//   128 tokens; bench_paths.py against the build before, alternating, shared machine).
// - What is left in the row loop: a synthetic loop of nothing but lookups (4 offset loads and 8
//   256-bit table adds per row) sustains about 2 table loads a cycle, and the row loop with one
//   tile a block (10 256-bit loads per row and tile: 8 table rows, 2 for the running sum) ran at
//   about 90% of that. Timing-only variants at one tile a block: the running sum's load removed,
//   8-10% faster (two tiles a block halve that load; a third would leave L1, see above); every
//   row block reading the first blocks' offsets (no weight loads, no offset making, and the same
//   few table rows for every block) 8%, while making every row block's offsets of a tile block
//   in one pass before the lookups gained nothing: the offsets cost little, the spread of the
//   lookups over the tables is the rest. Offsets addressed base-only (pointer = table + offset,
//   no index register) or taken apart from 64-bit loads: no faster in the synthetic loop either.
//   Prefetching the running sums: no difference on 2 MiB pages (3% slower on 4 KiB pages). The
//   rescale to fp32 after the kernel (model.cpp) is 2% of a prefill; folding it into lut_store_y
//   is not done.
//
// Overflow: |E[b][t]| <= 128 * g (x may be -128, q = -1 on every column: +128 g), so n lookups sum
// to at most 128 g n in magnitude; int16 holds it while 128 g n <= 32767: n <= 63 for i2 (g = 4:
// 63 * 512 = 32256) and n <= 51 for t5 (g = 5: 51 * 640 = 32640). A flush (int16 -> int32) happens
// after every kLutChunk* tiles of 4 groups (i2 15 tiles = 60 lookups, t5 12 tiles = 48 lookups),
// and the int16 adds wrap (unsigned lanes) so their order does not matter: the wrapped sum equals
// the exact one because the exact one lies in [-32768, 32767].
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>
#define BITNET_LUT_X86 1
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#define BITNET_LUT_X86 0
#else
#error "kernels_lut_inl.h needs AVX2 or NEON"
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "kernels.h"

namespace bitnet {
namespace {

// Tiles per flush: 4 * tiles lookups per flush, within the bounds above (static_asserts below).
constexpr int kLutChunkI2 = 15;
constexpr int kLutChunkT5 = 12;
static_assert(4 * kLutChunkI2 * 128 * 4 <= 32767, "i2: 4 lookups per tile, each at most 128 * 4 in magnitude");
static_assert(4 * kLutChunkT5 * 128 * 5 <= 32767, "t5: 4 lookups per tile, each at most 128 * 5 in magnitude");

// Table bytes a block of tiles may look up. Where L1D holds 48 KiB (Intel cores since Ice Lake /
// Golden Cove): two i2 tiles at 32 tokens a row (2 x 20.25 KiB), so a row's running sum makes one
// round trip per 8 lookups instead of 4 (3% less time at 128 tokens than the 24 KiB budget, 2% at
// 24 and 48; three tiles, 61 KiB, 10% more: the tables no longer stay in L1). With a 32 KiB L1D
// (AMD Zen, Intel's E-cores and older cores) 41 KiB of tables would not stay in L1 either, so
// those take the 24 KiB budget (lut_wide_tables, kernels.h: the CPU's L1D from cpu_features).
constexpr int kLutL1Bytes = 42 * 1024;
constexpr int kLutL1BytesSmall = 24 * 1024;
typedef uint8_t LutBytes16 __attribute__((vector_size(16)));
typedef int8_t LutBytes16s __attribute__((vector_size(16)));

// The kernels' VT int16 lanes (wrapping adds) as P vectors of the translation unit's width NB bytes
// (one 64-byte vector type in a 32-byte unit was lowered through the stack: every add became a
// store, two 64-bit reloads and inserts); every operation is P native ones on registers. Loads and
// stores go vector by vector (a whole-struct copy was lowered to 16-byte moves through the stack).
template <int VT, int NB>
struct LutV {
  static constexpr int W = VT < NB / 2 ? VT : NB / 2, P = VT / W;  // lanes per vector, vectors
  typedef uint16_t N __attribute__((vector_size(2 * W)));
  N v[P];
  static __attribute__((always_inline)) LutV load(const void* p) {
    LutV r;
    for (int i = 0; i < P; ++i) std::memcpy(&r.v[i], static_cast<const char*>(p) + sizeof(N) * i, sizeof(N));
    return r;
  }
  __attribute__((always_inline)) void store(void* p) const {
    for (int i = 0; i < P; ++i) std::memcpy(static_cast<char*>(p) + sizeof(N) * i, &v[i], sizeof(N));
  }
  __attribute__((always_inline)) void add(const void* p) {  // += the VT lanes at p
    for (int i = 0; i < P; ++i) {
      N t;
      std::memcpy(&t, static_cast<const char*>(p) + sizeof(N) * i, sizeof(N));
      v[i] += t;
    }
  }
  __attribute__((always_inline)) LutV& operator+=(const LutV& b) {
    for (int p = 0; p < P; ++p) v[p] += b.v[p];
    return *this;
  }
  __attribute__((always_inline)) friend LutV operator+(LutV a, const LutV& b) { return a += b; }
  __attribute__((always_inline)) friend LutV operator-(LutV a, const LutV& b) {
    for (int p = 0; p < P; ++p) a.v[p] -= b.v[p];
    return a;
  }
  uint16_t* lanes() { return reinterpret_cast<uint16_t*>(v); }
};

// acc[0..VT) (= where init, else +=) the VT int16 lanes of s as signed, widened half a vector (at
// most NB bytes of int32) at a time with a lane shuffle, so every piece is one vpmovsxwd and one
// vpaddd on registers (a VT-lane int32 vector type wider than the unit's registers, or a memcpy
// out of s, was lowered through the stack, with store-forwarding stalls).
template <int Off, typename Ns, typename Hs, typename Iv, size_t... I>
__attribute__((always_inline)) inline void widen_piece(int32_t* d, Ns sv, bool init, std::index_sequence<I...>) {
  const Hs h = __builtin_shufflevector(sv, sv, (Off + static_cast<int>(I))...);
  Iv a = __builtin_convertvector(h, Iv);
  if (!init) {
    Iv o;
    std::memcpy(&o, d, sizeof o);
    a += o;
  }
  std::memcpy(d, &a, sizeof a);
}
template <int VT, int NB>
__attribute__((always_inline)) inline void widen_add(int32_t* acc, const LutV<VT, NB>& s, bool init) {
  using V = LutV<VT, NB>;
#if BITNET_LUT_X86
  if constexpr (NB == 32 && V::W == 16) {
    // 256-bit units: one vpmovsxwd ymm per 8 lanes (the generic pieces below became a shift, two
    // 128-bit widenings and an insert each).
    for (int p = 0; p < V::P; ++p) {
      __m256i sv;
      std::memcpy(&sv, &s.v[p], sizeof sv);
      __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sv));
      __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sv, 1));
      __m256i* d = reinterpret_cast<__m256i*>(acc + V::W * p);
      if (!init) {
        lo = _mm256_add_epi32(lo, _mm256_loadu_si256(d));
        hi = _mm256_add_epi32(hi, _mm256_loadu_si256(d + 1));
      }
      _mm256_storeu_si256(d, lo);
      _mm256_storeu_si256(d + 1, hi);
    }
    return;
  }
#endif
  constexpr int H = V::W / 2 < NB / 4 ? V::W / 2 : NB / 4;  // int32 lanes per piece
  typedef int16_t Ns __attribute__((vector_size(2 * V::W)));
  typedef int16_t Hs __attribute__((vector_size(2 * H)));
  typedef int32_t Iv __attribute__((vector_size(4 * H)));
  static_assert(V::W % H == 0 && V::W / H <= 4, "one to four pieces a vector");
  constexpr std::make_index_sequence<H> seq{};
  for (int p = 0; p < V::P; ++p) {
    Ns sv;
    std::memcpy(&sv, &s.v[p], sizeof sv);
    int32_t* d = acc + V::W * p;
    widen_piece<0, Ns, Hs, Iv>(d, sv, init, seq);
    if constexpr (V::W / H >= 2) widen_piece<H, Ns, Hs, Iv>(d + H, sv, init, seq);
    if constexpr (V::W / H >= 3) widen_piece<2 * H, Ns, Hs, Iv>(d + 2 * H, sv, init, seq);
    if constexpr (V::W / H >= 4) widen_piece<3 * H, Ns, Hs, Iv>(d + 3 * H, sv, init, seq);
  }
}

// Per-thread scratch, grown on demand: 0 the tables of a block of tiles, 1 the int32 sums of a
// call, 2 its int16 sums.
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
  static constexpr int kCols = kTileCols, kDigits = 4, kChunk = kLutChunkI2;
  // Table rows per group: the 81 byte values that occur (codes c_i <= 2), compacted to the index
  // c0 + 3 c1 + 9 c2 + 27 c3: a tile's 4 tables take 4 x 81 consecutive rows (20.25 KiB at 64-byte
  // rows) instead of 4 sparse 256-row ones whose used rows pile up in 27 of L1's 64 sets.
  static constexpr int kRows = 81;
  // 32 (NEON: 16) weight bytes b = c0 | c1 << 2 | c2 << 4 | c3 << 6 -> their compact indices: one
  // byte shuffle per nibble (each nibble holds two codes).
#if BITNET_LUT_X86
  static __m256i index32(__m256i b) {
    const __m256i lo = _mm256_setr_epi8(0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 0, 0, 0, 0,  //
                                        0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 0, 0, 0, 0);
    const __m256i hi = _mm256_setr_epi8(0, 9, 18, 0, 27, 36, 45, 0, 54, 63, 72, 0, 0, 0, 0, 0,  //
                                        0, 9, 18, 0, 27, 36, 45, 0, 54, 63, 72, 0, 0, 0, 0, 0);
    const __m256i m15 = _mm256_set1_epi8(15);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lo, _mm256_and_si256(b, m15)),
                           _mm256_shuffle_epi8(hi, _mm256_and_si256(_mm256_srli_epi16(b, 4), m15)));
  }
#else
  static uint8x16_t index16(uint8x16_t b) {
    static constexpr uint8_t kLo[16] = {0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 0, 0, 0, 0};
    static constexpr uint8_t kHi[16] = {0, 9, 18, 0, 27, 36, 45, 0, 54, 63, 72, 0, 0, 0, 0, 0};
    return vaddq_u8(vqtbl1q_u8(vld1q_u8(kLo), vandq_u8(b, vdupq_n_u8(15))), vqtbl1q_u8(vld1q_u8(kHi), vshrq_n_u8(b, 4)));
  }
#endif
  // The table of one group: tab[c0 + 3 c1 + 9 c2 + 27 c3] = sum_i (c_i - 1) a[4 i] (a[4 i]: the
  // activations of column 4 i + j of the tile, for group j: a = the tile's columns + j).
  template <typename V>
  static void build(const V* a, V* tab) {
    // Nested partial sums (few live vectors: a[] is read from memory as it is needed); the three
    // rows of each c0 triple are consecutive.
    const V z = {};
    for (int c3 = 0; c3 < 3; ++c3) {
      const V s3 = c3 == 0 ? z - a[12] : c3 == 1 ? z : a[12];
      for (int c2 = 0; c2 < 3; ++c2) {
        const V s2 = c2 == 0 ? s3 - a[8] : c2 == 1 ? s3 : s3 + a[8];
        for (int c1 = 0; c1 < 3; ++c1) {
          const V s1 = c1 == 0 ? s2 - a[4] : c1 == 1 ? s2 : s2 + a[4];
          V* e = tab + 3 * c1 + 9 * c2 + 27 * c3;
          (s1 - a[0]).store(e);
          s1.store(e + 1);
          (s1 + a[0]).store(e + 2);
        }
      }
    }
  }
};

struct LutT5 {
  using Tile = TernaryTile5;
  static constexpr int kCols = kTile5Cols, kDigits = 5, kChunk = kLutChunkT5;
  static constexpr int kRows = 256;  // indexed by the stored byte itself (243 of 256 values occur)
#if BITNET_LUT_X86
  static __m256i index32(__m256i b) { return b; }
#else
  static uint8x16_t index16(uint8x16_t b) { return b; }
#endif
  // tab[t5 byte of v] for v = sum c_i 3^(4 - i) (c_i = q_i + 1 of column 4 i + j, whose activations
  // are a[4 i]: a = the tile's columns + j).
  template <typename V>
  static void build(const V* a, V* tab) {
    const V z = {};
    const std::array<uint8_t, 243>& enc = t5_bytes();
    int v = 0;
    for (int c0 = 0; c0 < 3; ++c0) {
      const V s0 = c0 == 0 ? z - a[0] : c0 == 1 ? z : a[0];
      for (int c1 = 0; c1 < 3; ++c1) {
        const V s1 = s0 + (c1 == 0 ? z - a[4] : c1 == 1 ? z : a[4]);
        for (int c2 = 0; c2 < 3; ++c2) {
          const V s2 = s1 + (c2 == 0 ? z - a[8] : c2 == 1 ? z : a[8]);
          for (int c3 = 0; c3 < 3; ++c3) {
            const V s3 = s2 + (c3 == 0 ? z - a[12] : c3 == 1 ? z : a[12]);
            (s3 - a[16]).store(tab + enc[v++]);
            s3.store(tab + enc[v++]);
            (s3 + a[16]).store(tab + enc[v++]);
          }
        }
      }
    }
  }
};

// Row of slot s of a row block's offsets (lut_offsets): the AVX2 byte unpacks that widen them keep
// 128-bit lanes, so row pairs 1 and 2 (rows 2-3 and 4-5, and 10-11 / 12-13) trade places; NEON's
// widening shifts keep the rows in order.
#if BITNET_LUT_X86
constexpr int lut_slot_row(int s) { return (s & 9) | (s & 2) << 1 | (s & 4) >> 1; }
#else
constexpr int lut_slot_row(int s) { return s; }
#endif

// Byte offset of each lookup's table within its tile (lane i of a row block's offsets reads group
// i % 4, whose table starts F::kRows rows of 2^LG bytes after the previous group's), one vector.
#if BITNET_LUT_X86
using LutGroupOffsets = __m256i;
template <typename F, int LG>
inline LutGroupOffsets lut_group_offsets() {
  constexpr short g1 = static_cast<short>(F::kRows << LG), g2 = static_cast<short>(2 * F::kRows << LG),
                  g3 = static_cast<short>(3 * F::kRows << LG);  // as 16-bit patterns: 3 x 256 << 6 = 49152
  return _mm256_setr_epi16(0, g1, g2, g3, 0, g1, g2, g3, 0, g1, g2, g3, 0, g1, g2, g3);
}
#else
using LutGroupOffsets = uint16x8_t;
template <typename F, int LG>
inline LutGroupOffsets lut_group_offsets() {
  constexpr uint16_t g1 = F::kRows << LG, g2 = 2 * F::kRows << LG, g3 = 3 * F::kRows << LG;
  const uint16_t g[8] = {0, g1, g2, g3, 0, g1, g2, g3};
  return vld1q_u16(g);
}
#endif

// A row block's 64 index bytes (wb) as byte offsets into their tile's tables, in slot order
// (lut_slot_row): F::index32, then each byte unpacked into the high byte of a 16-bit lane and
// shifted down to idx << lg (NEON: F::index16, then one widening shift left by lg per 8 bytes),
// plus the offset of its group's table (gofs: lane i has group i % 4).
template <typename F, int LG>
__attribute__((always_inline)) inline void lut_offsets(const uint8_t* wb, LutGroupOffsets gofs, uint16_t* offs) {
  static_assert(LG <= 8, "table rows of at most 256 bytes");
#if BITNET_LUT_X86
  const __m256i z = _mm256_setzero_si256();
  for (int h = 0; h < 2; ++h) {
    const __m256i idx = F::index32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * h)));
    const __m256i lo = _mm256_add_epi16(_mm256_srli_epi16(_mm256_unpacklo_epi8(z, idx), 8 - LG), gofs);
    const __m256i hi = _mm256_add_epi16(_mm256_srli_epi16(_mm256_unpackhi_epi8(z, idx), 8 - LG), gofs);
    _mm256_store_si256(reinterpret_cast<__m256i*>(offs + 32 * h), lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(offs + 32 * h + 16), hi);
  }
#else
  for (int q = 0; q < 4; ++q) {  // 16 bytes: rows 4q..4q+3, offsets in row order
    const uint8x16_t idx = F::index16(vld1q_u8(wb + 16 * q));
    vst1q_u16(offs + 16 * q, vaddq_u16(vshll_n_u8(vget_low_u8(idx), LG), gofs));
    vst1q_u16(offs + 16 * q + 8, vaddq_u16(vshll_n_u8(vget_high_u8(idx), LG), gofs));
  }
#endif
}

// One row block's 16 rows against NK tiles' tables (tk: tile k's 4 tables at tk + k * kt bytes;
// offs: 64 per tile from lut_offsets, slot s holding the 4 lookups of row lut_slot_row(s)). First:
// the row's int16 sum starts at zero (else at a16[r]); Last: it is widened into the int32 sums
// a32 (= where init32, else +=) instead of being stored back into a16 (the segment's last tiles).
template <int NK, bool First, bool Last, int VT, int NB>
__attribute__((always_inline)) inline void lut_rows16(const char* tk, int kt, const uint16_t* offs,
                                                      LutV<VT, NB>* a16, int32_t* a32, bool init32) {
  using V = LutV<VT, NB>;
  __builtin_prefetch(a16 + 16);  // the running sums stream from L2: the next row block's
  __builtin_prefetch(a16 + 24);  // (harmless past the end)
#pragma GCC unroll 16
  for (int sl = 0; sl < kTileRows; ++sl) {
    const int r = lut_slot_row(sl);  // a constant once unrolled
    // The lookups first, the running sum (from L2) last: its latency stays off the add chain.
    V s = V::load(tk + offs[4 * sl]);
    for (int k = 0; k < NK; ++k) {
      const uint16_t* o = offs + 64 * k + 4 * sl;
      const char* t = tk + k * kt;
      if (k) s.add(t + o[0]);
      s.add(t + o[1]);
      s.add(t + o[2]);
      s.add(t + o[3]);
    }
    if (!First) s.add(a16 + r);
    if (Last) widen_add<VT, NB>(a32 + static_cast<size_t>(r) * VT, s, init32);
    else s.store(a16 + r);
  }
}

// Rows [16 mb0, 16 mb1) of NK tiles kb.. (their tables built at tk, kt bytes apart) for the whole
// call: per row block, the 64 NK index bytes become byte offsets into their tile's tables
// (lut_offsets), so a lookup is one 16-bit load and the vector adds; then lut_rows16. The offsets
// of the next row block are made before this block's lookups (two buffers), so their weight load
// and shuffles are off the lookups' path; the lookups load them from memory (left to itself, the
// compiler kept them in vector registers and took each apart with vpextrw: two vector-port uops
// per lookup on top of the two adds).
template <typename F, int NK, bool First, bool Last, int VT, int NB>
void lut_tile_rows(const typename F::Tile* w, int KB, int kb, int mb0, int mb1, const char* tk, int kt,
                   LutV<VT, NB>* acc16, int32_t* acc32, bool init32) {
  using V = LutV<VT, NB>;
  constexpr int lg = __builtin_ctz(sizeof(V));
  static_assert((sizeof(V) & (sizeof(V) - 1)) == 0 && 4 * F::kRows * sizeof(V) <= 65536, "16-bit offsets");
  const LutGroupOffsets gofs = lut_group_offsets<F, lg>();
  alignas(64) uint16_t offs[2][64 * NK];
  auto offsets = [&](int mb, uint16_t* o) {
    const uint8_t* wb = w[static_cast<size_t>(mb) * KB + kb].b;
    for (int k = 0; k < NK; ++k) {
      __builtin_prefetch(wb + 4 * static_cast<size_t>(KB) * sizeof(typename F::Tile) + 64 * k);  // 4 row blocks ahead
      lut_offsets<F, lg>(wb + 64 * k, gofs, o + 64 * k);
    }
  };
  if (mb0 < mb1) offsets(mb0, offs[0]);
  for (int mb = mb0; mb < mb1; ++mb) {
    const uint16_t* op = offs[(mb - mb0) & 1];
    if (mb + 1 < mb1) offsets(mb + 1, offs[(mb + 1 - mb0) & 1]);
    asm volatile("" : "+r"(op) : : "memory");  // the offsets stay in memory: loads, not vpextrw
    const int r0 = (mb - mb0) * kTileRows;
    lut_rows16<NK, First, Last, VT, NB>(tk, kt, op, acc16 + r0, acc32 + static_cast<size_t>(r0) * VT, init32);
  }
}

// Tiles per block: as many as keep the block's tables within L1B bytes (at most 4).
template <typename F, int VT, int NB, int L1B>
constexpr int lut_block_tiles() {
  constexpr int t = L1B / (4 * F::kRows * static_cast<int>(sizeof(LutV<VT, NB>)));
  return t < 1 ? 1 : t > 4 ? 4 : t;
}

// v[0..16) (16 rows of 16 bytes) transposed in place: four rounds of interleaving the bytes of
// rows i and i + 8 (one unpack each for the low and the high halves) transpose a 16 x 16 matrix.
inline void lut_transpose16(LutBytes16s* v) {
  for (int round = 0; round < 4; ++round) {
    LutBytes16s u[16];
    for (int i = 0; i < 8; ++i) {
      u[2 * i] = __builtin_shufflevector(v[i], v[i + 8], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      u[2 * i + 1] = __builtin_shufflevector(v[i], v[i + 8], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    }
    for (int i = 0; i < 16; ++i) v[i] = u[i];
  }
}

// The activations of C consecutive columns (x: the first column of token 0) as VT int16 lanes over
// the tokens, zero past nt: xc[c].lanes()[t] = x[t * ldx + c]. 16 tokens x 16 columns at a time
// by byte transposition (lut_transpose16) and one widening per column; columns past 16 (t5 has
// 20) one by one.
template <int VT, int NB, int C>
inline void lut_columns(const int8_t* x, int ldx, int nt, LutV<VT, NB>* xc) {
  typedef int16_t W16 __attribute__((vector_size(32)));
  for (int t0 = 0; t0 < VT; t0 += 16) {
    LutBytes16s v[16];
    for (int t = 0; t < 16; ++t) {
      if (t0 + t < nt) std::memcpy(&v[t], x + static_cast<size_t>(t0 + t) * ldx, 16);
      else v[t] = LutBytes16s{};
    }
    lut_transpose16(v);
    constexpr int n = VT < 16 ? VT : 16;  // lanes of this token block
    for (int c = 0; c < 16; ++c) {
      const W16 wide = __builtin_convertvector(v[c], W16);
      std::memcpy(xc[c].lanes() + t0, &wide, 2 * n);
    }
  }
  for (int c = 16; c < C; ++c) {
    uint16_t* l = xc[c].lanes();
    for (int t = 0; t < VT; ++t) l[t] = t < nt ? static_cast<uint16_t>(static_cast<int16_t>(x[static_cast<size_t>(t) * ldx + c])) : 0;
  }
}

// y[t * ldy + r] = acc32[r * VT + t] for r < rows (a multiple of 8), t < nt: 8 x 8 blocks through
// registers (the standard unpack / lane-permute transpose; NEON: 4 x 4 blocks, two rounds of
// trn1 / trn2), a last partial block of tokens one by one.
template <int VT>
inline void lut_store_y(const int32_t* acc32, int rows, int nt, int32_t* y, int ldy) {
  int t0 = 0;
#if !BITNET_LUT_X86
  for (; t0 + 4 <= nt; t0 += 4)
    for (int r = 0; r < rows; r += 4) {
      int32x4_t v[4];
      for (int i = 0; i < 4; ++i) v[i] = vld1q_s32(acc32 + static_cast<size_t>(r + i) * VT + t0);
      const int32x4_t a = vtrn1q_s32(v[0], v[1]), b = vtrn2q_s32(v[0], v[1]);  // (r0 r1) pairs
      const int32x4_t c = vtrn1q_s32(v[2], v[3]), d = vtrn2q_s32(v[2], v[3]);
      auto lo = [](int32x4_t p, int32x4_t q) {
        return vreinterpretq_s32_s64(vtrn1q_s64(vreinterpretq_s64_s32(p), vreinterpretq_s64_s32(q)));
      };
      auto hi = [](int32x4_t p, int32x4_t q) {
        return vreinterpretq_s32_s64(vtrn2q_s64(vreinterpretq_s64_s32(p), vreinterpretq_s64_s32(q)));
      };
      int32_t* yt = y + static_cast<size_t>(t0) * ldy + r;
      vst1q_s32(yt, lo(a, c));            // token t0: rows r..r+3
      vst1q_s32(yt + ldy, lo(b, d));      // t0 + 1
      vst1q_s32(yt + 2 * ldy, hi(a, c));  // t0 + 2
      vst1q_s32(yt + 3 * ldy, hi(b, d));  // t0 + 3
    }
#else
  for (; t0 + 8 <= nt; t0 += 8)
    for (int r = 0; r < rows; r += 8) {
      __m256i v[8], u[8];
      for (int i = 0; i < 8; ++i)
        v[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc32 + static_cast<size_t>(r + i) * VT + t0));
      for (int i = 0; i < 8; i += 2) {
        u[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        u[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_unpacklo_epi64(u[i], u[i + 2]);
        v[i + 1] = _mm256_unpackhi_epi64(u[i], u[i + 2]);
        v[i + 2] = _mm256_unpacklo_epi64(u[i + 1], u[i + 3]);
        v[i + 3] = _mm256_unpackhi_epi64(u[i + 1], u[i + 3]);
      }
      for (int i = 0; i < 4; ++i) {  // v[i]: tokens t0 + i and t0 + 4 + i in its two halves
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + static_cast<size_t>(t0 + i) * ldy + r),
                            _mm256_permute2x128_si256(v[i], v[i + 4], 0x20));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + static_cast<size_t>(t0 + 4 + i) * ldy + r),
                            _mm256_permute2x128_si256(v[i], v[i + 4], 0x31));
      }
    }
#endif
  for (int t = t0; t < nt; ++t)
    for (int r = 0; r < rows; ++r) y[static_cast<size_t>(t) * ldy + r] = acc32[static_cast<size_t>(r) * VT + t];
}

// Rows [16 mb0, 16 mb1) against nt <= VT tokens (x rows t0 .. t0 + nt - 1), exact, into y.
// Loop order: block by block of NK tiles (lut_block_tiles: 2 at VT = 32 for i2, 4 x 81 rows of 64
// bytes a tile), the block's tables are built once and shared by every row of the call, and every
// row adds its 4 NK lookups in registers onto its running int16 sum, kept per row in memory
// (acc16, VT lanes a row) across the F::kChunk tiles of a segment (the flush interval above) and
// widened into its int32 sum (acc32) at the segment's end: a row costs a block 4 NK lookups, one
// load and one store of its sum, and one int16 -> int32 flush per segment.
template <typename F, int VT, int NB, int L1B>
void lut_token_tile(const typename F::Tile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx, int nt,
                    int32_t* y, int ldy) {
  using V = LutV<VT, NB>;
  constexpr int NK = lut_block_tiles<F, VT, NB, L1B>();
  const int rows = (mb1 - mb0) * kTileRows, kt = 4 * F::kRows * static_cast<int>(sizeof(V));
  V* tab = reinterpret_cast<V*>(lut_scratch(static_cast<size_t>(kt) * NK, 0));
  V* acc16 = reinterpret_cast<V*>(lut_scratch(sizeof(V) * rows, 2));                       // [row]
  int32_t* acc32 = reinterpret_cast<int32_t*>(lut_scratch(sizeof(int32_t) * VT * rows, 1));  // [row][lane]
  const char* tk = reinterpret_cast<const char*>(tab);
  for (int seg0 = 0; seg0 < KB; seg0 += F::kChunk) {
    const int seg1 = std::min(KB, seg0 + F::kChunk);
    const bool init32 = seg0 == 0;
    for (int kb0 = seg0; kb0 < seg1; kb0 += NK) {
      const int nk = std::min(NK, seg1 - kb0);
      for (int k = 0; k < nk; ++k) {
        // The tile's activations by column, VT int16 lanes (zero past nt), then its 4 tables
        // (group j's at tab + (4 k + j) kRows).
        alignas(64) V xc[F::kCols];
        lut_columns<VT, NB, F::kCols>(x + (kb0 + k) * F::kCols, ldx, nt, xc);
        for (int j = 0; j < 4; ++j) F::build(xc + j, tab + (4 * k + j) * F::kRows);
      }
      const bool first = kb0 == seg0, last = kb0 + nk == seg1;
      auto run = [&](auto nk_c) {
        constexpr int n = decltype(nk_c)::value;
        if (first && last) lut_tile_rows<F, n, true, true, VT, NB>(w, KB, kb0, mb0, mb1, tk, kt, acc16, acc32, init32);
        else if (first) lut_tile_rows<F, n, true, false, VT, NB>(w, KB, kb0, mb0, mb1, tk, kt, acc16, acc32, init32);
        else if (last) lut_tile_rows<F, n, false, true, VT, NB>(w, KB, kb0, mb0, mb1, tk, kt, acc16, acc32, init32);
        else lut_tile_rows<F, n, false, false, VT, NB>(w, KB, kb0, mb0, mb1, tk, kt, acc16, acc32, init32);
      };
      auto run_rem = [&](auto nk_c, int) { run(nk_c); };
      if (nk == NK) run(std::integral_constant<int, NK>{});
      else if (nk == 1) run(std::integral_constant<int, 1>{});
      else remainder_tile<NK - 1>(nk, run_rem, 0);
    }
  }
  lut_store_y<VT>(acc32, rows, nt, y + mb0 * kTileRows, ldy);
}

// Running-sum bytes (int16 and int32 per row and token) one pass over rows may keep: three quarters
// of a 2 MiB L2. A longer range of rows goes in equal passes that each build the tables again
// (2B4T's gate|up span, 13824 rows at 32 tokens: 2 passes, 1.5-2% less time per prefill than one
// pass; 3 passes the same as 2, 5 passes no gain).
constexpr int kLutL2Bytes = 3 << 19;

// Rows [16 mb0, 16 mb1) against nt <= VT tokens in passes of at most kLutL2Bytes of running sums.
template <typename F, int VT, int NB, int L1B>
void lut_token_tile_passes(const typename F::Tile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx, int nt,
                           int32_t* y, int ldy) {
  constexpr int most = std::max(1, kLutL2Bytes / (kTileRows * VT * 6));  // row blocks a pass
  const int passes = (mb1 - mb0 + most - 1) / most;
  for (int p = 0; p < passes; ++p)
    lut_token_tile<F, VT, NB, L1B>(w, KB, mb0 + (mb1 - mb0) * p / passes, mb0 + (mb1 - mb0) * (p + 1) / passes, x, ldx, nt,
                              y, ldy);
}

// nt <= VTmax tokens in the narrowest tile that holds them (8, 16, ... lanes), tables of L1B a block.
template <typename F, int VTmax, int NB, int L1B>
void lut_tile_of(const typename F::Tile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx, int nt, int32_t* y,
                 int ldy) {
  if (nt <= 8) lut_token_tile_passes<F, 8, NB, L1B>(w, KB, mb0, mb1, x, ldx, nt, y, ldy);
  else if (VTmax >= 16 && nt <= 16) lut_token_tile_passes<F, (VTmax >= 16 ? 16 : 8), NB, L1B>(w, KB, mb0, mb1, x, ldx, nt, y, ldy);
  else lut_token_tile_passes<F, VTmax, NB, L1B>(w, KB, mb0, mb1, x, ldx, nt, y, ldy);
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
    if (lut_wide_tables()) lut_tile_of<F, VTmax, NB, kLutL1Bytes>(w, KB, mb0, mb1, xt, ldx, nt, yt, ldy);
    else lut_tile_of<F, VTmax, NB, kLutL1BytesSmall>(w, KB, mb0, mb1, xt, ldx, nt, yt, ldy);
  }
}

// The LUT bound: iters x kLutLoopLookups lookups exactly as the kernels' inner step does them (a
// 16-bit byte offset loaded, a VT-lane int16 table row added from memory, NB-byte vectors) on
// tables that stay in L1 (four groups of 64 rows: 16 KiB at VT = 32) and 2 KiB of offsets made
// from idx (1 KiB of index bytes below 64). Returns a value that depends on every lookup.
template <int VT, int NB = 2 * VT>
uint32_t lut_peak_loop(const uint8_t* idx, int64_t iters) {
  using V = LutV<VT, NB>;
  alignas(64) V tab[4 * 64];
  for (int i = 0; i < 4 * 64; ++i)
    for (int t = 0; t < VT; ++t) tab[i].lanes()[t] = static_cast<uint16_t>(i + t);
  alignas(64) uint16_t off[1024];
  for (int i = 0; i < 1024; ++i) off[i] = static_cast<uint16_t>(((i & 3) * 64 + (idx[i] & 63)) * sizeof(V));
  const char* tk = reinterpret_cast<const char*>(tab);
  V s0 = V::load(tab), s1 = V::load(tab + 1);
  static_assert(kLutLoopLookups == 16, "four 4-lookup rows per iteration");
  for (int64_t it = 0; it < iters; ++it) {
    const uint16_t* p = off + 16 * (it & 63);
    for (int k = 0; k < 4; ++k) {
      s0.add(tk + p[4 * k]);
      s1.add(tk + p[4 * k + 1]);
      s0.add(tk + p[4 * k + 2]);
      s1.add(tk + p[4 * k + 3]);
    }
  }
  const V s = s0 + s1;
  uint32_t r = 0;
  for (int t = 0; t < VT; ++t) r += reinterpret_cast<const uint16_t*>(s.v)[t];
  return r;
}

}  // namespace
}  // namespace bitnet
