// Scalar reference kernels: the readable definition every SIMD path is tested against.
#include <algorithm>
#include <cmath>
#include <cstring>

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

float quantize_row_ref(const float* x, int n, int n_pad, int8_t* q, int32_t* sum) {
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = (1.f / std::max(amax, kActEps)) * 127.f;  // torch evaluates 127 / t as (1 / t) * 127
  int32_t acc = 0;
  for (int i = 0; i < n; ++i) {
    const float v = std::min(127.f, std::max(-128.f, std::nearbyint(x[i] * s)));
    q[i] = static_cast<int8_t>(v);
    acc += q[i];
  }
  for (int i = n; i < n_pad; ++i) q[i] = 0;
  *sum = acc;
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

}  // namespace

const Kernels kKernelsRef = {
    "ref",
    ternary_gemm_ref,
    dot_rows_generic<uint16_t, bf16_to_f32>,
    dot_rows_generic<uint16_t, f16_to_f32>,
    dot_rows_generic<float, f32_id>,
    head_i8_ref,
    quantize_row_ref,
    attend_with<dot_f32_ref, axpy_f32_ref>,
};

}  // namespace bitnet
