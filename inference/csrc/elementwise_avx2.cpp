// gated_act_avx2 (elementwise.h), compiled with -mavx2 -ffp-contract=off, in x86-64 builds only
// (elsewhere elementwise.cpp has a throwing stub): gated_act_avx512's loop on 8 lanes, the reference's operations in its order, so every
// value equals gated_act_ref's.
#include "elementwise.h"

#include <immintrin.h>

#include "exp_avx2_inl.h"

namespace bitnet {

namespace {

// relu2 or silu of 8 values of g, times u (the tail: masked lanes, never stored).
inline __m256 gate8(__m256 a, __m256 u, bool relu2) {
  if (relu2) {
    // std::max(0.f, a) = (0 < a) ? a : 0: MAXPS(a, 0) returns the second operand for NaN, as it does
    const __m256 r = _mm256_max_ps(a, _mm256_setzero_ps());
    return _mm256_mul_ps(_mm256_mul_ps(r, r), u);
  }
  // clamp_exp_arg(-a): MINPS / MAXPS with the constant first return x when x is NaN, as std::min /
  // std::max of the reference do.
  const __m256 neg = _mm256_xor_ps(a, _mm256_set1_ps(-0.f));
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(-87.f), _mm256_min_ps(_mm256_set1_ps(88.f), neg));
  const __m256 e = exp8_in_range(x);
  return _mm256_mul_ps(_mm256_div_ps(a, _mm256_add_ps(_mm256_set1_ps(1.f), e)), u);
}

}  // namespace

void gated_act_avx2(float* g, const float* u, size_t n, bool relu2) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(g + i, gate8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i), relu2));
  if (i < n) {
    const __m256i k = first8(static_cast<int>(n - i));
    _mm256_maskstore_ps(g + i, k, gate8(_mm256_maskload_ps(g + i, k), _mm256_maskload_ps(u + i, k), relu2));
  }
}

}  // namespace bitnet
