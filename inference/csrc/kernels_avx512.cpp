// AVX-512 VNNI kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni only).
// Scalar twin: kernels_ref.cpp. Tested against it in tests/inference/test_kernels.py.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "kernels_avx512_inl.h"
#include "kernels_lut_inl.h"

namespace bitnet {
namespace {

// Several tokens (kernels_avx512_inl.h): a tile's four code vectors c_i = field i of every byte
// (columns 16 kb + 4 i .. + 3; in lane r the codes of row r).
template <bool kGfni>
struct DecI2 {
  using Tile = TernaryTile;
  static constexpr int kDigits = 4;
  void operator()(const TernaryTile& t, __m512i* v) const { fields2<kGfni>(_mm512_loadu_si512(t.b), v); }
};

// Decode (one token): four independent accumulators (one per 2-bit plane) hide vpdpbusd latency.
// The planes are masked in place instead of shifted down (shifts compete with vpdpbusd for port
// 0): plane i is c_i * 4^i in {0, 4^i, 2*4^i} <= 128, still a valid u8 operand, and its
// accumulator holds 4^i * sum(c_i * x) exactly, recovered with an arithmetic shift by 2i.
// Invariant: |c_i * 4^i * x| <= 128 * 128, 4 per lane per tile, so KB < 2^15 tiles (K < 524288)
// cannot overflow int32. Then sum c*x - xsum = q.x (c = q + 1).
inline void block_t1(const TernaryTile* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
  const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0c);
  const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8(static_cast<char>(0xc0));
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (int kb = 0; kb < KB; ++kb) {
    // Past the last row block this runs ahead into whatever follows (the next linear in the
    // weight arena); a prefetch never faults.
    _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
    const __m512i p = _mm512_loadu_si512(wrow[kb].b);
    const int8_t* xt = x + kb * kTileCols;
    dpbusd_bcast(a0, _mm512_and_si512(p, m0), xt + 0);
    dpbusd_bcast(a1, _mm512_and_si512(p, m1), xt + 4);
    dpbusd_bcast(a2, _mm512_and_si512(p, m2), xt + 8);
    dpbusd_bcast(a3, _mm512_and_si512(p, m3), xt + 12);
  }
  const __m512i s = _mm512_add_epi32(_mm512_add_epi32(a0, _mm512_srai_epi32(a1, 2)),
                                     _mm512_add_epi32(_mm512_srai_epi32(a2, 4), _mm512_srai_epi32(a3, 6)));
  _mm512_storeu_si512(y, _mm512_sub_epi32(s, _mm512_set1_epi32(xsum)));
}

void ternary_gemm_avx512(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                         const int32_t* xsum, int T, int32_t* y, int ldy) {
  if (T == 1) {
    for (int mb = mb0; mb < mb1; ++mb) block_t1(w + static_cast<size_t>(mb) * KB, KB, x, xsum[0], y + mb * kTileRows);
    return;
  }
  if (have_gfni()) gemm_tokens(DecI2<true>{}, w, KB, mb0, mb1, x, ldx, xsum, T, y, ldy);
  else gemm_tokens(DecI2<false>{}, w, KB, mb0, mb1, x, ldx, xsum, T, y, ldy);
}

inline __m512 load_bf16(const uint16_t* p) {
  // bf16 -> f32 is a 16-bit left shift of the bit pattern (exact).
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline __m512 load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
inline __m512 load_f32(const float* p) { return _mm512_loadu_ps(p); }

// Head kernels (16-bit and int8) read the table as ONE sequential stream, row after row, with a
// software prefetch kHeadPrefetch bytes ahead: one stream per thread measured 37-39 GB/s on 2
// threads here, interleaving 4 rows (4 streams) 30-33 GB/s. Each row is loaded once and used for
// a group of up to 4 tokens while it sits in L1, so T tokens cost T / 4 passes of arithmetic but
// one pass of memory.
constexpr int kHeadPrefetch = 2048;

// fp32 dot of one row against TT tokens (accumulators: one per token, two for a single token so
// the FMA chain is not latency-bound); the scalar tail keeps any C valid.
template <typename E, __m512 (*Load)(const E*), float (*Conv)(E), int TT>
inline void dot_row_tt(const E* e, int C, const float* h, float* out, int ldo) {
  const int C16 = C & ~15;
  __m512 acc[TT], acc2 = _mm512_setzero_ps();
  for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_ps();
  int c = 0;
  for (; c < C16; c += 16) {
    if ((c * sizeof(E)) % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(e + c) + kHeadPrefetch, _MM_HINT_T0);
    const __m512 ev = Load(e + c);
    if (TT == 1 && (c / 16) % 2) {
      acc2 = _mm512_fmadd_ps(ev, _mm512_loadu_ps(h + c), acc2);
      continue;
    }
    for (int t = 0; t < TT; ++t) acc[t] = _mm512_fmadd_ps(ev, _mm512_loadu_ps(h + static_cast<size_t>(t) * C + c), acc[t]);
  }
  if (TT == 1) acc[0] = _mm512_add_ps(acc[0], acc2);
  for (int t = 0; t < TT; ++t) {
    const float* ht = h + static_cast<size_t>(t) * C;
    float s = _mm512_reduce_add_ps(acc[t]);
    for (int k = C16; k < C; ++k) s += Conv(e[k]) * ht[k];
    out[static_cast<size_t>(t) * ldo] = s;
  }
}

template <typename E, __m512 (*Load)(const E*), float (*Conv)(E)>
void dot_rows_avx512(const E* W, int C, int r0, int r1, const float* h, int T, float* out, int ldo) {
  for (int r = r0; r < r1; ++r) {
    const E* e = W + static_cast<size_t>(r) * C;
    auto group = [&](auto tt, int t) {
      dot_row_tt<E, Load, Conv, decltype(tt)::value>(e, C, h + static_cast<size_t>(t) * C,
                                                       out + static_cast<size_t>(t) * ldo + r, ldo);
    };
    for_token_tiles<4>(T, group, [&](int t) { group(std::integral_constant<int, 1>{}, t); });
  }
}

inline float f32_id(float v) { return v; }

// int8 head: one row against TT tokens whose activations were pre-biased to u8 (xu = x ^ 0x80 =
// x + 128, the vpdpbusd unsigned operand), so the lane sums give sum (x + 128) * e = x.e +
// 128 * rowsum. Invariant: |(x+128)*e| <= 255 * 127, four per lane per instruction, so int32 is
// safe for C < 2^14 * 64 columns. A single token alternates two accumulators (ILP).
template <int TT>
inline void head_row_tt(const int8_t* e, int32_t rowsum, int Cp, const uint8_t* xu, int32_t* out, int ldo) {
  __m512i acc[TT], acc2 = _mm512_setzero_si512();
  for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_si512();
  for (int c = 0; c < Cp; c += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(e + c) + kHeadPrefetch, _MM_HINT_T0);
    const __m512i ev = _mm512_loadu_si512(e + c);
    if (TT == 1 && (c / 64) % 2) {
      acc2 = _mm512_dpbusd_epi32(acc2, _mm512_loadu_si512(xu + c), ev);
      continue;
    }
    for (int t = 0; t < TT; ++t)
      acc[t] = _mm512_dpbusd_epi32(acc[t], _mm512_loadu_si512(xu + static_cast<size_t>(t) * Cp + c), ev);
  }
  if (TT == 1) acc[0] = _mm512_add_epi32(acc[0], acc2);
  for (int t = 0; t < TT; ++t) out[static_cast<size_t>(t) * ldo] = _mm512_reduce_add_epi32(acc[t]) - 128 * rowsum;
}

// int8 head, several tokens: rows r, r + 1 (R = 2; a lone row at an odd end: R = 1) against TT <= 8
// tokens pre-biased to u8 (as head_row_tt), R * TT accumulators named and updated in place
// (dpbusd_reg: through the intrinsic GCC copies each one around every vpdpbusd), each activation
// vector loaded once for both rows: 16 independent chains at 8 tokens (head_row_tt's groups of 4
// had 4, latency-bound), and the R * TT lane sums reduced together by one 16 x 16 transpose and
// 15 adds instead of one horizontal reduction each. Invariant: as head_row_tt.
constexpr int kHeadAheadRows = 4;
template <int R, int TT>
void head_rows_tt(const int8_t* e0, const int32_t* rowsum, int Cp, const uint8_t* xu, int32_t* out, int ldo) {
  static_assert(R >= 1 && R <= 2 && TT >= 1 && TT <= 8, "at most 16 accumulators");
  const int8_t* e1 = e0 + Cp;
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0;
  for (int c = 0; c < Cp; c += 64) {
    // The rows kHeadAheadRows further on at the same column: far enough ahead that a row pair's
    // arithmetic covers the memory latency, which the one-token kernel's byte distance
    // (kHeadPrefetch) does not at this pace.
    _mm_prefetch(reinterpret_cast<const char*>(e0 + static_cast<size_t>(kHeadAheadRows) * Cp + c), _MM_HINT_T0);
    if constexpr (R > 1)
      _mm_prefetch(reinterpret_cast<const char*>(e1 + static_cast<size_t>(kHeadAheadRows) * Cp + c), _MM_HINT_T0);
    const __m512i ev0 = _mm512_loadu_si512(e0 + c);
    const __m512i ev1 = R > 1 ? _mm512_loadu_si512(e1 + c) : ev0;
#define BITNET_HEAD_MAC(n)                                                                  \
  if constexpr (TT > n) {                                                                   \
    const __m512i xv = _mm512_loadu_si512(xu + static_cast<size_t>(n) * Cp + c);           \
    dpbusd_reg(a##n, xv, ev0);                                                              \
    if constexpr (R > 1) dpbusd_reg(b##n, xv, ev1);                                         \
  }
    BITNET_HEAD_MAC(0) BITNET_HEAD_MAC(1) BITNET_HEAD_MAC(2) BITNET_HEAD_MAC(3)
    BITNET_HEAD_MAC(4) BITNET_HEAD_MAC(5) BITNET_HEAD_MAC(6) BITNET_HEAD_MAC(7)
#undef BITNET_HEAD_MAC
  }
  __m512i v[16] = {a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7};
  transpose16x16(v);  // v[j] lane i = lane j of accumulator i
  __m512i s = v[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_epi32(s, v[j]);  // lane i: the sum of accumulator i
  alignas(64) int32_t sums[16];
  _mm512_store_si512(sums, s);
  for (int t = 0; t < TT; ++t) {
    out[static_cast<size_t>(t) * ldo] = sums[t] - 128 * rowsum[0];
    if constexpr (R > 1) out[static_cast<size_t>(t) * ldo + 1] = sums[8 + t] - 128 * rowsum[1];
  }
}

void head_i8_avx512(const int8_t* E, const int32_t* rowsum, int Cp, int r0, int r1, const int8_t* x,
                    int T, int32_t* out, int ldo) {
  std::vector<uint8_t> xu(static_cast<size_t>(T) * Cp);  // x + 128, once for every row
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (size_t i = 0; i < xu.size(); i += 64)
    _mm512_storeu_si512(xu.data() + i, _mm512_xor_si512(_mm512_loadu_si512(x + i), bias));
  if (T == 1) {  // decode: one sequential stream of rows, memory-bound
    for (int r = r0; r < r1; ++r)
      head_row_tt<1>(E + static_cast<size_t>(r) * Cp, rowsum[r], Cp, xu.data(), out + r, ldo);
    return;
  }
  for (int r = r0; r < r1; r += 2) {
    const int8_t* e = E + static_cast<size_t>(r) * Cp;
    for_token_groups<8>(T, [&](int tt, int t) {
      const uint8_t* xt = xu.data() + static_cast<size_t>(t) * Cp;
      int32_t* ot = out + static_cast<size_t>(t) * ldo + r;
      with_const<8>(tt, [&](auto k) {
        if (r + 1 < r1) head_rows_tt<2, decltype(k)::value>(e, rowsum + r, Cp, xt, ot, ldo);
        else head_rows_tt<1, decltype(k)::value>(e, rowsum + r, Cp, xt, ot, ldo);
      });
    });
  }
}

// int4 head: one row against TT tokens pre-biased to u8 (xu = x + 128, as head_i8). Per block the
// 64 nibble bytes give q_lo = columns 0..63 (groups 0, 1) and q_hi = columns 64..127 (groups 2, 3)
// as signed bytes q = nibble - 8 in [-8, 7]; vpshufb spreads the block's four u8 scales over the
// int16 lanes of their groups (lanes 0..15 = 128-bit lanes 0-1 = the first group of the pair).
// Invariants: vpmaddubsw(xu, q) sums two products (x + 128) * q, |.| <= 2 * 255 * 8 = 4080, so it
// never saturates; vpdpwssd multiplies that by the group scale (<= 255) into int32 lanes. The lanes
// hold sum (x + 128) * q * sc = result + rowbias; past Cp = 4096 columns a lane may wrap, but int32
// addition is exact modulo 2^32 and result and rowbias both lie within int32 (Cp <= kHeadI4MaxCols),
// so the subtraction recovers the result exactly. A single token alternates two accumulators (ILP).
template <int TT>
inline void head_i4_row_tt(const HeadI4Block* row, int nb, int32_t rowbias, int Cp, const uint8_t* xu, int32_t* out,
                           int ldo) {
  const __m512i m4 = _mm512_set1_epi8(0x0f), eight = _mm512_set1_epi8(8);
  // vpshufb controls: int16 lane = (scale byte k, zero byte), k = 0 | 1 (lo) or 2 | 3 (hi).
  const __m512i ctl_lo = _mm512_set_epi32(
      0x80018001, 0x80018001, 0x80018001, 0x80018001, 0x80018001, 0x80018001, 0x80018001, 0x80018001,
      0x80008000, 0x80008000, 0x80008000, 0x80008000, 0x80008000, 0x80008000, 0x80008000, 0x80008000);
  const __m512i ctl_hi = _mm512_add_epi8(ctl_lo, _mm512_set1_epi16(2));
  __m512i acc[TT], acc2 = _mm512_setzero_si512();
  for (int t = 0; t < TT; ++t) acc[t] = _mm512_setzero_si512();
  for (int b = 0; b < nb; ++b) {
    _mm_prefetch(reinterpret_cast<const char*>(row + b) + kHeadPrefetch, _MM_HINT_T0);
    const __m512i p = _mm512_loadu_si512(row[b].qs);
    const __m512i qlo = _mm512_sub_epi8(_mm512_and_si512(p, m4), eight);
    const __m512i qhi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p, 4), m4), eight);
    int32_t s4;
    std::memcpy(&s4, row[b].sc, 4);
    const __m512i sb = _mm512_set1_epi32(s4);
    const __m512i slo = _mm512_shuffle_epi8(sb, ctl_lo), shi = _mm512_shuffle_epi8(sb, ctl_hi);
    for (int t = 0; t < TT; ++t) {
      const uint8_t* xt = xu + static_cast<size_t>(t) * Cp + static_cast<size_t>(b) * kHeadI4Cols;
      acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_maddubs_epi16(_mm512_loadu_si512(xt), qlo), slo);
      __m512i& a = TT == 1 ? acc2 : acc[t];
      a = _mm512_dpwssd_epi32(a, _mm512_maddubs_epi16(_mm512_loadu_si512(xt + 64), qhi), shi);
    }
  }
  if (TT == 1) acc[0] = _mm512_add_epi32(acc[0], acc2);
  for (int t = 0; t < TT; ++t) {
    const uint32_t sum = static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[t])) - static_cast<uint32_t>(rowbias);
    out[static_cast<size_t>(t) * ldo] = static_cast<int32_t>(sum);  // modulo 2^32, see above
  }
}

void head_i4_avx512(const HeadI4Block* W, const int32_t* rowbias, int Cp, int r0, int r1, const int8_t* x, int T,
                    int32_t* out, int ldo) {
  std::vector<uint8_t> xu(static_cast<size_t>(T) * Cp);  // x + 128, once for every row
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (size_t i = 0; i < xu.size(); i += 64)
    _mm512_storeu_si512(xu.data() + i, _mm512_xor_si512(_mm512_loadu_si512(x + i), bias));
  const int nb = Cp / kHeadI4Cols;
  for (int r = r0; r < r1; ++r) {
    const HeadI4Block* row = W + static_cast<size_t>(r) * nb;
    auto group = [&](auto tt, int t) {
      head_i4_row_tt<decltype(tt)::value>(row, nb, rowbias[r], Cp, xu.data() + static_cast<size_t>(t) * Cp,
                                          out + static_cast<size_t>(t) * ldo + r, ldo);
    };
    for_token_tiles<4>(T, group, [&](int t) { group(std::integral_constant<int, 1>{}, t); });
  }
}

// Same result as quantize_row_ref: vcvtps2dq rounds half to even (the default MXCSR mode), as
// nearbyint does; |x * s| <= 127 so the saturating narrow to int8 never saturates.
float quantize_row_avx512(const float* x, int n, int n_pad, int8_t* q, int32_t* sum) {
  __m512 mx = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
  float amax = _mm512_reduce_max_ps(mx);
  for (int j = i; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float s = (1.f / std::max(amax, kActEps)) * 127.f;  // torch evaluates 127 / t as (1 / t) * 127
  const __m512 sv = _mm512_set1_ps(s);
  __m512i acc = _mm512_setzero_si512();
  i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), sv));
    acc = _mm512_add_epi32(acc, v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtsepi32_epi8(v));
  }
  int32_t total = _mm512_reduce_add_epi32(acc);
  *sum = quantize_tail(x, i, n, n_pad, s, q, total);
  return s;
}

float dot_f32_avx512(const float* a, const float* b, int n) {
  __m512 acc = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

void axpy_f32_avx512(float alpha, const float* x, float* y, int n) {
  const __m512 av = _mm512_set1_ps(alpha);
  int i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// fp16 KV rows: vcvtph2ps widens 16 halves exactly (every fp16 value is an fp32 value); the tail
// is a masked 16-bit load (masked-off lanes read as +0, which adds nothing).
float dot_f16_avx512(const float* a, const uint16_t* b, int n) {
  __m512 acc = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load_f16(b + i), acc);
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, b + i)), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

void axpy_f16_avx512(float alpha, const uint16_t* x, float* y, int n) {
  const __m512 av = _mm512_set1_ps(alpha);
  int i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, load_f16(x + i), _mm512_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * f16_to_f32(x[i]);
}

// One head with hd = 16 * NV over cache rows of E (fp32, or fp16 widened by Load): q and the
// output accumulators live in registers, scores are computed four positions at a time (four
// independent FMA chains), and the value pass keeps the output in registers instead of a
// load/store per position (attend_with's axpy).
template <int NV, typename E, __m512 (*Load)(const E*)>
void attend_regs(const float* q, const E* K, const E* V, int ld, int n, float scale, float* sc, float* out) {
  __m512 qv[NV];
  for (int i = 0; i < NV; ++i) qv[i] = _mm512_loadu_ps(q + 16 * i);
  for (int j = 0; j < std::min(n, kAttnAhead); ++j) prefetch_row(K + static_cast<size_t>(j) * ld, 16 * NV);
  float mx = -std::numeric_limits<float>::infinity();
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    for (int r = 0; r < 4; ++r) prefetch_kv_ahead(K, V, ld, 16 * NV, n, j + r);
    const E* k0 = K + static_cast<size_t>(j) * ld;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < NV; ++i) {
      a0 = _mm512_fmadd_ps(qv[i], Load(k0 + 16 * i), a0);
      a1 = _mm512_fmadd_ps(qv[i], Load(k0 + ld + 16 * i), a1);
      a2 = _mm512_fmadd_ps(qv[i], Load(k0 + 2 * static_cast<size_t>(ld) + 16 * i), a2);
      a3 = _mm512_fmadd_ps(qv[i], Load(k0 + 3 * static_cast<size_t>(ld) + 16 * i), a3);
    }
    sc[j] = _mm512_reduce_add_ps(a0) * scale;
    sc[j + 1] = _mm512_reduce_add_ps(a1) * scale;
    sc[j + 2] = _mm512_reduce_add_ps(a2) * scale;
    sc[j + 3] = _mm512_reduce_add_ps(a3) * scale;
    mx = std::max(mx, std::max(std::max(sc[j], sc[j + 1]), std::max(sc[j + 2], sc[j + 3])));
  }
  for (; j < n; ++j) {
    const E* kj = K + static_cast<size_t>(j) * ld;
    __m512 a = _mm512_setzero_ps();
    for (int i = 0; i < NV; ++i) a = _mm512_fmadd_ps(qv[i], Load(kj + 16 * i), a);
    sc[j] = _mm512_reduce_add_ps(a) * scale;
    mx = std::max(mx, sc[j]);
  }
  float denom = 0.f;
  for (j = 0; j < n; ++j) {
    sc[j] = std::exp(sc[j] - mx);
    denom += sc[j];
  }
  __m512 o[NV];
  for (int i = 0; i < NV; ++i) o[i] = _mm512_setzero_ps();
  for (j = 0; j < n; ++j) {
    if (j + kAttnAhead < n) prefetch_row(V + static_cast<size_t>(j + kAttnAhead) * ld, 16 * NV);
    const __m512 p = _mm512_set1_ps(sc[j] / denom);
    const E* vj = V + static_cast<size_t>(j) * ld;
    for (int i = 0; i < NV; ++i) o[i] = _mm512_fmadd_ps(p, Load(vj + 16 * i), o[i]);
  }
  for (int i = 0; i < NV; ++i) _mm512_storeu_ps(out + 16 * i, o[i]);
}

// The register-resident loop for the usual head sizes, attend_with over dot / axpy otherwise.
template <typename E, __m512 (*Load)(const E*), float (*Dot)(const float*, const E*, int),
          void (*Axpy)(float, const E*, float*, int)>
void attend_avx512(const float* q, const E* K, const E* V, int ld, int n, int hd, float scale, float* sc,
                   float* out) {
  switch (hd) {
    case 64: attend_regs<4, E, Load>(q, K, V, ld, n, scale, sc, out); return;
    case 128: attend_regs<8, E, Load>(q, K, V, ld, n, scale, sc, out); return;
    case 256: attend_regs<16, E, Load>(q, K, V, ld, n, scale, sc, out); return;
    default: attend_with<E, Dot, Axpy>(q, K, V, ld, n, hd, scale, sc, out);
  }
}

// Lookup tables (kernels_lut_inl.h): 32 tokens per 512-bit int16 vector, 16 or 8 for a remainder.
void ternary_gemm_lut_avx512(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                             const int32_t* /*xsum*/, int T, int32_t* y, int ldy) {
  lut_gemm<LutI2, 32, 64>(w, KB, mb0, mb1, x, ldx, T, y, ldy);
}
void ternary5_gemm_lut_avx512(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                              const int32_t* /*xsum*/, int T, int32_t* y, int ldy) {
  lut_gemm<LutT5, 32, 64>(w, KB, mb0, mb1, x, ldx, T, y, ldy);
}

}  // namespace

uint32_t lut_loop_avx512(const uint8_t* idx, int64_t iters) { return lut_peak_loop<32>(idx, iters); }

const Kernels kKernelsAvx512 = {
    "avx512",
    ternary_gemm_avx512,
    dot_rows_avx512<uint16_t, load_bf16, bf16_to_f32>,
    dot_rows_avx512<uint16_t, load_f16, f16_to_f32>,
    dot_rows_avx512<float, load_f32, f32_id>,
    head_i8_avx512,
    quantize_row_avx512,
    attend_avx512<float, load_f32, dot_f32_avx512, axpy_f32_avx512>,
    head_i4_avx512,
    ternary5_gemm_avx512vbmi,  // dispatch.cpp swaps in the AVX2 t5 kernel where the CPU lacks VBMI
    attend_avx512<uint16_t, load_f16, dot_f16_avx512, axpy_f16_avx512>,
    ternary_gemm_lut_avx512,
    ternary5_gemm_lut_avx512,
};


// The compute bound prefill is measured against: independent vpdpbusd zmm on registers only (no
// loads), kPeakAcc chains so latency never limits throughput. Each instruction is 64 u8 x s8
// multiply-accumulates. Returns a value that depends on every result (not optimised away).
uint32_t int8_mac_loop_avx512(int64_t iters) {
  constexpr int kPeakAcc = 12;
  __m512i acc[kPeakAcc];
  const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
  for (int i = 0; i < kPeakAcc; ++i) acc[i] = _mm512_set1_epi32(i);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kPeakAcc; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  __m512i s = acc[0];
  for (int i = 1; i < kPeakAcc; ++i) s = _mm512_add_epi32(s, acc[i]);
  return static_cast<uint32_t>(_mm512_reduce_add_epi32(s));
}

}  // namespace bitnet
