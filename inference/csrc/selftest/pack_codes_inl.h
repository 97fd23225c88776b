// Shared by the standalone self-tests (t5_selftest.cpp, lut_selftest.cpp): ternary codes packed the
// way the engine reads them from a checkpoint.
#pragma once

#include <cstdint>
#include <vector>

// Codes (out, K) in {0,1,2} packed in transformers' layout (bits 2i of packed row r = row i*out/4 + r).
inline std::vector<uint8_t> pack_codes(const std::vector<int>& c, int out, int K) {
  const int R = out / 4;
  std::vector<uint8_t> p(static_cast<size_t>(R) * K, 0);
  for (int m = 0; m < out; ++m)
    for (int k = 0; k < K; ++k)
      p[static_cast<size_t>(m % R) * K + k] |= static_cast<uint8_t>(c[static_cast<size_t>(m) * K + k] << (2 * (m / R)));
  return p;
}
