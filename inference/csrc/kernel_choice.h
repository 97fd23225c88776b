// Which kernel family runs each shape class, per path: measured, not guessed. Written by
// `python benchmarks/calibrate_kernels.py --write` (one 2B4T layer's ternary products, mac and lut
// interleaved, best of 2 rounds, 2 threads; a class's bit is set where lut beat mac by
// more than the margin); dispatch.cpp copies the bits into each path's kernel table. Paths not
// listed run mac everywhere.
// Measured on Intel(R) Xeon(R) Processor, 2026-12-06 (one layer, ms):
//   path     layout class    T   mac ms   lut ms  lut/mac  choice
//   avx2     i2     1        1     0.74    19.47    26.30  mac
//   avx2     i2     2-8      2     1.70    16.78     9.85  mac
//   avx2     i2     2-8      8     4.26     8.28     1.94  mac
//   avx2     i2     9-32    16    11.66    26.62     2.28  mac
//   avx2     i2     9-32    32    34.99    62.50     1.79  mac
//   avx2     i2     >32    128   170.05   207.31     1.22  mac
//   avx2     t5     1        1     1.91     6.31     3.31  mac
//   avx2     t5     2-8      2     3.00    18.28     6.10  mac
//   avx2     t5     2-8      8    13.81     7.07     0.51  mac
//   avx2     t5     9-32    16    36.78    17.60     0.48  lut
//   avx2     t5     9-32    32    85.59    41.89     0.49  lut
//   avx2     t5     >32    128   288.44   237.40     0.82  lut
//   avxvnni  i2     1        1     0.93     8.25     8.89  mac
//   avxvnni  i2     2-8      2     1.65    15.39     9.31  mac
//   avxvnni  i2     2-8      8     4.50    20.61     4.58  mac
//   avxvnni  i2     9-32    16    13.73    25.09     1.83  mac
//   avxvnni  i2     9-32    32    18.37    61.35     3.34  mac
//   avxvnni  i2     >32    128   156.03   253.36     1.62  mac
//   avxvnni  t5     1        1     1.28    22.25    17.38  mac
//   avxvnni  t5     2-8      2     3.39     7.13     2.10  mac
//   avxvnni  t5     2-8      8    11.24    10.62     0.94  mac
//   avxvnni  t5     9-32    16     8.15    29.14     3.58  mac
//   avxvnni  t5     9-32    32    36.94    45.34     1.23  mac
//   avxvnni  t5     >32    128   181.83   199.16     1.10  mac
//   avx512   i2     1        1     0.54     8.26    15.18  mac
//   avx512   i2     2-8      2     1.68    14.47     8.63  mac
//   avx512   i2     2-8      8     2.78    12.44     4.47  mac
//   avx512   i2     9-32    16     4.50    13.69     3.04  mac
//   avx512   i2     9-32    32     8.67    24.53     2.83  mac
//   avx512   i2     >32    128   103.28   163.29     1.58  mac
//   avx512   t5     1        1     0.77    14.90    19.45  mac
//   avx512   t5     2-8      2     2.56     7.22     2.82  mac
//   avx512   t5     2-8      8     3.29     8.80     2.68  mac
//   avx512   t5     9-32    16    13.78    14.37     1.04  mac
//   avx512   t5     9-32    32    15.70    26.39     1.68  mac
//   avx512   t5     >32    128   109.04   155.81     1.43  mac
//   amx      i2     1        1     0.55    14.06    25.54  mac
//   amx      i2     2-8      2     1.03    16.38    15.90  mac
//   amx      i2     2-8      8     1.72     8.54     4.96  mac
//   amx      i2     9-32    16     2.02    32.31    15.98  mac
//   amx      i2     9-32    32     4.16    28.82     6.93  mac
//   amx      i2     >32    128    10.30   170.32    16.54  mac
//   amx      t5     1        1     0.80     7.50     9.38  mac
//   amx      t5     2-8      2     1.64     8.17     4.98  mac
//   amx      t5     2-8      8     1.98     7.37     3.72  mac
//   amx      t5     9-32    16     1.84    12.85     6.97  mac
//   amx      t5     9-32    32     3.29    25.16     7.65  mac
//   amx      t5     >32    128    16.41   168.81    10.28  mac
#pragma once
#include <cstdint>

namespace bitnet {

struct KernelChoice {
  const char* isa;
  uint8_t lut_i2, lut_t5;  // bit c: shape class c (kernels.h shape_class) runs the lut kernel
};

constexpr KernelChoice kKernelChoice[] = {
    {"avx2", 0x0, 0xc},
    {"avxvnni", 0x0, 0x0},
    {"avx512", 0x0, 0x0},
    {"amx", 0x0, 0x0},
};

}  // namespace bitnet
