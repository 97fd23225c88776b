// The gated activation of the FFN, g[i] = act(g[i]) * u[i] for i < n: relu2: max(0, a)^2 (fp32; 0
// for NaN and -0), silu: a / (1 + exp_f32(-a)) (exp_f32 of model.h: clamped argument, Cephes
// polynomial). gated_act_ref (model.cpp, baseline code) is the reference and what the ref and neon
// paths run; gated_act_avx512 (elementwise.cpp, AVX-512, no contraction of a multiply and an
// add into an FMA) evaluates the same operations in the same order on 16 lanes, so it equals the
// reference bit for bit (tests/inference/test_elementwise.py).
#pragma once

#include <cstddef>

namespace bitnet {

void gated_act_ref(float* g, const float* u, size_t n, bool relu2);
void gated_act_avx512(float* g, const float* u, size_t n, bool relu2);  // only where the CPU has AVX-512F
// Sums of squares of 16 rows of n floats (row j at x + j * ld): ss[j] = sum_i x_j[i]^2 in index order,
// one rounding per product and per add, so each equals rmsnorm's serial sum (model.cpp) bit for bit.
// The 16 rows' chains run in the 16 lanes (a 16 x 16 transpose per 16 columns), where the scalar
// form keeps one add chain per row. Only where the CPU has AVX-512F (elementwise.cpp).
void sumsq_rows16_avx512(const float* x, size_t ld, int n, float* ss);
// The same on 8 lanes (elementwise_avx2.cpp, AVX2, no contraction): the avx2 and avxvnni paths.
void gated_act_avx2(float* g, const float* u, size_t n, bool relu2);  // only where the CPU has AVX2

}  // namespace bitnet
