// NEON kernels for aarch64 (compiled with -march=armv8.2-a+dotprod+fp16 only, and only on ARM).
// Scalar twin: kernels_ref.cpp. On the x86 project host tests/inference/test_kernels.py (and
// test_kernels_lut.py for the lookup tables) cross-compiles selftest/ programs with these kernels
// and runs them under qemu-aarch64 (exact integers, floats within a tolerance); their speed has not
// been measured on ARM hardware.
#include <arm_neon.h>

#include <cstring>

#include "kernels.h"
#include "kernels_lut_inl.h"

namespace bitnet {
namespace {

inline int8x16_t bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

// One row block: four 16-byte quarters of the tile hold rows 4h..4h+3 (lane r = 4 bytes).
// Invariant: codes c in {0,1,2} fit a SIGNED byte, so sdot (s8 x s8, 4 products per 32-bit lane)
// applies directly; |c*x| <= 256 per product, so int32 lanes cannot overflow for K < 2^21.
// sum c*x - xsum = q.x exactly. One accumulator per (quarter, 2-bit plane): 16 independent sdot
// chains, so the loop is not bound by sdot latency.
void ternary_gemm_neon(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                       const int32_t* xsum, int T, int32_t* y, int ldy) {
  const uint8x16_t m3 = vdupq_n_u8(3);
  for (int mb = mb0; mb < mb1; ++mb) {
    const TernaryTile* wrow = w + static_cast<size_t>(mb) * KB;
    for (int t = 0; t < T; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * ldx;
      int32x4_t acc[4][4];
      for (auto& q : acc)
        for (auto& a : q) a = vdupq_n_s32(0);
      for (int kb = 0; kb < KB; ++kb) {
        const int8x16_t x0 = bcast4(xt + kb * kTileCols + 0), x1 = bcast4(xt + kb * kTileCols + 4);
        const int8x16_t x2 = bcast4(xt + kb * kTileCols + 8), x3 = bcast4(xt + kb * kTileCols + 12);
        for (int q = 0; q < 4; ++q) {
          const uint8x16_t p = vld1q_u8(wrow[kb].b + 16 * q);
          acc[q][0] = vdotq_s32(acc[q][0], vreinterpretq_s8_u8(vandq_u8(p, m3)), x0);
          acc[q][1] = vdotq_s32(acc[q][1], vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(p, 2), m3)), x1);
          acc[q][2] = vdotq_s32(acc[q][2], vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(p, 4), m3)), x2);
          acc[q][3] = vdotq_s32(acc[q][3], vreinterpretq_s8_u8(vshrq_n_u8(p, 6)), x3);
        }
      }
      const int32x4_t s = vdupq_n_s32(xsum[t]);
      int32_t* yt = y + static_cast<size_t>(t) * ldy + mb * kTileRows;
      for (int q = 0; q < 4; ++q) {
        const int32x4_t sum = vaddq_s32(vaddq_s32(acc[q][0], acc[q][1]), vaddq_s32(acc[q][2], acc[q][3]));
        vst1q_s32(yt + 4 * q, vsubq_s32(sum, s));
      }
    }
  }
}

inline float32x4_t load_bf16(const uint16_t* p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
inline float32x4_t load_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
inline float32x4_t load_f32(const float* p) { return vld1q_f32(p); }
inline float f32_id(float v) { return v; }

// Head kernels read the table row after row (one sequential stream per thread) and use each row
// for every token while it sits in L1; four accumulators per dot keep the FMA / sdot chains from
// bounding the loop by their latency.
template <typename E, float32x4_t (*Load)(const E*), float (*Conv)(E)>
void dot_rows_neon(const E* W, int C, int r0, int r1, const float* h, int T, float* out, int ldo) {
  const int C16 = C & ~15, C4 = C & ~3;
  for (int r = r0; r < r1; ++r) {
    const E* e = W + static_cast<size_t>(r) * C;
    for (int t = 0; t < T; ++t) {
      const float* ht = h + static_cast<size_t>(t) * C;
      float32x4_t a0 = vdupq_n_f32(0.f), a1 = a0, a2 = a0, a3 = a0;
      int c = 0;
      for (; c < C16; c += 16) {
        a0 = vfmaq_f32(a0, Load(e + c), vld1q_f32(ht + c));
        a1 = vfmaq_f32(a1, Load(e + c + 4), vld1q_f32(ht + c + 4));
        a2 = vfmaq_f32(a2, Load(e + c + 8), vld1q_f32(ht + c + 8));
        a3 = vfmaq_f32(a3, Load(e + c + 12), vld1q_f32(ht + c + 12));
      }
      for (; c < C4; c += 4) a0 = vfmaq_f32(a0, Load(e + c), vld1q_f32(ht + c));
      float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
      for (; c < C; ++c) s += Conv(e[c]) * ht[c];
      out[static_cast<size_t>(t) * ldo + r] = s;
    }
  }
}

// int8 head: sdot takes s8 x s8 directly; |e*x| <= 127*127, 4 per lane per instruction. Cp is a
// multiple of 64 (kHeadColAlign), so the four-accumulator loop has no tail.
void head_i8_neon(const int8_t* E, const int32_t* /*rowsum*/, int Cp, int r0, int r1, const int8_t* x,
                  int T, int32_t* out, int ldo) {
  for (int r = r0; r < r1; ++r) {
    const int8_t* e = E + static_cast<size_t>(r) * Cp;
    for (int t = 0; t < T; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * Cp;
      int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
      for (int c = 0; c < Cp; c += 64) {
        a0 = vdotq_s32(a0, vld1q_s8(e + c), vld1q_s8(xt + c));
        a1 = vdotq_s32(a1, vld1q_s8(e + c + 16), vld1q_s8(xt + c + 16));
        a2 = vdotq_s32(a2, vld1q_s8(e + c + 32), vld1q_s8(xt + c + 32));
        a3 = vdotq_s32(a3, vld1q_s8(e + c + 48), vld1q_s8(xt + c + 48));
      }
      out[static_cast<size_t>(t) * ldo + r] = vaddvq_s32(vaddq_s32(vaddq_s32(a0, a1), vaddq_s32(a2, a3)));
    }
  }
}

// int4 head: sdot takes the signed q = nibble - 8 in [-8, 7] and x in [-127, 127] directly (no
// bias). Each group's two sdots give four int32 lanes (|.| <= 8 * 8 * 127), multiplied by the
// group's u8 scale and accumulated: every partial sum is bounded by Cp * 8 * 127 * 255 < 2^31
// (Cp <= kHeadI4MaxCols), so nothing wraps. Nibble bytes 0..31 hold group 0 (low) and group 2
// (high), bytes 32..63 groups 1 and 3. One row is read once for TT tokens.
template <int TT>
inline void head_i4_row_tt(const HeadI4Block* row, int nb, int Cp, const int8_t* x, int32_t* out, int ldo) {
  const uint8x16_t m4 = vdupq_n_u8(15);
  const int8x16_t eight = vdupq_n_s8(8);
  int32x4_t acc[TT][2];
  for (int t = 0; t < TT; ++t) acc[t][0] = acc[t][1] = vdupq_n_s32(0);
  for (int b = 0; b < nb; ++b) {
    int8x16_t q[4][2];  // [group][half]
    for (int h = 0; h < 2; ++h) {
      const uint8x16_t v0 = vld1q_u8(row[b].qs + 16 * h), v1 = vld1q_u8(row[b].qs + 32 + 16 * h);
      q[0][h] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v0, m4)), eight);
      q[1][h] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v1, m4)), eight);
      q[2][h] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v0, 4)), eight);
      q[3][h] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v1, 4)), eight);
    }
    for (int t = 0; t < TT; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * Cp + static_cast<size_t>(b) * kHeadI4Cols;
      for (int g = 0; g < 4; ++g) {
        const int32x4_t d = vdotq_s32(vdotq_s32(vdupq_n_s32(0), q[g][0], vld1q_s8(xt + 32 * g)), q[g][1],
                                      vld1q_s8(xt + 32 * g + 16));
        acc[t][g & 1] = vmlaq_n_s32(acc[t][g & 1], d, static_cast<int32_t>(row[b].sc[g]));
      }
    }
  }
  for (int t = 0; t < TT; ++t) out[static_cast<size_t>(t) * ldo] = vaddvq_s32(vaddq_s32(acc[t][0], acc[t][1]));
}

void head_i4_neon(const HeadI4Block* W, const int32_t* /*rowbias: x is used signed*/, int Cp, int r0, int r1,
                  const int8_t* x, int T, int32_t* out, int ldo) {
  const int nb = Cp / kHeadI4Cols;
  for (int r = r0; r < r1; ++r) {
    const HeadI4Block* row = W + static_cast<size_t>(r) * nb;
    auto group = [&](auto tt, int t) {
      head_i4_row_tt<decltype(tt)::value>(row, nb, Cp, x + static_cast<size_t>(t) * Cp,
                                          out + static_cast<size_t>(t) * ldo + r, ldo);
    };
    for_token_tiles<4>(T, group, [&](int t) { group(std::integral_constant<int, 1>{}, t); });
  }
}

float dot_f32_neon(const float* a, const float* b, int n) {
  float32x4_t acc = vdupq_n_f32(0.f);
  int i = 0;
  for (; i + 4 <= n; i += 4) acc = vfmaq_f32(acc, vld1q_f32(a + i), vld1q_f32(b + i));
  float s = vaddvq_f32(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_f32_neon(float alpha, const float* x, float* y, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), alpha));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

// fp16 KV rows: fcvtl widens 4 halves exactly (every fp16 value is an fp32 value).
float dot_f16_neon(const float* a, const uint16_t* b, int n) {
  float32x4_t acc = vdupq_n_f32(0.f);
  int i = 0;
  for (; i + 4 <= n; i += 4) acc = vfmaq_f32(acc, vld1q_f32(a + i), load_f16(b + i));
  float s = vaddvq_f32(acc);
  for (; i < n; ++i) s += a[i] * f16_to_f32(b[i]);
  return s;
}

void axpy_f16_neon(float alpha, const uint16_t* x, float* y, int n) {
  int i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), load_f16(x + i), alpha));
  for (; i < n; ++i) y[i] += alpha * f16_to_f32(x[i]);
}

// t5 tiles (TernaryTile5): NEON multiplies bytes, so digit i of every byte s is direct:
// t_i = s * 3^i mod 256 (vmul), c_i = floor(3 t_i / 256) = (t_i + (t_i >> 1)) / 2 >> 6 (halving
// add; equal to floor(3 t / 256) for every byte t, and the 243 stored bytes that
// test_kernels_t5.py's qemu run sends through this kernel reach all 256 values of t_i).
// Invariant: c in {0,1,2} is a valid signed byte for sdot; |c*x| <= 256 per product, 20 per lane
// per tile, so int32 cannot overflow for K < 2^21. sum c*x - xsum = q.x exactly. One accumulator
// per (quarter, digit): 20 independent sdot chains.
void ternary5_gemm_neon(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                        const int32_t* xsum, int T, int32_t* y, int ldy) {
  static const uint8_t kPow3[kTile5Digits] = {1, 3, 9, 27, 81};
  for (int mb = mb0; mb < mb1; ++mb) {
    const TernaryTile5* wrow = w + static_cast<size_t>(mb) * KB;
    for (int t = 0; t < T; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * ldx;
      int32x4_t acc[4][kTile5Digits];
      for (auto& q : acc)
        for (auto& a : q) a = vdupq_n_s32(0);
      for (int kb = 0; kb < KB; ++kb) {
        int8x16_t xv[kTile5Digits];
        for (int i = 0; i < kTile5Digits; ++i) xv[i] = bcast4(xt + kb * kTile5Cols + 4 * i);
        for (int q = 0; q < 4; ++q) {
          const uint8x16_t s = vld1q_u8(wrow[kb].b + 16 * q);
          for (int i = 0; i < kTile5Digits; ++i) {
            const uint8x16_t ti = vmulq_u8(s, vdupq_n_u8(kPow3[i]));
            const uint8x16_t c = vshrq_n_u8(vhaddq_u8(ti, vshrq_n_u8(ti, 1)), 6);
            acc[q][i] = vdotq_s32(acc[q][i], vreinterpretq_s8_u8(c), xv[i]);
          }
        }
      }
      const int32x4_t sx = vdupq_n_s32(xsum[t]);
      int32_t* yt = y + static_cast<size_t>(t) * ldy + mb * kTileRows;
      for (int q = 0; q < 4; ++q) {
        int32x4_t sum = acc[q][0];
        for (int i = 1; i < kTile5Digits; ++i) sum = vaddq_s32(sum, acc[q][i]);
        vst1q_s32(yt + 4 * q, vsubq_s32(sum, sx));
      }
    }
  }
}

// Lookup tables (kernels_lut_inl.h) on 128-bit vectors: i2 32 tokens per table row (four int16
// vectors), t5 16 (its 243-row tables would not fit L1 at 32), 16 or 8 for a short remainder. Not
// timed on ARM hardware: dispatch runs mac on this path (no kernel_choice.h row) until
// benchmarks/calibrate_kernels.py --write measures it there; BITNET_KERNEL=lut forces it.
void ternary_gemm_lut_neon(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                           const int32_t* /*xsum*/, int T, int32_t* y, int ldy) {
  lut_gemm<LutI2, 32, 16>(w, KB, mb0, mb1, x, ldx, T, y, ldy);
}
void ternary5_gemm_lut_neon(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                            const int32_t* /*xsum*/, int T, int32_t* y, int ldy) {
  lut_gemm<LutT5, 16, 16>(w, KB, mb0, mb1, x, ldx, T, y, ldy);
}

}  // namespace

const Kernels kKernelsNeon = {
    "neon",
    ternary_gemm_neon,
    dot_rows_neon<uint16_t, load_bf16, bf16_to_f32>,
    dot_rows_neon<uint16_t, load_f16, f16_to_f32>,
    dot_rows_neon<float, load_f32, f32_id>,
    head_i8_neon,
    quantize_row_ref,  // scalar: a few percent of prefill time, not worth a twin here
    attend_with<float, dot_f32_neon, axpy_f32_neon>,
    head_i4_neon,
    ternary5_gemm_neon,
    attend_with<uint16_t, dot_f16_neon, axpy_f16_neon>,
    ternary_gemm_lut_neon,
    ternary5_gemm_lut_neon,
};

}  // namespace bitnet
