// Blocked attention (attention.h), compiled with -mavx512f -mavx512dq -mfma -ffp-contract=off only where the build is
// x86-64; the engine calls it on the avx512 and amx paths. attention_blocked_inl.h's three passes
// with these 16-lane steps, over the cache in blocks of 16 rows:
//   1. scores: per query, 16 dot products of hd values accumulated in 16 vectors and reduced
//      together (one 16-lane transpose-add instead of 16 horizontal sums), times scale;
//   2. softmax per query: max, e = exp(s - max) (exp_f32's arithmetic, 16 lanes; the argument is
//      clamped at -87, where e^x is below 2^-125 of the largest term), their sum in row order,
//      p = e / sum;
//   3. out_i = sum_j p_j V_j, j in order, the output in registers within a block.
#include "attention.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <limits>
#include <stdexcept>

#if defined(__AVX512F__)
#include <immintrin.h>

#include "attention_blocked_inl.h"
#include "exp_avx512_inl.h"
#endif

namespace bitnet {

namespace {
std::atomic<bool> g_per_head{false};
}  // namespace

void set_attention_mode(const std::string& name) {
  if (name != "blocked" && name != "per-head")
    throw std::invalid_argument("attention mode must be 'blocked' or 'per-head', got '" + name + "'");
  g_per_head = name == "per-head";
}
std::string attention_mode() { return g_per_head ? "per-head" : "blocked"; }

#if defined(__AVX512F__)
namespace {

// a[r] (16 vectors) -> one vector whose lane r is the sum of a[r]'s 16 lanes, each added in the
// order of _mm512_reduce_add_ps (lanes k + 8, then k + 4, k + 2, k + 1), so a score equals the one
// attend's AVX-512 loop computes. Inputs are taken transposed (a[4 (i % 4) + i / 4] as the i-th) so
// that the last stage leaves lane r = a[r].
inline __m512 reduce16(const __m512* a) {
  auto in = [a](int i) { return a[4 * (i % 4) + i / 4]; };
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)  // k + 8: blocks [x(0+2), x(1+3), y(0+2), y(1+3)] of x = in(2i), y = in(2i + 1)
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(in(2 * i), in(2 * i + 1), _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(in(2 * i), in(2 * i + 1), _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 4; ++i)  // k + 4: block b of u[i] holds in(4i + b)'s four partial sums
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; ++i)  // k + 2: per block [x(0+2), y(0+2), x(1+3), y(1+3)], x = u[2i], y = u[2i + 1]
    w[i] = _mm512_add_ps(_mm512_unpacklo_ps(u[2 * i], u[2 * i + 1]), _mm512_unpackhi_ps(u[2 * i], u[2 * i + 1]));
  // k + 1: lane 4b + m = in(4m + b) = a[4b + m]
  return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_ps(w[0], w[1], _MM_SHUFFLE(3, 2, 3, 2)));
}

// 16 cache values as fp32: fp32 as stored, fp16 (IEEE bit patterns) widened exactly (vcvtph2ps).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

inline __mmask16 first(int k) { return static_cast<__mmask16>((1u << k) - 1); }  // k in [0, 16]

// The vector steps of attention_blocked_inl.h's driver on 16 lanes.
struct Avx512 {
  static constexpr int kLanes = 16, kRows = 16;  // kRows: cache rows per score block

  // Scores of rows K_0 .. K_15 (stride ld) against q: sc[r] = scale * (q . K_r).
  template <int NV, typename E>
  static void scores(const float* q, const E* K, int ld, float scale, float* sc) {
    __m512 acc[kRows];
    for (int r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_ps();
    for (int c = 0; c < NV; ++c) {
      const __m512 qc = _mm512_loadu_ps(q + 16 * c);
      for (int r = 0; r < kRows; ++r)
        acc[r] = _mm512_fmadd_ps(qc, load16(K + static_cast<size_t>(r) * ld + 16 * c), acc[r]);
    }
    _mm512_storeu_ps(sc, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
  }

  template <int NV, typename E>
  static float score1(const float* q, const E* Kj) {
    __m512 acc = _mm512_setzero_ps();
    for (int c = 0; c < NV; ++c) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * c), load16(Kj + 16 * c), acc);
    return _mm512_reduce_add_ps(acc);
  }

  // Row scores in place -> softmax probabilities, over n values.
  static void softmax(float* sc, int n) {
    __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    const __m512 neg_inf = mx;
    for (int j = 0; j < n; j += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(neg_inf, first(std::min(16, n - j)), sc + j));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), lo = _mm512_set1_ps(-87.f);
    for (int j = 0; j < n; j += 16) {
      const __mmask16 k = first(std::min(16, n - j));
      // max(-87, x) keeps a NaN x (the second operand is returned when either is NaN)
      _mm512_mask_storeu_ps(sc + j, k, exp16_in_range(_mm512_max_ps(lo, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, sc + j), m))));
    }
    float sum = 0.f;  // in row order, as attend adds it
    for (int j = 0; j < n; ++j) sum += sc[j];
    const __m512 denom = _mm512_set1_ps(sum);
    for (int j = 0; j < n; j += 16) {
      const __mmask16 k = first(std::min(16, n - j));
      _mm512_mask_storeu_ps(sc + j, k, _mm512_div_ps(_mm512_maskz_loadu_ps(k, sc + j), denom));
    }
  }

  // out (= where init, else +=) sum_r p[r] V_r over rows rows of stride ld, the output in registers.
  template <int NV, typename E>
  static void accumulate(const float* p, int rows, const E* Vb, int ld, float* out, bool init) {
    __m512 o[NV];
    for (int c = 0; c < NV; ++c) o[c] = init ? _mm512_setzero_ps() : _mm512_loadu_ps(out + 16 * c);
    for (int r = 0; r < rows; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r]);
      const E* vr = Vb + static_cast<size_t>(r) * ld;
      for (int c = 0; c < NV; ++c) o[c] = _mm512_fmadd_ps(pr, load16(vr + 16 * c), o[c]);
    }
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(out + 16 * c, o[c]);
  }
};

template <typename E>
void attend_group_any(const float* const* qs, float* const* outs, const int* n, int nq, const E* K, const E* V,
                      int ld, int hd, float scale, float* scratch) {
  if (!attend_group_supports(hd)) throw std::invalid_argument("attend_group: head_dim must be a multiple of 16, at most 256");
  attend_group_blocked<Avx512>(qs, outs, n, nq, K, V, ld, hd, scale, scratch);
}

}  // namespace

bool attend_group_supports(int hd) { return hd > 0 && hd % 16 == 0 && hd <= kAttendGroupMaxHd; }

void attend_group(const float* const* qs, float* const* outs, const int* n, int nq, const float* K,
                  const float* V, int ld, int hd, float scale, float* scratch) {
  attend_group_any(qs, outs, n, nq, K, V, ld, hd, scale, scratch);
}

void attend_group(const float* const* qs, float* const* outs, const int* n, int nq, const uint16_t* K,
                  const uint16_t* V, int ld, int hd, float scale, float* scratch) {
  attend_group_any(qs, outs, n, nq, K, V, ld, hd, scale, scratch);
}

#else  // no AVX-512 in this build: the engine keeps each path's attend

bool attend_group_supports(int) { return false; }

void attend_group(const float* const*, float* const*, const int*, int, const float*, const float*, int, int, float,
                  float*) {
  throw std::invalid_argument("attend_group: not built for this CPU");
}
void attend_group(const float* const*, float* const*, const int*, int, const uint16_t*, const uint16_t*, int, int,
                  float, float*) {
  throw std::invalid_argument("attend_group: not built for this CPU");
}

#endif

#if !defined(__x86_64__)  // attention_avx2.cpp is built for x86-64 only
bool attend_group_avx2_supports(int) { return false; }
void attend_group_avx2(const float* const*, float* const*, const int*, int, const float*, const float*, int, int,
                       float, float*) {
  throw std::invalid_argument("attend_group_avx2: not built for this CPU");
}
void attend_group_avx2(const float* const*, float* const*, const int*, int, const uint16_t*, const uint16_t*, int,
                       int, float, float*) {
  throw std::invalid_argument("attend_group_avx2: not built for this CPU");
}
void f32_to_f16_row_f16c(const float*, uint16_t*, int) {
  throw std::invalid_argument("f32_to_f16_row_f16c: not built for this CPU");
}
#endif

}  // namespace bitnet
