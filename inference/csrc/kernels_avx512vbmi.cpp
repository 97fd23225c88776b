// AVX-512 VNNI + VBMI t5 kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni
// -mavx512vbmi only). Scalar twin: ternary5_gemm_ref in kernels_ref.cpp; tested against it in
// tests/inference/test_kernels_t5.py. dispatch.cpp puts it in the avx512 table only where the CPU
// has VBMI (cpuid 7.0 ECX bit 1); without it that table uses the AVX2 t5 kernel.
//
// Decode by byte tables instead of arithmetic: vpermi2b looks up 64 bytes at once in a 128-entry
// table (index bits 0..6), so a full 256-entry table is two merge-masked vpermi2b (bit 7 picks the
// half). Two tables per tile: A[s] = c0 | c1 << 2 | c2 << 4 | c3 << 6 (the first four codes, in
// the 2-bit tile's plane order) and B[s] = c4. Per tile that is 4 vpermi2b + 2 mask ops + 4 ands
// against 5 vpdpbusd (the 2-bit kernel: 4 ands + 4 vpdpbusd), where TQ1_0's base-3 arithmetic
// costs about 28 ops. Measured in L2 on one core (2.3 GHz Xeon): 4.3 ns per tile (14.8 GB/s of
// weights) against 2.0 ns for the 2-bit tile, so one-token decode is memory-bound only where a
// core streams under ~15 GB/s; several tokens decode each row block once (decode_row) and then
// cost 1 vpdpbusd per 64 products, as the 2-bit kernel does.
#include <immintrin.h>

#include <array>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace bitnet {
namespace {

struct T5Tables {
  std::array<uint8_t, 256> a{}, b{};
};

// Bytes that are not a valid encoding (13 of 256) never occur: repack_ternary5 writes t5_encode's.
T5Tables make_tables() {
  T5Tables t;
  for (int s = 0; s < 256; ++s) {
    t.a[s] = static_cast<uint8_t>(t5_code(s, 0) | t5_code(s, 1) << 2 | t5_code(s, 2) << 4 | t5_code(s, 3) << 6);
    t.b[s] = static_cast<uint8_t>(t5_code(s, 4));
  }
  return t;
}

struct Lut256 {
  __m512i q0, q1, q2, q3;  // entries 0-63, 64-127, 128-191, 192-255
  explicit Lut256(const uint8_t* tab)
      : q0(_mm512_loadu_si512(tab)), q1(_mm512_loadu_si512(tab + 64)), q2(_mm512_loadu_si512(tab + 128)),
        q3(_mm512_loadu_si512(tab + 192)) {}
  // tab[s] for every byte s of p; hi = bit 7 of each byte of p, lo = its complement. Two
  // merge-masked vpermi2b into the index register, no blend: the first writes the lanes with
  // s >= 128 and leaves s in the others, which the second then looks up in entries 0-127.
  __m512i operator()(__m512i p, __mmask64 hi, __mmask64 lo) const {
    return _mm512_mask2_permutex2var_epi8(q0, _mm512_mask2_permutex2var_epi8(q2, p, hi, q3), lo, q1);
  }
};

const T5Tables& tables() {
  static const T5Tables t = make_tables();
  return t;
}

// acc += u8 . (the 4 bytes at p broadcast to every lane), vpdpbusd with an embedded broadcast, in
// place. Through the intrinsic GCC 12 copies every accumulator out and back around each vpdpbusd
// and broadcasts x with a separate instruction: 40 instructions per tile in the decode loop instead
// of 25 (its speed did not change measurably: ports 0 and 5 bound it), and 48 instead of 18 per
// 16 products in block_tt, where it does matter.
inline void dpbusd_bcast(__m512i& acc, __m512i u8, const void* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*static_cast<const int32_t*>(p)));
}

// Several tokens: a row block's tiles are decoded once into the five code vectors c_i in {0, 1, 2}
// per tile (planes of A shifted down and masked: the 16-bit shift only moves bits that the mask
// then drops), KB * 320 bytes that stay in L1/L2, and every group of TT tokens reads them from
// there: the decode is paid once per row block instead of once per token group, so a token costs
// the same 1 vpdpbusd per 64 weight-activation products as the 2-bit kernel, without its shifts.
struct alignas(64) CodeVec {  // one decoded digit of one tile: 64 codes in {0, 1, 2}
  uint8_t c[64];
};

void decode_row(const TernaryTile5* wrow, int KB, const Lut256& la, const Lut256& lb, CodeVec* codes) {
  const __m512i m3 = _mm512_set1_epi8(3);
  for (int kb = 0; kb < KB; ++kb) {
    const __m512i p = _mm512_loadu_si512(wrow[kb].b);
    const __mmask64 hi = _mm512_movepi8_mask(p), lo = _knot_mask64(hi);
    const __m512i a = la(p, hi, lo);
    CodeVec* c = codes + static_cast<size_t>(kb) * kTile5Digits;
    _mm512_store_si512(c[0].c, _mm512_and_si512(a, m3));
    _mm512_store_si512(c[1].c, _mm512_and_si512(_mm512_srli_epi16(a, 2), m3));
    _mm512_store_si512(c[2].c, _mm512_and_si512(_mm512_srli_epi16(a, 4), m3));
    _mm512_store_si512(c[3].c, _mm512_and_si512(_mm512_srli_epi16(a, 6), m3));
    _mm512_store_si512(c[4].c, lb(p, hi, lo));
  }
}

// The activations of a group of TT tokens interleaved by 4-byte word: xg[g * TT + t] = bytes
// 4g..4g+3 of token t (g < 5 * KB), so every broadcast in block_tt is one base register plus a
// constant offset instead of one pointer per token (16 pointers do not fit the registers).
void interleave(const int8_t* x, int ldx, int T, int words, int32_t* xg) {
  for (int t = 0; t < T; ++t)
    for (int g = 0; g < words; ++g)
      std::memcpy(xg + static_cast<size_t>(g) * T + t, x + static_cast<size_t>(t) * ldx + 4 * g, 4);
}

// Decode (one token), streaming with a software prefetch kPrefetchBytes ahead. The planes of A are
// masked in place, not shifted (shifts compete with vpdpbusd for port 0): plane i is c_i * 4^i in
// {0, 4^i, 2 * 4^i} <= 128, a valid u8 operand, and its accumulator holds 4^i * sum(c_i * x)
// exactly, recovered by an arithmetic shift by 2i; B's plane is c4 itself. Five independent
// accumulators hide vpdpbusd latency.
// Invariant: |c_i * 4^i * x| <= 128 * 128, 4 per lane per tile, so KB < 2^15 tiles (K < 655360)
// cannot overflow int32. Then sum c*x - xsum = q.x as in block_tt.
inline void block_t1(const TernaryTile5* wrow, int KB, const Lut256& la, const Lut256& lb, const int8_t* x,
                     int32_t xsum, int32_t* y) {
  const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0c);
  const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8(static_cast<char>(0xc0));
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0;
  for (int kb = 0; kb < KB; ++kb) {
    // Past the last row block this runs ahead into whatever follows; a prefetch never faults.
    _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
    const __m512i p = _mm512_loadu_si512(wrow[kb].b);
    const __mmask64 hi = _mm512_movepi8_mask(p), lo = _knot_mask64(hi);
    const __m512i a = la(p, hi, lo);
    const int8_t* xt = x + kb * kTile5Cols;
    dpbusd_bcast(a0, _mm512_and_si512(a, m0), xt + 0);
    dpbusd_bcast(a1, _mm512_and_si512(a, m1), xt + 4);
    dpbusd_bcast(a2, _mm512_and_si512(a, m2), xt + 8);
    dpbusd_bcast(a3, _mm512_and_si512(a, m3), xt + 12);
    dpbusd_bcast(a4, lb(p, hi, lo), xt + 16);
  }
  const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a4), _mm512_srai_epi32(a1, 2)),
                                     _mm512_add_epi32(_mm512_srai_epi32(a2, 4), _mm512_srai_epi32(a3, 6)));
  _mm512_storeu_si512(y, _mm512_sub_epi32(s, _mm512_set1_epi32(xsum)));
}

// One decoded row block (16 rows) against TT <= 16 tokens (their interleaved activations xg), with
// TT named accumulators updated in place by dpbusd_bcast: through the intrinsic GCC 12 surrounds
// every vpdpbusd with two register copies (48 instructions per 16 products instead of 18), and an
// array updated by inline asm stays in memory. The unused accumulators (t >= TT) are never touched.
// Invariant: c (unsigned) times x in [-128, 127] (signed): each vpdpbusd adds at most 4 * 256 per
// 32-bit lane, 5 per tile (5120), so KB < 2^18 tiles cannot overflow int32. sum c*x - xsum = q.x exactly.
template <int TT>
void block_tt(const CodeVec* codes, int KB, const int32_t* xg, const int32_t* xsum, int32_t* y, int ldy) {
  static_assert(TT >= 1 && TT <= 16, "at most 16 accumulators");
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
          a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
  for (int g = 0; g < KB * kTile5Digits; ++g) {  // digit i of tile kb is word g = 5 kb + i
    const __m512i ci = _mm512_load_si512(codes[g].c);
    const int32_t* w = xg + static_cast<size_t>(g) * TT;
    dpbusd_bcast(a0, ci, w + 0);
    if constexpr (TT > 1) dpbusd_bcast(a1, ci, w + 1);
    if constexpr (TT > 2) dpbusd_bcast(a2, ci, w + 2);
    if constexpr (TT > 3) dpbusd_bcast(a3, ci, w + 3);
    if constexpr (TT > 4) dpbusd_bcast(a4, ci, w + 4);
    if constexpr (TT > 5) dpbusd_bcast(a5, ci, w + 5);
    if constexpr (TT > 6) dpbusd_bcast(a6, ci, w + 6);
    if constexpr (TT > 7) dpbusd_bcast(a7, ci, w + 7);
    if constexpr (TT > 8) dpbusd_bcast(a8, ci, w + 8);
    if constexpr (TT > 9) dpbusd_bcast(a9, ci, w + 9);
    if constexpr (TT > 10) dpbusd_bcast(a10, ci, w + 10);
    if constexpr (TT > 11) dpbusd_bcast(a11, ci, w + 11);
    if constexpr (TT > 12) dpbusd_bcast(a12, ci, w + 12);
    if constexpr (TT > 13) dpbusd_bcast(a13, ci, w + 13);
    if constexpr (TT > 14) dpbusd_bcast(a14, ci, w + 14);
    if constexpr (TT > 15) dpbusd_bcast(a15, ci, w + 15);
  }
  const __m512i acc[16] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
  for (int t = 0; t < TT; ++t)
    _mm512_storeu_si512(y + static_cast<size_t>(t) * ldy, _mm512_sub_epi32(acc[t], _mm512_set1_epi32(xsum[t])));
}

}  // namespace

void ternary5_unpack_q(const TernaryTile5* wrow, int KB, int rows, int8_t* b) {
  const Lut256 la(tables().a.data()), lb(tables().b.data());
  const __m512i m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
  for (int kb = 0; kb < KB; ++kb) {
    const __m512i p = _mm512_loadu_si512(wrow[kb].b);
    const __mmask64 hi = _mm512_movepi8_mask(p), lo = _knot_mask64(hi);
    const __m512i a = la(p, hi, lo);
    int8_t* dst = b + static_cast<size_t>(kb) * kTile5Digits * 64;
    _mm512_storeu_si512(dst + 0, _mm512_sub_epi8(_mm512_and_si512(a, m3), one));
    _mm512_storeu_si512(dst + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(a, 2), m3), one));
    _mm512_storeu_si512(dst + 128, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(a, 4), m3), one));
    _mm512_storeu_si512(dst + 192, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(a, 6), m3), one));
    _mm512_storeu_si512(dst + 256, _mm512_sub_epi8(lb(p, hi, lo), one));
  }
  std::memset(b + static_cast<size_t>(KB) * kTile5Digits * 64, 0, static_cast<size_t>(rows - KB * kTile5Digits) * 64);
}

void ternary5_gemm_avx512vbmi(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                              const int32_t* xsum, int T, int32_t* y, int ldy) {
  constexpr int TT = 16;  // 16 accumulators + 1 code vector per step (loaded, not decoded)
  const Lut256 la(tables().a.data()), lb(tables().b.data());
  if (T == 1) {
    for (int mb = mb0; mb < mb1; ++mb)
      block_t1(w + static_cast<size_t>(mb) * KB, KB, la, lb, x, xsum[0], y + mb * kTileRows);
    return;
  }
  const int words = KB * kTile5Digits;  // 4-byte activation words per token
  thread_local std::vector<CodeVec> codes;  // one decoded row block: KB * 5 vectors
  thread_local std::vector<int32_t> xg;     // every token group's interleaved activations
  if (codes.size() < static_cast<size_t>(words)) codes.resize(words);
  if (xg.size() < static_cast<size_t>(T) * words) xg.resize(static_cast<size_t>(T) * words);
  // Group g of tt tokens starting at t sits at xg + t * words (groups in token order).
  auto prepare = [&](auto tt, int t) {
    interleave(x + static_cast<size_t>(t) * ldx, ldx, decltype(tt)::value, words,
               xg.data() + static_cast<size_t>(t) * words);
  };
  for_token_tiles<TT>(T, prepare, [&](int t) { prepare(std::integral_constant<int, 1>{}, t); });
  for (int mb = mb0; mb < mb1; ++mb) {
    decode_row(w + static_cast<size_t>(mb) * KB, KB, la, lb, codes.data());
    int32_t* ym = y + mb * kTileRows;
    auto group = [&](auto tt, int t) {
      const int32_t* xt = xg.data() + static_cast<size_t>(t) * words;
      int32_t* yt = ym + static_cast<size_t>(t) * ldy;
      block_tt<decltype(tt)::value>(codes.data(), KB, xt, xsum + t, yt, ldy);
    };
    for_token_tiles<TT>(T, group, [&](int t) { group(std::integral_constant<int, 1>{}, t); });
  }
}

}  // namespace bitnet
