// AMX-INT8 prefill kernel (compiled with -mamx-tile -mamx-int8 -mavx512f -mavx512bw only).
// Scalar twin: ternary_gemm_ref in kernels_ref.cpp; tested against it in test_kernels.py.
//
// One row block (16 outputs) at a time: its 2-bit codes are unpacked once into int8 q in {-1,0,1}
// in the tile "VNNI" layout (B tile row g of k-step s = 16 outputs x 4 consecutive columns
// 64s + 4g .. 64s + 4g + 3: exactly rows 4*i4 + i of our tiles kb = 4s + i4 after the shift by 2i),
// then reused for every 16-token tile: TDPBSSD (s8 x s8 -> s32) C[t][m] += sum_k x[t][k] * q[m][k].
// Invariant: |x * q| <= 128, 64 products per step, so int32 cannot overflow for K < 2^24.
// Tokens past the last full 16-token tile go to the AVX-512 VNNI path.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "kernels.h"

namespace bitnet {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// tmm0..3: int32 accumulators for 4 token tiles; tmm4: B (weights); tmm5: A (activations).
void configure_tiles() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int i = 0; i < 6; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

// 2-bit codes of one row block -> int8 q in B-tile layout, zero past KB tiles. b: nks * 1024 bytes.
void unpack_block(const TernaryTile* wrow, int KB, int nks, int8_t* b) {
  const __m512i m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
  for (int kb = 0; kb < nks * 4; ++kb) {
    int8_t* dst = b + static_cast<size_t>(kb) * 256;  // rows 4*(kb%4) .. +3 of k-step kb/4
    if (kb >= KB) {
      std::memset(dst, 0, 256);
      continue;
    }
    const __m512i p = _mm512_loadu_si512(wrow[kb].b);
    _mm512_storeu_si512(dst + 0, _mm512_sub_epi8(_mm512_and_si512(p, m3), one));
    _mm512_storeu_si512(dst + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p, 2), m3), one));
    _mm512_storeu_si512(dst + 128, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p, 4), m3), one));
    _mm512_storeu_si512(dst + 192, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p, 6), m3), one));
  }
}

}  // namespace

void ternary_gemm_amx(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                      const int32_t* xsum, int T, int32_t* y, int ldy) {
  const int T16 = T / 16 * 16;
  if (T16 > 0) {
    const int nks = (KB + 3) / 4;  // 64-column steps; ldx >= 64 * nks (kernels.h contract)
    thread_local std::vector<int8_t> bbuf;
    if (bbuf.size() < static_cast<size_t>(nks) * 1024) bbuf.resize(static_cast<size_t>(nks) * 1024);
    configure_tiles();
    const size_t sx = static_cast<size_t>(ldx), sy = static_cast<size_t>(ldy) * sizeof(int32_t);
    for (int mb = mb0; mb < mb1; ++mb) {
      unpack_block(w + static_cast<size_t>(mb) * KB, KB, nks, bbuf.data());
      for (int t0 = 0; t0 < T16; t0 += 64) {
        const int nt = (T16 - t0) / 16 < 4 ? (T16 - t0) / 16 : 4;
        const int8_t* xt = x + static_cast<size_t>(t0) * ldx;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int ks = 0; ks < nks; ++ks) {
          _tile_loadd(4, bbuf.data() + static_cast<size_t>(ks) * 1024, 64);
          _tile_loadd(5, xt + 64 * ks, sx);
          _tile_dpbssd(0, 5, 4);
          if (nt > 1) {
            _tile_loadd(5, xt + 16 * sx + 64 * ks, sx);
            _tile_dpbssd(1, 5, 4);
          }
          if (nt > 2) {
            _tile_loadd(5, xt + 32 * sx + 64 * ks, sx);
            _tile_dpbssd(2, 5, 4);
          }
          if (nt > 3) {
            _tile_loadd(5, xt + 48 * sx + 64 * ks, sx);
            _tile_dpbssd(3, 5, 4);
          }
        }
        int32_t* yt = y + static_cast<size_t>(t0) * ldy + mb * kTileRows;
        _tile_stored(0, yt, sy);
        if (nt > 1) _tile_stored(1, yt + 16 * static_cast<size_t>(ldy), sy);
        if (nt > 2) _tile_stored(2, yt + 32 * static_cast<size_t>(ldy), sy);
        if (nt > 3) _tile_stored(3, yt + 48 * static_cast<size_t>(ldy), sy);
      }
    }
    _tile_release();
  }
  if (T16 < T)
    kKernelsAvx512.ternary_gemm(w, KB, mb0, mb1, x + static_cast<size_t>(T16) * ldx, ldx, xsum + T16, T - T16,
                                y + static_cast<size_t>(T16) * ldy, ldy);
}

}  // namespace bitnet
