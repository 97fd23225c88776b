// exp_f32_in_range (model.h) on 8 lanes: exp_poly (exp_poly_inl.h), as the scalar and
// exp16_in_range (exp_avx512_inl.h) are. Bit for bit equal to the scalar only where the including
// file is compiled with -ffp-contract=off (elementwise_avx2.cpp, attention_avx2.cpp). The caller
// keeps x in [-87, 88].
#pragma once

#include <immintrin.h>

#include "exp_poly_inl.h"

namespace bitnet {
namespace {

struct Exp8Ops {  // exp_poly's operations on 8 lanes
  using V = __m256;
  static __m256 set1(float v) { return _mm256_set1_ps(v); }
  static __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
  static __m256 sub(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
  static __m256 mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
  static __m256 pow2(__m256 n) {  // 2^n from the exponent bits: n is integral, so truncation is its value
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
};

inline __m256 exp8_in_range(__m256 x) { return exp_poly<Exp8Ops>(x); }

// Lanes 0..k-1 set (k in [0, 8]): the mask of a tail's maskload / maskstore.
inline __m256i first8(int k) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

}  // namespace
}  // namespace bitnet
