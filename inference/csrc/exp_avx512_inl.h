// exp_f32_in_range (model.h) on 16 lanes: exp_poly (exp_poly_inl.h), as the scalar is. Bit for bit equal
// to the scalar only where the including file is compiled with -ffp-contract=off (elementwise.cpp,
// attention.cpp), else the compiler may fuse a multiply and an add. The caller keeps x in [-87, 88].
#pragma once

#include <immintrin.h>

#include "exp_poly_inl.h"

namespace bitnet {
namespace {

struct Exp16Ops {  // exp_poly's operations on 16 lanes
  using V = __m512;
  static __m512 set1(float v) { return _mm512_set1_ps(v); }
  static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
  static __m512 sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
  static __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
  static __m512 pow2(__m512 n) {  // 2^n from the exponent bits: n is integral, so truncation is its value
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
};

inline __m512 exp16_in_range(__m512 x) { return exp_poly<Exp16Ops>(x); }

}  // namespace
}  // namespace bitnet
