// The engine's compute kernels: one weight layout, one scalar reference, SIMD variants beside it.
//
// Every kernel computes an EXACT integer dot product (or an fp32 dot for the 16-bit head); the
// float rescale happens once per output in model.cpp. Each ISA lives in its own translation unit
// compiled with only that ISA's flags (kernels_avx2.cpp, kernels_avx512.cpp, kernels_neon.cpp); the
// scalar `_ref` (kernels_ref.cpp) is always compiled and is the oracle the tests compare against.
// The table of function pointers is filled once from cpuid (dispatch.cpp); BITNET_ISA=ref|avx2|
// avxvnni|avx512|amx|neon forces a path.
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

// ---------------------------------------------------------------------------------------------
// Dense ternary tile ("t5"): 16 output rows x 20 input columns, 5 trits per byte (1.6 bits per
// weight), 64 bytes.
//
// Byte 4*r + j of a tile (r = row in the tile 0..15, j = 0..3) holds the five codes c_i (i = 0..4,
// c = q + 1 as above, padding c = 1) of row 16*mb + r, columns 20*kb + 4*i + j, as the base-3
// number v = sum_i c_i * 3^(4-i) in [0, 242], stored as s = ceil(v * 256 / 243) (TQ1_0's
// encoding). Digit extraction: t_0 = s, t_{i+1} = 3 * t_i mod 256, c_i = floor(3 * t_i / 256)
// (exact for all 243 values because the rounding error of s, under 3^i / 256 < 1/3 after i steps,
// never carries into a digit; tests/inference/test_kernels_t5.py checks every value).
// Tiles are stored row-block major: tile (mb, kb) at index mb * KB5 + kb (KB5 = ceil(K / 20)).
//
// Why this layout: it mirrors TernaryTile. Decoding digit i of every byte of one 64-byte load gives
// a vector whose 32-bit lane r holds the four codes of row r for columns 20*kb + 4*i + 0..3: again
// exactly the u8 operand of vpdpbusd / sdot against a broadcast of four activation bytes. Decode
// streams 20% fewer bytes than the 2-bit tiles for the same work.
struct TernaryTile5 {
  uint8_t b[64];
};
static_assert(sizeof(TernaryTile5) == 64, "a t5 tile is 16 x 20 weights at 5 trits per byte");
constexpr int kTile5Cols = 20;
constexpr int kTile5Digits = 5;

// Code c_i in {0, 1, 2} of digit i (0..4) of a t5 byte s (the definition every path must match).
inline int t5_code(uint8_t s, int i) {
  unsigned t = s;
  for (int k = 0; k < i; ++k) t = (3 * t) & 255;
  return static_cast<int>((3 * t) >> 8);
}
// The stored byte for codes c[0..4] (each in {0, 1, 2}).
inline uint8_t t5_encode(const int* c) {
  int v = 0;
  for (int i = 0; i < kTile5Digits; ++i) v = 3 * v + c[i];
  return static_cast<uint8_t>((v * 256 + 242) / 243);
}

// int8 head rows are padded to a multiple of this many columns (zeros), so SIMD loops need no tail.
constexpr int kHeadColAlign = 64;
// Row stride (columns) of the int8 activations given to ternary_gemm: a multiple of this.
constexpr int kXAlign = 64;
// How far ahead of its loads a streaming (one-token) kernel prefetches its weights. The hardware
// prefetcher alone leaves a core at about 85% of its read bandwidth here; 4 KiB of software
// prefetch brings the decode matrix-vector products to about 95% (measured on 2 threads over a
// 2B4T-sized arena: 27.7 GB/s without, 33.4 GB/s with, of 34.9 GB/s read bandwidth).
constexpr int kPrefetchBytes = 4096;

// int4 head block: 128 columns of one row = 4 groups of 32, 68 bytes (4.25 bits per weight).
// qs[j] (j = 0..63): low nibble = q of column j, high nibble = q of column 64 + j, each stored as
// q + 8 (q in [-8, 7]; the quantizer writes [-7, 7]). sc[g]: the unsigned integer scale of
// columns 32g..32g+31; the weight is w ~= d_row * sc[g] * q (d_row: one fp32 per row, outside).
// Why this layout: one 64-byte load, masked / shifted by 4, gives columns 0..63 and 64..127 as
// bytes in column order (two whole groups each), and the four scales sit right behind them in the
// same stream; the integer scales keep the cross-group sum exact (no float order to agree on).
struct HeadI4Block {
  uint8_t qs[64];
  uint8_t sc[4];
};
static_assert(sizeof(HeadI4Block) == 68, "an int4 head block is 128 weights at 4 bits + 4 u8 scales");
constexpr int kHeadI4Cols = 128;   // columns per HeadI4Block (int4 head rows are padded to this)
constexpr int kHeadI4Group = 32;   // columns per integer group scale
// Largest padded width the int4 head takes: |sum| <= Cp * 8 * 127 * 255 < 2^31 (exact in int32).
constexpr int kHeadI4MaxCols = 8192;

using TernaryGemmFn = void (*)(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                               const int32_t* xsum, int T, int32_t* y, int ldy);
using Ternary5GemmFn = void (*)(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                                const int32_t* xsum, int T, int32_t* y, int ldy);

// Shape classes of a ternary product by tokens per call: 0: one token (decode), 1: 2-8 (batched
// decode steps), 2: 9-32, 3: more (prefill). Dispatch picks the kernel family per class.
constexpr int kShapeClasses = 4;
inline int shape_class(int T) { return T <= 1 ? 0 : T <= 8 ? 1 : T <= 32 ? 2 : 3; }

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

  // int4 head (coarse pass of head mode "int4"), exact integers:
  //   out[t * ldo + r] = sum_g sc[r][g] * sum_{c in group g} q[r][c] * x[t * Cp + c],  r in [r0, r1)
  // W: Cp / kHeadI4Cols blocks per row, rows one after the other (layout at HeadI4Block); Cp a
  // multiple of kHeadI4Cols, at most kHeadI4MaxCols (zero padded); x in [-127, 127];
  // rowbias[r] = 128 * sum_g sc[r][g] * sum_{c in g} q[r][c] (paths that bias x to u8 subtract it).
  // Integer group scales make the whole sum one exact integer: every path equals ref bit for bit.
  void (*head_i4)(const HeadI4Block* W, const int32_t* rowbias, int Cp, int r0, int r1, const int8_t* x,
                  int T, int32_t* out, int ldo);

  // Dense ternary ("t5", TernaryTile5) x int8 matrix product, exact, with ternary_gemm's contract:
  //   y[t * ldy + m] = sum_k q[m][k] * x[t * ldx + k]        for m in [16*mb0, 16*mb1), t in [0, T)
  // KB = ceil(K / 20) tiles per row block; ldx a multiple of 64 and >= 20 * KB, zeros in [K, ldx);
  // xsum[t] = sum_k x[t*ldx + k] (the SIMD paths compute sum c*x with c = q + 1 and subtract it).
  void (*ternary5_gemm)(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                        const int32_t* xsum, int T, int32_t* y, int ldy);

  // attend over a 16-bit KV cache (kv dtype "f16"): K and V hold IEEE fp16 rows (bit patterns),
  // widened exactly to fp32 as they are read; q, scores, softmax and out stay fp32. Otherwise
  // attend's contract (K_j = K + j * ld, V_j = V + j * ld, scratch of n floats).
  void (*attend_f16)(const float* q, const uint16_t* K, const uint16_t* V, int ld, int n, int hd, float scale,
                     float* scratch, float* out);

  // Lookup-table ("lut") twins of ternary_gemm / ternary5_gemm, with the same contract and exactly
  // the same integers (kernels_lut_inl.h; xsum unused); nullptr where a path has none.
  TernaryGemmFn ternary_gemm_lut = nullptr;
  Ternary5GemmFn ternary5_gemm_lut = nullptr;
  // Bit c set: shape class c runs the lut kernel of that layout unless BITNET_KERNEL forces a
  // family. Filled by dispatch.cpp from measured data (kernel_choice.h), never guessed.
  uint8_t lut_classes_i2 = 0, lut_classes_t5 = 0;
};

// The kernel family of the several-token products: "auto" (per shape class, from the table's
// lut_classes_*), "mac" (multiply-accumulate kernels only) or "lut" (lookup tables wherever the
// path has them). Starts from BITNET_KERNEL (unset: auto); set_kernel_family throws
// std::invalid_argument on another name.
void set_kernel_family(const std::string& name);
std::string kernel_family();
// Whether the lookup-table kernels take their 41 KiB table blocks (kernels_lut_inl.h): where the
// CPU's L1D holds 48 KiB, or BITNET_LUT_L1=wide; BITNET_LUT_L1=small keeps the 24 KiB blocks. Read
// once; another value of BITNET_LUT_L1 throws std::invalid_argument (first read: kernels()).
bool lut_wide_tables();
// The product the engine runs for T tokens on k (family and shape class applied).
TernaryGemmFn ternary_gemm_for(const Kernels& k, int T);
Ternary5GemmFn ternary5_gemm_for(const Kernels& k, int T);

// The cache rows were last read a whole token ago (since evicted by the weights), and each
// position's work is short: prefetching kAttnAhead rows ahead keeps several misses in flight.
// Past the last K row the prefetch runs on into the first V rows, never past the last V row.
// E is the cache element (float, or uint16_t for an fp16 cache): one prefetch per 64-byte line.
constexpr int kAttnAhead = 8;
template <typename E>
inline void prefetch_row(const E* p, int n) {
  for (int i = 0; i < n; i += 64 / static_cast<int>(sizeof(E))) __builtin_prefetch(p + i);
}
template <typename E>
inline void prefetch_kv_ahead(const E* K, const E* V, int ld, int hd, int n, int j) {
  const int a = j + kAttnAhead;
  if (a < n) prefetch_row(K + static_cast<size_t>(a) * ld, hd);
  else if (a - n < n) prefetch_row(V + static_cast<size_t>(a - n) * ld, hd);
}

// The attention loop shared by every path, over that path's dot(q, row, n) and out += alpha * row
// for cache rows of element type E (fp32, or fp16 bits widened inside Dot / Axpy), inlined: one
// call per head instead of two per head and position.
template <typename E, float (*Dot)(const float*, const E*, int), void (*Axpy)(float, const E*, float*, int)>
void attend_with(const float* q, const E* K, const E* V, int ld, int n, int hd, float scale, float* sc,
                 float* out) {
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
constexpr int kLutLoopLookups = 16;  // lookups per iteration of lut_loop_* (x86 below)
#if defined(__x86_64__) || defined(_M_X64)
extern const Kernels kKernelsAvx2;
extern const Kernels kKernelsAvx512;
// AMX-INT8 tiles (kernels_amx.cpp) for kAmxMinTokens tokens or more (prefill, and the batched decode
// steps of a server); fewer go to the streaming AVX-512 VNNI kernels. The t5 one decodes with VBMI
// (ternary5_unpack_q / _c), which every AMX CPU has; dispatch.cpp checks it all the same.
constexpr int kAmxMinTokens = 2;
void ternary_gemm_amx(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                      const int32_t* xsum, int T, int32_t* y, int ldy);
void ternary5_gemm_amx(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                       const int32_t* xsum, int T, int32_t* y, int ldy);
void head_i8_amx(const int8_t* E, const int32_t* rowsum, int Cp, int r0, int r1, const int8_t* x, int T,
                 int32_t* out, int ldo);
// Register-only loops of the int8 product instruction each path's prefill kernels use: iters x 12
// instructions of 64 (AVX-512 vpdpbusd zmm) or 32 (AVX2 vpmaddubsw ymm) multiply-accumulates. Timed
// by bitnet.inference._C.int8_mac_peak: the compute bound prefill is reported against.
uint32_t int8_mac_loop_avx512(int64_t iters);
uint32_t int8_mac_loop_avx2(int64_t iters);
constexpr int kMacLoopInstrs = 12;
// AVX2 only: iters x kMacAccLoopInstrs vpmaddubsw, each added into an int16 accumulator (vpaddw),
// the instruction pair every AVX2 product kernel issues (VNNI's vpdpbusd accumulates by itself).
uint32_t int8_mac_acc_loop_avx2(int64_t iters);
constexpr int kMacAccLoopInstrs = 8;
// AVX-VNNI (kernels_avxvnni.cpp; 256-bit VEX vpdpbusd, for CPUs with it and without AVX-512): the
// avxvnni table is the avx2 table with these integer products (dispatch.cpp).
void ternary_gemm_avxvnni(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                          const int32_t* xsum, int T, int32_t* y, int ldy);
void ternary5_gemm_avxvnni(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                           const int32_t* xsum, int T, int32_t* y, int ldy);
void head_i8_avxvnni(const int8_t* E, const int32_t* rowsum, int Cp, int r0, int r1, const int8_t* x, int T,
                     int32_t* out, int ldo);
uint32_t int8_mac_loop_avxvnni(int64_t iters);  // iters x kMacLoopInstrs vpdpbusd ymm (32 MACs each)
// The LUT kernels' bound: iters x kLutLoopLookups table lookups (a 16-bit table offset loaded, a
// 64-byte table row of 32 int16 lanes added from L1 into the row's sums: two ymm adds on AVX2, one
// zmm add on AVX-512), the inner step of kernels_lut_inl.h on a table that fits L1. Timed by
// _C.lut_peak.
uint32_t lut_loop_avx2(const uint8_t* idx, int64_t iters);
uint32_t lut_loop_avx512(const uint8_t* idx, int64_t iters);
// t5 product with AVX-512 VBMI byte-table decode (kernels_avx512vbmi.cpp); the avx512 table uses it
// where the CPU has VBMI (Ice Lake, Zen 4 and later) and the AVX2 t5 kernel otherwise (dispatch.cpp).
void ternary5_gemm_avx512vbmi(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                              const int32_t* xsum, int T, int32_t* y, int ldy);
// One t5 row block (KB tiles) -> int8 q = c - 1 in AMX B-tile order: 64-byte row g = digit g % 5 of
// tile g / 5 (16 outputs x columns 4g .. 4g + 3), rows [5 KB, rows) zero. b: rows * 64 bytes.
void ternary5_unpack_q(const TernaryTile5* wrow, int KB, int rows, int8_t* b);
// The same layout holding the codes c = q + 1 in {0, 1, 2} (u8; the AMX kernels of a few tokens
// multiply them as unsigned bytes and subtract xsum), by the several-token kernel's decode.
void ternary5_unpack_c(const TernaryTile5* wrow, int KB, int rows, uint8_t* b);
#endif
#if defined(__aarch64__)
extern const Kernels kKernelsNeon;
#endif

// The kernels in use: chosen once from cpuid (best available), or from BITNET_ISA.
const Kernels& kernels();
// Force a path by name ("ref", "avx2", "avxvnni", "avx512", "amx", "neon"); throws std::invalid_argument when the
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
// fp32 -> IEEE fp16 bits, round to nearest even (as numpy's float16 and F16C's vcvtps2ph with
// _MM_FROUND_TO_NEAREST_INT): subnormal results rounded at 2^-24, |x| >= 65520 -> inf, NaN stays
// a (quiet) NaN. Scalar, for baseline code (model.cpp writes the fp16 KV cache with it).
uint16_t f32_to_f16(float v);
// The scalar quantizer (the SIMD-less tables point at it).
float quantize_row_ref(const float* x, int n, int n_pad, int8_t* q, int32_t* sum);
// The scalar part every quantize_row shares: q[i] = round-half-even(x[i] * s) for i in [i0, n), zeros
// in [n, n_pad); returns total plus the sum of those q (the SIMD paths call it for their tails).
inline int32_t quantize_tail(const float* x, int i0, int n, int n_pad, float s, int8_t* q, int32_t total) {
  for (int i = i0; i < n; ++i) {
    q[i] = static_cast<int8_t>(std::min(127.f, std::max(-128.f, std::nearbyint(x[i] * s))));
    total += q[i];
  }
  for (int i = std::max(i0, n); i < n_pad; ++i) q[i] = 0;
  return total;
}
constexpr float kActEps = 1e-5f;  // bitnet.quant.ACT_EPS: an all-zero token quantizes to zeros

}  // namespace bitnet
