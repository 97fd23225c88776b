// Python bindings of the C++ engine (nanobind). Only this file knows about Python.
// C++ std::invalid_argument / std::out_of_range become Python ValueError / IndexError.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <chrono>
#include <limits>
#include <optional>
#include <stdexcept>

#include "attention.h"
#include "cpu_features.h"
#include "elementwise.h"
#include "kernels.h"
#include "model.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

template <typename T, typename... Extra>
using Arr = nb::ndarray<T, nb::c_contig, nb::device::cpu, Extra...>;

bitnet::DType parse_dtype(const std::string& s) {
  if (s == "bf16") return bitnet::DType::BF16;
  if (s == "f16") return bitnet::DType::F16;
  if (s == "f32") return bitnet::DType::F32;
  throw std::invalid_argument("dtype must be bf16, f16 or f32, got '" + s + "'");
}

// A 2-D array whose element size matches the dtype tag (bf16/f16 travel as uint16).
bitnet::Matrix16 as_matrix(nb::ndarray<nb::ro, nb::ndim<2>, nb::c_contig, nb::device::cpu> a, const std::string& dtype) {
  bitnet::Matrix16 m;
  m.dtype = parse_dtype(dtype);
  const size_t want = m.dtype == bitnet::DType::F32 ? 4 : 2;
  if (a.itemsize() != want) throw std::invalid_argument("array item size does not match dtype " + dtype);
  m.data = a.data();
  m.rows = static_cast<int>(a.shape(0));
  m.cols = static_cast<int>(a.shape(1));
  return m;
}

const bitnet::Kernels& kernels_named(const std::string& isa) {
  const auto names = bitnet::available_isas();
  const bitnet::Kernels* k = bitnet::find_kernels(isa);
  if (k == nullptr || std::find(names.begin(), names.end(), isa) == names.end())
    throw std::invalid_argument("ISA '" + isa + "' is not available here");
  return *k;
}

// The path's kernel of the named family ("mac" or "lut"); throws where the path has no such kernel.
template <typename Fn>
Fn pick_family(Fn mac, Fn lut, const std::string& isa, const std::string& family) {
  if (family == "mac") return mac;
  if (family == "lut" && lut != nullptr) return lut;
  if (family == "lut") throw std::invalid_argument("path '" + isa + "' has no lut kernel");
  throw std::invalid_argument("family must be 'mac' or 'lut', got '" + family + "'");
}

// Exact q.x through one tile layout (Tile, Cols columns per tile): repack transformers' packed
// uint8 (out/4, K) weights, pad x (T, K) to the kernels' row stride, run gemm, return int32 (T, out).
template <typename Tile, int Cols>
nb::ndarray<nb::numpy, int32_t, nb::ndim<2>> tiled_matmul(
    Arr<const uint8_t, nb::ndim<2>> packed, Arr<const int8_t, nb::ndim<2>> x,
    bool (*repack)(const uint8_t*, int, int, Tile*, bitnet::ThreadPool*),
    void (*gemm)(const Tile*, int, int, int, const int8_t*, int, const int32_t*, int, int32_t*, int)) {
  const int out = static_cast<int>(packed.shape(0)) * 4, K = static_cast<int>(packed.shape(1));
  const int T = static_cast<int>(x.shape(0));
  if (static_cast<int>(x.shape(1)) != K) throw std::invalid_argument("x columns != packed columns");
  if (T < 1 || out < 1 || K < 1) throw std::invalid_argument("empty weights or activations");
  const int MB = (out + 15) / 16, KB = (K + Cols - 1) / Cols, Mp = MB * 16;
  const int Kp = (KB * Cols + bitnet::kXAlign - 1) / bitnet::kXAlign * bitnet::kXAlign;
  bitnet::AlignedBuf<Tile> tiles(static_cast<size_t>(MB) * KB);
  bitnet::ThreadPool pool(1);
  if (!repack(packed.data(), out, K, tiles.data(), &pool)) throw std::invalid_argument("packed weights contain code 3");
  std::vector<int8_t> xp(static_cast<size_t>(T) * Kp, 0);
  std::vector<int32_t> xsum(T, 0);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < K; ++c) {
      xp[static_cast<size_t>(t) * Kp + c] = x.data()[static_cast<size_t>(t) * K + c];
      xsum[t] += x.data()[static_cast<size_t>(t) * K + c];
    }
  std::vector<int32_t> y(static_cast<size_t>(T) * Mp);
  gemm(tiles.data(), KB, 0, MB, xp.data(), Kp, xsum.data(), T, y.data(), Mp);
  auto* res = new int32_t[static_cast<size_t>(T) * out];
  for (int t = 0; t < T; ++t)
    for (int o = 0; o < out; ++o) res[static_cast<size_t>(t) * out + o] = y[static_cast<size_t>(t) * Mp + o];
  nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<int32_t*>(p); });
  return nb::ndarray<nb::numpy, int32_t, nb::ndim<2>>(res, {static_cast<size_t>(T), static_cast<size_t>(out)}, owner);
}

#if defined(__x86_64__) || defined(_M_X64)
// Iterations/s of loop(iters) summed over `threads` threads, best of three rounds of about
// `seconds`: one item is calibrated to about seconds / 100 on one thread, then 100 items per
// thread are handed out in small chunks claimed dynamically, so a descheduled thread delays nothing.
// The rate is per second of the threads' own CPU time (CLOCK_THREAD_CPUTIME_ID, summed over them,
// times threads): what the cores can do, not the share of them that other jobs left us.
template <typename Loop>
double bitnet_peak_rate(Loop&& loop, int threads, double seconds) {
  int64_t iters = 1 << 10;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    volatile uint32_t sink = loop(iters);
    (void)sink;
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds / 100) break;
    iters *= 2;
  }
  bitnet::ThreadPool pool(threads);
  const int items = 100 * threads;
  std::vector<uint32_t> sinks(items);
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    std::atomic<int64_t> cpu_ns{0};
    pool.parallel_for(items, [&](int b, int e) {
      timespec c0, c1;
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
      for (int i = b; i < e; ++i) sinks[i] = loop(iters);
      clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
      cpu_ns += (c1.tv_sec - c0.tv_sec) * int64_t(1000000000) + (c1.tv_nsec - c0.tv_nsec);
    }, 50);
    const double s = 1e-9 * static_cast<double>(cpu_ns.load()) / threads;  // CPU seconds per thread
    best = std::max(best, static_cast<double>(iters) * items / s);
  }
  return best;
}
#endif

}  // namespace

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
        d["avx512_vbmi"] = f.avx512_vbmi;
        d["avx_vnni"] = f.avx_vnni;
        d["amx_tile"] = f.amx_tile;
        d["amx_int8"] = f.amx_int8;
        d["neon"] = f.neon;
        d["dotprod"] = f.dotprod;
        return d;
      },
      "CPU features detected at start-up (cpuid/xgetbv on x86-64, compile-time on ARM).");
  m.def("available_isas", &bitnet::available_isas, "Kernel paths this CPU and build can run, best last.");
  m.def("current_isa", []() { return std::string(bitnet::kernels().name); }, "The kernel path in use.");
  m.def("set_isa", &bitnet::set_isa, "name"_a, "Force a kernel path for every model (ref, avx2, avxvnni, avx512, amx, neon).");

  // ---- kernel-level entry points, used by the tests to compare every path with `ref` ----
  m.def("set_kernel_family", &bitnet::set_kernel_family, "name"_a,
        "Kernel family of the several-token ternary products: auto (per shape class, measured), mac or lut.");
  m.def("kernel_family", &bitnet::kernel_family, "The kernel family in force (BITNET_KERNEL, or set_kernel_family).");
  m.def(
      "kernel_choice",
      [](const std::string& isa, const std::string& weights, int T) {
        const bitnet::Kernels& k = kernels_named(isa);
        if (weights == "i2") return std::string(bitnet::ternary_gemm_for(k, T) == k.ternary_gemm_lut ? "lut" : "mac");
        if (weights == "t5") return std::string(bitnet::ternary5_gemm_for(k, T) == k.ternary5_gemm_lut ? "lut" : "mac");
        throw std::invalid_argument("weights must be 'i2' or 't5'");
      },
      "isa"_a, "weights"_a, "T"_a, "The kernel family the engine runs for T tokens on this path and layout: 'mac' or 'lut'.");
  m.def(
      "ternary_matmul",
      [](const std::string& isa, Arr<const uint8_t, nb::ndim<2>> packed, Arr<const int8_t, nb::ndim<2>> x,
         const std::string& family) {
        const bitnet::Kernels& k = kernels_named(isa);
        return tiled_matmul<bitnet::TernaryTile, bitnet::kTileCols>(packed, x, bitnet::repack_ternary,
                                                                    pick_family(k.ternary_gemm, k.ternary_gemm_lut, isa, family));
      },
      "isa"_a, "packed"_a, "x"_a, "family"_a = "mac",
      "Exact q.x for transformers-packed uint8 (out/4, K) weights and int8 x (T, K) -> int32 (T, out), through the "
      "path's multiply-accumulate ('mac') or lookup-table ('lut') kernel.");
  m.def(
      "ternary5_matmul",
      [](const std::string& isa, Arr<const uint8_t, nb::ndim<2>> packed, Arr<const int8_t, nb::ndim<2>> x,
         const std::string& family) {
        const bitnet::Kernels& k = kernels_named(isa);
        return tiled_matmul<bitnet::TernaryTile5, bitnet::kTile5Cols>(packed, x, bitnet::repack_ternary5,
                                                                      pick_family(k.ternary5_gemm, k.ternary5_gemm_lut, isa, family));
      },
      "isa"_a, "packed"_a, "x"_a, "family"_a = "mac",
      "ternary_matmul through the t5 tiles (5 trits per byte): exact q.x -> int32 (T, out).");
  m.def(
      "ternary5_tiles",
      [](Arr<const uint8_t, nb::ndim<2>> packed) {
        const int out = static_cast<int>(packed.shape(0)) * 4, K = static_cast<int>(packed.shape(1));
        const int MB = (out + 15) / 16, KB = (K + bitnet::kTile5Cols - 1) / bitnet::kTile5Cols;
        const size_t n = static_cast<size_t>(MB) * KB * sizeof(bitnet::TernaryTile5);
        auto* res = new uint8_t[n];
        bitnet::ThreadPool pool(1);
        if (!bitnet::repack_ternary5(packed.data(), out, K, reinterpret_cast<bitnet::TernaryTile5*>(res), &pool)) {
          delete[] res;
          throw std::invalid_argument("packed weights contain code 3");
        }
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
        return nb::ndarray<nb::numpy, uint8_t, nb::ndim<3>>(res, {static_cast<size_t>(MB) * KB, 16, 4}, owner);
      },
      "packed"_a, "The t5 tiles of transformers-packed weights: uint8 (MB * KB, 16 rows, 4 bytes).");
  m.def(
      "quantize_rows",
      [](const std::string& isa, Arr<const float, nb::ndim<2>> x) {
        const auto& k = kernels_named(isa);
        const size_t T = x.shape(0), C = x.shape(1);
        auto* q = new int8_t[T * C];
        auto* s = new float[T];
        for (size_t t = 0; t < T; ++t) {
          int32_t sum = 0;
          s[t] = k.quantize_row(x.data() + t * C, static_cast<int>(C), static_cast<int>(C), q + t * C, &sum);
        }
        nb::capsule oq(q, [](void* p) noexcept { delete[] static_cast<int8_t*>(p); });
        nb::capsule os(s, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        return std::make_pair(nb::ndarray<nb::numpy, int8_t, nb::ndim<2>>(q, {T, C}, oq),
                              nb::ndarray<nb::numpy, float, nb::ndim<1>>(s, {T}, os));
      },
      "isa"_a, "x"_a, "Per-token absmax int8 quantization of x (T, C) -> (int8 (T, C), s (T,)).");
  m.def(
      "head_i8",
      [](const std::string& isa, Arr<const int8_t, nb::ndim<2>> E, Arr<const int8_t, nb::ndim<2>> x) {
        const auto& k = kernels_named(isa);
        const int V = static_cast<int>(E.shape(0)), C = static_cast<int>(E.shape(1)), T = static_cast<int>(x.shape(0));
        if (static_cast<int>(x.shape(1)) != C) throw std::invalid_argument("x columns != E columns");
        const int Cp = (C + bitnet::kHeadColAlign - 1) / bitnet::kHeadColAlign * bitnet::kHeadColAlign;
        std::vector<int8_t> Ep(static_cast<size_t>(V) * Cp, 0), xp(static_cast<size_t>(T) * Cp, 0);
        std::vector<int32_t> rowsum(V, 0);
        for (int r = 0; r < V; ++r)
          for (int c = 0; c < C; ++c) {
            const int8_t e = E.data()[static_cast<size_t>(r) * C + c];
            if (e == -128) throw std::invalid_argument("int8 head values must be in [-127, 127]");
            Ep[static_cast<size_t>(r) * Cp + c] = e;
            rowsum[r] += e;
          }
        for (int t = 0; t < T; ++t)
          for (int c = 0; c < C; ++c) {
            const int8_t v = x.data()[static_cast<size_t>(t) * C + c];
            if (v == -128) throw std::invalid_argument("activations must be in [-127, 127]");
            xp[static_cast<size_t>(t) * Cp + c] = v;
          }
        auto* res = new int32_t[static_cast<size_t>(T) * V];
        k.head_i8(Ep.data(), rowsum.data(), Cp, 0, V, xp.data(), T, res, V);
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<int32_t*>(p); });
        return nb::ndarray<nb::numpy, int32_t, nb::ndim<2>>(res, {static_cast<size_t>(T), static_cast<size_t>(V)}, owner);
      },
      "isa"_a, "E"_a, "x"_a, "Exact int8 head dot products: E int8 (V, C), x int8 (T, C) -> int32 (T, V).");
  m.def(
      "head_i4",
      [](const std::string& isa, Arr<const int8_t, nb::ndim<2>> q, Arr<const uint8_t, nb::ndim<2>> sc,
         Arr<const int8_t, nb::ndim<2>> x) {
        const auto& k = kernels_named(isa);
        const int V = static_cast<int>(q.shape(0)), C = static_cast<int>(q.shape(1)), T = static_cast<int>(x.shape(0));
        const int G = (C + bitnet::kHeadI4Group - 1) / bitnet::kHeadI4Group;
        if (static_cast<int>(x.shape(1)) != C) throw std::invalid_argument("x columns != q columns");
        if (static_cast<int>(sc.shape(0)) != V || static_cast<int>(sc.shape(1)) != G)
          throw std::invalid_argument("sc must have shape (V, ceil(C / 32))");
        const int Cp = (C + bitnet::kHeadI4Cols - 1) / bitnet::kHeadI4Cols * bitnet::kHeadI4Cols;
        if (Cp > bitnet::kHeadI4MaxCols) throw std::invalid_argument("int4 head: too many columns");
        const int nb = Cp / bitnet::kHeadI4Cols;
        std::vector<bitnet::HeadI4Block> W(static_cast<size_t>(V) * nb);
        std::vector<int32_t> rowbias(V, 0);
        for (int r = 0; r < V; ++r) {
          int64_t bias = 0;
          for (int c = 0; c < Cp; ++c) {
            const int v = c < C ? q.data()[static_cast<size_t>(r) * C + c] : 0;
            if (v < -8 || v > 7) throw std::invalid_argument("int4 head values must be in [-8, 7]");
            const int s = c < C ? sc.data()[static_cast<size_t>(r) * G + c / bitnet::kHeadI4Group] : 0;
            bitnet::HeadI4Block& b = W[static_cast<size_t>(r) * nb + c / bitnet::kHeadI4Cols];
            const int j = c % bitnet::kHeadI4Cols;
            if (j < 64) b.qs[j] = static_cast<uint8_t>((b.qs[j] & 0xf0) | (v + 8));
            else b.qs[j - 64] = static_cast<uint8_t>((b.qs[j - 64] & 0x0f) | ((v + 8) << 4));
            if (j % bitnet::kHeadI4Group == 0) b.sc[j / bitnet::kHeadI4Group] = static_cast<uint8_t>(s);
            bias += static_cast<int64_t>(s) * v;
          }
          rowbias[r] = static_cast<int32_t>(128 * bias);
        }
        std::vector<int8_t> xp(static_cast<size_t>(T) * Cp, 0);
        for (int t = 0; t < T; ++t)
          for (int c = 0; c < C; ++c) {
            const int8_t v = x.data()[static_cast<size_t>(t) * C + c];
            if (v == -128) throw std::invalid_argument("activations must be in [-127, 127]");
            xp[static_cast<size_t>(t) * Cp + c] = v;
          }
        auto* res = new int32_t[static_cast<size_t>(T) * V];
        k.head_i4(W.data(), rowbias.data(), Cp, 0, V, xp.data(), T, res, V);
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<int32_t*>(p); });
        return nb::ndarray<nb::numpy, int32_t, nb::ndim<2>>(res, {static_cast<size_t>(T), static_cast<size_t>(V)}, owner);
      },
      "isa"_a, "q"_a, "sc"_a, "x"_a,
      "Exact int4 head dot products: q int8 (V, C) in [-8, 7], u8 group scales sc (V, ceil(C/32)), x int8 (T, C) "
      "-> int32 (T, V) = sum over groups of sc * (q . x within the group).");
  m.def(
      "dot_rows",
      [](const std::string& isa, nb::ndarray<nb::ro, nb::ndim<2>, nb::c_contig, nb::device::cpu> E, const std::string& dtype,
         Arr<const float, nb::ndim<2>> h) {
        const auto& k = kernels_named(isa);
        const bitnet::Matrix16 W = as_matrix(E, dtype);
        const int T = static_cast<int>(h.shape(0));
        if (static_cast<int>(h.shape(1)) != W.cols) throw std::invalid_argument("h columns != E columns");
        auto* res = new float[static_cast<size_t>(T) * W.rows];
        if (W.dtype == bitnet::DType::BF16)
          k.dot_rows_bf16(static_cast<const uint16_t*>(W.data), W.cols, 0, W.rows, h.data(), T, res, W.rows);
        else if (W.dtype == bitnet::DType::F16)
          k.dot_rows_f16(static_cast<const uint16_t*>(W.data), W.cols, 0, W.rows, h.data(), T, res, W.rows);
        else
          k.dot_rows_f32(static_cast<const float*>(W.data), W.cols, 0, W.rows, h.data(), T, res, W.rows);
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        return nb::ndarray<nb::numpy, float, nb::ndim<2>>(res, {static_cast<size_t>(T), static_cast<size_t>(W.rows)}, owner);
      },
      "isa"_a, "E"_a, "dtype"_a, "h"_a, "fp32 dot products of 16-bit/fp32 rows E (V, C) with h (T, C) -> (T, V).");
  m.def(
      "attend",
      [](const std::string& isa, Arr<const float, nb::ndim<1>> q, Arr<const float, nb::ndim<2>> K,
         Arr<const float, nb::ndim<2>> V, float scale) {
        const auto& k = kernels_named(isa);
        const int n = static_cast<int>(K.shape(0)), hd = static_cast<int>(K.shape(1));
        if (n < 1 || static_cast<int>(q.shape(0)) != hd || V.shape(0) != K.shape(0) || V.shape(1) != K.shape(1))
          throw std::invalid_argument("attend: q (hd,), K and V (n >= 1, hd) must agree");
        std::vector<float> scratch(n);
        auto* res = new float[hd];
        k.attend(q.data(), K.data(), V.data(), hd, n, hd, scale, scratch.data(), res);
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        return nb::ndarray<nb::numpy, float, nb::ndim<1>>(res, {static_cast<size_t>(hd)}, owner);
      },
      "isa"_a, "q"_a, "K"_a, "V"_a, "scale"_a, "One head's softmax(scale * K q) . V over n positions -> (hd,).");
  m.def(
      "gated_act",
      [](const std::string& impl, Arr<const float, nb::ndim<1>> g, Arr<const float, nb::ndim<1>> u, bool relu2) {
        // The FFN's gated activation: "ref" (the baseline loop the ref / neon paths run), "avx512"
        // (the 16-lane twin of the avx512 / amx paths) or "avx2" (8 lanes: the avx2 / avxvnni paths).
        if (impl != "ref" && impl != "avx512" && impl != "avx2")
          throw std::invalid_argument("gated_act: impl must be 'ref', 'avx512' or 'avx2'");
        if (impl == "avx512" && !bitnet::cpu_features().avx512f) throw std::invalid_argument("gated_act: this CPU has no AVX-512");
        if (impl == "avx2" && !bitnet::cpu_features().avx2) throw std::invalid_argument("gated_act: this CPU has no AVX2");
        if (g.shape(0) != u.shape(0)) throw std::invalid_argument("gated_act: g and u must have the same size");
        const size_t n = g.shape(0);
        auto* res = new float[std::max<size_t>(n, 1)];
        std::copy(g.data(), g.data() + n, res);
        (impl == "ref" ? bitnet::gated_act_ref : impl == "avx2" ? bitnet::gated_act_avx2 : bitnet::gated_act_avx512)(res, u.data(), n, relu2);
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        return nb::ndarray<nb::numpy, float, nb::ndim<1>>(res, {n}, owner);
      },
      "impl"_a, "g"_a, "u"_a, "relu2"_a, "act(g) * u (relu2: max(0, g)^2, else silu) by the reference, the AVX-512 or the AVX2 loop.");
  m.def("set_attention_mode", &bitnet::set_attention_mode, "name"_a,
        "Attention on the avx512 / amx / avx2 / avxvnni paths: 'blocked' (default) or 'per-head' (each path's attend), for comparison.");
  m.def("attention_mode", &bitnet::attention_mode, "The attention mode in force.");
  // The blocked attention (attention.h): impl "avx512" (the avx512 and amx paths) or "avx2" (the
  // avx2 and avxvnni paths); query i over rows 0..n[i]-1 of K and V (fp32, or fp16 bit patterns as uint16).
  auto attend_group_binding = [](auto q, auto K, auto V, std::vector<int> n, float scale, const std::string& impl) {
    const int nq = static_cast<int>(q.shape(0)), hd = static_cast<int>(q.shape(1)), rows = static_cast<int>(K.shape(0));
    const bool avx2 = impl == "avx2";
    if (!avx2 && impl != "avx512") throw std::invalid_argument("attend_group: impl must be 'avx512' or 'avx2'");
    if (avx2 && (!bitnet::attend_group_avx2_supports(hd) || !bitnet::cpu_features().avx2))
      throw std::invalid_argument("attend_group: avx2 needs AVX2 and head_dim a multiple of 8, at most 256");
    if (!avx2 && (!bitnet::attend_group_supports(hd) || !bitnet::cpu_features().avx512f))
      throw std::invalid_argument("attend_group: needs AVX-512 and head_dim a multiple of 16, at most 256");
    if (static_cast<int>(K.shape(1)) != hd || V.shape(0) != K.shape(0) || V.shape(1) != K.shape(1) ||
        static_cast<int>(n.size()) != nq || nq < 1)
      throw std::invalid_argument("attend_group: q (nq, hd), K and V (rows, hd) and n (nq) must agree");
    for (int v : n)
      if (v < 1 || v > rows) throw std::invalid_argument("attend_group: each n must be in [1, rows]");
    const int most = *std::max_element(n.begin(), n.end());
    std::vector<float> scratch(static_cast<size_t>(nq) * ((most + 15) / 16 * 16));
    auto* res = new float[static_cast<size_t>(nq) * hd];
    std::vector<const float*> qs(nq);
    std::vector<float*> outs(nq);
    for (int i = 0; i < nq; ++i) {
      qs[i] = q.data() + static_cast<size_t>(i) * hd;
      outs[i] = res + static_cast<size_t>(i) * hd;
    }
    if (avx2) bitnet::attend_group_avx2(qs.data(), outs.data(), n.data(), nq, K.data(), V.data(), hd, hd, scale, scratch.data());
    else bitnet::attend_group(qs.data(), outs.data(), n.data(), nq, K.data(), V.data(), hd, hd, scale, scratch.data());
    nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    return nb::ndarray<nb::numpy, float, nb::ndim<2>>(res, {static_cast<size_t>(nq), static_cast<size_t>(hd)}, owner);
  };
  // One overload per cache element type (no implicit conversion: a uint16 array must not become floats).
  auto def_attend_group = [&](auto elem, const char* doc) {
    using E = decltype(elem);
    m.def(
        "attend_group",
        [attend_group_binding](Arr<const float, nb::ndim<2>> q, Arr<const E, nb::ndim<2>> K, Arr<const E, nb::ndim<2>> V,
                               std::vector<int> n, float scale, const std::string& impl) {
          return attend_group_binding(q, K, V, std::move(n), scale, impl);
        },
        "q"_a, "K"_a.noconvert(), "V"_a.noconvert(), "n"_a, "scale"_a, "impl"_a = "avx512", doc);
  };
  def_attend_group(float{}, "Blocked attention (impl avx512: the avx512 / amx paths; avx2: avx2 / avxvnni): row i of q over the first n[i] rows of K, V -> (nq, hd).");
  def_attend_group(uint16_t{}, "attend_group over an fp16 cache (K, V: uint16 bit patterns).");
  m.def(
      "attend_f16",
      [](const std::string& isa, Arr<const float, nb::ndim<1>> q, Arr<const uint16_t, nb::ndim<2>> K,
         Arr<const uint16_t, nb::ndim<2>> V, float scale) {
        const auto& k = kernels_named(isa);
        const int n = static_cast<int>(K.shape(0)), hd = static_cast<int>(K.shape(1));
        if (n < 1 || static_cast<int>(q.shape(0)) != hd || V.shape(0) != K.shape(0) || V.shape(1) != K.shape(1))
          throw std::invalid_argument("attend_f16: q (hd,), K and V (n >= 1, hd) must agree");
        std::vector<float> scratch(n);
        auto* res = new float[hd];
        k.attend_f16(q.data(), K.data(), V.data(), hd, n, hd, scale, scratch.data(), res);
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        return nb::ndarray<nb::numpy, float, nb::ndim<1>>(res, {static_cast<size_t>(hd)}, owner);
      },
      "isa"_a, "q"_a, "K"_a, "V"_a, "scale"_a,
      "attend over fp16 K and V (uint16 bit patterns, (n, hd)): softmax(scale * K q) . V in fp32 -> (hd,).");
  m.def(
      "exp_f32",
      [](Arr<const float, nb::ndim<1>> x) {
        const size_t n = x.shape(0);
        float* res = new float[n];
        for (size_t i = 0; i < n; ++i) res[i] = bitnet::exp_f32(x.data()[i]);
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        return nb::ndarray<nb::numpy, float, nb::ndim<1>>(res, {n}, owner);
      },
      "x"_a, "The engine's e^x of the SiLU gate (fp32, vectorizable; within 2 ulp on [-87, 88]), for tests.");
  m.def(
      "f32_to_f16",
      [](Arr<const float, nb::ndim<1>> x, const std::string& impl) {
        const size_t n = x.shape(0);
        const bitnet::CpuFeatures& f = bitnet::cpu_features();
        if (impl != "ref" && impl != "f16c")
          throw std::invalid_argument("f32_to_f16: impl must be 'ref' or 'f16c', got '" + impl + "'");
        if (impl == "f16c" && !f.f16c) throw std::invalid_argument("f32_to_f16: this CPU has no F16C");
        if (n > static_cast<size_t>(std::numeric_limits<int>::max()))
          throw std::invalid_argument("f32_to_f16: too many values for one call");
        auto* res = new uint16_t[n > 0 ? n : 1];
        if (impl == "f16c") bitnet::f32_to_f16_row_f16c(x.data(), res, static_cast<int>(n));
        else
          for (size_t i = 0; i < n; ++i) res[i] = bitnet::f32_to_f16(x.data()[i]);
        nb::capsule owner(res, [](void* p) noexcept { delete[] static_cast<uint16_t*>(p); });
        return nb::ndarray<nb::numpy, uint16_t, nb::ndim<1>>(res, {n}, owner);
      },
      "x"_a, "impl"_a = "ref",
      "The KV cache's fp32 -> fp16 conversion (round to nearest even) -> uint16 bit patterns: impl 'ref' (the scalar "
      "converter) or 'f16c' (the vcvtps2ph rows the engine writes its fp16 cache with where the CPU has F16C).");

#if defined(__x86_64__) || defined(_M_X64)
  m.def(
      "int8_mac_peak",
      [](const std::string& isa, int threads, double seconds, bool accumulate) {
        // The int8 multiply-accumulate bound of prefill on this machine: every thread runs the
        // path's product instruction on registers only (kernels.h, int8_mac_loop_*) for about
        // `seconds`; best of three rounds, in MAC/s summed over the threads. accumulate (avx2):
        // each product also added into an accumulator, as AVX2 kernels must (int8_mac_acc_loop_avx2).
        if (threads < 1 || !(seconds > 0)) throw std::invalid_argument("bad int8_mac_peak arguments");
        uint32_t (*loop)(int64_t) = nullptr;
        double macs_per_iter = 0;
        if (isa == "avx512") { loop = bitnet::int8_mac_loop_avx512; macs_per_iter = 64.0 * bitnet::kMacLoopInstrs; }
#if !defined(BITNET_NO_AVXVNNI)
        else if (isa == "avxvnni") { loop = bitnet::int8_mac_loop_avxvnni; macs_per_iter = 32.0 * bitnet::kMacLoopInstrs; }
#endif
        else if (isa == "avx2" && accumulate) { loop = bitnet::int8_mac_acc_loop_avx2; macs_per_iter = 32.0 * bitnet::kMacAccLoopInstrs; }
        else if (isa == "avx2") { loop = bitnet::int8_mac_loop_avx2; macs_per_iter = 32.0 * bitnet::kMacLoopInstrs; }
        else throw std::invalid_argument("int8_mac_peak: isa must be 'avx512', 'avxvnni' or 'avx2'");
        bool can = false;
        for (const std::string& a : bitnet::available_isas()) can = can || a == isa;
        if (!can) throw std::invalid_argument("int8_mac_peak: this CPU cannot run " + isa);
        nb::gil_scoped_release release;
        return bitnet_peak_rate(loop, threads, seconds) * macs_per_iter;
      },
      "isa"_a, "threads"_a = 2, "seconds"_a = 0.5, "accumulate"_a = false,
      "Peak int8 multiply-accumulates/s of the path's product instruction (registers only), all threads; "
      "accumulate=True (avx2) adds each product into an accumulator as the AVX2 kernels must (vpmaddubsw + "
      "vpaddw; vpdpbusd accumulates by itself, so avx512 ignores it).");

  m.def(
      "lut_peak",
      [](const std::string& isa, int threads, double seconds) {
        // The LUT kernels' bound on this machine: every thread runs the lookup step on registers
        // and an L1-resident table (kernels.h, lut_loop_*) for about `seconds`; best of three
        // rounds, in lookups/s summed over the threads (each lookup is a 16-bit table offset and
        // one 64-byte table row of 32 int16 lanes added into the row's sums, on both paths).
        if (threads < 1 || !(seconds > 0)) throw std::invalid_argument("bad lut_peak arguments");
        uint32_t (*loop)(const uint8_t*, int64_t) = nullptr;
        if (isa == "avx512") loop = bitnet::lut_loop_avx512;
        else if (isa == "avx2") loop = bitnet::lut_loop_avx2;
        else throw std::invalid_argument("lut_peak: isa must be 'avx512' or 'avx2'");
        bool can = false;
        for (const std::string& a : bitnet::available_isas()) can = can || a == isa;
        if (!can) throw std::invalid_argument("lut_peak: this CPU cannot run " + isa);
        nb::gil_scoped_release release;
        std::vector<uint8_t> idx(1024);
        uint32_t st = 12345;
        for (uint8_t& b : idx) {  // a fixed pseudo-random index stream below 64 (the loop's tables)
          st = st * 1103515245u + 12345u;
          b = static_cast<uint8_t>((st >> 16) & 63);
        }
        auto loop_idx = [&](int64_t n) { return loop(idx.data(), n); };
        return bitnet_peak_rate(loop_idx, threads, seconds) * bitnet::kLutLoopLookups;
      },
      "isa"_a, "threads"_a = 2, "seconds"_a = 0.5,
      "Peak table lookups/s of the lut kernels' inner step (L1-resident tables), all threads.");
#endif

  m.def(
      "time_ternary_product",
      [](const std::string& isa, const std::string& family, const std::string& weights, int out, int in, int T,
         int threads, int reps, bool cpu) {
        // One linear's product as linear_forward runs it (row blocks over the threads: one range per
        // thread for lut, four for mac), on random tiles and activations; the best of reps, seconds.
        if (out < 1 || in < 1 || T < 1 || threads < 1 || reps < 1) throw std::invalid_argument("bad time_ternary_product arguments");
        if (weights != "i2" && weights != "t5") throw std::invalid_argument("weights must be 'i2' or 't5'");
        const bitnet::Kernels& k = kernels_named(isa);
        const bool t5 = weights == "t5";
        const bitnet::TernaryGemmFn g2 = t5 ? nullptr : pick_family(k.ternary_gemm, k.ternary_gemm_lut, isa, family);
        const bitnet::Ternary5GemmFn g5 = t5 ? pick_family(k.ternary5_gemm, k.ternary5_gemm_lut, isa, family) : nullptr;
        const int cols = t5 ? bitnet::kTile5Cols : bitnet::kTileCols;
        const int MB = (out + 15) / 16, KB = (in + cols - 1) / cols;
        const int Kp = (KB * cols + bitnet::kXAlign - 1) / bitnet::kXAlign * bitnet::kXAlign, Mp = MB * 16;
        nb::gil_scoped_release release;
        bitnet::AlignedBuf<bitnet::TernaryTile> tiles(static_cast<size_t>(MB) * KB);
        uint32_t st = 1;
        auto rnd = [&]() { st = st * 1103515245u + 12345u; return st >> 16; };
        for (size_t i = 0; i < tiles.n; ++i)
          for (int b = 0; b < 64; ++b)  // valid bytes of either layout: 4 codes < 3, or a t5 byte of v < 243
            tiles.data()[i].b[b] = t5 ? static_cast<uint8_t>((rnd() % 243 * 256 + 242) / 243)
                                      : static_cast<uint8_t>(rnd() % 3 | rnd() % 3 << 2 | rnd() % 3 << 4 | rnd() % 3 << 6);
        std::vector<int8_t> x(static_cast<size_t>(T) * Kp, 0);
        std::vector<int32_t> xsum(T, 0), y(static_cast<size_t>(T) * Mp);
        for (int t = 0; t < T; ++t)
          for (int c = 0; c < in; ++c) xsum[t] += x[static_cast<size_t>(t) * Kp + c] = static_cast<int8_t>(rnd() % 255 - 127);
        bitnet::ThreadPool pool(threads);
        const bool lut = family == "lut";
        // cpu: the threads' CPU time (CLOCK_THREAD_CPUTIME_ID, summed, divided by threads) instead
        // of wall time: what a product costs where other jobs take the cores away (a shared machine).
        double best = 1e30;
        for (int r = 0; r <= reps; ++r) {  // r = 0: warm-up
          std::atomic<int64_t> cpu_ns{0};
          const auto t0 = std::chrono::steady_clock::now();
          pool.parallel_for(MB, [&](int b, int e) {
            timespec c0, c1;
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
            if (t5) g5(reinterpret_cast<const bitnet::TernaryTile5*>(tiles.data()), KB, b, e, x.data(), Kp, xsum.data(), T, y.data(), Mp);
            else g2(tiles.data(), KB, b, e, x.data(), Kp, xsum.data(), T, y.data(), Mp);
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
            cpu_ns += (c1.tv_sec - c0.tv_sec) * int64_t(1000000000) + (c1.tv_nsec - c0.tv_nsec);
          }, T == 1 || lut ? 1 : 4);
          const double s = cpu ? 1e-9 * static_cast<double>(cpu_ns.load()) / threads
                                : std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (r) best = std::min(best, s);
        }
        return best;
      },
      "isa"_a, "family"_a, "weights"_a, "out"_a, "in"_a, "T"_a, "threads"_a = 2, "reps"_a = 3, "cpu"_a = false,
      "Seconds of one ternary product (out x in weights, T tokens) through the path's mac or lut kernel, best of reps "
      "(cpu=True: the threads' CPU time over the thread count, robust where other jobs share the cores).");
  m.def(
      "read_bandwidth",
      [](int64_t nbytes, int threads, int repeats) {
        // Best-of-N multi-threaded sequential read of a buffer larger than the caches, in the same
        // memory the weights live in (2 MiB-aligned, huge pages where the kernel grants them): the
        // bound a memory-bound decode can reach on this machine.
        if (threads < 1 || repeats < 1 || nbytes < (1 << 20)) throw std::invalid_argument("bad read_bandwidth arguments");
        nb::gil_scoped_release release;
        const size_t n = static_cast<size_t>(nbytes) / sizeof(uint64_t);
        bitnet::AlignedBuf<uint64_t> buf(n);
        for (size_t i = 0; i < n; ++i) buf.data()[i] = i;
        bitnet::ThreadPool pool(threads);
        const int chunks = 1024;
        std::vector<uint64_t> sums(chunks);
        double best = 0;
        for (int r = 0; r < repeats; ++r) {
          const auto t0 = std::chrono::steady_clock::now();
          pool.parallel_for(chunks, [&](int b, int e) {
            for (int c = b; c < e; ++c) {
              const uint64_t* p = buf.data() + n * c / chunks;
              const size_t len = n * (c + 1) / chunks - n * c / chunks;
              uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
              size_t i = 0;
              for (; i + 8 <= len; i += 8) {  // one cache line per step, prefetched 512 bytes ahead
                __builtin_prefetch(p + i + 64);
                a0 += p[i] + p[i + 4];
                a1 += p[i + 1] + p[i + 5];
                a2 += p[i + 2] + p[i + 6];
                a3 += p[i + 3] + p[i + 7];
              }
              for (; i < len; ++i) a0 += p[i];
              sums[c] = a0 + a1 + a2 + a3;
            }
          });
          const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s);
        }
        volatile uint64_t sink = 0;
        for (uint64_t v : sums) sink = sink + v;
        return best;
      },
      "nbytes"_a = int64_t(1) << 30, "threads"_a = 2, "repeats"_a = 3, "Measured read bandwidth in bytes/s.");

  // ---- the model ----
  nb::class_<bitnet::Model>(m, "Model")
      .def(
          "__init__",
          [](bitnet::Model* self, int vocab, int hidden, int intermediate, int layers, int heads, int kv_heads,
             int head_dim, int max_positions, float eps, float rope_theta, const std::string& act, bool sub_norms,
             bool inner_norm, float inner_eps, int threads) {
            if (threads < 1) throw std::invalid_argument("threads must be >= 1");
            if (act != "relu2" && act != "silu") throw std::invalid_argument("hidden_act must be relu2 or silu");
            bitnet::ModelConfig c;
            c.vocab = vocab; c.hidden = hidden; c.intermediate = intermediate; c.layers = layers; c.heads = heads;
            c.kv_heads = kv_heads; c.head_dim = head_dim; c.max_positions = max_positions; c.eps = eps;
            c.rope_theta = rope_theta; c.relu2 = act == "relu2"; c.sub_norms = sub_norms; c.inner_norm = inner_norm;
            c.inner_eps = inner_eps;
            new (self) bitnet::Model(c, threads);
          },
          "vocab"_a, "hidden"_a, "intermediate"_a, "layers"_a, "heads"_a, "kv_heads"_a, "head_dim"_a,
          "max_positions"_a, "eps"_a, "rope_theta"_a, "act"_a, "sub_norms"_a, "inner_norm"_a, "inner_eps"_a = 1e-5f, "threads"_a = 1)
      .def(
          "set_linear",
          [](bitnet::Model& self, int layer, const std::string& name, Arr<const uint8_t, nb::ndim<2>> packed, float beta,
             std::optional<Arr<const float, nb::ndim<1>>> norm) {
            const float* np = norm ? norm->data() : nullptr;
            const int64_t nl = norm ? static_cast<int64_t>(norm->shape(0)) : 0;
            nb::gil_scoped_release release;
            self.set_linear(layer, name, packed.data(), static_cast<int64_t>(packed.shape(0)),
                            static_cast<int64_t>(packed.shape(1)), beta, np, nl);
          },
          "layer"_a, "name"_a, "packed"_a, "beta"_a, "norm"_a = nb::none(),
          "Repack one linear (transformers' packed uint8 (out/4, in)); beta multiplies the output.")
      .def(
          "set_row_scales",
          [](bitnet::Model& self, int layer, const std::string& name, Arr<const float, nb::ndim<1>> s) {
            self.set_row_scales(layer, name, s.data(), static_cast<int64_t>(s.shape(0)));
          },
          "layer"_a, "name"_a, "scales"_a, "Per-output-row scales of one linear, multiplied with its beta.")
      .def(
          "set_rope_inv_freq",
          [](bitnet::Model& self, Arr<const float, nb::ndim<1>> f) {
            self.set_rope_inv_freq(f.data(), static_cast<int64_t>(f.shape(0)));
          },
          "inv_freq"_a, "Replace the RoPE inverse frequencies (head_dim / 2 floats).")
      .def(
          "set_norm",
          [](bitnet::Model& self, int layer, const std::string& name, Arr<const float, nb::ndim<1>> w) {
            self.set_norm(layer, name, w.data(), static_cast<int64_t>(w.shape(0)));
          },
          "layer"_a, "name"_a, "w"_a, "Copy an RMSNorm weight (layer -1 with name 'norm' is the final norm).")
      .def(
          "set_embedding",
          [](bitnet::Model& self, nb::ndarray<nb::ro, nb::ndim<2>, nb::c_contig, nb::device::cpu> a, const std::string& dtype) {
            self.set_embedding(as_matrix(a, dtype));
          },
          "array"_a, "dtype"_a, nb::keep_alive<1, 2>(), "Borrow the embedding table (kept alive by the model).")
      .def(
          "set_lm_head",
          [](bitnet::Model& self, nb::ndarray<nb::ro, nb::ndim<2>, nb::c_contig, nb::device::cpu> a, const std::string& dtype) {
            self.set_lm_head(as_matrix(a, dtype));
          },
          "array"_a, "dtype"_a, nb::keep_alive<1, 2>(), "Borrow an untied output head (kept alive by the model).")
      .def(
          "set_head_mode",
          [](bitnet::Model& self, const std::string& mode) {
            nb::gil_scoped_release release;
            self.set_head_mode(mode);
          },
          "mode"_a)
      .def(
          "quantize_head_rows",
          [](bitnet::Model& self, int r0, int r1) {
            nb::gil_scoped_release release;
            self.quantize_head_rows(r0, r1);
          },
          "r0"_a, "r1"_a, "Quantize head rows [r0, r1) to int8 ahead of set_head_mode('int8').")
      .def(
          "quantize_head_rows_int4",
          [](bitnet::Model& self, int r0, int r1) {
            nb::gil_scoped_release release;
            self.quantize_head_rows_int4(r0, r1);
          },
          "r0"_a, "r1"_a, "Quantize head rows [r0, r1) to int4 ahead of set_head_mode('int4').")
      .def("set_head_rescore", &bitnet::Model::set_head_rescore, "k"_a, "k_max"_a,
           "int4 head: rescore k candidates per token first, up to k_max (k = 0: coarse logits only).")
      .def(
          "copy_head_rows",
          [](bitnet::Model& self, int r0, int r1) {
            nb::gil_scoped_release release;
            self.copy_head_rows(r0, r1);
          },
          "r0"_a, "r1"_a, "Copy 16-bit head rows [r0, r1) into owned memory ahead of set_head_mode('f16').")
      .def_prop_ro("head_mode", &bitnet::Model::head_mode)
      .def_prop_ro("threads", &bitnet::Model::threads)
      .def_prop_ro("cache_len", &bitnet::Model::cache_len)
      .def_prop_ro("weight_bytes", &bitnet::Model::weight_bytes)
      .def("set_weight_format", &bitnet::Model::set_weight_format, "name"_a,
           "Ternary weight layout, before the first set_linear: 'i2' (2 bits per weight) or 't5' (1.6 bits).")
      .def_prop_ro("weight_format", &bitnet::Model::weight_format)
      .def("check_complete", &bitnet::Model::check_complete)
      .def("reset", &bitnet::Model::reset)
      .def("set_profile", &bitnet::Model::set_profile, "on"_a,
           "Phase profile on/off (clears it): each forward adds its phases' wall seconds (see profile()).")
      .def(
          "profile",
          [](const bitnet::Model& self) {
            nb::dict d;
            for (const auto& [k, v] : self.profile()) d[k.c_str()] = v;
            return d;
          },
          "Seconds per phase of the forwards since set_profile(True) (embed, quantize, product, rope_cache, "
          "attention, norms, activation, head), 'calls' (forwards) and 'jobs' (thread-pool fork/joins).")
      .def(
          "forward",
          [](bitnet::Model& self, Arr<const int32_t, nb::ndim<1>> tokens, int pos0, int logits_from,
             Arr<float, nb::ndim<2>> out) {
            const int T = static_cast<int>(tokens.shape(0));
            if (logits_from < 0 || logits_from > T) throw std::invalid_argument("logits_from out of range");
            if (static_cast<int>(out.shape(0)) != T - logits_from ||
                static_cast<int>(out.shape(1)) != self.config().vocab)
              throw std::invalid_argument("out must have shape (T - logits_from, vocab)");
            nb::gil_scoped_release release;
            self.forward(tokens.data(), T, pos0, logits_from, out.data());
          },
          "tokens"_a, "pos0"_a, "logits_from"_a, "out"_a,
          "Run tokens at positions pos0.. (keeping pos0 cached entries); logits rows logits_from.. into out.")
      .def(
          "set_slots",
          [](bitnet::Model& self, int n, int ctx) { self.set_slots(n, ctx); },
          "n"_a, "ctx"_a, "Give the model n sequence slots of at most ctx positions each (drops what they held).")
      .def_prop_ro("num_slots", &bitnet::Model::num_slots)
      .def("set_kv_dtype", &bitnet::Model::set_kv_dtype, "name"_a,
           "KV cache element type: 'f32' (default, exact) or 'f16' (half the memory); drops every cache's contents.")
      .def_prop_ro("kv_dtype", &bitnet::Model::kv_dtype)
      .def("slot_len", &bitnet::Model::slot_len, "slot"_a, "Positions the slot's KV cache holds.")
      .def(
          "copy_slot",
          [](bitnet::Model& self, int src, int dst, int n) {
            nb::gil_scoped_release release;
            self.copy_slot(src, dst, n);
          },
          "src"_a, "dst"_a, "n"_a, "Copy the first n cached positions of slot src into slot dst.")
      .def(
          "forward_batch",
          [](bitnet::Model& self, Arr<const int32_t, nb::ndim<1>> slots, Arr<const int32_t, nb::ndim<1>> pos0,
             Arr<const int32_t, nb::ndim<1>> lengths, Arr<const int32_t, nb::ndim<1>> tokens,
             Arr<float, nb::ndim<2>> out) {
            const size_t n = slots.shape(0);
            if (pos0.shape(0) != n || lengths.shape(0) != n)
              throw std::invalid_argument("forward_batch: slots, pos0 and lengths must have the same length");
            if (out.shape(0) != n || static_cast<int>(out.shape(1)) != self.config().vocab)
              throw std::invalid_argument("forward_batch: out must have shape (len(slots), vocab)");
            std::vector<bitnet::Segment> segs(n);
            size_t off = 0;
            for (size_t i = 0; i < n; ++i) {
              const int len = lengths.data()[i];
              if (len < 1 || off + static_cast<size_t>(len) > tokens.shape(0))
                throw std::invalid_argument("forward_batch: lengths must be >= 1 and sum to len(tokens)");
              segs[i] = {slots.data()[i], tokens.data() + off, len, pos0.data()[i]};
              off += static_cast<size_t>(len);
            }
            if (off != tokens.shape(0)) throw std::invalid_argument("forward_batch: lengths must sum to len(tokens)");
            nb::gil_scoped_release release;
            self.forward_batch(segs.data(), static_cast<int>(n), out.data());
          },
          "slots"_a, "pos0"_a, "lengths"_a, "tokens"_a, "out"_a,
          "One batched step: segment i runs tokens[sum(lengths[:i]):][:lengths[i]] in slot slots[i] at positions "
          "pos0[i]..; out[i] gets the logits after its last token.");
}
