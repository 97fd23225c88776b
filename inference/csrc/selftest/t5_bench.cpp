// Harness: the ternary linears of a 2B4T-sized model (30 layers of q, k, v, o, gate, up, down at
// hidden 2560, ffn 6912, 20 / 5 heads x 128) in the 2-bit tiles (i2) and in the t5 tiles, run
// through the kernel table in use (BITNET_ISA picks it) the way Model::linear_forward runs them
// (q/k/v and gate/up as one job, one chunk per thread for one token), rounds alternating between
// the formats in one process. Prints, per format, the best and median time of a whole pass over
// the weights (= the linears' share of one decoded token), the bytes it streamed and the GB/s,
// then the same for a T-token prefill pass. Weights are random valid codes (the kernels'
// speed does not depend on them).
//
// Build: sh inference/csrc/selftest/build_t5.sh [out_dir] (each kernel file with its own flags).
// Run: t5_bench [threads=2] [decode_rounds=15] [prefill_T=128] [prefill_rounds=2]; with one
// thread the times are the thread's CPU time (robust to a shared machine's time slicing).
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "model.h"

using namespace bitnet;

namespace {

struct Lin {
  int out, in, MB, KB;
  size_t off;  // tile index in the arena
};

struct Format {
  const char* name;
  int cols;  // columns per tile
  std::vector<Lin> lins;
  AlignedBuf<TernaryTile> arena;  // 64-byte slots (t5 tiles have the same size)
  size_t tiles = 0;
};

uint64_t rng_state = 0x9e3779b97f4a7c15ull;
uint64_t next_rand() {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

void build(Format& f, const std::vector<std::pair<int, int>>& shapes) {
  size_t off = 0;
  for (auto [out, in] : shapes) {
    Lin L{out, in, (out + 15) / 16, (in + f.cols - 1) / f.cols, off};
    off += static_cast<size_t>(L.MB) * L.KB;
    f.lins.push_back(L);
  }
  f.tiles = off;
  f.arena.reset(off);
  uint8_t* p = reinterpret_cast<uint8_t*>(f.arena.data());
  const size_t n = off * 64;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t r = next_rand();
    if (f.cols == kTileCols) {  // four 2-bit codes in {0, 1, 2}
      uint8_t b = 0;
      for (int k = 0; k < 4; ++k) b |= static_cast<uint8_t>(((r >> (8 * k)) % 3) << (2 * k));
      p[i] = b;
    } else {
      const int v = static_cast<int>(r % 243);
      p[i] = static_cast<uint8_t>((v * 256 + 242) / 243);
    }
  }
}

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// With one thread the caller runs every chunk, and its CPU time is the pass's time without the
// slices a shared machine gives to other processes (the streaming still shares memory bandwidth).
bool g_cpu_time = false;

// One pass over every linear with T tokens, grouped as the model groups them.
double pass(const Format& f, const Kernels& k, ThreadPool& pool, const std::vector<std::vector<int>>& groups,
            const std::vector<int8_t>& x, int ldx, const std::vector<int32_t>& xsum, int T,
            std::vector<int32_t>& y, int ldy) {
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = thread_cpu_seconds();
  for (const std::vector<int>& g : groups) {
    int total = 0;
    std::vector<int> begin;
    for (int li : g) {
      begin.push_back(total);
      total += f.lins[li].MB;
    }
    pool.parallel_for(total, [&](int b, int e) {
      for (size_t gi = 0; gi < g.size(); ++gi) {
        const Lin& L = f.lins[g[gi]];
        const int mb0 = std::max(b, begin[gi]) - begin[gi], mb1 = std::min(e, begin[gi] + L.MB) - begin[gi];
        if (mb0 >= mb1) continue;
        if (f.cols == kTileCols)
          k.ternary_gemm(f.arena.data() + L.off, L.KB, mb0, mb1, x.data(), ldx, xsum.data(), T, y.data(), ldy);
        else
          k.ternary5_gemm(reinterpret_cast<const TernaryTile5*>(f.arena.data() + L.off), L.KB, mb0, mb1, x.data(),
                          ldx, xsum.data(), T, y.data(), ldy);
      }
    }, T == 1 ? 1 : 4);
  }
  if (g_cpu_time) return thread_cpu_seconds() - c0;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The decode kernel's arithmetic rate, apart from memory: one 2560 x 2560 linear that stays in
// L2 (i2 1.6 MB, t5 1.3 MB), one token, on this thread, timed in thread CPU time (robust to a
// shared machine's time slicing). Weight bytes per CPU second: if it exceeds what one core can
// stream from memory, the streaming decode is memory-bound in that format.
void in_cache_rate(const Kernels& k) {
  const int n = 2560, MB = n / 16, reps = 300;
  std::vector<int8_t> x(n + kXAlign, 1);
  std::vector<int32_t> xsum(1, n), y(n + 16);
  for (int cols : {kTileCols, kTile5Cols}) {
    const int KB = (n + cols - 1) / cols;
    AlignedBuf<TernaryTile> w(static_cast<size_t>(MB) * KB);
    std::memset(w.data(), cols == kTileCols ? 0x55 : 0x80, w.n * 64);  // all-zero weights
    std::vector<double> ts;
    for (int r = 0; r < 7; ++r) {
      const double t0 = thread_cpu_seconds();
      for (int i = 0; i < reps; ++i) {
        if (cols == kTileCols) k.ternary_gemm(w.data(), KB, 0, MB, x.data(), n, xsum.data(), 1, y.data(), n);
        else k.ternary5_gemm(reinterpret_cast<const TernaryTile5*>(w.data()), KB, 0, MB, x.data(), n, xsum.data(), 1,
                             y.data(), n);
      }
      ts.push_back(thread_cpu_seconds() - t0);
    }
    std::sort(ts.begin(), ts.end());
    const double bytes = static_cast<double>(w.n) * 64 * reps;
    std::printf("in-cache T=1 %s: %.1f GB/s of weights per core (%.2f ns per 64-byte tile)\n",
                cols == kTileCols ? "i2" : "t5", bytes / ts[0] / 1e9, ts[0] / (w.n * reps) * 1e9);
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 15;
  const int TP = argc > 3 ? std::atoi(argv[3]) : 128;
  const int prounds = argc > 4 ? std::atoi(argv[4]) : 2;
  const int C = 2560, I = 6912, QD = 20 * 128, KVD = 5 * 128, layers = 30;
  std::vector<std::pair<int, int>> shapes;
  std::vector<std::vector<int>> groups;
  for (int l = 0; l < layers; ++l) {
    const int b = static_cast<int>(shapes.size());
    for (auto s : {std::pair{QD, C}, {KVD, C}, {KVD, C}, {C, QD}, {I, C}, {I, C}, {C, I}}) shapes.push_back(s);
    groups.push_back({b, b + 1, b + 2});
    groups.push_back({b + 3});
    groups.push_back({b + 4, b + 5});
    groups.push_back({b + 6});
  }
  Format i2{"i2", kTileCols, {}, {}, 0}, t5{"t5", kTile5Cols, {}, {}, 0};
  build(i2, shapes);
  build(t5, shapes);
  const Kernels& k = kernels();
  in_cache_rate(k);
  ThreadPool pool(threads);
  g_cpu_time = threads == 1;
  std::printf("isa %s, %d threads (%s); weights: i2 %.1f MB, t5 %.1f MB\n", k.name, threads,
              g_cpu_time ? "thread CPU time" : "wall time", i2.tiles * 64 / 1e6,
              t5.tiles * 64 / 1e6);
  const int ldx = (I + kTile5Cols + kXAlign) / kXAlign * kXAlign;  // >= every padded K of both formats
  for (int T : {1, TP}) {
    const int n = T == 1 ? rounds : prounds;
    std::vector<int8_t> x(static_cast<size_t>(T) * ldx);
    std::vector<int32_t> xsum(T, 0);
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < ldx; ++c) {
        const int8_t v = c < I ? static_cast<int8_t>(next_rand() % 255 - 127) : 0;
        x[static_cast<size_t>(t) * ldx + c] = v;
        xsum[t] += v;
      }
    const int ldy = 6912 + 16;
    std::vector<int32_t> y(static_cast<size_t>(T) * ldy);
    std::vector<double> ti2, tt5;
    pass(i2, k, pool, groups, x, ldx, xsum, T, y, ldy);  // warm-up: page in, huge pages
    pass(t5, k, pool, groups, x, ldx, xsum, T, y, ldy);
    for (int r = 0; r < n; ++r) {  // alternating, so drift on a shared machine hits both alike
      ti2.push_back(pass(i2, k, pool, groups, x, ldx, xsum, T, y, ldy));
      tt5.push_back(pass(t5, k, pool, groups, x, ldx, xsum, T, y, ldy));
    }
    for (auto [f, ts] : {std::pair{&i2, &ti2}, {&t5, &tt5}}) {
      const double best = *std::min_element(ts->begin(), ts->end()), med = median(*ts);
      const double bytes = f->tiles * 64.0;
      if (T == 1)
        std::printf("decode  T=1   %s: best %.2f ms  median %.2f ms  (%.1f MB/token, %.1f GB/s best, %.1f GB/s median)\n",
                    f->name, best * 1e3, med * 1e3, bytes / 1e6, bytes / best / 1e9, bytes / med / 1e9);
      else
        std::printf("prefill T=%d %s: best %.3f s  median %.3f s  (%.1f tok/s best, linears only)\n", T, f->name,
                    best, med, T / best);
    }
  }
  return 0;
}
