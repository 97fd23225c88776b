// Scalar reference kernels: the readable definition every SIMD path is tested against.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace bitnet {

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {  // inf / nan
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {  // normal: rebias 15 -> 127
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal: normalize
    int e = -1;
    do {
      mant <<= 1;
      ++e;
    } while ((mant & 0x400u) == 0);
    bits = sign | ((112u - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t f32_to_f16(float v) {
  uint32_t x;
  std::memcpy(&x, &v, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u | ((ax >> 13) & 0x3ffu);  // NaN: quiet, top payload bits kept
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // inf, or >= 65520 (half-way past 65504): rounds to inf
  if (ax >= 0x38800000u) {  // >= 2^-14: a normal half. Rebias the exponent 127 -> 15 (subtract 112 << 23),
    // drop 13 mantissa bits, round half to even; a carry out of the mantissa correctly bumps the
    // exponent (at most to 0x7bff here: ax < 65520's pattern).
    uint32_t h = (ax - 0x38000000u) >> 13;
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  if (ax < 0x33000000u) return sign;  // < 2^-25 (half the smallest subnormal, 2^-24): to signed zero
  // Subnormal half: the value in units of 2^-24 is m * 2^(e - 126) with m the 24-bit significand
  // (e the biased exponent, 102..112, so the shift is 14..24); round half to even. A carry to
  // 0x400 is the smallest normal half, which is again right.
  const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float quantize_row_ref(const float* x, int n, int n_pad, int8_t* q, int32_t* sum) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = (1.f / std::max(amax, kActEps)) * 127.f;  // torch evaluates 127 / t as (1 / t) * 127
  *sum = quantize_tail(x, 0, n, n_pad, s, q, 0);
  return s;
}

namespace {

// The ternary value q in {-1, 0, 1} of row r, column 4*i + j inside one tile (layout in kernels.h).
inline int tile_q(const TernaryTile& tile, int r, int i, int j) {
  return static_cast<int>((tile.b[4 * r + j] >> (2 * i)) & 3) - 1;
}

void ternary_gemm_ref(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                      const int32_t* /*xsum: not needed when multiplying by q directly*/, int T,
                      int32_t* y, int ldy) {
  for (int mb = mb0; mb < mb1; ++mb) {
    for (int t = 0; t < T; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * ldx;
      for (int r = 0; r < kTileRows; ++r) {
        int32_t acc = 0;
        for (int kb = 0; kb < KB; ++kb) {
          const TernaryTile& tile = w[static_cast<size_t>(mb) * KB + kb];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc += tile_q(tile, r, i, j) * xt[kb * kTileCols + 4 * i + j];
        }
        y[static_cast<size_t>(t) * ldy + mb * kTileRows + r] = acc;
      }
    }
  }
}

// The t5 reference: every code decoded by t5_code (kernels.h), multiplied by q = c - 1 directly.
void ternary5_gemm_ref(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                       const int32_t* /*xsum: not needed when multiplying by q directly*/, int T, int32_t* y,
                       int ldy) {
  for (int mb = mb0; mb < mb1; ++mb) {
    for (int t = 0; t < T; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * ldx;
      for (int r = 0; r < kTileRows; ++r) {
        int32_t acc = 0;
        for (int kb = 0; kb < KB; ++kb) {
          const TernaryTile5& tile = w[static_cast<size_t>(mb) * KB + kb];
          for (int i = 0; i < kTile5Digits; ++i)
            for (int j = 0; j < 4; ++j)
              acc += (t5_code(tile.b[4 * r + j], i) - 1) * xt[kb * kTile5Cols + 4 * i + j];
        }
        y[static_cast<size_t>(t) * ldy + mb * kTileRows + r] = acc;
      }
    }
  }
}

// The lookup-table product, scalar (the readable form of kernels_lut_inl.h): for one token, the
// table of each group of g columns (the columns whose codes share one weight byte) holds, for every
// byte value b, E[b] = sum_i q_i(b) * x[col_i]; each row then adds E[its byte] per group. Exact in
// int32 (|E[b]| <= 128 g). Entries for byte values no weight holds are computed but never read.
// Tile: the layout; Cols: columns per tile; Digits: trits per byte; q(b, i): trit i of byte b
// (column Cols * kb + 4 i + j for byte j of a row).
template <typename Tile, int Cols, int Digits, int (*Q)(uint8_t, int)>
void ternary_lut_ref(const Tile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx, int T, int32_t* y, int ldy) {
  std::vector<int32_t> E(static_cast<size_t>(KB) * 4 * 256);  // E[(4 kb + j) * 256 + b]
  for (int t = 0; t < T; ++t) {
    const int8_t* xt = x + static_cast<size_t>(t) * ldx;
    for (int kb = 0; kb < KB; ++kb)
      for (int j = 0; j < 4; ++j)
        for (int b = 0; b < 256; ++b) {
          int32_t e = 0;
          for (int i = 0; i < Digits; ++i) e += Q(static_cast<uint8_t>(b), i) * xt[kb * Cols + 4 * i + j];
          E[(static_cast<size_t>(kb) * 4 + j) * 256 + b] = e;
        }
    for (int mb = mb0; mb < mb1; ++mb)
      for (int r = 0; r < kTileRows; ++r) {
        int32_t acc = 0;
        for (int kb = 0; kb < KB; ++kb)
          for (int j = 0; j < 4; ++j) acc += E[(static_cast<size_t>(kb) * 4 + j) * 256 + w[static_cast<size_t>(mb) * KB + kb].b[4 * r + j]];
        y[static_cast<size_t>(t) * ldy + mb * kTileRows + r] = acc;
      }
  }
}

inline int i2_q(uint8_t b, int i) { return static_cast<int>((b >> (2 * i)) & 3) - 1; }
inline int t5_q(uint8_t b, int i) { return t5_code(b, i) - 1; }

void ternary_gemm_lut_ref(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                          const int32_t* /*xsum*/, int T, int32_t* y, int ldy) {
  ternary_lut_ref<TernaryTile, kTileCols, 4, i2_q>(w, KB, mb0, mb1, x, ldx, T, y, ldy);
}
void ternary5_gemm_lut_ref(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                           const int32_t* /*xsum*/, int T, int32_t* y, int ldy) {
  ternary_lut_ref<TernaryTile5, kTile5Cols, kTile5Digits, t5_q>(w, KB, mb0, mb1, x, ldx, T, y, ldy);
}

template <typename T, float (*Conv)(T)>
void dot_rows_generic(const T* E, int C, int r0, int r1, const float* h, int nt, float* out, int ldo) {
  for (int r = r0; r < r1; ++r) {
    const T* e = E + static_cast<size_t>(r) * C;
    for (int t = 0; t < nt; ++t) {
      const float* ht = h + static_cast<size_t>(t) * C;
      float acc = 0.f;
      for (int c = 0; c < C; ++c) acc += Conv(e[c]) * ht[c];
      out[static_cast<size_t>(t) * ldo + r] = acc;
    }
  }
}

inline float f32_id(float v) { return v; }

void head_i8_ref(const int8_t* E, const int32_t* /*rowsum*/, int Cp, int r0, int r1, const int8_t* x,
                 int T, int32_t* out, int ldo) {
  for (int r = r0; r < r1; ++r) {
    const int8_t* e = E + static_cast<size_t>(r) * Cp;
    for (int t = 0; t < T; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * Cp;
      int32_t acc = 0;
      for (int c = 0; c < Cp; ++c) acc += static_cast<int32_t>(e[c]) * xt[c];
      out[static_cast<size_t>(t) * ldo + r] = acc;
    }
  }
}

float dot_f32_ref(const float* a, const float* b, int n) {
  float acc = 0.f;
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void axpy_f32_ref(float alpha, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

float dot_f16_ref(const float* a, const uint16_t* b, int n) {
  float acc = 0.f;
  for (int i = 0; i < n; ++i) acc += a[i] * f16_to_f32(b[i]);
  return acc;
}

void axpy_f16_ref(float alpha, const uint16_t* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * f16_to_f32(x[i]);
}

// int4 head: the definition, group by group. Each group's dot is exact in int32 (|.| <= 32 * 8 *
// 127); the weighted sum is taken in int64 and lies within int32 for Cp <= kHeadI4MaxCols.
void head_i4_ref(const HeadI4Block* W, const int32_t* /*rowbias: x is used signed*/, int Cp, int r0, int r1,
                 const int8_t* x, int T, int32_t* out, int ldo) {
  const int nb = Cp / kHeadI4Cols;
  for (int r = r0; r < r1; ++r) {
    const HeadI4Block* row = W + static_cast<size_t>(r) * nb;
    for (int t = 0; t < T; ++t) {
      const int8_t* xt = x + static_cast<size_t>(t) * Cp;
      int64_t acc = 0;
      for (int b = 0; b < nb; ++b) {
        for (int g = 0; g < kHeadI4Cols / kHeadI4Group; ++g) {
          int32_t dot = 0;
          for (int i = 0; i < kHeadI4Group; ++i) {
            const int c = g * kHeadI4Group + i;  // column inside the block
            const int nib = c < 64 ? (row[b].qs[c] & 15) : (row[b].qs[c - 64] >> 4);
            dot += (nib - 8) * xt[b * kHeadI4Cols + c];
          }
          acc += static_cast<int64_t>(row[b].sc[g]) * dot;
        }
      }
      out[static_cast<size_t>(t) * ldo + r] = static_cast<int32_t>(acc);
    }
  }
}

}  // namespace

const Kernels kKernelsRef = {
    "ref",
    ternary_gemm_ref,
    dot_rows_generic<uint16_t, bf16_to_f32>,
    dot_rows_generic<uint16_t, f16_to_f32>,
    dot_rows_generic<float, f32_id>,
    head_i8_ref,
    quantize_row_ref,
    attend_with<float, dot_f32_ref, axpy_f32_ref>,
    head_i4_ref,
    ternary5_gemm_ref,
    attend_with<uint16_t, dot_f16_ref, axpy_f16_ref>,
    ternary_gemm_lut_ref,
    ternary5_gemm_lut_ref,
};

}  // namespace bitnet
