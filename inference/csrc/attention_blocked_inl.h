// The blocked attention's driver (attention.h), shared by attention.cpp (AVX-512, 16 lanes) and
// attention_avx2.cpp (AVX2, 8 lanes); each includes it after defining its vector steps in a struct
// S (internal linkage: one instance per file, compiled with that file's ISA flags):
//   S::kLanes, S::kRows               floats per vector; cache rows per score block (one vector)
//   S::scores<NV>(q, K, ld, scale, sc)    sc[r] = scale * (q . K_r) for r < kRows (stride ld)
//   S::score1<NV>(q, Kj)                  q . Kj
//   S::softmax(sc, n)                     scores in place -> probabilities
//   S::accumulate<NV>(p, rows, Vb, ld, out, init)    out (init: =, else +=) sum_r p[r] V_r, r in order
// with NV = hd / kLanes vectors a row. Three passes per group of queries, each over the cache in
// blocks with the queries inside the block loop, so a block of K (or V) is read from memory by the
// first query and from L1 by the others.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <utility>

#include "attention.h"

namespace bitnet {
namespace {

// One prefetch per 64-byte line of a row of n elements of E.
template <typename E>
inline void prefetch_row(const E* p, int n) {
  for (int i = 0; i < n; i += 64 / static_cast<int>(sizeof(E))) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T0);
}

template <typename S, int NV, typename E>
void attend_group_nv(const float* const* qs, float* const* outs, const int* n, int nq, const E* K, const E* V,
                     int ld, float scale, float* scratch) {
  constexpr int kRows = S::kRows, hd = NV * S::kLanes, kVRows = 16;  // V rows per block of pass 3
  int most = 0;
  for (int i = 0; i < nq; ++i) most = std::max(most, n[i]);
  const size_t stride = static_cast<size_t>(most + 15) / 16 * 16;  // attention.h's scratch: round_up(max n, 16)
  for (int r = 0; r < std::min(most, 2 * kRows); ++r) prefetch_row(K + static_cast<size_t>(r) * ld, hd);
  for (int j0 = 0; j0 < most; j0 += kRows) {  // 1. scores, a block of K rows for every query
    const E* Kb = K + static_cast<size_t>(j0) * ld;
    // The cache was last read a whole step ago: fetch the K block after next and this V block
    // (read in pass 3) while the queries work on this one, several misses in flight.
    for (int r = 0; r < kRows; ++r) {
      if (j0 + 2 * kRows + r < most) prefetch_row(Kb + static_cast<size_t>(2 * kRows + r) * ld, hd);
      if (j0 + r < most) prefetch_row(V + static_cast<size_t>(j0 + r) * ld, hd);
    }
    for (int i = 0; i < nq; ++i) {
      float* sc = scratch + i * stride + j0;
      const int rows = n[i] - j0;
      if (rows >= kRows) S::template scores<NV>(qs[i], Kb, ld, scale, sc);
      else
        for (int r = 0; r < rows; ++r) sc[r] = S::template score1<NV>(qs[i], Kb + static_cast<size_t>(r) * ld) * scale;
    }
  }
  for (int i = 0; i < nq; ++i) S::softmax(scratch + i * stride, n[i]);  // 2.
  for (int j0 = 0; j0 < most; j0 += kVRows) {  // 3. out += p_j V_j, a block of V rows for every query
    const E* Vb = V + static_cast<size_t>(j0) * ld;
    for (int i = 0; i < nq; ++i) {
      const int rows = std::min(kVRows, n[i] - j0);
      if (rows > 0) S::template accumulate<NV>(scratch + i * stride + j0, rows, Vb, ld, outs[i], j0 == 0);
    }
  }
}

template <typename S, typename E, int... NVs>
void dispatch_nv(int nv, const float* const* qs, float* const* outs, const int* n, int nq, const E* K, const E* V,
                 int ld, float scale, float* scratch, std::integer_sequence<int, NVs...>) {
  ((nv == NVs + 1 ? (attend_group_nv<S, NVs + 1>(qs, outs, n, nq, K, V, ld, scale, scratch), true) : false) || ...);
}

// hd a multiple of S::kLanes, at most kAttendGroupMaxHd (the caller checks).
template <typename S, typename E>
void attend_group_blocked(const float* const* qs, float* const* outs, const int* n, int nq, const E* K, const E* V,
                          int ld, int hd, float scale, float* scratch) {
  dispatch_nv<S>(hd / S::kLanes, qs, outs, n, nq, K, V, ld, scale, scratch,
                 std::make_integer_sequence<int, kAttendGroupMaxHd / S::kLanes>{});
}

}  // namespace
}  // namespace bitnet
