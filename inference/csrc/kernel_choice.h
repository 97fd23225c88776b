// Which kernel family runs each shape class, per path: measured, not guessed. Written by
// `python benchmarks/calibrate_kernels.py --write` (one 2B4T layer's ternary products, mac and lut
// interleaved, best of 3 rounds, 2 threads, CPU time; a class's bit is set where lut beat mac by
// more than the margin); dispatch.cpp copies the bits into each path's kernel table. Paths not
// listed run mac everywhere.
// Measured on Intel(R) Xeon(R) Processor, 2026-12-06 (one layer, ms):
//   path     layout class    T   mac ms   lut ms  lut/mac  choice
//   avx2     i2     1        1     0.35     2.08     5.89  mac
//   avx2     i2     2-8      2     0.70     2.05     2.93  mac
//   avx2     i2     2-8      8     1.93     2.15     1.11  mac
//   avx2     i2     9-32    16     3.72     2.55     0.69  lut
//   avx2     i2     9-32    32     7.26     4.70     0.65  lut
//   avx2     i2     >32    128    29.03    18.54     0.64  lut
//   avx2     t5     1        1     0.84     1.93     2.31  mac
//   avx2     t5     2-8      2     1.42     1.95     1.37  lut
//   avx2     t5     2-8      8     3.72     2.06     0.55  lut
//   avx2     t5     9-32    16     6.97     2.50     0.36  lut
//   avx2     t5     9-32    32    13.97     4.86     0.35  lut
//   avx2     t5     >32    128    56.61    19.40     0.34  lut
//   avxvnni  i2     1        1     0.29     2.04     6.94  mac
//   avxvnni  i2     2-8      2     0.56     2.05     3.66  mac
//   avxvnni  i2     2-8      8     1.59     2.05     1.29  mac
//   avxvnni  i2     9-32    16     2.96     2.56     0.87  lut
//   avxvnni  i2     9-32    32     5.42     4.63     0.85  lut
//   avxvnni  i2     >32    128    21.45    18.37     0.86  lut
//   avxvnni  t5     1        1     0.61     1.95     3.20  mac
//   avxvnni  t5     2-8      2     1.45     2.04     1.40  mac
//   avxvnni  t5     2-8      8     1.94     1.99     1.03  mac
//   avxvnni  t5     9-32    16     3.86     2.48     0.64  lut
//   avxvnni  t5     9-32    32     7.77     4.92     0.63  lut
//   avxvnni  t5     >32    128    30.88    19.67     0.64  lut
//   avx512   i2     1        1     0.22     2.07     9.32  mac
//   avx512   i2     2-8      2     0.51     2.15     4.23  mac
//   avx512   i2     2-8      8     0.85     2.06     2.43  mac
//   avx512   i2     9-32    16     1.77     2.53     1.43  mac
//   avx512   i2     9-32    32     3.19     3.90     1.22  mac
//   avx512   i2     >32    128    12.62    15.84     1.26  mac
//   avx512   t5     1        1     0.36     1.92     5.37  mac
//   avx512   t5     2-8      2     0.54     1.93     3.57  mac
//   avx512   t5     2-8      8     1.03     2.01     1.95  mac
//   avx512   t5     9-32    16     1.98     2.43     1.23  mac
//   avx512   t5     9-32    32     3.38     4.77     1.41  mac
//   avx512   t5     >32    128    12.37    18.60     1.50  mac
//   amx      i2     1        1     0.21     2.03     9.58  mac
//   amx      i2     2-8      2     0.56     2.06     3.68  mac
//   amx      i2     2-8      8     0.66     2.09     3.15  mac
//   amx      i2     9-32    16     0.86     2.47     2.88  mac
//   amx      i2     9-32    32     2.10     3.85     1.84  mac
//   amx      i2     >32    128     7.23    15.28     2.12  mac
//   amx      t5     1        1     0.34     1.82     5.28  mac
//   amx      t5     2-8      2     0.61     1.99     3.26  mac
//   amx      t5     2-8      8     0.76     1.92     2.53  mac
//   amx      t5     9-32    16     0.95     2.46     2.58  mac
//   amx      t5     9-32    32     2.16     4.77     2.21  mac
//   amx      t5     >32    128     7.45    18.53     2.49  mac
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
