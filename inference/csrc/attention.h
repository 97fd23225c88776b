// Blocked attention over the KV cache, fp32 or fp16 (attention.cpp, AVX-512: the avx512 and amx paths;
// attention_avx2.cpp, AVX2: the avx2 and avxvnni paths).
// The reference is each path's attend (kernels.h, one query head at a time over the whole cache):
// this one takes every query that reads the same K/V rows (the query heads sharing a KV head under
// GQA, and for prefill a block of tokens of one sequence) and runs them together, 16 cache rows at
// a time, so each K and V row is read from memory once per group instead of once per query, and
// the scores, softmax and weighted sum are vectorized across rows (16 dot products reduced
// together, a vector exp). Same arithmetic as attend, in another float order (the 16 partial sums
// of a dot product and the softmax denominator are added in a different order): tested against
// attend("ref") / attend_f16("ref") with a tolerance in tests/inference/test_attention.py.
#pragma once

#include <cstdint>
#include <string>

namespace bitnet {

// Which attention the engine runs where attend_group (or attend_group_avx2) can: "blocked" (the default) or "per-head"
// (each path's attend, one query head at a time: for comparison in one process). Process-wide;
// set_attention_mode throws std::invalid_argument on another name.
void set_attention_mode(const std::string& name);
std::string attention_mode();

// The largest head size attend_group takes (head_dim a multiple of 16, at most this).
constexpr int kAttendGroupMaxHd = 256;

// True where attend_group runs for this head size (x86-64 builds with AVX-512, hd % 16 == 0 and
// hd <= kAttendGroupMaxHd). The caller checks that the CPU has AVX-512 (the avx512 / amx paths).
bool attend_group_supports(int hd);

// nq queries over one KV head's rows: query i is qs[i] (hd floats) and attends to rows 0..n[i]-1
// (K_j = K + j * ld, V_j = V + j * ld, hd floats each; n[i] >= 1); its output (hd floats) goes to
// outs[i]: out_i = sum_j softmax_j(scale * q_i . K_j) V_j. scratch: nq * round_up(max n, 16) floats.
void attend_group(const float* const* qs, float* const* outs, const int* n, int nq, const float* K,
                  const float* V, int ld, int hd, float scale, float* scratch);
// The same over an fp16 cache (kv dtype "f16": IEEE half bit patterns, widened exactly as read).
void attend_group(const float* const* qs, float* const* outs, const int* n, int nq, const uint16_t* K,
                  const uint16_t* V, int ld, int hd, float scale, float* scratch);

// The same on 8-lane AVX2 + FMA vectors (attention_avx2.cpp; the avx2 and avxvnni paths): blocks of
// 8 cache rows, hd a multiple of 8 (attend_group_avx2_supports), the same scratch size. Only where
// the CPU has AVX2, FMA and F16C (the caller checks: those paths).
bool attend_group_avx2_supports(int hd);
void attend_group_avx2(const float* const* qs, float* const* outs, const int* n, int nq, const float* K,
                       const float* V, int ld, int hd, float scale, float* scratch);
void attend_group_avx2(const float* const* qs, float* const* outs, const int* n, int nq, const uint16_t* K,
                       const uint16_t* V, int ld, int hd, float scale, float* scratch);

// The fp16 KV cache's rows: dst[i] = f32_to_f16(src[i]) for i < n (kernels.h's scalar converter: round
// to nearest even, |x| >= 65520 -> inf, NaN kept quiet with its top payload bits), with F16C's
// vcvtps2ph, 8 values an instruction (attention_avx2.cpp, x86-64 builds; elsewhere it throws). The
// same bits as the scalar converter for every input (tests/inference/test_kv_f16.py); the caller
// checks that the CPU has F16C.
void f32_to_f16_row_f16c(const float* src, uint16_t* dst, int n);

}  // namespace bitnet
