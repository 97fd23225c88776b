// Which kernel family runs each shape class, per path: measured, not guessed. Written by
// `python benchmarks/calibrate_kernels.py --write` (one 2B4T layer's ternary products, mac and lut
// interleaved, best of 3 rounds, 2 threads, CPU time; a class's bit is set where lut beat mac by
// more than the margin); dispatch.cpp copies the bits into each path's kernel table. Paths not
// listed run mac everywhere.
// Measured on Intel(R) Xeon(R) Processor, 2026-12-06 (one layer, ms):
//   path     layout class    T   mac ms   lut ms  lut/mac  choice
//   avx2     i2     1        1     0.34     2.77     8.19  mac
//   avx2     i2     2-8      2     0.82     2.74     3.37  mac
//   avx2     i2     2-8      8     1.97     2.77     1.41  mac
//   avx2     i2     9-32    16     3.64     2.89     0.80  lut
//   avx2     i2     9-32    32     6.98     4.74     0.68  lut
//   avx2     i2     >32    128    28.32    19.38     0.68  lut
//   avx2     t5     1        1     0.84     2.33     2.79  mac
//   avx2     t5     2-8      2     1.42     2.32     1.63  lut
//   avx2     t5     2-8      8     3.60     2.37     0.66  lut
//   avx2     t5     9-32    16     6.81     2.79     0.41  lut
//   avx2     t5     9-32    32    13.79     5.17     0.38  lut
//   avx2     t5     >32    128    55.37    22.22     0.40  lut
//   avxvnni  i2     1        1     0.33     2.73     8.41  mac
//   avxvnni  i2     2-8      2     0.86     2.70     3.14  mac
//   avxvnni  i2     2-8      8     1.67     2.75     1.64  mac
//   avxvnni  i2     9-32    16     3.06     2.87     0.94  lut
//   avxvnni  i2     9-32    32     5.86     4.69     0.80  lut
//   avxvnni  i2     >32    128    24.11    19.09     0.79  lut
//   avxvnni  t5     1        1     0.60     2.31     3.85  mac
//   avxvnni  t5     2-8      2     1.45     2.32     1.60  mac
//   avxvnni  t5     2-8      8     1.94     2.30     1.19  mac
//   avxvnni  t5     9-32    16     3.64     2.60     0.71  lut
//   avxvnni  t5     9-32    32     7.31     5.18     0.71  lut
//   avxvnni  t5     >32    128    30.31    21.61     0.71  lut
//   avx512   i2     1        1     0.23     3.08    13.10  mac
//   avx512   i2     2-8      2     0.80     3.09     3.87  mac
//   avx512   i2     2-8      8     1.00     3.08     3.07  mac
//   avx512   i2     9-32    16     1.79     3.76     2.10  mac
//   avx512   i2     9-32    32     3.66     4.48     1.22  mac
//   avx512   i2     >32    128    14.89    18.12     1.22  mac
//   avx512   t5     1        1     0.37     2.32     6.35  mac
//   avx512   t5     2-8      2     1.18     2.32     1.96  mac
//   avx512   t5     2-8      8     1.46     2.33     1.60  mac
//   avx512   t5     9-32    16     2.52     2.55     1.01  mac
//   avx512   t5     9-32    32     4.69     4.70     1.00  mac
//   avx512   t5     >32    128    16.45    19.17     1.17  mac
//   amx      i2     1        1     0.27     3.10    11.69  mac
//   amx      i2     2-8      2     0.48     3.09     6.39  mac
//   amx      i2     2-8      8     0.77     3.14     4.08  mac
//   amx      i2     9-32    16     1.20     3.81     3.18  mac
//   amx      i2     9-32    32     1.95     4.47     2.30  mac
//   amx      i2     >32    128     6.58    18.12     2.76  mac
//   amx      t5     1        1     0.37     2.32     6.33  mac
//   amx      t5     2-8      2     0.73     2.34     3.20  mac
//   amx      t5     2-8      8     0.93     2.41     2.61  mac
//   amx      t5     9-32    16     1.26     2.61     2.08  mac
//   amx      t5     9-32    32     2.09     4.68     2.24  mac
//   amx      t5     >32    128     5.79    19.28     3.33  mac
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
