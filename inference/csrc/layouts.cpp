// Repacking transformers' packed ternary weights into the kernels' tiles (layouts.h, kernels.h).
#include "layouts.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>

namespace bitnet {

WeightFormat parse_weight_format(const std::string& name) {
  if (name == "i2") return WeightFormat::I2;
  if (name == "t5") return WeightFormat::T5;
  throw std::invalid_argument("weight format must be 'i2' or 't5', got '" + name + "'");
}

bool repack_ternary(const uint8_t* packed, int out, int K, TernaryTile* tiles, ThreadPool* pool) {
  const int R = out / 4, MB = (out + kTileRows - 1) / kTileRows, KB = (K + kTileCols - 1) / kTileCols;
  std::atomic<bool> bad{false};
  pool->parallel_for(MB, [&](int mb0, int mb1) {
    uint8_t seen3 = 0;
    for (int mb = mb0; mb < mb1; ++mb) {
      for (int kb = 0; kb < KB; ++kb) std::memset(tiles[static_cast<size_t>(mb) * KB + kb].b, 0, 64);
      for (int r = 0; r < kTileRows; ++r) {
        const int m = mb * kTileRows + r;
        // transformers' layout: row m = i*R + r' lives in packed row r' = m % R, bits 2i = 2*(m / R).
        const uint8_t* src = m < out ? packed + static_cast<size_t>(m % R) * K : nullptr;
        const int shift = m < out ? 2 * (m / R) : 0;
        const int full = src != nullptr ? K / kTileCols : 0;  // column blocks with no padding
        for (int kb = 0; kb < full; ++kb) {
          // Four source bytes at a time: in each byte of (w >> shift) & 0x03..03 sit that byte's
          // own bits shift..shift+1 (shift <= 6: the bits moved in from the next byte are masked
          // off), i.e. the codes of columns 16kb + 4i + 0..3; OR-ing plane i in at bit 2i builds
          // the four tile bytes of row r exactly as the scalar loop below does.
          uint32_t tile_word = 0;
          for (int i = 0; i < 4; ++i) {
            uint32_t w;
            std::memcpy(&w, src + kb * kTileCols + 4 * i, 4);
            const uint32_t c = (w >> shift) & 0x03030303u;
            seen3 |= static_cast<uint8_t>((c & (c >> 1) & 0x01010101u) != 0);  // a code 3
            tile_word |= c << (2 * i);
          }
          std::memcpy(tiles[static_cast<size_t>(mb) * KB + kb].b + 4 * r, &tile_word, 4);
        }
        for (int kb = full; kb < KB; ++kb) {  // padding rows and the last partial column block
          uint8_t* dst = tiles[static_cast<size_t>(mb) * KB + kb].b + 4 * r;
          for (int i = 0; i < 4; ++i) {
            for (int j = 0; j < 4; ++j) {
              const int k = kb * kTileCols + 4 * i + j;
              uint8_t c = 1;  // padding: a zero weight
              if (src != nullptr && k < K) c = (src[k] >> shift) & 3;
              seen3 |= static_cast<uint8_t>(c == 3);
              dst[j] |= static_cast<uint8_t>(c << (2 * i));
            }
          }
        }
      }
    }
    if (seen3) bad.store(true);
  });
  return !bad.load();
}

bool repack_ternary5(const uint8_t* packed, int out, int K, TernaryTile5* tiles, ThreadPool* pool) {
  const int R = out / 4, MB = (out + kTileRows - 1) / kTileRows, KB = (K + kTile5Cols - 1) / kTile5Cols;
  // The stored byte of every base-3 value v = sum c_i 3^(4-i) (t5_encode without a division).
  uint8_t enc[243];
  for (int v = 0; v < 243; ++v) enc[v] = static_cast<uint8_t>((v * 256 + 242) / 243);
  std::atomic<bool> bad{false};
  pool->parallel_for(MB, [&](int mb0, int mb1) {
    uint8_t seen3 = 0;
    for (int mb = mb0; mb < mb1; ++mb) {
      for (int r = 0; r < kTileRows; ++r) {
        const int m = mb * kTileRows + r;
        // transformers' layout: row m = i*R + r' lives in packed row r' = m % R, bits 2i = 2*(m / R).
        const uint8_t* src = m < out ? packed + static_cast<size_t>(m % R) * K : nullptr;
        const int shift = m < out ? 2 * (m / R) : 0;
        const int full = src != nullptr ? K / kTile5Cols : 0;  // column blocks with no padding
        for (int kb = 0; kb < full; ++kb) {
          // Four source bytes at a time (columns 20kb + 4i + 0..3, one per tile byte j): each byte
          // of c holds one code (shift <= 6, bits from the next byte masked off), and v = 3v + c
          // stays within its byte (v <= 80 before the last step: 3 * 80 + 2 = 242), so the four
          // base-3 numbers build up side by side in one word, exactly as the loop below does.
          uint32_t v = 0;
          for (int i = 0; i < kTile5Digits; ++i) {
            uint32_t w;
            std::memcpy(&w, src + kb * kTile5Cols + 4 * i, 4);
            uint32_t c = (w >> shift) & 0x03030303u;
            const uint32_t three = c & (c >> 1) & 0x01010101u;  // a code 3 (reported; kept as 2)
            seen3 |= static_cast<uint8_t>(three != 0);
            c -= three;
            v = 3 * v + c;
          }
          uint8_t* dst = tiles[static_cast<size_t>(mb) * KB + kb].b + 4 * r;
          for (int j = 0; j < 4; ++j) dst[j] = enc[(v >> (8 * j)) & 0xff];
        }
        for (int kb = full; kb < KB; ++kb) {  // padding rows and the last partial column block
          uint8_t* dst = tiles[static_cast<size_t>(mb) * KB + kb].b + 4 * r;
          const int k0 = kb * kTile5Cols;
          for (int j = 0; j < 4; ++j) {
            int v = 0;
            for (int i = 0; i < kTile5Digits; ++i) {
              const int k = k0 + 4 * i + j;
              int c = 1;  // padding: a zero weight
              if (src != nullptr && k < K) c = (src[k] >> shift) & 3;
              seen3 |= static_cast<uint8_t>(c == 3);
              v = 3 * v + std::min(c, 2);  // c == 3 is reported; keep v in range meanwhile
            }
            dst[j] = enc[v];
          }
        }
      }
    }
    if (seen3) bad.store(true);
  });
  return !bad.load();
}

}  // namespace bitnet
