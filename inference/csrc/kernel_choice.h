// Which kernel family runs each shape class, per path: measured, not guessed. Written by
// `python benchmarks/calibrate_kernels.py --write` (one 2B4T layer's ternary products, mac and lut
// interleaved, best of 2 rounds, 2 threads, CPU time; a class's bit is set where lut beat mac by
// more than the margin); dispatch.cpp copies the bits into each path's kernel table. Paths not
// listed run mac everywhere.
// Measured on Intel(R) Xeon(R) Processor, 2026-12-06 (one layer, ms):
//   path     layout class    T   mac ms   lut ms  lut/mac  choice
//   avx2     i2     1        1     0.37     3.59     9.66  mac
//   avx2     i2     2-8      2     0.89     3.55     3.99  mac
//   avx2     i2     2-8      8     2.11     3.76     1.78  mac
//   avx2     i2     9-32    16     3.88     5.29     1.36  mac
//   avx2     i2     9-32    32     7.34     9.68     1.32  mac
//   avx2     i2     >32    128    29.62    38.23     1.29  mac
//   avx2     t5     1        1     0.86     2.49     2.91  mac
//   avx2     t5     2-8      2     1.53     2.44     1.59  lut
//   avx2     t5     2-8      8     3.96     2.44     0.62  lut
//   avx2     t5     9-32    16     7.82     4.94     0.63  lut
//   avx2     t5     9-32    32    14.33     9.91     0.69  lut
//   avx2     t5     >32    128    59.13    39.07     0.66  lut
//   avxvnni  i2     1        1     0.41     3.50     8.49  mac
//   avxvnni  i2     2-8      2     0.90     3.42     3.78  mac
//   avxvnni  i2     2-8      8     1.82     3.78     2.08  mac
//   avxvnni  i2     9-32    16     3.37     5.20     1.55  mac
//   avxvnni  i2     9-32    32     6.18     9.21     1.49  mac
//   avxvnni  i2     >32    128    24.98    36.69     1.47  mac
//   avxvnni  t5     1        1     0.62     2.40     3.86  mac
//   avxvnni  t5     2-8      2     1.63     2.39     1.47  mac
//   avxvnni  t5     2-8      8     2.60     2.48     0.95  mac
//   avxvnni  t5     9-32    16     4.41     4.99     1.13  mac
//   avxvnni  t5     9-32    32     7.93     9.52     1.20  mac
//   avxvnni  t5     >32    128    31.95    38.73     1.21  mac
//   avx512   i2     1        1     0.28     3.55    12.49  mac
//   avx512   i2     2-8      2     1.32     3.09     2.34  mac
//   avx512   i2     2-8      8     2.07     3.31     1.60  mac
//   avx512   i2     9-32    16     2.34     6.09     2.60  mac
//   avx512   i2     9-32    32     4.41     8.90     2.02  mac
//   avx512   i2     >32    128    15.86    37.99     2.39  mac
//   avx512   t5     1        1     0.39     2.45     6.32  mac
//   avx512   t5     2-8      2     1.27     2.33     1.83  mac
//   avx512   t5     2-8      8     1.61     2.51     1.55  mac
//   avx512   t5     9-32    16     2.81     3.96     1.41  mac
//   avx512   t5     9-32    32     4.83     8.93     1.85  mac
//   avx512   t5     >32    128    18.77    37.39     1.99  mac
//   amx      i2     1        1     0.27     3.59    13.05  mac
//   amx      i2     2-8      2     0.52     3.54     6.87  mac
//   amx      i2     2-8      8     0.82     3.34     4.05  mac
//   amx      i2     9-32    16     1.16     5.57     4.82  mac
//   amx      i2     9-32    32     1.32     9.58     7.28  mac
//   amx      i2     >32    128     6.38    37.95     5.95  mac
//   amx      t5     1        1     0.39     2.40     6.18  mac
//   amx      t5     2-8      2     0.79     2.32     2.95  mac
//   amx      t5     2-8      8     0.92     2.41     2.62  mac
//   amx      t5     9-32    16     1.13     3.78     3.36  mac
//   amx      t5     9-32    32     1.27     8.62     6.80  mac
//   amx      t5     >32    128     6.39    37.58     5.88  mac
#pragma once
#include <cstdint>

namespace bitnet {

struct KernelChoice {
  const char* isa;
  uint8_t lut_i2, lut_t5;  // bit c: shape class c (kernels.h shape_class) runs the lut kernel
};

constexpr KernelChoice kKernelChoice[] = {
    {"avx2", 0x0, 0xe},
    {"avxvnni", 0x0, 0x0},
    {"avx512", 0x0, 0x0},
    {"amx", 0x0, 0x0},
};

}  // namespace bitnet
