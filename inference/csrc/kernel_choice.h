// Which kernel family runs each shape class, per path: measured, not guessed. Rewritten by
// `python benchmarks/calibrate_kernels.py --write` (it times the mac and lut products of the
// exact 2B4T linears interleaved, on 2 threads, and sets a class's bit where lut was faster by
// more than its margin); dispatch.cpp copies the bits into each path's kernel table.
#pragma once
#include <cstdint>

namespace bitnet {

struct KernelChoice {
  const char* isa;
  uint8_t lut_i2, lut_t5;  // bit c: shape class c (kernels.h shape_class) runs the lut kernel
};

// Not yet calibrated: every class keeps the multiply-accumulate kernels.
constexpr KernelChoice kKernelChoice[] = {
    {"avx2", 0x0, 0x0},
    {"avx512", 0x0, 0x0},
};

}  // namespace bitnet
