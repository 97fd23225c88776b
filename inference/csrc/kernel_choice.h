// Which kernel family runs each shape class, per path: measured, not guessed. Written by
// `python benchmarks/calibrate_kernels.py --write` (one 2B4T layer's ternary products, mac and lut
// interleaved, best of 3 rounds, 2 threads, CPU time; a class's bit is set where lut beat mac by
// more than the margin); dispatch.cpp copies the bits into each path's kernel table. Paths not
// listed run mac everywhere.
// Measured on Intel(R) Xeon(R) Processor, 2026-12-06 (one layer, ms):
//   path     layout class    T   mac ms   lut ms  lut/mac  choice
//   avx2     i2     1        1     0.34     2.25     6.64  mac
//   avx2     i2     2-8      2     0.79     2.27     2.87  mac
//   avx2     i2     2-8      8     1.99     2.36     1.19  mac
//   avx2     i2     9-32    16     3.70     2.94     0.80  lut
//   avx2     i2     9-32    32     7.05     5.43     0.77  lut
//   avx2     i2     >32    128    28.30    20.94     0.74  lut
//   avx2     t5     1        1     0.84     2.27     2.70  mac
//   avx2     t5     2-8      2     1.49     2.28     1.53  lut
//   avx2     t5     2-8      8     3.57     2.32     0.65  lut
//   avx2     t5     9-32    16     6.87     2.90     0.42  lut
//   avx2     t5     9-32    32    13.67     5.86     0.43  lut
//   avx2     t5     >32    128    54.98    23.83     0.43  lut
//   avxvnni  i2     1        1     0.34     2.24     6.63  mac
//   avxvnni  i2     2-8      2     0.85     2.23     2.64  mac
//   avxvnni  i2     2-8      8     1.68     2.33     1.38  mac
//   avxvnni  i2     9-32    16     3.14     2.92     0.93  lut
//   avxvnni  i2     9-32    32     6.11     5.34     0.87  lut
//   avxvnni  i2     >32    128    24.08    20.91     0.87  lut
//   avxvnni  t5     1        1     0.60     2.32     3.90  mac
//   avxvnni  t5     2-8      2     1.47     2.29     1.55  mac
//   avxvnni  t5     2-8      8     1.88     2.34     1.24  mac
//   avxvnni  t5     9-32    16     3.74     2.92     0.78  lut
//   avxvnni  t5     9-32    32     7.37     6.10     0.83  lut
//   avxvnni  t5     >32    128    30.65    24.07     0.79  lut
//   avx512   i2     1        1     0.27     2.28     8.47  mac
//   avx512   i2     2-8      2     0.79     2.25     2.86  mac
//   avx512   i2     2-8      8     1.05     2.30     2.18  mac
//   avx512   i2     9-32    16     1.91     2.88     1.50  mac
//   avx512   i2     9-32    32     3.54     4.43     1.25  mac
//   avx512   i2     >32    128    14.71    17.53     1.19  mac
//   avx512   t5     1        1     0.36     2.33     6.39  mac
//   avx512   t5     2-8      2     1.18     2.34     1.98  mac
//   avx512   t5     2-8      8     1.49     2.36     1.58  mac
//   avx512   t5     9-32    16     2.57     2.92     1.14  mac
//   avx512   t5     9-32    32     4.49     4.98     1.11  mac
//   avx512   t5     >32    128    16.50    20.14     1.22  mac
//   amx      i2     1        1     0.27     2.27     8.48  mac
//   amx      i2     2-8      2     0.47     2.28     4.88  mac
//   amx      i2     2-8      8     0.75     2.30     3.07  mac
//   amx      i2     9-32    16     1.14     2.84     2.50  mac
//   amx      i2     9-32    32     1.80     4.36     2.42  mac
//   amx      i2     >32    128     5.93    17.66     2.98  mac
//   amx      t5     1        1     0.36     2.32     6.36  mac
//   amx      t5     2-8      2     0.75     2.33     3.11  mac
//   amx      t5     2-8      8     0.89     2.35     2.64  mac
//   amx      t5     9-32    16     1.21     2.89     2.39  mac
//   amx      t5     9-32    32     1.91     4.99     2.61  mac
//   amx      t5     >32    128     6.65    20.34     3.06  mac
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
