// AVX2 kernels (compiled with -mavx2 -mfma -mf16c only). Scalar twin: kernels_ref.cpp.
// No VNNI here: u8 x s8 products go through vpmaddubsw (pairs -> int16) and vpmaddwd (-> int32).
#include <immintrin.h>

#include <cstring>

#include "kernels.h"

namespace bitnet {
namespace {

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Half a row block (8 rows: bytes 32*half .. 32*half+31 of each tile) against TT tokens.
//
// Invariants: codes c in {0,1,2} (unsigned) times x in [-128,127] (signed): vpmaddubsw sums two
// products into int16, |sum| <= 2*2*128 = 512, so it never saturates; the four planes' int16 sums
// add up to at most 2048 in magnitude, still exact in int16; vpmaddwd with ones widens to int32
// (4 columns x 4 planes = 16 products per lane per tile). sum c*x - xsum = q.x exactly.
template <int TT>
inline void half_tt(const TernaryTile* wrow, int KB, int half, const int8_t* x, int ldx,
                    const int32_t* xsum, int32_t* y, int ldy) {
  const __m256i m3 = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[TT];
  for (int t = 0; t < TT; ++t) acc[t] = _mm256_setzero_si256();
  for (int kb = 0; kb < KB; ++kb) {
    const __m256i p = _mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32 * half));
    const __m256i c0 = _mm256_and_si256(p, m3);
    const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(p, 2), m3);
    const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(p, 4), m3);
    const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(p, 6), m3);
    for (int t = 0; t < TT; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * ldx + kb * kTileCols;
      __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(c0, bcast4(xt + 0)), _mm256_maddubs_epi16(c1, bcast4(xt + 4)));
      s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c2, bcast4(xt + 8)));
      s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c3, bcast4(xt + 12)));
      acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(s, ones));
    }
  }
  for (int t = 0; t < TT; ++t)
    _mm256_storeu_si256((__m256i*)(y + static_cast<size_t>(t) * ldy + 8 * half),
                        _mm256_sub_epi32(acc[t], _mm256_set1_epi32(xsum[t])));
}

template <int TT>
inline void block_tt(const TernaryTile* wrow, int KB, const int8_t* x, int ldx, const int32_t* xsum,
                     int32_t* y, int ldy) {
  half_tt<TT>(wrow, KB, 0, x, ldx, xsum, y, ldy);
  half_tt<TT>(wrow, KB, 1, x, ldx, xsum, y, ldy);
}

// Decode (one token), both halves of each tile in one pass over the weight stream (prefetched
// kPrefetchBytes ahead). The planes are masked in place instead of shifted down: plane i holds
// c_i * 4^i in {0, 4^i, 2 * 4^i} <= 128, a valid u8 operand; vpmaddubsw gives 4^i times the pair
// sum, within [2 * 128 * -128, 2 * 128 * 127] = [-32768, 32512], which int16 holds, so it never
// saturates, and an arithmetic shift by 2i divides it back exactly. The four rescaled planes sum
// to at most 4 * 2 * 2 * 128 = 2048 in magnitude in int16 before vpmaddwd widens them. Measured on the 2B4T matrices
// (2 threads): 32 GB/s against 21 GB/s for half_tt<1>, which shifts and reads each tile twice.
inline void block_t1(const TernaryTile* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
  const __m256i m0 = _mm256_set1_epi8(0x03), m1 = _mm256_set1_epi8(0x0c);
  const __m256i m2 = _mm256_set1_epi8(0x30), m3 = _mm256_set1_epi8(static_cast<char>(0xc0));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a = _mm256_setzero_si256(), b = a;  // rows 0-7, rows 8-15
  auto planes = [&](__m256i p, __m256i x0, __m256i x1, __m256i x2, __m256i x3) {
    __m256i s = _mm256_maddubs_epi16(_mm256_and_si256(p, m0), x0);
    s = _mm256_add_epi16(s, _mm256_srai_epi16(_mm256_maddubs_epi16(_mm256_and_si256(p, m1), x1), 2));
    s = _mm256_add_epi16(s, _mm256_srai_epi16(_mm256_maddubs_epi16(_mm256_and_si256(p, m2), x2), 4));
    s = _mm256_add_epi16(s, _mm256_srai_epi16(_mm256_maddubs_epi16(_mm256_and_si256(p, m3), x3), 6));
    return _mm256_madd_epi16(s, ones);
  };
  for (int kb = 0; kb < KB; ++kb) {
    _mm_prefetch(reinterpret_cast<const char*>(wrow + kb) + kPrefetchBytes, _MM_HINT_T0);
    const int8_t* xt = x + kb * kTileCols;
    const __m256i x0 = bcast4(xt), x1 = bcast4(xt + 4), x2 = bcast4(xt + 8), x3 = bcast4(xt + 12);
    a = _mm256_add_epi32(a, planes(_mm256_loadu_si256((const __m256i*)wrow[kb].b), x0, x1, x2, x3));
    b = _mm256_add_epi32(b, planes(_mm256_loadu_si256((const __m256i*)(wrow[kb].b + 32)), x0, x1, x2, x3));
  }
  const __m256i xs = _mm256_set1_epi32(xsum);
  _mm256_storeu_si256((__m256i*)y, _mm256_sub_epi32(a, xs));
  _mm256_storeu_si256((__m256i*)(y + 8), _mm256_sub_epi32(b, xs));
}

void ternary_gemm_avx2(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                       const int32_t* xsum, int T, int32_t* y, int ldy) {
  constexpr int TT = 4;  // 4 accumulators + 4 code vectors + temporaries fit the 16 ymm registers
  for (int mb = mb0; mb < mb1; ++mb) {
    const TernaryTile* wrow = w + static_cast<size_t>(mb) * KB;
    int32_t* ym = y + mb * kTileRows;
    for_token_tiles<TT>(
        T,
        [&](auto tt, int t) {
          block_tt<decltype(tt)::value>(wrow, KB, x + static_cast<size_t>(t) * ldx, ldx, xsum + t,
                                        ym + static_cast<size_t>(t) * ldy, ldy);
        },
        [&](int t) { block_t1(wrow, KB, x + static_cast<size_t>(t) * ldx, xsum[t], ym + static_cast<size_t>(t) * ldy); });
  }
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
// [-127, 127] a vpmaddubsw pair is at most 2*127*127 = 32258 < 32767, so it never saturates.
void head_i8_avx2(const int8_t* E, const int32_t* /*rowsum: not needed with the sign trick*/, int Cp,
                  int r0, int r1, const int8_t* x, int T, int32_t* out, int ldo) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int t = 0; t < T; ++t) {
    const int8_t* xt = x + static_cast<size_t>(t) * Cp;
    int32_t* ot = out + static_cast<size_t>(t) * ldo;
    for (int r = r0; r < r1; ++r) {
      const int8_t* e = E + static_cast<size_t>(r) * Cp;
      __m256i a = _mm256_setzero_si256();
      for (int c = 0; c < Cp; c += 32) {
        if (c % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(e + c) + kPrefetchBytes, _MM_HINT_T0);
        const __m256i ev = _mm256_loadu_si256((const __m256i*)(e + c));
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(xt + c));
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(ev, ev), _mm256_sign_epi8(xv, ev));
        a = _mm256_add_epi32(a, _mm256_madd_epi16(p, ones));
      }
      ot[r] = hsum_epi32(a);
    }
  }
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

}  // namespace

const Kernels kKernelsAvx2 = {
    "avx2",
    ternary_gemm_avx2,
    dot_rows_avx2<uint16_t, load_bf16, bf16_to_f32>,
    dot_rows_avx2<uint16_t, load_f16, f16_to_f32>,
    dot_rows_avx2<float, load_f32, f32_id>,
    head_i8_avx2,
    quantize_row_ref,  // scalar: a few percent of prefill time, not worth a twin here
    attend_with<dot_f32_avx2, axpy_f32_avx2>,
};

}  // namespace bitnet
