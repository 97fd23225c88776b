// AVX-VNNI kernels (compiled with -mavxvnni -mavx2 -mfma -mf16c only): the VEX-encoded 256-bit
// vpdpbusd of CPUs without AVX-512 (Intel Core 12th gen and later, AMD Zen 5 client parts).
// Scalar twin: kernels_ref.cpp; tested against it in tests/inference/test_kernels.py and
// test_kernels_t5.py. The avxvnni table (dispatch.cpp) is the avx2 table with the three integer
// products below: vpdpbusd multiplies four u8 x s8 pairs and adds them into an int32 lane in one
// instruction, where AVX2 needs vpmaddubsw + vpaddw (+ vpmaddwd to widen), and cannot saturate.
#include <immintrin.h>

#include <algorithm>

#include "kernels.h"
#include "kernels_avx2_inl.h"

namespace bitnet {
namespace {

inline __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_avx_epi32(acc, u8, s8); }

// ---- i2, one token: both halves of each tile in one pass over the weight stream (prefetched
// kPrefetchBytes ahead). As the AVX2 kernel does: one shift gives the high nibbles, and masking
// each nibble with 3 and with 12 gives the four planes, two as codes c in {0, 1, 2} and two as 4c
// (at most 8: a valid u8 operand), so a half tile costs one shift, four ands and four vpdpbusd
// (the shift-per-plane form cost three more uops per half tile and ran the 2B4T decode products
// at 1.2x AVX2's time from DRAM). Eight accumulators: half x (c, 4c) x tile parity, so each
// chain takes two vpdpbusd every other tile. Invariant: |c x| <= 256 and |4c x| <= 1024, four
// products per lane per vpdpbusd, two vpdpbusd per tile per chain: KB < 2^18 tiles cannot
// overflow int32; the 4c sums are multiples of 4, divided exactly by an arithmetic shift.
inline void block_t1(const TernaryTile* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
  const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12);
  // rows 0-7 (a) and 8-15 (b); c sums (1) and 4c sums (4); even tiles (e) and odd tiles (o)
  __m256i a1e = _mm256_setzero_si256(), a4e = a1e, b1e = a1e, b4e = a1e, a1o = a1e, a4o = a1e, b1o = a1e, b4o = a1e;
  auto planes = [&](__m256i p, __m256i& a1, __m256i& a4, const __m256i* xv) {
    const __m256i h = _mm256_srli_epi16(p, 4);
    a1 = dpbusd(a1, _mm256_and_si256(p, m3), xv[0]);
    a4 = dpbusd(a4, _mm256_and_si256(p, m12), xv[1]);
    a1 = dpbusd(a1, _mm256_and_si256(h, m3), xv[2]);
    a4 = dpbusd(a4, _mm256_and_si256(h, m12), xv[3]);
  };
  auto tile = [&](int kb, __m256i& a1, __m256i& a4, __m256i& b1, __m256i& b4) {
    _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
    const int8_t* xt = x + kb * kTileCols;
    const __m256i xv[4] = {bcast4(xt), bcast4(xt + 4), bcast4(xt + 8), bcast4(xt + 12)};
    planes(_mm256_loadu_si256((const __m256i*)wrow[kb].b), a1, a4, xv);
    planes(_mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32)), b1, b4, xv);
  };
  int kb = 0;
  for (; kb + 2 <= KB; kb += 2) {
    tile(kb, a1e, a4e, b1e, b4e);
    tile(kb + 1, a1o, a4o, b1o, b4o);
  }
  if (kb < KB) tile(kb, a1e, a4e, b1e, b4e);
  const __m256i xs = _mm256_set1_epi32(xsum);
  auto out = [&](__m256i c1a, __m256i c1b, __m256i c4a, __m256i c4b, int32_t* yp) {
    const __m256i c4 = _mm256_srai_epi32(_mm256_add_epi32(c4a, c4b), 2);
    _mm256_storeu_si256((__m256i*)yp, _mm256_sub_epi32(_mm256_add_epi32(_mm256_add_epi32(c1a, c1b), c4), xs));
  };
  out(a1e, a1o, a4e, a4o, y);
  out(b1e, b1o, b4e, b4o, y + 8);
}

// ---- i2, two tokens: streaming like block_t1 (no chunk unpacked to L1), each half tile decoded
// once (one shift, four masks) for both tokens. Eight int32 accumulators: token x half x (c, 4c).
// Invariant: as block_t1 (|4c x| <= 1024, four products per lane per vpdpbusd, two vpdpbusd per
// tile per accumulator: KB < 2^17 tiles stay within int32).
inline void block_t2(const TernaryTile* wrow, int KB, const int8_t* x, int ldx, const int32_t* xsum, int32_t* y,
                     int ldy) {
  const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12);
  __m256i a1 = _mm256_setzero_si256(), a4 = a1, b1 = a1, b4 = a1;  // token 0: rows 0-7, rows 8-15
  __m256i c1 = a1, c4 = a1, d1 = a1, d4 = a1;                      // token 1
  auto planes = [&](__m256i lo, __m256i hi, const int8_t* xt, __m256i& acc1, __m256i& acc4) {
    acc1 = dpbusd(acc1, _mm256_and_si256(lo, m3), bcast4(xt));
    acc4 = dpbusd(acc4, _mm256_and_si256(lo, m12), bcast4(xt + 4));
    acc1 = dpbusd(acc1, _mm256_and_si256(hi, m3), bcast4(xt + 8));
    acc4 = dpbusd(acc4, _mm256_and_si256(hi, m12), bcast4(xt + 12));
    pin(acc1);
    pin(acc4);
  };
  for (int kb = 0; kb < KB; ++kb) {
    _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
    const int col = kb * kTileCols;
    const __m256i p = _mm256_loadu_si256((const __m256i*)wrow[kb].b);
    const __m256i ph = _mm256_srli_epi16(p, 4);
    planes(p, ph, x + col, a1, a4);
    planes(p, ph, x + ldx + col, c1, c4);
    const __m256i q = _mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32));
    const __m256i qh = _mm256_srli_epi16(q, 4);
    planes(q, qh, x + col, b1, b4);
    planes(q, qh, x + ldx + col, d1, d4);
  }
  auto out = [&](__m256i acc1, __m256i acc4, int32_t xs, int32_t* yp) {
    const __m256i v = _mm256_add_epi32(acc1, _mm256_srai_epi32(acc4, 2));
    _mm256_storeu_si256((__m256i*)yp, _mm256_sub_epi32(v, _mm256_set1_epi32(xs)));
  };
  out(a1, a4, xsum[0], y);
  out(b1, b4, xsum[0], y + 8);
  out(c1, c4, xsum[1], y + ldy);
  out(d1, d4, xsum[1], y + ldy + 8);
}

// ---- t5, several tokens: half a row block (8 rows) against TT tokens; each half tile decoded
// once (T5Digits) into c_i in {0, 1, 2}, then five vpdpbusd per token straight into int32
// (20 products c x per lane per tile, |.| <= 20 * 256: no overflow below 2^21 columns).
struct T5Dpbusd {
  static __m256i tile5(__m256i acc, const __m256i* c, const int8_t* xt) {
    for (int i = 0; i < kTile5Digits; ++i) acc = dpbusd(acc, c[i], bcast4(xt + 4 * i));
    return acc;
  }
};

// ---- t5, one token: the digits stay scaled (64 c_i <= 128, a valid u8 operand); each
// accumulator holds 64 times its sum, divided back exactly by an arithmetic shift by 6.
// Invariant: |64 c x| <= 128 * 128, at most 12 products per lane per tile and accumulator (digits
// split 3 + 2 over two accumulators per half), so KB < 2^17 / 12 tiles stay within int32.
inline void t5_block_t1(const TernaryTile5* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, b0 = a0, b1 = a0;  // rows 0-7, rows 8-15; two chains each
  for (int kb = 0; kb < KB; ++kb) {
    _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
    const int8_t* xt = x + kb * kTile5Cols;
    T5Digits da(_mm256_loadu_si256((const __m256i*)wrow[kb].b));
    T5Digits db(_mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32)));
    for (int i = 0; i < kTile5Digits; ++i) {
      const __m256i xb = bcast4(xt + 4 * i);
      __m256i& a = (i & 1) ? a1 : a0;
      __m256i& b = (i & 1) ? b1 : b0;
      a = dpbusd(a, da.next64(), xb);
      b = dpbusd(b, db.next64(), xb);
    }
  }
  const __m256i xs = _mm256_set1_epi32(xsum);
  _mm256_storeu_si256((__m256i*)y, _mm256_sub_epi32(_mm256_srai_epi32(_mm256_add_epi32(a0, a1), 6), xs));
  _mm256_storeu_si256((__m256i*)(y + 8), _mm256_sub_epi32(_mm256_srai_epi32(_mm256_add_epi32(b0, b1), 6), xs));
}

// int8 head: one row against TT tokens biased to u8 (xu = x + 128, once per call for every row),
// so each 32 products are ONE vpdpbusd per token (the sign trick's vpsignb per token was a second
// uop on the same ports): the lanes sum (x + 128) e = x e + 128 e, and 128 rowsum[r] comes off at
// the end. Invariant: |(x + 128) e| <= 255 * 127, four per lane per instruction; the int32 lanes
// wrap modulo 2^32 past Cp = 16575 columns, but the exact result x . e and 128 rowsum both lie in
// int32 (|x . e| <= Cp * 127 * 127, |rowsum| <= Cp * 127), so the wrapped difference is exact (the
// head_i4 argument). The row is read once per tile of up to kHeadTT tokens; a single token
// alternates two accumulators (ILP).
constexpr int kHeadTT = 8;  // 8 accumulators + the row chunk + an activation load: 10 ymm registers
template <int TT>
inline void head_row_tt(const int8_t* e, int Cp, const uint8_t* xu, int32_t rowsum, int32_t* out, int ldo) {
  __m256i acc[TT], acc2 = _mm256_setzero_si256();
  for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_si256();
  for (int c = 0; c < Cp; c += 32) {
    if (c % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(e + c) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i ev = _mm256_loadu_si256((const __m256i*)(e + c));
    for (int t = 0; t < TT; ++t) {
      const __m256i xv = _mm256_loadu_si256((const __m256i*)(xu + static_cast<size_t>(t) * Cp + c));
      __m256i& a = (TT == 1 && (c / 32) % 2) ? acc2 : acc[t];
      a = dpbusd(a, xv, ev);
    }
  }
  if (TT == 1) acc[0] = _mm256_add_epi32(acc[0], acc2);
  const uint32_t bias = static_cast<uint32_t>(rowsum) * 128u;
  for (int t = 0; t < TT; ++t)
    out[static_cast<size_t>(t) * ldo] = static_cast<int32_t>(static_cast<uint32_t>(hsum_epi32(acc[t])) - bias);
}

// ---- i2, several tokens: the AVX2 kernel's chunks (codes c in {0, 1, 2} unpacked once per
// kChunkTiles tiles, kernels_avx2_inl.h), every token multiplying them straight into int32: N <= 3
// tokens against n unpacked tiles, adding int32 sums c.x into yt[t] (stored if first); then
// sum c x - xsum = q.x (c = q + 1). Even and odd planes go to separate accumulators: chunk_n's
// eight (4 tokens x 2 halves) each took a vpdpbusd every plane, and with its 5-cycle latency
// eight chains issue at most 1.6 a cycle of the two the ports take; twelve chains (3 tokens x 2
// halves x 2 parities) leave the ports the limit (0.62x the time at 6 tokens, 0.77x at 8 with
// the unpack's prefetch, 2B4T gate-sized matrices from DRAM). Named accumulators, pinned (see
// chunk_n). Invariant: each vpdpbusd adds four products c * x in [-256, 254] to a lane (at most
// 1024 in magnitude), so K < 2^21 columns cannot overflow int32.
template <int N>
inline void chunk_par(const uint8_t* c, int n, const int8_t* const* xt, int32_t* const* yt, bool first) {
  static_assert(N >= 1 && N <= 3, "three tokens at most: twelve accumulators");
  __m256i a0 = _mm256_setzero_si256(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0;  // even planes
  __m256i e0 = a0, f0 = a0, e1 = a0, f1 = a0, e2 = a0, f2 = a0;                      // odd planes
  const int8_t* x0 = xt[0];
  const int8_t* x1 = xt[N > 1 ? 1 : 0];
  const int8_t* x2 = xt[N > 2 ? 2 : 0];
  auto step = [](const int8_t* x, __m256i c0, __m256i c1, __m256i& a, __m256i& b) {
    const __m256i xb = bcast4(x);
    a = dpbusd(a, c0, xb);
    b = dpbusd(b, c1, xb);
    pin(a);
    pin(b);
  };
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < 4; i += 2) {
      const __m256i* cv = (const __m256i*)(c + (4 * j + i) * 64);
      const int col = j * kTileCols + 4 * i;
      __m256i c0 = _mm256_load_si256(cv), c1 = _mm256_load_si256(cv + 1);
      step(x0 + col, c0, c1, a0, b0);
      if constexpr (N > 1) step(x1 + col, c0, c1, a1, b1);
      if constexpr (N > 2) step(x2 + col, c0, c1, a2, b2);
      c0 = _mm256_load_si256(cv + 2);
      c1 = _mm256_load_si256(cv + 3);
      step(x0 + col + 4, c0, c1, e0, f0);
      if constexpr (N > 1) step(x1 + col + 4, c0, c1, e1, f1);
      if constexpr (N > 2) step(x2 + col + 4, c0, c1, e2, f2);
    }
  }
  const __m256i acc[3][2] = {{_mm256_add_epi32(a0, e0), _mm256_add_epi32(b0, f0)},
                             {_mm256_add_epi32(a1, e1), _mm256_add_epi32(b1, f1)},
                             {_mm256_add_epi32(a2, e2), _mm256_add_epi32(b2, f2)}};
  for (int t = 0; t < N; ++t) {
    for (int h = 0; h < 2; ++h) {
      __m256i* yp = (__m256i*)(yt[t] + 8 * h);
      _mm256_storeu_si256(yp, first ? acc[t][h] : _mm256_add_epi32(_mm256_loadu_si256(yp), acc[t][h]));
    }
  }
}

struct I2Avxvnni {
  // 2-3 tokens: block_t2 (+ block_t1), see i2_gemm_chunked (0.67x / 0.84x the chunks; 1.04x at 4)
  static constexpr int kStreamMaxT = 3;
  static void two(const TernaryTile* wrow, int KB, const int8_t* x, int ldx, const int32_t* xsum, int32_t* y, int ldy) {
    block_t2(wrow, KB, x, ldx, xsum, y, ldy);
  }
  static void one(const TernaryTile* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
    block_t1(wrow, KB, x, xsum, y);
  }
  static constexpr int kChunkTT = 3;  // tokens per pass over an unpacked chunk (chunk_par)
  template <int N>
  static void chunk(const uint8_t* c, int n, const int8_t* const* xt, int32_t* const* yt, bool first) {
    chunk_par<N>(c, n, xt, yt, first);
  }
};

}  // namespace

void ternary_gemm_avxvnni(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                     const int32_t* xsum, int T, int32_t* y, int ldy) {
  i2_gemm_chunked<I2Avxvnni>(w, KB, mb0, mb1, x, ldx, xsum, T, y, ldy);
}

void ternary5_gemm_avxvnni(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                           const int32_t* xsum, int T, int32_t* y, int ldy) {
  constexpr int TT = 8;  // 8 accumulators + 5 code vectors + a mask and a broadcast: 15 ymm registers
  for (int mb = mb0; mb < mb1; ++mb) {
    const TernaryTile5* wrow = w + static_cast<size_t>(mb) * KB;
    int32_t* ym = y + mb * kTileRows;
    for_token_tiles<TT>(
        T,
        [&](auto tt, int t) {
          constexpr int N = decltype(tt)::value;
          for (int half = 0; half < 2; ++half)
            t5_half_tt<N, T5Dpbusd>(wrow, KB, half, x + static_cast<size_t>(t) * ldx, ldx, xsum + t,
                          ym + static_cast<size_t>(t) * ldy, ldy);
        },
        [&](int t) { t5_block_t1(wrow, KB, x + static_cast<size_t>(t) * ldx, xsum[t], ym + static_cast<size_t>(t) * ldy); });
  }
}

void head_i8_avxvnni(const int8_t* E, const int32_t* rowsum, int Cp, int r0, int r1, const int8_t* x, int T,
                     int32_t* out, int ldo) {
  const uint8_t* xu = head_x_biased(x, T, Cp);
  head_i8_rows<kHeadTT>([&](auto tt, int r, const int8_t* e, int t, int32_t* o) {
    head_row_tt<decltype(tt)::value>(e, Cp, xu + static_cast<size_t>(t) * Cp, rowsum[r], o, ldo);
  }, E, Cp, r0, r1, T, out, ldo);
}

// The bound this path's prefill is measured against: independent vpdpbusd ymm on registers only,
// kMacLoopInstrs chains (each 32 u8 x s8 multiply-accumulates).
uint32_t int8_mac_loop_avxvnni(int64_t iters) {
  const __m256i b = _mm256_set1_epi8(1);
  __m256i a0 = _mm256_set1_epi32(0), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
  __m256i a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
  for (int64_t it = 0; it < iters; ++it) {
    a0 = dpbusd(a0, b, b); a1 = dpbusd(a1, b, b); a2 = dpbusd(a2, b, b); a3 = dpbusd(a3, b, b);
    a4 = dpbusd(a4, b, b); a5 = dpbusd(a5, b, b); a6 = dpbusd(a6, b, b); a7 = dpbusd(a7, b, b);
    a8 = dpbusd(a8, b, b); a9 = dpbusd(a9, b, b); a10 = dpbusd(a10, b, b); a11 = dpbusd(a11, b, b);
    pin(a0); pin(a1); pin(a2); pin(a3); pin(a4); pin(a5); pin(a6); pin(a7); pin(a8); pin(a9); pin(a10); pin(a11);
  }
  static_assert(kMacLoopInstrs == 12, "twelve chains above");
  __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)),
                               _mm256_add_epi32(_mm256_add_epi32(a4, a5), _mm256_add_epi32(a6, a7)));
  s = _mm256_add_epi32(s, _mm256_add_epi32(_mm256_add_epi32(a8, a9), _mm256_add_epi32(a10, a11)));
  return static_cast<uint32_t>(hsum_epi32(s));
}

}  // namespace bitnet
