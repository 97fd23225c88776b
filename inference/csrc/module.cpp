// Python bindings of the C++ engine (nanobind). Only this file knows about Python.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "cpu_features.h"

namespace nb = nanobind;

NB_MODULE(_C, m) {
  m.doc() = "bitnet C++ CPU engine";
  m.def(
      "cpu_features",
      []() {
        const auto& f = bitnet::cpu_features();
        nb::dict d;
        d["arch"] = bitnet::cpu_arch();
        d["avx2"] = f.avx2;
        d["fma"] = f.fma;
        d["f16c"] = f.f16c;
        d["avx512f"] = f.avx512f;
        d["avx512bw"] = f.avx512bw;
        d["avx512vl"] = f.avx512vl;
        d["avx512_vnni"] = f.avx512_vnni;
        d["avx_vnni"] = f.avx_vnni;
        d["neon"] = f.neon;
        d["dotprod"] = f.dotprod;
        return d;
      },
      "CPU features detected at start-up (cpuid/xgetbv on x86-64, compile-time on ARM).");
}
