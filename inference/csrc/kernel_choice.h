// Which kernel family runs each shape class, per path: measured, not guessed. Written by
// `python benchmarks/calibrate_kernels.py --write` (one 2B4T layer's ternary products, mac and lut
// interleaved, best of 3 rounds, 2 threads, CPU time; a class's bit is set where lut beat mac by
// more than the margin); dispatch.cpp copies the bits into each path's kernel table. Paths not
// listed run mac everywhere.
// Measured on Intel(R) Xeon(R) Processor, 2026-12-06 (one layer, ms):
//   path     layout class    T   mac ms   lut ms  lut/mac  choice
//   avx2     i2     1        1     0.35     2.82     8.03  mac
//   avx2     i2     2-8      2     0.90     2.80     3.11  mac
//   avx2     i2     2-8      8     2.09     2.80     1.34  mac
//   avx2     i2     9-32    16     3.85     2.95     0.77  lut
//   avx2     i2     9-32    32     7.25     4.80     0.66  lut
//   avx2     i2     >32    128    28.74    19.03     0.66  lut
//   avx2     t5     1        1     0.85     2.36     2.77  mac
//   avx2     t5     2-8      2     1.43     2.45     1.72  mac
//   avx2     t5     2-8      8     3.47     2.39     0.69  mac
//   avx2     t5     9-32    16     6.90     2.64     0.38  lut
//   avx2     t5     9-32    32    13.71     5.27     0.38  lut
//   avx2     t5     >32    128    56.03    21.27     0.38  lut
//   avxvnni  i2     1        1     0.34     2.83     8.30  mac
//   avxvnni  i2     2-8      2     0.90     2.76     3.05  mac
//   avxvnni  i2     2-8      8     1.75     2.83     1.61  mac
//   avxvnni  i2     9-32    16     3.23     2.96     0.92  lut
//   avxvnni  i2     9-32    32     6.21     4.95     0.80  lut
//   avxvnni  i2     >32    128    25.04    19.58     0.78  lut
//   avxvnni  t5     1        1     0.61     2.42     3.96  mac
//   avxvnni  t5     2-8      2     1.40     2.40     1.71  mac
//   avxvnni  t5     2-8      8     2.06     2.39     1.16  mac
//   avxvnni  t5     9-32    16     3.88     2.80     0.72  lut
//   avxvnni  t5     9-32    32     7.55     5.52     0.73  lut
//   avxvnni  t5     >32    128    31.06    22.43     0.72  lut
//   avx512   i2     1        1     0.21     3.38    15.95  mac
//   avx512   i2     2-8      2     0.50     3.26     6.52  mac
//   avx512   i2     2-8      8     0.84     3.23     3.82  mac
//   avx512   i2     9-32    16     1.75     3.85     2.20  mac
//   avx512   i2     9-32    32     3.22     4.80     1.49  mac
//   avx512   i2     >32    128    12.38    18.70     1.51  mac
//   avx512   t5     1        1     0.36     2.48     6.90  mac
//   avx512   t5     2-8      2     0.54     2.42     4.49  mac
//   avx512   t5     2-8      8     1.03     2.39     2.31  mac
//   avx512   t5     9-32    16     1.99     2.64     1.32  mac
//   avx512   t5     9-32    32     3.34     4.70     1.41  mac
//   avx512   t5     >32    128    12.58    18.96     1.51  mac
//   amx      i2     1        1     0.21     3.16    15.20  mac
//   amx      i2     2-8      2     0.54     3.12     5.83  mac
//   amx      i2     2-8      8     0.87     3.17     3.63  mac
//   amx      i2     9-32    16     1.06     3.77     3.57  mac
//   amx      i2     9-32    32     2.16     4.63     2.14  mac
//   amx      i2     >32    128     6.97    18.01     2.58  mac
//   amx      t5     1        1     0.35     2.38     6.85  mac
//   amx      t5     2-8      2     0.68     2.41     3.52  mac
//   amx      t5     2-8      8     0.89     2.37     2.68  mac
//   amx      t5     9-32    16     0.97     2.66     2.75  mac
//   amx      t5     9-32    32     1.37     4.80     3.49  mac
//   amx      t5     >32    128     5.12    18.52     3.62  mac
#pragma once
#include <cstdint>

namespace bitnet {

struct KernelChoice {
  const char* isa;
  uint8_t lut_i2, lut_t5;  // bit c: shape class c (kernels.h shape_class) runs the lut kernel
};

constexpr KernelChoice kKernelChoice[] = {
    {"avx2", 0xc, 0xc},
    {"avxvnni", 0xc, 0xc},
    {"avx512", 0x0, 0x0},
    {"amx", 0x0, 0x0},
};

}  // namespace bitnet
