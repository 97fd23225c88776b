// Which kernel family runs each shape class, per path: measured, not guessed. Written by
// `python benchmarks/calibrate_kernels.py --write` (one 2B4T layer's ternary products, mac and lut
// interleaved, best of 3 rounds, 2 threads, CPU time; a class's bit is set where lut beat mac by
// more than the margin); dispatch.cpp copies the bits into each path's kernel table. Paths not
// listed run mac everywhere.
// Measured on Intel(R) Xeon(R) Processor, 2026-12-06 (one layer, ms):
//   path     layout class    T   mac ms   lut ms  lut/mac  choice
//   avx2     i2     1        1     0.33     1.99     5.97  mac
//   avx2     i2     2-8      2     0.69     2.00     2.90  mac
//   avx2     i2     2-8      8     1.94     2.05     1.06  mac
//   avx2     i2     9-32    16     3.60     2.43     0.67  lut
//   avx2     i2     9-32    32     7.07     4.38     0.62  lut
//   avx2     i2     >32    128    28.42    17.85     0.63  lut
//   avx2     t5     1        1     0.85     1.82     2.14  mac
//   avx2     t5     2-8      2     1.43     1.83     1.29  lut
//   avx2     t5     2-8      8     3.49     1.91     0.55  lut
//   avx2     t5     9-32    16     6.93     2.45     0.35  lut
//   avx2     t5     9-32    32    13.82     4.77     0.35  lut
//   avx2     t5     >32    128    56.08    19.33     0.34  lut
//   avxvnni  i2     1        1     0.28     1.97     6.98  mac
//   avxvnni  i2     2-8      2     0.54     2.09     3.87  mac
//   avxvnni  i2     2-8      8     1.56     2.02     1.30  mac
//   avxvnni  i2     9-32    16     2.86     2.42     0.85  lut
//   avxvnni  i2     9-32    32     5.27     4.36     0.83  lut
//   avxvnni  i2     >32    128    21.13    17.81     0.84  lut
//   avxvnni  t5     1        1     0.61     1.83     3.01  mac
//   avxvnni  t5     2-8      2     1.39     1.87     1.34  mac
//   avxvnni  t5     2-8      8     1.93     1.89     0.98  mac
//   avxvnni  t5     9-32    16     3.73     2.46     0.66  lut
//   avxvnni  t5     9-32    32     7.39     4.72     0.64  lut
//   avxvnni  t5     >32    128    30.26    19.24     0.64  lut
//   avx512   i2     1        1     0.21     1.99     9.36  mac
//   avx512   i2     2-8      2     0.49     2.01     4.12  mac
//   avx512   i2     2-8      8     0.78     2.04     2.61  mac
//   avx512   i2     9-32    16     1.64     2.46     1.51  mac
//   avx512   i2     9-32    32     3.02     3.61     1.20  mac
//   avx512   i2     >32    128    11.73    13.91     1.19  mac
//   avx512   t5     1        1     0.34     1.85     5.48  mac
//   avx512   t5     2-8      2     0.50     1.83     3.63  mac
//   avx512   t5     2-8      8     1.00     1.89     1.89  mac
//   avx512   t5     9-32    16     1.87     2.37     1.27  mac
//   avx512   t5     9-32    32     3.20     4.60     1.44  mac
//   avx512   t5     >32    128    11.87    18.46     1.55  mac
//   amx      i2     1        1     0.20     2.01     9.95  mac
//   amx      i2     2-8      2     0.53     2.00     3.76  mac
//   amx      i2     2-8      8     0.66     2.02     3.07  mac
//   amx      i2     9-32    16     0.77     2.48     3.23  mac
//   amx      i2     9-32    32     1.85     3.58     1.93  mac
//   amx      i2     >32    128     6.16    14.03     2.28  mac
//   amx      t5     1        1     0.35     1.91     5.53  mac
//   amx      t5     2-8      2     0.61     1.91     3.12  mac
//   amx      t5     2-8      8     0.75     1.94     2.57  mac
//   amx      t5     9-32    16     0.86     2.49     2.87  mac
//   amx      t5     9-32    32     1.87     4.60     2.46  mac
//   amx      t5     >32    128     7.20    18.41     2.56  mac
#pragma once
#include <cstdint>

namespace bitnet {

struct KernelChoice {
  const char* isa;
  uint8_t lut_i2, lut_t5;  // bit c: shape class c (kernels.h shape_class) runs the lut kernel
};

constexpr KernelChoice kKernelChoice[] = {
    {"avx2", 0xc, 0xe},
    {"avxvnni", 0xc, 0xc},
    {"avx512", 0x0, 0x0},
    {"amx", 0x0, 0x0},
};

}  // namespace bitnet
