// The exp of exp_f32_in_range (model.h), written once over a number type so that the scalar form
// and the 8- and 16-lane forms (exp_avx2_inl.h, exp_avx512_inl.h) are the same operations in the
// same order by construction: round x / ln 2 to n (adding and subtracting 1.5 * 2^23: round half
// even, |n| <= 127), r = x - n ln 2 in two parts (Cody-Waite), the Cephes polynomial for
// e^r, times 2^n built from the exponent bits. O supplies the type and its operations:
//   O::V; O::set1(float); O::add, O::sub, O::mul (one rounding each); O::pow2(n) (2^n, n integral)
// Bit for bit across widths only where no multiply and add are contracted into an FMA (the vector
// files are compiled with -ffp-contract=off). The caller keeps x in [-87, 88].
#pragma once

namespace bitnet {

template <typename O>
inline typename O::V exp_poly(typename O::V x) {
  using V = typename O::V;
  const V big = O::set1(12582912.f);
  const V n = O::sub(O::add(O::mul(x, O::set1(1.44269504088896341f)), big), big);
  const V r = O::sub(O::sub(x, O::mul(n, O::set1(0.693359375f))), O::mul(n, O::set1(-2.12194440e-4f)));
  V p = O::set1(1.9875691500e-4f);
  p = O::add(O::mul(p, r), O::set1(1.3981999507e-3f));
  p = O::add(O::mul(p, r), O::set1(8.3334519073e-3f));
  p = O::add(O::mul(p, r), O::set1(4.1665795894e-2f));
  p = O::add(O::mul(p, r), O::set1(1.6666665459e-1f));
  p = O::add(O::mul(p, r), O::set1(5.0000001201e-1f));
  const V e = O::add(O::add(O::mul(p, O::mul(r, r)), r), O::set1(1.f));
  return O::mul(e, O::pow2(n));
}

}  // namespace bitnet
