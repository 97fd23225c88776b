// Inline AVX2 helpers shared by the AVX2 and AVX-VNNI kernel files (each includes this header
// inside its own translation unit compiled with its own flags; everything here has internal
// linkage, so no copy built with one file's flags is ever linked into the other).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels.h"

namespace bitnet {
namespace {

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Keeps v in a register as computed: stops the compiler from re-associating a chain of integer adds
// into trees whose temporaries spill (the accumulators already fill the register file).
inline void pin(__m256i& v) { asm volatile("" : "+x"(v)); }

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The int8 head's row loop shared by the AVX2 and AVX-VNNI files: rows [r0, r1) of E, each against
// the T tokens in tiles of up to TT, by row_tt(tt, r, e, t, out_t) with tt an std::integral_constant
// tile size (the file's own one-row kernel, which reads row e once per tile of tokens t, t + 1, ...).
template <int TT, class RowTT>
inline void head_i8_rows(RowTT row_tt, const int8_t* E, int Cp, int r0, int r1, int T, int32_t* out, int ldo) {
  for (int r = r0; r < r1; ++r) {
    const int8_t* e = E + static_cast<size_t>(r) * Cp;
    auto group = [&](auto tt, int t) { row_tt(tt, r, e, t, out + static_cast<size_t>(t) * ldo + r); };
    for_token_tiles<TT>(T, group, [&](int t) { group(std::integral_constant<int, 1>{}, t); });
  }
}

// Per-thread scratch for a head call's converted activations (grown on demand, 32-byte aligned).
inline uint8_t* head_scratch(size_t bytes) {
  thread_local std::vector<uint8_t> buf;
  if (buf.size() < bytes + 32) buf.resize(bytes + 32);
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 31) & ~uintptr_t(31));
}

// x (T * Cp int8, Cp a multiple of 32) biased to u8: x + 128 (a flip of the sign bit), per thread.
inline const uint8_t* head_x_biased(const int8_t* x, int T, int Cp) {
  const size_t n = static_cast<size_t>(T) * Cp;
  uint8_t* xu = head_scratch(n);
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  for (size_t i = 0; i < n; i += 32)
    _mm256_store_si256((__m256i*)(xu + i), _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(x + i)), bias));
  return xu;
}

// ---- i2 chunks (several-token kernels): kChunkTiles tiles of one row block unpacked once into
// bytes c in {0, 1, 2}, then reused by every token (see the kernels for the accumulation bounds).
constexpr int kChunkTiles = 16;
// Chunk layout: tile j, plane i (columns 4i..4i+3 of the tile), half h (rows 8h..8h+7) at
// ((4 j + i) * 2 + h) * 32 bytes: 32-bit lane r of a 32-byte vector = row 8h + r, 4 columns.
constexpr int kChunkBytes = kChunkTiles * 4 * 2 * 32;

// Unpacks tiles [0, n) of wrow into c (layout above).
inline void unpack_chunk(const TernaryTile* wrow, int n, uint8_t* c) {
  const __m256i m3 = _mm256_set1_epi8(3);
  for (int j = 0; j < n; ++j) {
    // The weight stream runs on sequentially through the row blocks: fetch it kPrefetchBytes ahead,
    // so the chunk after this one is in cache when its tokens are done with this one.
    _mm_prefetch(reinterpret_cast<const char*>(wrow + j) + kPrefetchBytes, _MM_HINT_T0);
    for (int h = 0; h < 2; ++h) {
      const __m256i p = _mm256_loadu_si256((const __m256i*)(wrow[j].b + 32 * h));
      uint8_t* cj = c + (4 * j * 2 + h) * 32;
      _mm256_store_si256((__m256i*)cj, _mm256_and_si256(p, m3));
      _mm256_store_si256((__m256i*)(cj + 64), _mm256_and_si256(_mm256_srli_epi16(p, 2), m3));
      _mm256_store_si256((__m256i*)(cj + 128), _mm256_and_si256(_mm256_srli_epi16(p, 4), m3));
      _mm256_store_si256((__m256i*)(cj + 192), _mm256_and_si256(_mm256_srli_epi16(p, 6), m3));
    }
  }
}

// ---- t5 tiles (TernaryTile5): base-3 digits by TQ1_0's byte arithmetic (AVX2 has no byte table
// wider than 16 entries). Digit i of a byte: t_0 = s, t_{i+1} = 3 t_i mod 256 (two byte adds),
// c_i = floor(3 t_i / 256), computed as the top two bits of y = avg(u, avg(u, 0)) with
// u = max(t_i - 1, 0) (saturating): y = ceil((u + ceil(u / 2)) / 2) lies within 1 of 3 t_i / 4
// and never crosses a multiple of 64 on the wrong side: exact for every byte t (the 243 stored
// bytes reach all 256 values of t_i across the five digits, and test_kernels_t5.py's
// test_t5_every_byte_value runs all 243 through this kernel). y & 0xc0 = 64 * c_i in {0, 64, 128}.
struct T5Digits {
  __m256i t;
  const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi8(1);
  const __m256i top = _mm256_set1_epi8(static_cast<char>(0xc0));
  explicit T5Digits(__m256i s) : t(s) {}
  // 64 * c_i for the current digit, then advances t to the next one.
  __m256i next64() {
    const __m256i u = _mm256_subs_epu8(t, one);
    const __m256i y = _mm256_and_si256(_mm256_avg_epu8(u, _mm256_avg_epu8(u, zero)), top);
    t = _mm256_add_epi8(_mm256_add_epi8(t, t), t);
    return y;
  }
};

// N <= 4 tokens (rows xt[0..N) of x, at column 16 * kb0) against n unpacked tiles of c; adds the
// int32 sums into yt[t] (rows 0..15), or stores them if first. P: the path's product,
// P::step(c, x broadcast, acc) and P::widen(acc) -> int32 lanes. Eight named accumulators, not an
// array, pinned to registers: with an array GCC kept them on the stack across the tile loop, and
// every add waited on a store-to-load round trip (half speed).
template <int N, typename P>
inline void chunk_n(const uint8_t* c, int n, const int8_t* const* xt, int32_t* const* yt, bool first) {
  __m256i a0 = _mm256_setzero_si256(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
  const int8_t* x0 = xt[0];
  const int8_t* x1 = xt[N > 1 ? 1 : 0];
  const int8_t* x2 = xt[N > 2 ? 2 : 0];
  const int8_t* x3 = xt[N > 3 ? 3 : 0];
  auto step = [](const int8_t* x, __m256i c0, __m256i c1, __m256i& a, __m256i& b) {
    const __m256i xb = bcast4(x);
    P::step(c0, xb, a);
    P::step(c1, xb, b);
  };
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < 4; ++i) {
      const __m256i* cv = (const __m256i*)(c + (4 * j + i) * 64);
      const __m256i c0 = _mm256_load_si256(cv), c1 = _mm256_load_si256(cv + 1);
      const int col = j * kTileCols + 4 * i;
      step(x0 + col, c0, c1, a0, b0);
      if constexpr (N > 1) step(x1 + col, c0, c1, a1, b1);
      if constexpr (N > 2) step(x2 + col, c0, c1, a2, b2);
      if constexpr (N > 3) step(x3 + col, c0, c1, a3, b3);
    }
  }
  const __m256i acc[4][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
  for (int t = 0; t < N; ++t) {
    for (int h = 0; h < 2; ++h) {
      __m256i* yp = (__m256i*)(yt[t] + 8 * h);
      const __m256i v = P::widen(acc[t][h]);
      _mm256_storeu_si256(yp, first ? v : _mm256_add_epi32(_mm256_loadu_si256(yp), v));
    }
  }
}

// Half a row block (8 rows: bytes 32*half .. 32*half+31 of each t5 tile) against TT tokens; each
// half tile decoded once (T5Digits) into c_i in {0, 1, 2} (64 c_i shifted down by 6 in 16-bit
// lanes and masked: the bits moved in from the neighbouring byte are dropped); P::tile5(acc, c,
// xt) adds the tile's 20 products per lane (sum_i c_i . x[4i .. 4i+3]) into int32 acc.
template <int TT, typename P>
inline void t5_half_tt(const TernaryTile5* wrow, int KB, int half, const int8_t* x, int ldx, const int32_t* xsum,
                       int32_t* y, int ldy) {
  const __m256i m3 = _mm256_set1_epi8(3);
  __m256i acc[TT];
  for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_si256();
  for (int kb = 0; kb < KB; ++kb) {
    T5Digits d(_mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32 * half)));
    __m256i c[kTile5Digits];
    for (int i = 0; i < kTile5Digits; ++i) c[i] = _mm256_and_si256(_mm256_srli_epi16(d.next64(), 6), m3);
    for (int t = 0; t < TT; ++t) acc[t] = P::tile5(acc[t], c, x + static_cast<size_t>(t) * ldx + kb * kTile5Cols);
  }
  for (int t = 0; t < TT; ++t)
    _mm256_storeu_si256((__m256i*)(y + static_cast<size_t>(t) * ldy + 8 * half),
                        _mm256_sub_epi32(acc[t], _mm256_set1_epi32(xsum[t])));
}

// The i2 product both AVX2-level paths run (kernels_avx2.cpp, kernels_avxvnni.cpp), over the path's
// own K::one(wrow, KB, x, xsum, y) (one token: a streaming row block) and K::chunk<N>(c, n, xt, yt,
// first) (N <= K::kChunkTT tokens against n unpacked tiles, adding int32 sums c.x into yt[t], or
// storing them if first): one row block at a time, chunks of kChunkTiles tiles unpacked once into
// L1 and reused by every token, then q.x = sum c x - xsum. Up to K::kStreamMaxT tokens (when 2 or more) the row
// blocks stream instead, two tokens at a time through K::two(wrow, KB, x, ldx, xsum, y, ldy) and a
// last odd one through K::one.
template <typename K>
void i2_gemm_chunked(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx, const int32_t* xsum,
                     int T, int32_t* y, int ldy) {
  if (T == 1) {  // decode: stream the weights once, no unpacking
    for (int mb = mb0; mb < mb1; ++mb) K::one(w + static_cast<size_t>(mb) * KB, KB, x, xsum[0], y + mb * kTileRows);
    return;
  }
  if constexpr (K::kStreamMaxT >= 2) {
    if (T <= K::kStreamMaxT) {  // a few tokens: stream each row block in pairs of tokens (+ one), no unpacking
      for (int mb = mb0; mb < mb1; ++mb) {
        const TernaryTile* wrow = w + static_cast<size_t>(mb) * KB;
        int t = 0;
        for (; t + 2 <= T; t += 2)
          K::two(wrow, KB, x + static_cast<size_t>(t) * ldx, ldx, xsum + t, y + static_cast<size_t>(t) * ldy + mb * kTileRows, ldy);
        if (t < T) K::one(wrow, KB, x + static_cast<size_t>(t) * ldx, xsum[t], y + static_cast<size_t>(t) * ldy + mb * kTileRows);
      }
      return;
    }
  }
  alignas(32) uint8_t c[kChunkBytes];  // the chunk buffer, in L1
  for (int mb = mb0; mb < mb1; ++mb) {
    const TernaryTile* wrow = w + static_cast<size_t>(mb) * KB;
    int32_t* ym = y + mb * kTileRows;
    for (int kb0 = 0; kb0 < KB; kb0 += kChunkTiles) {
      const int n = std::min(kChunkTiles, KB - kb0);
      unpack_chunk(wrow + kb0, n, c);
      auto tile = [&](auto tt, int t) {
        constexpr int N = decltype(tt)::value;
        const int8_t* xt[N];
        int32_t* yt[N];
        for (int u = 0; u < N; ++u) {
          xt[u] = x + static_cast<size_t>(t + u) * ldx + kb0 * kTileCols;
          yt[u] = ym + static_cast<size_t>(t + u) * ldy;
        }
        K::template chunk<N>(c, n, xt, yt, kb0 == 0);
      };
      for_token_tiles<K::kChunkTT>(T, tile, [&](int t) { tile(std::integral_constant<int, 1>{}, t); });
    }
    for (int t = 0; t < T; ++t) {  // q.x = sum c x - xsum
      const __m256i xs = _mm256_set1_epi32(xsum[t]);
      __m256i* yp = (__m256i*)(ym + static_cast<size_t>(t) * ldy);
      _mm256_storeu_si256(yp, _mm256_sub_epi32(_mm256_loadu_si256(yp), xs));
      _mm256_storeu_si256(yp + 1, _mm256_sub_epi32(_mm256_loadu_si256(yp + 1), xs));
    }
  }
}

}  // namespace
}  // namespace bitnet
