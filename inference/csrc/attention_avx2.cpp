// attend_group_avx2 (attention.h), compiled with -mavx2 -mfma -mf16c -ffp-contract=off, in x86-64
// builds only (elsewhere attention.cpp has throwing stubs); the engine calls it on the avx2 and
// avxvnni paths. attention_blocked_inl.h's three passes with these 8-lane steps:
//   1. scores: per query, 8 dot products of hd values accumulated in 8 vectors and reduced together
//      (one 8-lane transpose-add), times scale, a block of 8 cache rows at a time;
//   2. softmax per query: max, e = exp(s - max) (exp_f32's arithmetic on 8 lanes; the argument is
//      clamped at -87), their sum in row order, p = e / sum;
//   3. out_i = sum_j p_j V_j, j in order, in column chunks of 8 vectors held in registers (AVX2 has
//      16: a whole 128-wide row of accumulators would spill).
#include "attention.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <stdexcept>

#include <immintrin.h>

#include "attention_blocked_inl.h"
#include "exp_avx2_inl.h"
#include "kernels.h"

namespace bitnet {

bool attend_group_avx2_supports(int hd) { return hd > 0 && hd % 8 == 0 && hd <= kAttendGroupMaxHd; }

namespace {

// a[0..7] -> one vector whose lane r is the sum of a[r]'s 8 lanes.
inline __m256 reduce8(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  // u0 lanes: [a0 lo, a1 lo, a2 lo, a3 lo, a0 hi, a1 hi, a2 hi, a3 hi] (lo / hi: 128-bit halves)
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// 8 cache values as fp32: fp32 as stored, fp16 (IEEE bit patterns) widened exactly (vcvtph2ps).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// The vector steps of attention_blocked_inl.h's driver on 8 lanes.
struct Avx2 {
  static constexpr int kLanes = 8, kRows = 8;  // kRows: cache rows per score block
  static constexpr int kChunk = 8;             // output vectors held in registers by accumulate

  // Scores of rows K_0 .. K_7 (stride ld) against q: sc[r] = scale * (q . K_r).
  template <int NV, typename E>
  static void scores(const float* q, const E* K, int ld, float scale, float* sc) {
    __m256 acc[kRows];
    for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
    for (int c = 0; c < NV; ++c) {
      const __m256 qc = _mm256_loadu_ps(q + 8 * c);
      for (int r = 0; r < kRows; ++r) acc[r] = _mm256_fmadd_ps(qc, load8(K + static_cast<size_t>(r) * ld + 8 * c), acc[r]);
    }
    _mm256_storeu_ps(sc, _mm256_mul_ps(reduce8(acc), _mm256_set1_ps(scale)));
  }

  template <int NV, typename E>
  static float score1(const float* q, const E* Kj) {
    __m256 acc = _mm256_setzero_ps();
    for (int c = 0; c < NV; ++c) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), load8(Kj + 8 * c), acc);
    return hsum(acc);
  }

  // Row scores in place -> softmax probabilities, over n values.
  static void softmax(float* sc, int n) {
    __m256 mx = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    int j = 0;
    for (; j + 8 <= n; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(sc + j));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, mx);
    float m = lanes[0];
    for (int l = 1; l < 8; ++l) m = std::max(m, lanes[l]);
    for (; j < n; ++j) m = std::max(m, sc[j]);
    const __m256 mv = _mm256_set1_ps(m), lo = _mm256_set1_ps(-87.f);
    for (j = 0; j < n; j += 8) {
      const __m256i k = first8(std::min(8, n - j));
      // max(-87, x) keeps a NaN x (the second operand is returned when either is NaN)
      _mm256_maskstore_ps(sc + j, k, exp8_in_range(_mm256_max_ps(lo, _mm256_sub_ps(_mm256_maskload_ps(sc + j, k), mv))));
    }
    float sum = 0.f;  // in row order, as attend adds it
    for (j = 0; j < n; ++j) sum += sc[j];
    const __m256 denom = _mm256_set1_ps(sum);
    for (j = 0; j < n; j += 8) {
      const __m256i k = first8(std::min(8, n - j));
      _mm256_maskstore_ps(sc + j, k, _mm256_div_ps(_mm256_maskload_ps(sc + j, k), denom));
    }
  }

  // out (= where init, else +=) sum_r p[r] V_r over rows rows of stride ld, in column chunks of
  // kChunk vectors held in registers (16 ymm: a whole 128-wide row of accumulators would spill).
  template <int NV, typename E>
  static void accumulate(const float* p, int rows, const E* Vb, int ld, float* out, bool init) {
    constexpr int W = NV < kChunk ? NV : kChunk;
    for (int c0 = 0; c0 < NV; c0 += W) {
      const int w = std::min(W, NV - c0);
      float* o_out = out + 8 * c0;
      __m256 o[W];
      for (int c = 0; c < W; ++c) o[c] = c < w && !init ? _mm256_loadu_ps(o_out + 8 * c) : _mm256_setzero_ps();
      for (int r = 0; r < rows; ++r) {
        const __m256 pr = _mm256_set1_ps(p[r]);
        const E* vr = Vb + static_cast<size_t>(r) * ld + 8 * c0;
        if (w == W)
          for (int c = 0; c < W; ++c) o[c] = _mm256_fmadd_ps(pr, load8(vr + 8 * c), o[c]);
        else
          for (int c = 0; c < w; ++c) o[c] = _mm256_fmadd_ps(pr, load8(vr + 8 * c), o[c]);
      }
      for (int c = 0; c < w; ++c) _mm256_storeu_ps(o_out + 8 * c, o[c]);
    }
  }
};

template <typename E>
void attend_group_any(const float* const* qs, float* const* outs, const int* n, int nq, const E* K, const E* V,
                      int ld, int hd, float scale, float* scratch) {
  if (!attend_group_avx2_supports(hd))
    throw std::invalid_argument("attend_group_avx2: head_dim must be a multiple of 8, at most 256");
  attend_group_blocked<Avx2>(qs, outs, n, nq, K, V, ld, hd, scale, scratch);
}

}  // namespace

void attend_group_avx2(const float* const* qs, float* const* outs, const int* n, int nq, const float* K,
                       const float* V, int ld, int hd, float scale, float* scratch) {
  attend_group_any(qs, outs, n, nq, K, V, ld, hd, scale, scratch);
}

void attend_group_avx2(const float* const* qs, float* const* outs, const int* n, int nq, const uint16_t* K,
                       const uint16_t* V, int ld, int hd, float scale, float* scratch) {
  attend_group_any(qs, outs, n, nq, K, V, ld, hd, scale, scratch);
}

void f32_to_f16_row_f16c(const float* src, uint16_t* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)  // vcvtps2ph rounds to nearest even as the immediate says, MXCSR aside
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

}  // namespace bitnet
