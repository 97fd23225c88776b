// Weight layouts of the ternary linears and the repacking into them at load, apart from the
// forward pass (model.cpp), which only points each linear at its tiles and calls the kernels.
//
// Two layouts, both 64-byte tiles of 16 output rows (bit layouts in kernels.h):
//   i2 (TernaryTile): 2 bits per weight, 16 columns per tile; every SIMD path's default.
//   t5 (TernaryTile5): 5 trits per byte (1.6 bits per weight), 20 columns per tile.
// The lookup-table kernels (kernels_lut_inl.h) need no layout of their own: a byte of either tile
// already indexes a group of trits of one row (i2: 4 codes, t5: 5 digits), so the table of that
// group is looked up with the stored byte itself, and one copy of the weights serves decode (mac)
// and prefill (lut) alike.
#pragma once

#include <cstdint>
#include <string>

#include "kernels.h"
#include "threadpool.h"

namespace bitnet {

enum class WeightFormat { I2, T5 };

// "i2" / "t5" -> the format; throws std::invalid_argument naming the bad value otherwise.
WeightFormat parse_weight_format(const std::string& name);
inline int tile_cols(WeightFormat f) { return f == WeightFormat::T5 ? kTile5Cols : kTileCols; }

// Repacks transformers' packed ternary layout (uint8 (out/4, K): bits 2i..2i+1 of [r, c] = code of
// row i*out/4 + r) into kernel tiles ((out+15)/16 * (K+15)/16 of them, layout in kernels.h).
// Returns false if any code is 3.
bool repack_ternary(const uint8_t* packed, int out, int K, TernaryTile* tiles, ThreadPool* pool);
// The same into t5 tiles ((out+15)/16 * (K+19)/20 of them). Returns false if any code is 3.
bool repack_ternary5(const uint8_t* packed, int out, int K, TernaryTile5* tiles, ThreadPool* pool);

}  // namespace bitnet
