// The engine's compute kernels: one weight layout, one scalar reference, SIMD variants beside it.
//
// Every kernel computes an EXACT integer dot product (or an fp32 dot for the 16-bit head); the
// float rescale happens once per output in model.cpp. Each ISA lives in its own translation unit
// compiled with only that ISA's flags (kernels_avx2.cpp, kernels_avx512.cpp, kernels_neon.cpp); the
// scalar `_ref` (kernels_ref.cpp) is always compiled and is the oracle the tests compare against.
// The table of function pointers is filled once from cpuid (dispatch.cpp); BITNET_ISA=ref|avx2|
// avx512|neon forces a path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace bitnet {

// ---------------------------------------------------------------------------------------------
// Ternary weight tile: 16 output rows x 16 input columns, 2 bits per weight, 64 bytes.
//
// Code c = q + 1 in {0, 1, 2} for q in {-1, 0, 1} (3 never occurs; padding rows/columns use c = 1,
// i.e. a zero weight). Byte b = 4*r + j of a tile (r = row in the tile 0..15, j = 0..3) holds, in
// bits 2i..2i+1 (i = 0..3), the code of row 16*mb + r, column 16*kb + 4*i + j.
// Tiles are stored row-block major: tile (mb, kb) is at index mb * KB + kb (KB = padded K / 16).
//
// Why this layout: one 64-byte load shifted right by 2i and masked with 3 gives a vector whose
// 32-bit lane r holds the four codes of row r for the four consecutive columns 16*kb + 4*i + 0..3:
// exactly the u8 operand of vpdpbusd (4 u8 x s8 products summed per 32-bit lane) against a
// broadcast of those four activation bytes. Weights stay at 2 bits in memory (decode is
// memory-bound) and are unpacked in registers.
struct TernaryTile {
  uint8_t b[64];
};
static_assert(sizeof(TernaryTile) == 64, "a ternary tile is 16 x 16 weights at 2 bits");
constexpr int kTileRows = 16;
constexpr int kTileCols = 16;

// int8 head rows are padded to a multiple of this many columns (zeros), so SIMD loops need no tail.
constexpr int kHeadColAlign = 64;
// Row stride (columns) of the int8 activations given to ternary_gemm: a multiple of this.
constexpr int kXAlign = 64;
// How far ahead of its loads a streaming (one-token) kernel prefetches its weights. The hardware
// prefetcher alone leaves a core at about 85% of its read bandwidth here; 4 KiB of software
// prefetch brings the decode matrix-vector products to about 95% (measured on 2 threads over a
// 2B4T-sized arena: 27.7 GB/s without, 33.4 GB/s with, of 34.9 GB/s read bandwidth).
constexpr int kPrefetchBytes = 4096;

struct Kernels {
  const char* name;

  // Ternary x int8 matrix product, exact:
  //   y[t * ldy + m] = sum_k q[m][k] * x[t * ldx + k]        for m in [16*mb0, 16*mb1), t in [0, T)
  // w: tiles of the whole matrix (KB tiles per row block); x: int8 activations whose row stride
  // ldx is a multiple of 64 (kXAlign) with zeros in columns [K, ldx) (the AMX path reads whole
  // 64-column steps); xsum[t] = sum_k x[t*ldx + k] (the SIMD paths compute sum c*x with c = q + 1
  // and subtract xsum; the reference ignores it and multiplies by q directly).
  void (*ternary_gemm)(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                       const int32_t* xsum, int T, int32_t* y, int ldy);

  // 16-bit / fp32 head: out[t * ldo + r] = sum_c E[r][c] * h[t * C + c] in fp32, r in [r0, r1).
  void (*dot_rows_bf16)(const uint16_t* E, int C, int r0, int r1, const float* h, int T, float* out,
                        int ldo);
  void (*dot_rows_f16)(const uint16_t* E, int C, int r0, int r1, const float* h, int T, float* out,
                       int ldo);
  void (*dot_rows_f32)(const float* E, int C, int r0, int r1, const float* h, int T, float* out,
                       int ldo);

  // int8 head, exact: out[t * ldo + r] = sum_c E[r][c] * x[t * Cp + c], r in [r0, r1).
  // Cp is a multiple of kHeadColAlign (zero padded); E values in [-127, 127], x in [-127, 127]
  // (absmax quantization never produces -128); rowsum[r] = sum_c E[r][c].
  void (*head_i8)(const int8_t* E, const int32_t* rowsum, int Cp, int r0, int r1, const int8_t* x,
                  int T, int32_t* out, int ldo);

  // Per-token absmax int8 quantization (bitnet.quant.act_quant): s = 127 / max(max|x|, 1e-5),
  // evaluated as (1 / max) * 127 in fp32 exactly as torch does (it differs from 127 / max by an
  // ulp at times, which flips exact .5 ties),
  // q = round-half-even(x * s) (|x * s| <= 127: no clamp is ever active), zeros in [n, n_pad).
  // Returns s; *sum = sum of q.
  float (*quantize_row)(const float* x, int n, int n_pad, int8_t* q, int32_t* sum);

  // One query head's attention over n cached positions, fp32: s_j = scale * (q . K_j), p =
  // softmax(s) (max-subtracted), out = sum_j p_j V_j, with K_j = K + j * ld and V_j = V + j * ld
  // (hd values each); scratch holds n floats. Every path is attend_with<> over its own dot/axpy.
  void (*attend)(const float* q, const float* K, const float* V, int ld, int n, int hd, float scale,
                 float* scratch, float* out);
};

// The cache rows were last read a whole token ago (since evicted by the weights), and each
// position's work is short: prefetching kAttnAhead rows ahead keeps several misses in flight.
// Past the last K row the prefetch runs on into the first V rows, never past the last V row.
constexpr int kAttnAhead = 8;
inline void prefetch_row(const float* p, int n) {
  for (int i = 0; i < n; i += 16) __builtin_prefetch(p + i);
}
inline void prefetch_kv_ahead(const float* K, const float* V, int ld, int hd, int n, int j) {
  const int a = j + kAttnAhead;
  if (a < n) prefetch_row(K + static_cast<size_t>(a) * ld, hd);
  else if (a - n < n) prefetch_row(V + static_cast<size_t>(a - n) * ld, hd);
}

// The attention loop shared by every path, over that path's fp32 dot(a, b, n) and y += alpha * x
// (inlined: one call per head instead of two per head and position).
template <float (*Dot)(const float*, const float*, int), void (*Axpy)(float, const float*, float*, int)>
void attend_with(const float* q, const float* K, const float* V, int ld, int n, int hd, float scale,
                 float* sc, float* out) {
  for (int j = 0; j < std::min(n, kAttnAhead); ++j) prefetch_row(K + static_cast<size_t>(j) * ld, hd);
  float mx = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < n; ++j) {
    prefetch_kv_ahead(K, V, ld, hd, n, j);
    sc[j] = Dot(q, K + static_cast<size_t>(j) * ld, hd) * scale;
    mx = std::max(mx, sc[j]);
  }
  float denom = 0.f;
  for (int j = 0; j < n; ++j) {
    sc[j] = std::exp(sc[j] - mx);
    denom += sc[j];
  }
  for (int i = 0; i < hd; ++i) out[i] = 0.f;
  for (int j = 0; j < n; ++j) {
    if (j + kAttnAhead < n) prefetch_row(V + static_cast<size_t>(j + kAttnAhead) * ld, hd);
    Axpy(sc[j] / denom, V + static_cast<size_t>(j) * ld, out, hd);
  }
}

// Calls tile(std::integral_constant<int, n>{}, t) for the n == rem among N, N-1, ..., 2.
template <int N, typename Tile>
inline void remainder_tile(int rem, Tile& tile, int t) {
  if constexpr (N >= 2) {
    if (rem == N) tile(std::integral_constant<int, N>{}, t);
    else remainder_tile<N - 1>(rem, tile, t);
  }
}

// The token loop every SIMD ternary_gemm shares: tokens [0, T) in register tiles of TT tokens
// through tile(std::integral_constant<int, TT>{}, t), the remainder of 2..TT-1 tokens through one
// smaller tile, and a single token (decode, or a remainder of 1) through one(t).
template <int TT, typename Tile, typename One>
inline void for_token_tiles(int T, Tile&& tile, One&& one) {
  int t = 0;
  for (; t + TT <= T; t += TT) tile(std::integral_constant<int, TT>{}, t);
  if (T - t == 1) one(t);
  else if (T - t > 1) remainder_tile<TT - 1>(T - t, tile, t);
}

extern const Kernels kKernelsRef;
#if defined(__x86_64__) || defined(_M_X64)
extern const Kernels kKernelsAvx2;
extern const Kernels kKernelsAvx512;
// AMX-INT8 tiles for prefill (T >= 16 tokens); fewer tokens go to the AVX-512 VNNI path.
void ternary_gemm_amx(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                      const int32_t* xsum, int T, int32_t* y, int ldy);
#endif
#if defined(__aarch64__)
extern const Kernels kKernelsNeon;
#endif

// The kernels in use: chosen once from cpuid (best available), or from BITNET_ISA.
const Kernels& kernels();
// Force a path by name ("ref", "avx2", "avx512", "neon"); throws std::invalid_argument when the
// name is unknown or this CPU/build cannot run it.
void set_isa(const std::string& name);
// Names of the paths this CPU and build can run, best last.
std::vector<std::string> available_isas();
const Kernels* find_kernels(const std::string& name);

// Scalar conversions shared by every path (exact for every 16-bit input).
inline float bf16_to_f32(uint16_t v) {
  union { uint32_t u; float f; } c;
  c.u = static_cast<uint32_t>(v) << 16;
  return c.f;
}
float f16_to_f32(uint16_t v);
// The scalar quantizer (the SIMD-less tables point at it).
float quantize_row_ref(const float* x, int n, int n_pad, int8_t* q, int32_t* sum);
constexpr float kActEps = 1e-5f;  // bitnet.quant.ACT_EPS: an all-zero token quantizes to zeros

}  // namespace bitnet
