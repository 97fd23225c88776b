// gated_act_avx512 (elementwise.h), compiled with -mavx512f -ffp-contract=off only where the build
// is x86-64: 16 values a step, the reference's operations in its order, so every value equals
// gated_act_ref's (the reference's SSE2 loop and this differ in width only).
#include "elementwise.h"

#include <cstdint>
#include <stdexcept>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "exp_avx512_inl.h"
#endif

namespace bitnet {

#if defined(__AVX512F__)
namespace {

// relu2 or silu of 16 values of g, times u (the tail: masked lanes, never stored).
inline __m512 gate16(__m512 a, __m512 u, bool relu2) {
  if (relu2) {
    // std::max(0.f, a) = (0 < a) ? a : 0: MAXPS(a, 0) returns the second operand for NaN, as it does
    const __m512 r = _mm512_max_ps(a, _mm512_setzero_ps());
    return _mm512_mul_ps(_mm512_mul_ps(r, r), u);
  }
  // clamp_exp_arg(-a): std::min(x, 88) = (88 < x) ? 88 : x, then std::max(x, -87) = (x < -87) ? -87
  // : x; MINPS / MAXPS with the constant first return x when x is NaN, as those do.
  const __m512 neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(INT32_MIN)));
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-87.f), _mm512_min_ps(_mm512_set1_ps(88.f), neg));
  const __m512 e = exp16_in_range(x);
  return _mm512_mul_ps(_mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.f), e)), u);
}

// One stage of a 16 x 16 transpose of m (vector r = row r, lane c = column c): with half = h, the
// off-diagonal h x h blocks of every 2h x 2h block swap (rows r, r + h with bit h of r clear). The
// stages h = 8, 4, 2, 1 leave m transposed.
template <int h>
inline void transpose_stage(__m512* m) {
  alignas(64) int32_t lo[16], hi[16];
  for (int c = 0; c < 16; ++c) {
    lo[c] = (c & h) ? 16 + c - h : c;  // row r: its own left lanes, then row r + h's left lanes
    hi[c] = (c & h) ? 16 + c : c + h;  // row r + h: row r's right lanes, then its own right lanes
  }
  const __m512i il = _mm512_load_si512(lo), ih = _mm512_load_si512(hi);
  for (int r = 0; r < 16; ++r) {
    if (r & h) continue;
    const __m512 a = m[r], b = m[r + h];
    m[r] = _mm512_permutex2var_ps(a, il, b);
    m[r + h] = _mm512_permutex2var_ps(a, ih, b);
  }
}

}  // namespace

void sumsq_rows16_avx512(const float* x, size_t ld, int n, float* ss) {
  __m512 acc = _mm512_setzero_ps();  // lane j: row j's running sum
  for (int i = 0; i < n; i += 16) {
    // Columns past n load as 0: their squares add +0, which leaves a sum of squares (>= +0) as is.
    const __mmask16 k = n - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 m[16];
    for (int r = 0; r < 16; ++r) {
      const __m512 v = _mm512_maskz_loadu_ps(k, x + static_cast<size_t>(r) * ld + i);
      m[r] = _mm512_mul_ps(v, v);
    }
    transpose_stage<8>(m);
    transpose_stage<4>(m);
    transpose_stage<2>(m);
    transpose_stage<1>(m);
    for (int c = 0; c < 16; ++c) acc = _mm512_add_ps(acc, m[c]);  // column i + c of every row, in order
  }
  _mm512_storeu_ps(ss, acc);
}

void gated_act_avx512(float* g, const float* u, size_t n, bool relu2) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(g + i, gate16(_mm512_loadu_ps(g + i), _mm512_loadu_ps(u + i), relu2));
  if (i < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(g + i, k, gate16(_mm512_maskz_loadu_ps(k, g + i), _mm512_maskz_loadu_ps(k, u + i), relu2));
  }
}

#else

void gated_act_avx512(float*, const float*, size_t, bool) {
  throw std::invalid_argument("gated_act_avx512: not built for this CPU");
}
void sumsq_rows16_avx512(const float*, size_t, int, float*) {
  throw std::invalid_argument("sumsq_rows16_avx512: not built for this CPU");
}

#endif

#if !defined(__x86_64__)  // elementwise_avx2.cpp is built for x86-64 only
void gated_act_avx2(float*, const float*, size_t, bool) {
  throw std::invalid_argument("gated_act_avx2: not built for this CPU");
}
#endif

}  // namespace bitnet
