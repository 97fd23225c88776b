#!/bin/sh
# Builds the t5 self-test and harness (selftest/t5_selftest.cpp, selftest/t5_bench.cpp) on x86-64
# with each kernel file's own ISA flags, as CMakeLists.txt compiles them, into $1 (default
# /tmp/t5_selftest). Usage: sh selftest/build_t5.sh [out_dir]; then
#   $out/t5_selftest            every path this CPU runs against ref and q.x (exit 0 = equal)
#   $out/t5_bench 2 15 128 2    threads, decode rounds, prefill tokens, prefill rounds
#   BITNET_ISA=avx2 $out/t5_bench ...   another kernel table
set -e
cd "$(dirname "$0")/.."
out=${1:-/tmp/t5_selftest}
mkdir -p "$out"
cxx="${CXX:-g++} -std=c++17 -O3 -I."
for f in kernels_ref cpu_features layouts model threadpool selftest/t5_selftest selftest/t5_bench; do
  $cxx -c $f.cpp -o "$out/$(basename $f).o"
done
$cxx -mavx2 -mfma -mf16c -c kernels_avx2.cpp -o "$out/kernels_avx2.o"
$cxx -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mfma -mf16c -c kernels_avx512.cpp -o "$out/kernels_avx512.o"
$cxx -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx512vbmi -c kernels_avx512vbmi.cpp -o "$out/kernels_avx512vbmi.o"
amx=""
nodefs=""
if $cxx -mamx-tile -mamx-int8 -mavx512f -mavx512bw -c kernels_amx.cpp -o "$out/kernels_amx.o" 2>/dev/null; then
  amx="$out/kernels_amx.o"
else
  nodefs="$nodefs -DBITNET_NO_AMX"
fi
vnni=""
if $cxx -mavxvnni -mavx2 -mfma -mf16c -c kernels_avxvnni.cpp -o "$out/kernels_avxvnni.o" 2>/dev/null; then
  vnni="$out/kernels_avxvnni.o"
else
  nodefs="$nodefs -DBITNET_NO_AVXVNNI"
fi
$cxx $nodefs -c dispatch.cpp -o "$out/dispatch.o"
engine="$out/kernels_ref.o $out/dispatch.o $out/cpu_features.o $out/layouts.o $out/model.o $out/threadpool.o \
  $out/kernels_avx2.o $out/kernels_avx512.o $out/kernels_avx512vbmi.o $amx $vnni"
$cxx $engine "$out/t5_selftest.o" -lpthread -o "$out/t5_selftest"
$cxx $engine "$out/t5_bench.o" -lpthread -o "$out/t5_bench"
echo "built $out/t5_selftest $out/t5_bench"
