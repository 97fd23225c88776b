// AVX2 kernels (compiled with -mavx2 -mfma -mf16c only). Scalar twin: kernels_ref.cpp.
// No VNNI here: u8 x s8 products go through vpmaddubsw (pairs -> int16) and vpmaddwd (-> int32).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "kernels_avx2_inl.h"
#include "kernels_lut_inl.h"

namespace bitnet {
namespace {


// ---- i2 tiles, several tokens (prefill, batched decode). One row block at a time, in chunks of
// kChunkTiles tiles: the chunk's codes are unpacked once into bytes c in {0, 1, 2} (unpack_chunk:
// a shift and a mask per plane), then every token reuses them. c is the unsigned operand of
// vpmaddubsw, loaded once per plane for all the tokens of a register tile; the activation side is
// x itself (signed), four bytes broadcast once and used for both halves of the row block. So each
// product instruction costs one add and half a broadcast, with no per-token unpacking.
// Arithmetic: sum_k c_k x_k = q.x + sum_k x_k (c = q + 1), so q.x = that - xsum. Invariants: a
// vpmaddubsw pair lies in [2 * 2 * -128, 2 * 2 * 127] = [-512, 508] (no saturation); one tile adds
// four of them per int16 lane, so the kChunkTiles = 16 tiles of a chunk sum to [-32768, 32512],
// which int16 holds: the wrapping vpaddw chain ends on the exact sum whatever its order. vpmaddwd
// with ones widens each chunk's sums into int32 (the running sums live in y itself).

// Products: vpmaddubsw into int16 (pin: see kernels_avx2_inl.h), widened per chunk by vpmaddwd.
struct MaddAvx2 {
  static void step(__m256i c, __m256i xb, __m256i& a) {
    a = _mm256_add_epi16(a, _mm256_maddubs_epi16(c, xb));
    pin(a);
  }
  static __m256i widen(__m256i a) { return _mm256_madd_epi16(a, _mm256_set1_epi16(1)); }
};

// Decode (one token), both halves of each tile in one pass over the weight stream (prefetched
// kPrefetchBytes ahead). One shift gives the high nibbles; masking each nibble with 3 and with 12
// gives the four planes, two as codes c in {0, 1, 2} and two as 4c (c shifted up by 2 bits, at
// most 8: a valid u8 operand). vpmaddubsw sums two products: |c pair| <= 2 * 2 * 128 = 512 and
// |4c pair| <= 2048, never saturating. Per int16 lane a tile adds at most 2 * 512 to the c
// accumulator and 2 * 2048 to the 4c one, so kWiden16 = 7 tiles stay within 7168 and 28672:
// exact in int16. Then vpmaddwd with ones widens both into int32, where the 4c sums, multiples of
// 4, are divided exactly by an arithmetic shift. On CPUs with one vector integer multiplier this
// path is bound by its multiply instructions; a vpmaddwd per tile would be one in five.
constexpr int kWiden16 = 7;
inline void block_t1(const TernaryTile* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
  const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a = _mm256_setzero_si256(), b = a;  // rows 0-7, rows 8-15 (int32)
  // acc1 += c products (planes 0 and 2), acc4 += 4c products (planes 1 and 3).
  auto planes = [&](__m256i p, __m256i& acc1, __m256i& acc4, __m256i x0, __m256i x1, __m256i x2, __m256i x3) {
    const __m256i h = _mm256_srli_epi16(p, 4);
    acc1 = _mm256_add_epi16(acc1, _mm256_maddubs_epi16(_mm256_and_si256(p, m3), x0));
    acc4 = _mm256_add_epi16(acc4, _mm256_maddubs_epi16(_mm256_and_si256(p, m12), x1));
    acc1 = _mm256_add_epi16(acc1, _mm256_maddubs_epi16(_mm256_and_si256(h, m3), x2));
    acc4 = _mm256_add_epi16(acc4, _mm256_maddubs_epi16(_mm256_and_si256(h, m12), x3));
  };
  for (int kb0 = 0; kb0 < KB; kb0 += kWiden16) {
    const int kb1 = std::min(KB, kb0 + kWiden16);
    __m256i a1 = _mm256_setzero_si256(), a4 = a1, b1 = a1, b4 = a1;
    for (int kb = kb0; kb < kb1; ++kb) {
      _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
      const int8_t* xt = x + kb * kTileCols;
      const __m256i x0 = bcast4(xt), x1 = bcast4(xt + 4), x2 = bcast4(xt + 8), x3 = bcast4(xt + 12);
      planes(_mm256_loadu_si256((const __m256i*)wrow[kb].b), a1, a4, x0, x1, x2, x3);
      planes(_mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32)), b1, b4, x0, x1, x2, x3);
    }
    a = _mm256_add_epi32(a, _mm256_add_epi32(_mm256_madd_epi16(a1, ones), _mm256_srai_epi32(_mm256_madd_epi16(a4, ones), 2)));
    b = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_madd_epi16(b1, ones), _mm256_srai_epi32(_mm256_madd_epi16(b4, ones), 2)));
  }
  const __m256i xs = _mm256_set1_epi32(xsum);
  _mm256_storeu_si256((__m256i*)y, _mm256_sub_epi32(a, xs));
  _mm256_storeu_si256((__m256i*)(y + 8), _mm256_sub_epi32(b, xs));
}

// Two tokens, streaming like block_t1 (no chunk unpacked to L1: at 2 tokens the unpack's stores
// and reloads cost as much as the products): each half tile decoded once (one shift, four masks)
// and used by both tokens, whose four broadcasts per tile are shared by the two halves. Same
// invariants as block_t1 per token (kWiden16 tiles per int16 accumulator); the int32 sums go
// through y (eight int16 accumulators, two masks and the operands fill the registers).
inline void block_t2(const TernaryTile* wrow, int KB, const int8_t* x, int ldx, const int32_t* xsum, int32_t* y,
                     int ldy) {
  const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12);
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* x0 = x;
  const int8_t* x1 = x + ldx;
  int32_t* y0 = y;
  int32_t* y1 = y + ldy;
  // Adds c (planes 0, 2) and 4c (planes 1, 3) products of one half tile p for one token (xt).
  auto planes = [&](__m256i lo, __m256i hi, const int8_t* xt, __m256i& acc1, __m256i& acc4) {
    acc1 = _mm256_add_epi16(acc1, _mm256_maddubs_epi16(_mm256_and_si256(lo, m3), bcast4(xt)));
    acc4 = _mm256_add_epi16(acc4, _mm256_maddubs_epi16(_mm256_and_si256(lo, m12), bcast4(xt + 4)));
    acc1 = _mm256_add_epi16(acc1, _mm256_maddubs_epi16(_mm256_and_si256(hi, m3), bcast4(xt + 8)));
    acc4 = _mm256_add_epi16(acc4, _mm256_maddubs_epi16(_mm256_and_si256(hi, m12), bcast4(xt + 12)));
    pin(acc1);
    pin(acc4);
  };
  auto widen = [&](__m256i acc1, __m256i acc4, int32_t* yp, bool first) {
    const __m256i v = _mm256_add_epi32(_mm256_madd_epi16(acc1, ones), _mm256_srai_epi32(_mm256_madd_epi16(acc4, ones), 2));
    _mm256_storeu_si256((__m256i*)yp, first ? v : _mm256_add_epi32(_mm256_loadu_si256((const __m256i*)yp), v));
  };
  for (int kb0 = 0; kb0 < KB; kb0 += kWiden16) {
    const int kb1 = std::min(KB, kb0 + kWiden16);
    __m256i a1 = _mm256_setzero_si256(), a4 = a1, b1 = a1, b4 = a1;  // token 0: rows 0-7, rows 8-15
    __m256i c1 = a1, c4 = a1, d1 = a1, d4 = a1;                      // token 1
    for (int kb = kb0; kb < kb1; ++kb) {
      _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
      const int col = kb * kTileCols;
      const __m256i p = _mm256_loadu_si256((const __m256i*)wrow[kb].b);
      const __m256i ph = _mm256_srli_epi16(p, 4);
      planes(p, ph, x0 + col, a1, a4);
      planes(p, ph, x1 + col, c1, c4);
      const __m256i q = _mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32));
      const __m256i qh = _mm256_srli_epi16(q, 4);
      planes(q, qh, x0 + col, b1, b4);
      planes(q, qh, x1 + col, d1, d4);
    }
    widen(a1, a4, y0, kb0 == 0);
    widen(b1, b4, y0 + 8, kb0 == 0);
    widen(c1, c4, y1, kb0 == 0);
    widen(d1, d4, y1 + 8, kb0 == 0);
  }
  for (int t = 0; t < 2; ++t) {
    int32_t* yp = t ? y1 : y0;
    const __m256i xs = _mm256_set1_epi32(xsum[t]);
    _mm256_storeu_si256((__m256i*)yp, _mm256_sub_epi32(_mm256_loadu_si256((const __m256i*)yp), xs));
    _mm256_storeu_si256((__m256i*)(yp + 8), _mm256_sub_epi32(_mm256_loadu_si256((const __m256i*)(yp + 8)), xs));
  }
}

struct I2Avx2 {
  static constexpr int kStreamMaxT = 4;  // 2-4 tokens: block_t2 (+ block_t1), see i2_gemm_chunked
  static constexpr int kChunkTT = 4;     // tokens per pass over an unpacked chunk (chunk_n)
  static void one(const TernaryTile* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
    block_t1(wrow, KB, x, xsum, y);
  }
  static void two(const TernaryTile* wrow, int KB, const int8_t* x, int ldx, const int32_t* xsum, int32_t* y, int ldy) {
    block_t2(wrow, KB, x, ldx, xsum, y, ldy);
  }
  template <int N>
  static void chunk(const uint8_t* c, int n, const int8_t* const* xt, int32_t* const* yt, bool first) {
    chunk_n<N, MaddAvx2>(c, n, xt, yt, first);
  }
};

// Tried for 5-8 tokens and not kept (branch avx2step-hybrid, 2026-12-06): a hybrid that sends two
// of every four tiles through 8-lane lookup tables (load ports) and two through this pair (vector
// ALU ports) in one loop, a lookup row per multiply plane step, bit-exact. One 2B4T layer, 2
// threads, CPU time: 2.15 ms at 8 tokens against 1.91 ms here (0.89x; 0.79x at 5). The lookups
// need their tables in L1, so the loop runs a block of columns over every row block: the multiply
// half pays an int32 round trip through y per block, the lookup half one through its int16 sums,
// and every row block makes its table offsets and unpacks its codes again per block: about 20%
// more uops than the two inner loops themselves. Those loops alone, on registers and L1 (offsets
// made once, kept in L1), gave 8 vpmaddubsw + 8 lookups a step 1.2-1.25x the products per cycle of
// the multiply loop alone (lookups alone 1.15x; 64-bit table pointers instead of 16-bit offsets,
// i.e. no indexed addressing, the same): the halves do not add up as their port counts suggest,
// and the overheads take the rest. This pair runs at about 88% of its bound at 8 tokens (2 vector
// ALU uops per 32 products plus the unpack's 0.22, on three ports).
// Nor a pure 8-token lookup product (branch avx2step8-lut8, 2026-12-06; benchmarks/proto/
// lut8_microbench.cpp): 81-row tables of 8 int16 lanes for 5 tiles in L1, each weight byte's compact
// index doubled (one vpshufb pair per 32 bytes, made a chunk of row blocks ahead) as the index
// register of `paddw disp(tab, idx, 8), xmm` (legacy SSE in a file of its own: Intel cores
// unlaminate the VEX form when the address has an index register, 0.84-0.87 against 0.70 cycles
// per 32 products), bytes taken apart by movzx / shr on the scalar ports. Bit-exact. On L1 data the
// lookups reached 0.57-0.60 cycles per 32 products against 0.80 for this loop, 0.89 with the unpack;
// in the engine 1.00-1.07x this kernel on a 2B4T layer at 8 tokens (2 threads, CPU time), 0.73x at
// 5, 0.81-0.84x the avxvnni kernel at 8: the index pass took about 20% of its time (a weight stream
// that reads nk x 64 bytes every KB x 64, software-prefetched), the row loop ran 15% slower than on
// L1 (sums and index bytes streaming beside the tables), and per lookup 2.5-3 ALU uops (the add,
// 1.25-2 scalar ones, the index pass's 0.3) share five ports, a bound near 0.6 cycles.
// Then (branch lut8mix, 2026-12-06, not merged either): the same kernel as the avx2 / avxvnni lut
// family at 1-8 tokens, its index bytes read in the tiles' own layout and taken apart without
// high-byte registers, or read from an index copy made at load (one byte per 4 weights: as much
// memory again as the i2 tiles; peak RSS of 30-layer 2B4T 1.51 -> 2.02 GB). Per 2B4T layer at 8
// tokens: 1.07-1.11x this kernel without the copy, 1.16-1.25x with it, 0.87-0.90x at 5 tokens with
// it and 0.4x at 2 (the lookups cost the same at any token count). In a 30-layer 8-sequence step
// the products fell from 67.6-68.4 to 60.4-62.6 ms with the copy (the step from 99-104 to 90-95 ms,
// about 2.8x a one-token step) and not at all without it. Moving index bytes from the ALU ports to
// the load ports (movzx from memory) was slower at every mix (lut8_microbench.cpp): loads top out
// near 2.6 a cycle, so about 0.5 cycles a lookup is the design's floor here; in the engine it ran
// about 0.72, the running sums' round trips taking 12-15% and the table builds 3-6%. Short of the
// 2.5x step even at its floor (about 47 ms of products), and paying only with the copy, it stays
// on its branch. Its tables indexed by the raw weight byte instead (no index bytes, no copy; branch
// lut8raw: sparse 256-row tables, row b at 16 b) ran slower than both: 2 scalar uops a lookup
// against 1.5 in an ALU-bound loop, 0.85-0.99x this kernel per layer at 8 tokens, products 77-78 ms
// in the 8-sequence step against 69-71 (this kernel) and 65 (the copy).
void ternary_gemm_avx2(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                     const int32_t* xsum, int T, int32_t* y, int ldy) {
  i2_gemm_chunked<I2Avx2>(w, KB, mb0, mb1, x, ldx, xsum, T, y, ldy);
}

inline __m256 load_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline __m256 load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
inline __m256 load_f32(const float* p) { return _mm256_loadu_ps(p); }
inline float f32_id(float v) { return v; }

template <typename E, __m256 (*Load)(const E*), float (*Conv)(E)>
void dot_rows_avx2(const E* W, int C, int r0, int r1, const float* h, int T, float* out, int ldo) {
  const int C8 = C & ~7;
  for (int t = 0; t < T; ++t) {
    const float* ht = h + static_cast<size_t>(t) * C;
    float* ot = out + static_cast<size_t>(t) * ldo;
    int r = r0;
    for (; r + 2 <= r1; r += 2) {
      const E* e0 = W + static_cast<size_t>(r) * C;
      const E* e1 = e0 + C;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0;
      for (int c = 0; c < C8; c += 8) {
        const __m256 hv = _mm256_loadu_ps(ht + c);
        a0 = _mm256_fmadd_ps(Load(e0 + c), hv, a0);
        a1 = _mm256_fmadd_ps(Load(e1 + c), hv, a1);
      }
      float s0 = hsum_ps(a0), s1 = hsum_ps(a1);
      for (int c = C8; c < C; ++c) {
        s0 += Conv(e0[c]) * ht[c];
        s1 += Conv(e1[c]) * ht[c];
      }
      ot[r] = s0;
      ot[r + 1] = s1;
    }
    for (; r < r1; ++r) {
      const E* e = W + static_cast<size_t>(r) * C;
      __m256 a = _mm256_setzero_ps();
      for (int c = 0; c < C8; c += 8) a = _mm256_fmadd_ps(Load(e + c), _mm256_loadu_ps(ht + c), a);
      float s = hsum_ps(a);
      for (int c = C8; c < C; ++c) s += Conv(e[c]) * ht[c];
      ot[r] = s;
    }
  }
}

// int8 head with the sign trick: |e| (unsigned) times sign(e)*x (signed) equals e*x; with both in
// [-127, 127] a vpmaddubsw pair is at most 2*127*127 = 32258 < 32767, so it never saturates;
// vpmaddwd with ones widens it. One row against TT <= 4 tokens: the row is read from memory once
// for every TT tokens; |e| is taken once per 32 columns and shared. Up to 4 tokens this streams
// the head at the read bandwidth.
inline __m256i head_sign_dot32(__m256i ev, __m256i ae, const int8_t* x) {
  const __m256i xv = _mm256_loadu_si256((const __m256i*)x);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ae, _mm256_sign_epi8(xv, ev)), _mm256_set1_epi16(1));
}
template <int TT>
inline void head_i8_row_sign(const int8_t* e, int Cp, const int8_t* x, int32_t* out, int ldo) {
  __m256i acc[TT];
  for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_si256();
  for (int c = 0; c < Cp; c += 32) {
    if (c % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(e + c) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i ev = _mm256_loadu_si256((const __m256i*)(e + c));
    const __m256i ae = _mm256_sign_epi8(ev, ev);
    for (int t = 0; t < TT; ++t) acc[t] = _mm256_add_epi32(acc[t], head_sign_dot32(ev, ae, x + static_cast<size_t>(t) * Cp + c));
  }
  for (int t = 0; t < TT; ++t) out[static_cast<size_t>(t) * ldo] = hsum_epi32(acc[t]);
}
// One token (decode): 64 columns an iteration (Cp is a multiple of kHeadColAlign = 64) into two
// accumulators (ILP), no branch in the loop.
template <>
inline void head_i8_row_sign<1>(const int8_t* e, int Cp, const int8_t* x, int32_t* out, int /*ldo*/) {
  static_assert(kHeadColAlign % 64 == 0, "two 32-column steps an iteration");
  __m256i a0 = _mm256_setzero_si256(), a1 = a0;
  for (int c = 0; c < Cp; c += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(e + c) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i e0 = _mm256_loadu_si256((const __m256i*)(e + c));
    const __m256i e1 = _mm256_loadu_si256((const __m256i*)(e + c + 32));
    a0 = _mm256_add_epi32(a0, head_sign_dot32(e0, _mm256_sign_epi8(e0, e0), x + c));
    a1 = _mm256_add_epi32(a1, head_sign_dot32(e1, _mm256_sign_epi8(e1, e1), x + c + 32));
  }
  *out = hsum_epi32(_mm256_add_epi32(a0, a1));
}

// int8 head, one tile of 5 to 8 tokens (a server's batched decode step): compute bound, not read
// bound, at that many tokens. The row is read once for the tile, each 16 columns sign-extended to
// int16 once (vpmovsxbw) and shared by the tile; the activations were widened to int16 once per
// call (x16). Each 16 products are then one vpmaddwd and one vpaddd per token, without the sign
// trick's per-token vpsignb: 0.93x its time at 8 tokens (one thread, 2B4T's head; at 2-4 tokens
// both stream at the read bandwidth and the sign trick was a little faster, at 16 two tiles' int16
// activations crowd L1 and it was 1.14x slower, so those keep it). Invariant: |e x| <= 127 * 127,
// a vpmaddwd pair at most 32258, and the int32 lanes hold Cp * 127 * 127 for Cp < 133144: exact.
// Not shorter: an unsigned offset (x + 128 or e + 128 as vpmaddubsw's u8 operand, with a row or
// token sum subtracted) saturates inside one vpmaddubsw pair (2 * 255 * 127 = 64770 > 32767) even
// though x stays in [-127, 127] (test_quantizer_range.py), so two pairs cannot share an int16
// lane either. Nor faster (one thread, half a 2B4T head, 8 tokens): x16 interleaved by column,
// two rows a pass, two 4-token passes a row, 8 KiB prefetch, row groups over 1280-column chunks
// (all within 3% or slower). This loop runs at about 77% of its 4 ALU uops per 32 products with
// the head in L2, 70% streaming it from DRAM.
constexpr int kHeadTT16 = 8;  // 8 accumulators + 2 row halves + 2 products: 12 ymm registers
template <int TT>
inline void head_i8_row_i16(const int8_t* e, int Cp, const int16_t* x16, int32_t* out, int ldo) {
  __m256i acc[TT];
  for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_si256();
  for (int c = 0; c < Cp; c += 32) {
    if (c % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(e + c) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i e0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(e + c)));
    const __m256i e1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(e + c + 16)));
    for (int t = 0; t < TT; ++t) {
      const int16_t* xt = x16 + static_cast<size_t>(t) * Cp + c;
      const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(e0, _mm256_load_si256((const __m256i*)xt)),
                                         _mm256_madd_epi16(e1, _mm256_load_si256((const __m256i*)(xt + 16))));
      acc[t] = _mm256_add_epi32(acc[t], p);
      pin(acc[t]);  // GCC otherwise spilled an accumulator to the stack inside the loop
    }
  }
  for (int t = 0; t < TT; ++t) out[static_cast<size_t>(t) * ldo] = hsum_epi32(acc[t]);
}

void head_i8_avx2(const int8_t* E, const int32_t* /*rowsum: not needed*/, int Cp, int r0, int r1, const int8_t* x,
                  int T, int32_t* out, int ldo) {
  if (T < 5 || T > kHeadTT16) {  // the sign trick, tiles of 4
    head_i8_rows<4>([&](auto tt, int /*r*/, const int8_t* e, int t, int32_t* o) {
      head_i8_row_sign<decltype(tt)::value>(e, Cp, x + static_cast<size_t>(t) * Cp, o, ldo);
    }, E, Cp, r0, r1, T, out, ldo);
    return;
  }
  // x sign-extended to int16 once for every row, then one tile of all T tokens per row
  int16_t* x16 = reinterpret_cast<int16_t*>(head_scratch(static_cast<size_t>(T) * Cp * sizeof(int16_t)));
  for (size_t i = 0; i < static_cast<size_t>(T) * Cp; i += 16)
    _mm256_store_si256((__m256i*)(x16 + i), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(x + i))));
  head_i8_rows<kHeadTT16>([&](auto tt, int /*r*/, const int8_t* e, int t, int32_t* o) {
    head_i8_row_i16<decltype(tt)::value>(e, Cp, x16 + static_cast<size_t>(t) * Cp, o, ldo);
  }, E, Cp, r0, r1, T, out, ldo);
}

// int4 head: one row against TT tokens pre-biased to u8 (xu = x + 128). The two 32-byte halves of
// a block's nibbles give, masked low / shifted high, one whole group each (columns 0..31, 32..63,
// 64..95, 96..127) as signed bytes q = nibble - 8 in [-8, 7]; vpshufb puts each group's u8 scale in
// every int16 lane. Invariants: vpmaddubsw(xu, q) pairs are at most 2 * 255 * 8 = 4080 in
// magnitude (no saturation); vpmaddwd with the scale (<= 255) widens to int32 exactly. The lanes
// hold sum (x + 128) * q * sc = result + rowbias, modulo 2^32 past Cp = 4096 (int32 addition
// wraps exactly; result and rowbias lie within int32 for Cp <= kHeadI4MaxCols), so subtracting
// rowbias gives the result exactly. A single token alternates two accumulators.
template <int TT>
inline void head_i4_row_tt(const HeadI4Block* row, int nb, int32_t rowbias, int Cp, const uint8_t* xu, int32_t* out,
                           int ldo) {
  const __m256i m4 = _mm256_set1_epi8(0x0f), eight = _mm256_set1_epi8(8);
  __m256i acc[TT], acc2 = _mm256_setzero_si256();
  for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_si256();
  for (int b = 0; b < nb; ++b) {
    _mm_prefetch(reinterpret_cast<const char*>(row + b) + kPrefetchBytes, _MM_HINT_T0);
    const __m256i p0 = _mm256_loadu_si256((const __m256i*)row[b].qs);
    const __m256i p1 = _mm256_loadu_si256((const __m256i*)(row[b].qs + 32));
    const __m256i q[4] = {_mm256_sub_epi8(_mm256_and_si256(p0, m4), eight),
                          _mm256_sub_epi8(_mm256_and_si256(p1, m4), eight),
                          _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(p0, 4), m4), eight),
                          _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(p1, 4), m4), eight)};
    int32_t s4;
    std::memcpy(&s4, row[b].sc, 4);
    const __m256i sb = _mm256_set1_epi32(s4);
    for (int g = 0; g < 4; ++g) {
      // int16 lane = (scale byte g, zero byte): 0x80 selects zero.
      const __m256i sg = _mm256_shuffle_epi8(sb, _mm256_set1_epi16(static_cast<short>(0x8000 | g)));
      for (int t = 0; t < TT; ++t) {
        const uint8_t* xt = xu + static_cast<size_t>(t) * Cp + static_cast<size_t>(b) * kHeadI4Cols + 32 * g;
        const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i*)xt), q[g]), sg);
        __m256i& a = (TT == 1 && (g & 1)) ? acc2 : acc[t];
        a = _mm256_add_epi32(a, d);
      }
    }
  }
  if (TT == 1) acc[0] = _mm256_add_epi32(acc[0], acc2);
  for (int t = 0; t < TT; ++t) {
    const uint32_t sum = static_cast<uint32_t>(hsum_epi32(acc[t])) - static_cast<uint32_t>(rowbias);
    out[static_cast<size_t>(t) * ldo] = static_cast<int32_t>(sum);  // modulo 2^32, see above
  }
}

void head_i4_avx2(const HeadI4Block* W, const int32_t* rowbias, int Cp, int r0, int r1, const int8_t* x, int T,
                  int32_t* out, int ldo) {
  std::vector<uint8_t> xu(static_cast<size_t>(T) * Cp);  // x + 128, once for every row
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  for (size_t i = 0; i < xu.size(); i += 32)
    _mm256_storeu_si256((__m256i*)(xu.data() + i), _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(x + i)), bias));
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
// nearbyint does; |x * s| <= 127, so the saturating packs never clamp; s is computed in scalar fp32
// exactly as the reference computes it.
float quantize_row_avx2(const float* x, int n, int n_pad, int8_t* q, int32_t* sum) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 mx = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(x + i), absmask));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float amax = _mm_cvtss_f32(m4);
  for (int j = i; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float s = (1.f / std::max(amax, kActEps)) * 127.f;  // torch evaluates 127 / t as (1 / t) * 127
  const __m256 sv = _mm256_set1_ps(s);
  // Two packs leave the 4-byte groups of v0..v3 in the order v0a v1a v2a v3a v0b v1b v2b v3b.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i acc = _mm256_setzero_si256();
  i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i v[4];
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * k), sv));
      acc = _mm256_add_epi32(acc, v[k]);
    }
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_storeu_si256((__m256i*)(q + i), _mm256_permutevar8x32_epi32(b, order));
  }
  int32_t total = hsum_epi32(acc);
  *sum = quantize_tail(x, i, n, n_pad, s, q, total);
  return s;
}

float dot_f32_avx2(const float* a, const float* b, int n) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum_ps(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_f32_avx2(float alpha, const float* x, float* y, int n) {
  const __m256 av = _mm256_set1_ps(alpha);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// fp16 KV rows: vcvtph2ps widens 8 halves exactly (every fp16 value is an fp32 value).
float dot_f16_avx2(const float* a, const uint16_t* b, int n) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_f16(b + i), acc);
  float s = hsum_ps(acc);
  for (; i < n; ++i) s += a[i] * f16_to_f32(b[i]);
  return s;
}

void axpy_f16_avx2(float alpha, const uint16_t* x, float* y, int n) {
  const __m256 av = _mm256_set1_ps(alpha);
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, load_f16(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * f16_to_f32(x[i]);
}

// ---- t5 tiles (TernaryTile5): digits by T5Digits (kernels_avx2_inl.h).

// AVX2 t5 tile products: vpmaddubsw sums two c * x products, |.| <= 2 * 2 * 128 = 512, never
// saturating; the five digits' int16 sums add up to at most 2560 in magnitude, exact in int16;
// vpmaddwd with ones widens to int32 (20 products per lane per tile). sum c*x - xsum = q.x exactly.
struct T5Avx2 {
  static __m256i tile5(__m256i acc, const __m256i* c, const int8_t* xt) {
    __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(c[0], bcast4(xt + 0)), _mm256_maddubs_epi16(c[1], bcast4(xt + 4)));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c[2], bcast4(xt + 8)));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c[3], bcast4(xt + 12)));
    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c[4], bcast4(xt + 16)));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)));
  }
};

template <int TT>
inline void t5_block_tt(const TernaryTile5* wrow, int KB, const int8_t* x, int ldx, const int32_t* xsum, int32_t* y,
                        int ldy) {
  t5_half_tt<TT, T5Avx2>(wrow, KB, 0, x, ldx, xsum, y, ldy);
  t5_half_tt<TT, T5Avx2>(wrow, KB, 1, x, ldx, xsum, y, ldy);
}

// Decode (one token): both halves of each tile in one pass over the weight stream, prefetched
// kPrefetchBytes ahead. The digits stay scaled (64 c_i <= 128, a valid u8 operand): vpmaddubsw
// gives 64 times the pair sum, within [2 * 128 * -128, 2 * 128 * 127] = [-32768, 32512], which
// int16 holds (no saturation), and an arithmetic shift by 6 divides it back exactly. The five
// rescaled digits sum to at most 5 * 2 * 2 * 128 = 2560 in magnitude in int16 before vpmaddwd.
inline void t5_block_t1(const TernaryTile5* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a = _mm256_setzero_si256(), b = a;  // rows 0-7, rows 8-15
  auto half = [&](__m256i p, const __m256i* xv) {
    T5Digits d(p);
    __m256i s = _mm256_srai_epi16(_mm256_maddubs_epi16(d.next64(), xv[0]), 6);
    for (int i = 1; i < kTile5Digits; ++i)
      s = _mm256_add_epi16(s, _mm256_srai_epi16(_mm256_maddubs_epi16(d.next64(), xv[i]), 6));
    return _mm256_madd_epi16(s, ones);
  };
  for (int kb = 0; kb < KB; ++kb) {
    _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
    const int8_t* xt = x + kb * kTile5Cols;
    const __m256i xv[kTile5Digits] = {bcast4(xt), bcast4(xt + 4), bcast4(xt + 8), bcast4(xt + 12), bcast4(xt + 16)};
    a = _mm256_add_epi32(a, half(_mm256_loadu_si256((const __m256i*)wrow[kb].b), xv));
    b = _mm256_add_epi32(b, half(_mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32)), xv));
  }
  const __m256i xs = _mm256_set1_epi32(xsum);
  _mm256_storeu_si256((__m256i*)y, _mm256_sub_epi32(a, xs));
  _mm256_storeu_si256((__m256i*)(y + 8), _mm256_sub_epi32(b, xs));
}

void ternary5_gemm_avx2(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                        const int32_t* xsum, int T, int32_t* y, int ldy) {
  constexpr int TT = 4;  // 4 accumulators + 5 code vectors + constants fit the 16 ymm registers
  for (int mb = mb0; mb < mb1; ++mb) {
    const TernaryTile5* wrow = w + static_cast<size_t>(mb) * KB;
    int32_t* ym = y + mb * kTileRows;
    for_token_tiles<TT>(
        T,
        [&](auto tt, int t) {
          t5_block_tt<decltype(tt)::value>(wrow, KB, x + static_cast<size_t>(t) * ldx, ldx, xsum + t,
                                           ym + static_cast<size_t>(t) * ldy, ldy);
        },
        [&](int t) { t5_block_t1(wrow, KB, x + static_cast<size_t>(t) * ldx, xsum[t], ym + static_cast<size_t>(t) * ldy); });
  }
}

// Lookup tables (kernels_lut_inl.h): i2 32 tokens per table row (two 256-bit int16 vectors), t5 16
// (its 243-row tables would not fit L1 at 32), 16 or 8 for a short remainder.
void ternary_gemm_lut_avx2(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                           const int32_t* /*xsum*/, int T, int32_t* y, int ldy) {
  lut_gemm<LutI2, 32, 32>(w, KB, mb0, mb1, x, ldx, T, y, ldy);
}
void ternary5_gemm_lut_avx2(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                            const int32_t* /*xsum*/, int T, int32_t* y, int ldy) {
  lut_gemm<LutT5, 16, 32>(w, KB, mb0, mb1, x, ldx, T, y, ldy);
}

}  // namespace

// The lut bound at the kernels' own step: 32 tokens a lookup, two 256-bit adds.
uint32_t lut_loop_avx2(const uint8_t* idx, int64_t iters) { return lut_peak_loop<32, 32>(idx, iters); }

const Kernels kKernelsAvx2 = {
    "avx2",
    ternary_gemm_avx2,
    dot_rows_avx2<uint16_t, load_bf16, bf16_to_f32>,
    dot_rows_avx2<uint16_t, load_f16, f16_to_f32>,
    dot_rows_avx2<float, load_f32, f32_id>,
    head_i8_avx2,
    quantize_row_avx2,
    attend_with<float, dot_f32_avx2, axpy_f32_avx2>,
    head_i4_avx2,
    ternary5_gemm_avx2,
    attend_with<uint16_t, dot_f16_avx2, axpy_f16_avx2>,
    ternary_gemm_lut_avx2,
    ternary5_gemm_lut_avx2,
};


// The compute bound prefill is measured against on this path: independent vpmaddubsw ymm (the
// kernels' u8 x s8 product instruction; AVX2 has no VNNI) on registers only, twelve chains.
// Each instruction is 32 multiply-accumulates (pairs summed into int16; the values are
// meaningless, saturation included: only the throughput counts). Returns a value that depends on
// every result.
uint32_t int8_mac_loop_avx2(int64_t iters) {
  // Twelve named chains (an array was stored to the stack every iteration by GCC, and on AMD Zen 3
  // those stores, not the products, set the rate: half the true peak). Each iteration is 12
  // vpmaddubsw, kMacLoopInstrs.
  const __m256i b = _mm256_set1_epi8(1);
  __m256i a0 = _mm256_set1_epi8(0), a1 = _mm256_set1_epi8(1), a2 = _mm256_set1_epi8(2), a3 = _mm256_set1_epi8(3);
  __m256i a4 = _mm256_set1_epi8(4), a5 = _mm256_set1_epi8(5), a6 = _mm256_set1_epi8(6), a7 = _mm256_set1_epi8(7);
  __m256i a8 = _mm256_set1_epi8(8), a9 = _mm256_set1_epi8(9), a10 = _mm256_set1_epi8(10), a11 = _mm256_set1_epi8(11);
  for (int64_t it = 0; it < iters; ++it) {
    a0 = _mm256_maddubs_epi16(a0, b); a1 = _mm256_maddubs_epi16(a1, b); a2 = _mm256_maddubs_epi16(a2, b);
    a3 = _mm256_maddubs_epi16(a3, b); a4 = _mm256_maddubs_epi16(a4, b); a5 = _mm256_maddubs_epi16(a5, b);
    a6 = _mm256_maddubs_epi16(a6, b); a7 = _mm256_maddubs_epi16(a7, b); a8 = _mm256_maddubs_epi16(a8, b);
    a9 = _mm256_maddubs_epi16(a9, b); a10 = _mm256_maddubs_epi16(a10, b); a11 = _mm256_maddubs_epi16(a11, b);
    pin(a0); pin(a1); pin(a2); pin(a3); pin(a4); pin(a5); pin(a6); pin(a7); pin(a8); pin(a9); pin(a10); pin(a11);
  }
  static_assert(kMacLoopInstrs == 12, "twelve chains above");
  __m256i s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3)),
                               _mm256_add_epi16(_mm256_add_epi16(a4, a5), _mm256_add_epi16(a6, a7)));
  s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_add_epi16(a8, a9), _mm256_add_epi16(a10, a11)));
  return static_cast<uint32_t>(hsum_epi32(s));
}

// The same product with the accumulate AVX2 cannot fuse into it (no VNNI): every kernel here adds
// each vpmaddubsw result into an int16 accumulator with a vpaddw, one add per product. Eight
// accumulator chains, the four operands pinned each iteration (nothing loop-invariant to hoist),
// registers only: the most a product-and-accumulate kernel can reach before it loads anything.
// Each iteration is kMacAccLoopInstrs vpmaddubsw and as many vpaddw.
uint32_t int8_mac_acc_loop_avx2(int64_t iters) {
  __m256i c0 = _mm256_set1_epi8(1), c1 = _mm256_set1_epi8(2), x0 = _mm256_set1_epi8(3), x1 = _mm256_set1_epi8(4);
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  for (int64_t it = 0; it < iters; ++it) {
    pin(c0); pin(c1); pin(x0); pin(x1);
    a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(c0, x0)); a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(c1, x0));
    a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(c0, x1)); a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(c1, x1));
    a4 = _mm256_add_epi16(a4, _mm256_maddubs_epi16(x0, c0)); a5 = _mm256_add_epi16(a5, _mm256_maddubs_epi16(x0, c1));
    a6 = _mm256_add_epi16(a6, _mm256_maddubs_epi16(x1, c0)); a7 = _mm256_add_epi16(a7, _mm256_maddubs_epi16(x1, c1));
    pin(a0); pin(a1); pin(a2); pin(a3); pin(a4); pin(a5); pin(a6); pin(a7);
  }
  static_assert(kMacAccLoopInstrs == 8, "eight chains above");
  const __m256i s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3)),
                                     _mm256_add_epi16(_mm256_add_epi16(a4, a5), _mm256_add_epi16(a6, a7)));
  return static_cast<uint32_t>(hsum_epi32(s));
}

}  // namespace bitnet
