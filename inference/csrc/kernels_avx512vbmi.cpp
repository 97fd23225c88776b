// AVX-512 VNNI + VBMI t5 kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni
// -mavx512vbmi only). Scalar twin: ternary5_gemm_ref in kernels_ref.cpp; tested against it in
// tests/inference/test_kernels_t5.py. dispatch.cpp puts it in the avx512 table only where the CPU
// has VBMI (cpuid 7.0 ECX bit 1); without it that table uses the AVX2 t5 kernel.
//
// Decode by byte tables instead of arithmetic. Two 256-entry tables per tile: A[s] = c0 | c1 << 2
// | c2 << 4 | c3 << 6 (the first four codes, in the 2-bit tile's plane order) and B[s] = c4, each
// looked up for 64 bytes at once by four one-source vpermb (64 entries, index bits 0..5) merged on
// bit 6 and blended on bit 7 (Lut256::by_quarters; two merge-masked vpermi2b of 128 entries are
// fewer instructions, but vpermi2b issues about 3 uops each on Intel cores: measured, 4 of them
// cost as much as 12 vpdpbusd, 4 vpermb as 4). TQ1_0's base-3 arithmetic costs about 28 ops per
// tile. One token, in L2 on one core of this Xeon (family 6 model 167): 20.5 GB/s of t5 weights
// (18.4 with vpermi2b; 14.8 measured on a 2.3 GHz Xeon), so one-token decode is memory-bound
// wherever a core streams less than that. Several tokens decode each tile once (DecT5: in
// registers for the first group of up to 8 tokens, kept in a buffer for the others;
// kernels_avx512_inl.h) and then cost 1 vpdpbusd per 64 products, as the 2-bit kernel does.
#include <immintrin.h>

#include <array>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "kernels_avx512_inl.h"

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
  // tab[s] for every byte s of p, by four one-source vpermb (64 entries each, index bits 0..5)
  // merged on bit 6 (b6) and blended on bit 7 (b7): 5 single-uop instructions (see the top).
  __m512i by_quarters(__m512i p, __mmask64 b6, __mmask64 b7) const {
    const __m512i lo = _mm512_mask_permutexvar_epi8(_mm512_permutexvar_epi8(p, q0), b6, p, q1);
    const __m512i hi = _mm512_mask_permutexvar_epi8(_mm512_permutexvar_epi8(p, q2), b6, p, q3);
    return _mm512_mask_blend_epi8(b7, lo, hi);
  }
};

const T5Tables& tables() {
  static const T5Tables t = make_tables();
  return t;
}

// Several tokens (kernels_avx512_inl.h): a tile's five code vectors c_i in {0, 1, 2}: the four
// fields of A, and B (c4).
template <bool kGfni>
struct DecT5 {
  using Tile = TernaryTile5;
  static constexpr int kDigits = kTile5Digits;
  Lut256 la, lb;
  void operator()(const TernaryTile5& t, __m512i* v) const {
    const __m512i p = _mm512_loadu_si512(t.b);
    const __mmask64 b7 = _mm512_movepi8_mask(p), b6 = _mm512_test_epi8_mask(p, _mm512_set1_epi8(0x40));
    fields2<kGfni>(la.by_quarters(p, b6, b7), v);
    v[4] = lb.by_quarters(p, b6, b7);
  }
};

// Decode (one token), streaming with a software prefetch kPrefetchBytes ahead. The planes of A are
// masked in place, not shifted (shifts compete with vpdpbusd for port 0): plane i is c_i * 4^i in
// {0, 4^i, 2 * 4^i} <= 128, a valid u8 operand, and its accumulator holds 4^i * sum(c_i * x)
// exactly, recovered by an arithmetic shift by 2i; B's plane is c4 itself. Five independent
// accumulators hide vpdpbusd latency.
// Invariant: |c_i * 4^i * x| <= 128 * 128, 4 per lane per tile, so KB < 2^15 tiles (K < 655360)
// cannot overflow int32. Then sum c*x - xsum = q.x (c = q + 1).
inline void block_t1(const TernaryTile5* wrow, int KB, const Lut256& la, const Lut256& lb, const int8_t* x,
                     int32_t xsum, int32_t* y) {
  const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0c);
  const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8(static_cast<char>(0xc0));
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0;
  for (int kb = 0; kb < KB; ++kb) {
    // Past the last row block this runs ahead into whatever follows; a prefetch never faults.
    _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
    const __m512i p = _mm512_loadu_si512(wrow[kb].b);
    const __mmask64 b7 = _mm512_movepi8_mask(p), b6 = _mm512_test_epi8_mask(p, _mm512_set1_epi8(0x40));
    const __m512i a = la.by_quarters(p, b6, b7);
    const int8_t* xt = x + kb * kTile5Cols;
    dpbusd_bcast(a0, _mm512_and_si512(a, m0), xt + 0);
    dpbusd_bcast(a1, _mm512_and_si512(a, m1), xt + 4);
    dpbusd_bcast(a2, _mm512_and_si512(a, m2), xt + 8);
    dpbusd_bcast(a3, _mm512_and_si512(a, m3), xt + 12);
    dpbusd_bcast(a4, lb.by_quarters(p, b6, b7), xt + 16);
  }
  const __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a4), _mm512_srai_epi32(a1, 2)),
                                     _mm512_add_epi32(_mm512_srai_epi32(a2, 4), _mm512_srai_epi32(a3, 6)));
  _mm512_storeu_si512(y, _mm512_sub_epi32(s, _mm512_set1_epi32(xsum)));
}

}  // namespace

void ternary5_unpack_q(const TernaryTile5* wrow, int KB, int rows, int8_t* b) {
  const Lut256 la(tables().a.data()), lb(tables().b.data());
  const __m512i m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
  for (int kb = 0; kb < KB; ++kb) {
    const __m512i p = _mm512_loadu_si512(wrow[kb].b);
    const __mmask64 b7 = _mm512_movepi8_mask(p), b6 = _mm512_test_epi8_mask(p, _mm512_set1_epi8(0x40));
    const __m512i a = la.by_quarters(p, b6, b7);
    int8_t* dst = b + static_cast<size_t>(kb) * kTile5Digits * 64;
    _mm512_storeu_si512(dst + 0, _mm512_sub_epi8(_mm512_and_si512(a, m3), one));
    _mm512_storeu_si512(dst + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(a, 2), m3), one));
    _mm512_storeu_si512(dst + 128, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(a, 4), m3), one));
    _mm512_storeu_si512(dst + 192, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(a, 6), m3), one));
    _mm512_storeu_si512(dst + 256, _mm512_sub_epi8(lb.by_quarters(p, b6, b7), one));
  }
  std::memset(b + static_cast<size_t>(KB) * kTile5Digits * 64, 0, static_cast<size_t>(rows - KB * kTile5Digits) * 64);
}

void ternary5_unpack_c(const TernaryTile5* wrow, int KB, int rows, uint8_t* b) {
  // DecT5's decode (the several-token kernel's), each code vector stored: 5 rows of 64 bytes a tile.
  auto run = [&](auto dec) {
    __m512i v[kTile5Digits];
    for (int kb = 0; kb < KB; ++kb) {
      dec(wrow[kb], v);
      for (int i = 0; i < kTile5Digits; ++i) _mm512_storeu_si512(b + (static_cast<size_t>(kb) * kTile5Digits + i) * 64, v[i]);
    }
  };
  const Lut256 la(tables().a.data()), lb(tables().b.data());
  if (have_gfni()) run(DecT5<true>{la, lb});
  else run(DecT5<false>{la, lb});
  std::memset(b + static_cast<size_t>(KB) * kTile5Digits * 64, 0, static_cast<size_t>(rows - KB * kTile5Digits) * 64);
}

void ternary5_gemm_avx512vbmi(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                              const int32_t* xsum, int T, int32_t* y, int ldy) {
  const Lut256 la(tables().a.data()), lb(tables().b.data());
  if (T == 1) {
    for (int mb = mb0; mb < mb1; ++mb)
      block_t1(w + static_cast<size_t>(mb) * KB, KB, la, lb, x, xsum[0], y + mb * kTileRows);
    return;
  }
  if (have_gfni()) gemm_tokens(DecT5<true>{la, lb}, w, KB, mb0, mb1, x, ldx, xsum, T, y, ldy);
  else gemm_tokens(DecT5<false>{la, lb}, w, KB, mb0, mb1, x, ldx, xsum, T, y, ldy);
}

}  // namespace bitnet
