// AMX-INT8 kernels for the ternary products (compiled with -mamx-tile -mamx-int8 -mavx512f -mavx512bw
// only). Scalar twins: ternary_gemm_ref / ternary5_gemm_ref in kernels_ref.cpp; tested against them
// in tests/inference/test_kernels.py and test_kernels_t5.py.
//
// One row block (16 outputs) at a time: its codes are unpacked into int8 q in {-1, 0, 1} in the
// tile "VNNI" layout, a chunk at a time (gemm_chunked), and used for every token tile: TDPBSSD (s8 x s8 -> s32)
// C[t][m] += sum_k x[t][k] * q[m][k]. B-tile row g of k-step s holds 16 outputs x the 4 consecutive
// columns 4g' .. 4g' + 3 (g' = 16 s + g): for the 2-bit tiles that is plane i of tile kb (g' = 4 kb + i,
// the shift by 2i), for the t5 tiles digit i of tile kb (g' = 5 kb + i), so both layouts unpack in
// plain order into the same buffer. Invariant: |x * q| <= 128, 64 products per step, so int32 cannot
// overflow for K < 2^24.
//
// Why AMX for a few tokens too: a TDPBSSD does 16 x 16 x 64 products in about as many cycles as it
// has token rows, so once a chunk is unpacked every further token is almost free: a batched decode
// step of 8 sequences costs about two one-token passes over the weights, where the VNNI path pays 8
// vpdpbusd per 64 weights (t5_bench, one core: 8 tokens 55 ms against 27.5 ms for one token).
// One token stays on the streaming VNNI kernel (kAmxMinTokens). The int8 head takes the same route.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "kernels_avx512_inl.h"

namespace bitnet {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// tmm0..3: int32 accumulators for 4 full token tiles; tmm4: B (weights); tmm5: A (16 tokens);
// tmm6 / tmm7: accumulator and A of the last rem (1..15) tokens.
void configure_tiles(int rem) {  // rem: rows of tmm6 / tmm7 (0: unused)
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int i = 0; i < 6; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  if (rem > 0) {
    cfg.rows[6] = cfg.rows[7] = static_cast<uint8_t>(rem);
    cfg.colsb[6] = cfg.colsb[7] = 64;
  }
  _tile_loadconfig(&cfg);
}

// 2-bit codes of one row block -> int8 q in B-tile layout, zero past KB tiles. b: nks * 1024 bytes.
void unpack_block(const TernaryTile* wrow, int KB, int nks, int8_t* b) {
  const __m512i m3 = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
  for (int kb = 0; kb < nks * 4; ++kb) {
    int8_t* dst = b + static_cast<size_t>(kb) * 256;  // rows 4*(kb%4) .. +3 of k-step kb/4
    if (kb >= KB) {
      std::memset(dst, 0, 256);
      continue;
    }
    const __m512i p = _mm512_loadu_si512(wrow[kb].b);
    _mm512_storeu_si512(dst + 0, _mm512_sub_epi8(_mm512_and_si512(p, m3), one));
    _mm512_storeu_si512(dst + 64, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p, 2), m3), one));
    _mm512_storeu_si512(dst + 128, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p, 4), m3), one));
    _mm512_storeu_si512(dst + 192, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(p, 6), m3), one));
  }
}

// The same block as the codes c = q + 1 (u8) for the few-token kernel (fields2: one vgf2p8affineqb
// a field where the CPU has GFNI).
template <bool kGfni>
void unpack_block_c(const TernaryTile* wrow, int KB, int nks, uint8_t* b) {
  for (int kb = 0; kb < nks * 4; ++kb) {
    uint8_t* dst = b + static_cast<size_t>(kb) * 256;
    if (kb >= KB) {
      std::memset(dst, 0, 256);
      continue;
    }
    __m512i v[4];
    fields2<kGfni>(_mm512_loadu_si512(wrow[kb].b), v);
    for (int i = 0; i < 4; ++i) _mm512_storeu_si512(dst + 64 * i, v[i]);
  }
}

// The int8 head needs no repacking: a row block of E (16 rows x 64 columns, row stride Cp) is an A
// tile as stored, and the few tokens become the B tile (x in the VNNI layout: row g of k-step s
// holds columns 64 s + 4 g .. + 3 of every token), rearranged once per call. C[r][t] = E_r . x_t.
// tmm0: C (16 rows x nt tokens), tmm1: A (E), tmm2: B (x).
void configure_head_tiles(int nt) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  cfg.rows[0] = cfg.rows[1] = cfg.rows[2] = 16;
  cfg.colsb[0] = cfg.colsb[2] = static_cast<uint16_t>(4 * nt);
  cfg.colsb[1] = 64;
  _tile_loadconfig(&cfg);
}

// y[t * ldy + 16 mb + r] for t < T, mb in [mb0, mb1). Tokens go in groups of up to 4 full 16-token
// tiles (tmm0..3, their A in tmm5) plus, in the last group, the T % 16 left over (tmm6, A in tmm7).
// For each group, each row block is unpacked 16 packed tiles at a time (S k-steps: 4 for the 2-bit
// tiles, 5 for t5) into one half of a 2 x 5 KB buffer that stays in L1, while the previous chunk,
// in the other half, runs through the tiles: each unpacked byte is read back from L1 soon after it
// was written, and the out-of-order core overlaps the stores of one chunk with the tile work of the
// previous. (Unpacking a whole row block first, tens of KB spilled to L2, and loading it back cost
// about three times a one-token pass over the weights at a few tokens.) A group of 64 tokens
// unpacks each row block once: prefill re-unpacks per 64 tokens, a batched decode step once.
// unpack(tiles, n, ks, dst): n packed tiles at `tiles` -> ks k-steps (ks * 1024 bytes, zero past n).
template <typename Unpack>
void gemm_chunked(Unpack&& unpack, const uint8_t* w, int KB, int S, int nks, int mb0, int mb1, const int8_t* x,
                  int ldx, int T, int32_t* y, int ldy) {
  alignas(64) int8_t buf[2][5 * 1024];
  const int rem = T % 16, T16 = T - rem, nchunks = (KB + 15) / 16;
  configure_tiles(rem);
  const size_t sx = static_cast<size_t>(ldx), sy = static_cast<size_t>(ldy) * sizeof(int32_t);
  for (int t0 = 0;; t0 += 64) {
    const int nt = std::min(4, (T16 - t0) / 16);  // full token tiles in this group
    const bool last = t0 + 64 >= T16, with_rem = last && rem > 0;  // the leftover tokens join the last group
    const int8_t* xt = x + static_cast<size_t>(t0) * ldx;
    const int8_t* xr = x + static_cast<size_t>(T16) * ldx;
    for (int mb = mb0; mb < mb1; ++mb) {
      const uint8_t* wrow = w + static_cast<size_t>(mb) * KB * 64;
      auto compute = [&](int c) {
        const int ks0 = c * S, ks1 = std::min(nks, ks0 + S);
        const int8_t* b = buf[c & 1];
        for (int ks = ks0; ks < ks1; ++ks) {
          _tile_loadd(4, b + static_cast<size_t>(ks - ks0) * 1024, 64);
          if (nt > 0) {
            _tile_loadd(5, xt + 64 * ks, sx);
            _tile_dpbssd(0, 5, 4);
          }
          if (nt > 1) {
            _tile_loadd(5, xt + 16 * sx + 64 * ks, sx);
            _tile_dpbssd(1, 5, 4);
          }
          if (nt > 2) {
            _tile_loadd(5, xt + 32 * sx + 64 * ks, sx);
            _tile_dpbssd(2, 5, 4);
          }
          if (nt > 3) {
            _tile_loadd(5, xt + 48 * sx + 64 * ks, sx);
            _tile_dpbssd(3, 5, 4);
          }
          if (with_rem) {
            _tile_loadd(7, xr + 64 * ks, sx);
            _tile_dpbssd(6, 7, 4);
          }
        }
      };
      if (nt > 0) _tile_zero(0);
      if (nt > 1) _tile_zero(1);
      if (nt > 2) _tile_zero(2);
      if (nt > 3) _tile_zero(3);
      if (with_rem) _tile_zero(6);  // tmm6 is configured only when there is a remainder
      for (int c = 0; c < nchunks; ++c) {
        const uint8_t* chunk = wrow + static_cast<size_t>(c) * 16 * 64;
        // Past the last row block this runs ahead into whatever follows; a prefetch never faults.
        for (int i = 0; i < 16; ++i)
          _mm_prefetch(reinterpret_cast<const char*>(chunk) + kPrefetchBytes + 64 * i, _MM_HINT_T0);
        unpack(chunk, std::min(16, KB - 16 * c), std::min(S, nks - c * S), buf[c & 1]);
        if (c > 0) compute(c - 1);
      }
      compute(nchunks - 1);
      int32_t* yt = y + static_cast<size_t>(t0) * ldy + mb * kTileRows;
      if (nt > 0) _tile_stored(0, yt, sy);
      if (nt > 1) _tile_stored(1, yt + 16 * static_cast<size_t>(ldy), sy);
      if (nt > 2) _tile_stored(2, yt + 32 * static_cast<size_t>(ldy), sy);
      if (nt > 3) _tile_stored(3, yt + 48 * static_cast<size_t>(ldy), sy);
      if (with_rem) _tile_stored(6, y + static_cast<size_t>(T16) * ldy + mb * kTileRows, sy);
    }
    if (last) break;
  }
  _tile_release();
}

// A few tokens (T <= 16, one token tile: batched decode steps): kFewBlocks row blocks at a time,
// so that a k-step loads the tokens' A tile once for all of them and the row blocks accumulate in
// independent tiles (tmm0..2; one accumulator chain per row block stalled on TDPBSSD's latency at
// 8 tokens). Their B tiles rotate through tmm4..6, A is tmm7. The unpack of the next chunk (16
// packed tiles per row block) is spread over this chunk's k-steps, one row block per k-step, so the
// vector unpack and the tile work overlap instead of alternating. Measured (one 2B4T layer, t5,
// 8 tokens, one core, CPU time): gemm_chunked's tiles alone 0.64 ms and unpack alone 1.04 ms summed
// to 1.82 ms; here 1.46-1.53 ms (tiles alone 0.47, unpack alone 1.1: the unpack is the bound now).
// Those figures have the weights hot in L2 (time_ternary_product repeats one linear). The engine
// streams them from L3 / DRAM, where, before the next-group prefetch in gemm_few_group, 8 tokens
// cost 26% more a row than hot (25.1 -> 31.7 ns, 2560 columns, 2 threads, CPU time; the one-token
// VNNI kernel, with its own prefetch: 14%): why the kernel's gain hardly showed in the engine's step.
// Row blocks per group: 2 or 3 measured as 4 on one hot layer there; with 30 layers' weights
// streamed (2 threads, CPU time, old and new builds interleaved in one process) 3 row blocks cost
// 0.85-0.87x of 4 at 8 tokens, 0.87-0.91x at 4 and 0.90-0.92x at 16, 2 row blocks 0.91-0.93x: the
// group's double buffer (2 x 3 x 5 KB) and the tokens' activations (8 x 2560 or 8 x 6912 bytes)
// then leave room in the 48 KB L1D, where 4 row blocks' 40 KB of buffer did not. Tried in the same
// kind of runs, no better: the next chunk's tiles in equal shares over all k-steps (1.15x), the
// unpack started a k-step or two later, T0 / T2 prefetch hints or two groups ahead, the t5 decode
// inlined here with its tables loaded once per call (the per-chunk call costs nothing measurable),
// and the top digit by saturating byte arithmetic (c0 = [s >= 86] + [s >= 171]) so that one byte
// table instead of two decodes a t5 byte (8 -> 5 uops on port 5, the same total: no change).
constexpr int kFewBlocks = 3;
constexpr int kFewMaxTokens = 16;  // one token tile

void configure_few_tiles(int T) {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = static_cast<uint8_t>(i >= 4 && i < 7 ? 16 : T);
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
}

// k-step ks of the row blocks' panels b[r] (r < ng): C_r += A . B_r, A = tokens' columns 64 ks ...
template <int NG>
inline void few_kstep(const uint8_t* const* b, int off, const int8_t* xa, int sx) {
  _tile_loadd(7, xa, sx);
  _tile_loadd(4, b[0] + off, 64);
  _tile_dpbsud(0, 7, 4);
  if constexpr (NG > 1) {
    _tile_loadd(5, b[1] + off, 64);
    _tile_dpbsud(1, 7, 5);
  }
  if constexpr (NG > 2) {
    _tile_loadd(6, b[2] + off, 64);
    _tile_dpbsud(2, 7, 6);
  }
  if constexpr (NG > 3) {
    _tile_loadd(4, b[3] + off, 64);
    _tile_dpbsud(3, 7, 4);
  }
}

template <int NG, typename Unpack>
void gemm_few_group(Unpack& unpack, const uint8_t* w, int KB, int S, int nks, int g0, const int8_t* x, int ldx,
                    int32_t* y, int ldy, uint8_t (*buf)[kFewBlocks][5 * 1024], const int32_t* c0) {
  const int nchunks = (KB + 15) / 16;
  const size_t next_group = static_cast<size_t>(kFewBlocks) * KB * 64;
  auto unpack_chunk = [&](int r, int c) {
    const uint8_t* chunk = w + (static_cast<size_t>(g0 + r) * KB + static_cast<size_t>(c) * 16) * 64;
    // The same chunk of the next group's row block (kFewBlocks row blocks on) into L2: the group
    // after this one needs it in about one group's time. Past the range's last row block this runs
    // ahead into whatever follows; a prefetch never faults. Measured (t5, 8 tokens, 2 threads, CPU
    // time, weights out of L2): 2560-column rows 31.3-34.2 -> 30.5-31.3 ns a row, 6912-column rows
    // 76-82 -> 66-69; a fixed 4 KB ahead into L1 (gemm_chunked's) was slower than none.
    for (int i = 0; i < 16; ++i)
      _mm_prefetch(reinterpret_cast<const char*>(chunk) + next_group + 64 * i, _MM_HINT_T1);
    unpack(chunk, std::min(16, KB - 16 * c), std::min(S, nks - c * S), buf[c & 1][r]);
  };
  _tile_loadd(0, c0, 64);
  if constexpr (NG > 1) _tile_loadd(1, c0, 64);
  if constexpr (NG > 2) _tile_loadd(2, c0, 64);
  if constexpr (NG > 3) _tile_loadd(3, c0, 64);
  for (int r = 0; r < NG; ++r) unpack_chunk(r, 0);
  for (int c = 0; c < nchunks; ++c) {
    const uint8_t* b[kFewBlocks];
    for (int r = 0; r < NG; ++r) b[r] = buf[c & 1][r];
    const int ks0 = c * S, steps = std::min(S, nks - ks0);
    const bool more = c + 1 < nchunks;
    int r = 0;  // next row block whose following chunk is unpacked
    for (int ks = 0; ks < steps; ++ks) {
      few_kstep<NG>(b, ks * 1024, x + 64 * (ks0 + ks), ldx);
      if (more && r < NG) unpack_chunk(r++, c + 1);
    }
    if (more)
      for (; r < NG; ++r) unpack_chunk(r, c + 1);  // fewer k-steps than row blocks
  }
  const size_t sy = static_cast<size_t>(ldy) * sizeof(int32_t);
  int32_t* yb = y + static_cast<size_t>(g0) * kTileRows;
  _tile_stored(0, yb, sy);
  if constexpr (NG > 1) _tile_stored(1, yb + kTileRows, sy);
  if constexpr (NG > 2) _tile_stored(2, yb + 2 * kTileRows, sy);
  if constexpr (NG > 3) _tile_stored(3, yb + 3 * kTileRows, sy);
}

template <typename Unpack>
void gemm_few(Unpack&& unpack, const uint8_t* w, int KB, int S, int nks, int mb0, int mb1, const int8_t* x, int ldx,
              const int32_t* xsum, int T, int32_t* y, int ldy) {
  alignas(64) uint8_t buf[2][kFewBlocks][5 * 1024];
  // The accumulators start at -xsum[t] in every column (c0: row t = token t), so that the codes'
  // sum c.x comes out as q.x = c.x - xsum without another pass over y.
  alignas(64) int32_t c0[kFewMaxTokens][kTileRows];
  for (int t = 0; t < T; ++t)
    for (int m = 0; m < kTileRows; ++m) c0[t][m] = -xsum[t];
  configure_few_tiles(T);
  int g0 = mb0;
  for (; g0 + kFewBlocks <= mb1; g0 += kFewBlocks)
    gemm_few_group<kFewBlocks>(unpack, w, KB, S, nks, g0, x, ldx, y, ldy, buf, c0[0]);
  switch (mb1 - g0) {
    case 3: gemm_few_group<3>(unpack, w, KB, S, nks, g0, x, ldx, y, ldy, buf, c0[0]); break;
    case 2: gemm_few_group<2>(unpack, w, KB, S, nks, g0, x, ldx, y, ldy, buf, c0[0]); break;
    case 1: gemm_few_group<1>(unpack, w, KB, S, nks, g0, x, ldx, y, ldy, buf, c0[0]); break;
    default: break;
  }
  _tile_release();
}

// One token tile (T <= kFewMaxTokens) through gemm_few over the codes c = q + 1 (TDPBSUD: s8
// activations x u8 codes; q.x = c.x - xsum, the accumulators starting at -xsum): a decode step is bound
// by the unpack, and the codes skip a subtraction per byte. More tokens through gemm_chunked over q
// (TDPBSSD), its unpack spread over up to 64 tokens. unpack_q / unpack_c(tiles, n, ks, dst).
template <typename UnpackQ, typename UnpackC>
void gemm_amx(UnpackQ&& unpack_q, UnpackC&& unpack_c, const uint8_t* w, int KB, int S, int nks, int mb0, int mb1,
              const int8_t* x, int ldx, const int32_t* xsum, int T, int32_t* y, int ldy) {
  if (T > kFewMaxTokens) {
    gemm_chunked(unpack_q, w, KB, S, nks, mb0, mb1, x, ldx, T, y, ldy);
    return;
  }
  gemm_few(unpack_c, w, KB, S, nks, mb0, mb1, x, ldx, xsum, T, y, ldy);
}

}  // namespace

void head_i8_amx(const int8_t* E, const int32_t* rowsum, int Cp, int r0, int r1, const int8_t* x, int T,
                 int32_t* out, int ldo) {
  const int rb1 = r0 + (r1 - r0) / 16 * 16;  // whole row blocks here, the rest on the VNNI kernel
  if (T < kAmxMinTokens || rb1 == r0) {
    kKernelsAvx512.head_i8(E, rowsum, Cp, r0, r1, x, T, out, ldo);
    return;
  }
  const int nks = Cp / 64;  // Cp is a multiple of kHeadColAlign = 64
  thread_local std::vector<int32_t> xb;
  // C of two row blocks (16 rows x 16 words each, the words past nt unused): each block's logits go
  // out one block later, transposed in registers to one 64-byte store per token. (Read back and
  // scattered word by word right after its tile store, each block stalled the next: 128 scalar
  // stores overflow the store buffer while the loads wait for the tile store to retire, so the
  // next block's tile loads could not start: about 1 ms of a 2B4T head at 8 tokens, per thread.)
  // At 8 tokens the head then costs about 1.08x the one-token head (10.4-10.6 against 9.7 ms CPU a
  // thread, with head_forward's fp32 scaling): a tile load reads 16 rows, 16 streams against the
  // one-token kernel's one. No better, measured: software prefetch of the next row block (T0,
  // T1 or T2, by tile rows or in address order), a copy of each row block read in address order,
  // two row blocks a k-step (32 streams), 8-row tiles (twice the tile products).
  alignas(64) int32_t c[2][16 * 16];
  auto put = [&](const int32_t* cb, int rb, int t0, int nt) {  // C of row block rb -> out, tokens t0 ..
    __m512i v[16];
    for (int r = 0; r < 16; ++r) v[r] = _mm512_load_si512(cb + 16 * r);
    transpose16x16(v);  // v[t] word r = C[r][t]
    for (int t = 0; t < nt; ++t) _mm512_storeu_si512(out + static_cast<size_t>(t0 + t) * ldo + rb, v[t]);
  };
  for (int t0 = 0; t0 < T; t0 += 16) {
    const int nt = std::min(16, T - t0);
    if (xb.size() < static_cast<size_t>(Cp / 4) * nt) xb.resize(static_cast<size_t>(Cp / 4) * nt);
    for (int t = 0; t < nt; ++t)  // word g (columns 4g .. 4g + 3) of token t at xb[g * nt + t]
      for (int g = 0; g < Cp / 4; ++g)
        std::memcpy(&xb[static_cast<size_t>(g) * nt + t], x + static_cast<size_t>(t0 + t) * Cp + 4 * g, 4);
    configure_head_tiles(nt);
    for (int rb = r0; rb < rb1; rb += 16) {
      const int8_t* e = E + static_cast<size_t>(rb) * Cp;
      _tile_zero(0);
      for (int ks = 0; ks < nks; ++ks) {
        _tile_loadd(1, e + 64 * ks, Cp);
        _tile_loadd(2, xb.data() + static_cast<size_t>(ks) * 16 * nt, 4 * nt);
        _tile_dpbssd(0, 1, 2);
      }
      const int j = (rb - r0) / 16 % 2;
      _tile_stored(0, c[j], 64);
      if (rb > r0) put(c[1 - j], rb - 16, t0, nt);
    }
    put(c[(rb1 - 16 - r0) / 16 % 2], rb1 - 16, t0, nt);
    _tile_release();
  }
  if (rb1 < r1) kKernelsAvx512.head_i8(E, rowsum, Cp, rb1, r1, x, T, out, ldo);
}

void ternary_gemm_amx(const TernaryTile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                      const int32_t* xsum, int T, int32_t* y, int ldy) {
  if (T < kAmxMinTokens) {
    kKernelsAvx512.ternary_gemm(w, KB, mb0, mb1, x, ldx, xsum, T, y, ldy);
    return;
  }
  const int nks = (KB + 3) / 4;  // 64-column steps; ldx >= 64 * nks (kernels.h contract)
  auto unpack_q = [](const uint8_t* t, int n, int ks, int8_t* b) {
    unpack_block(reinterpret_cast<const TernaryTile*>(t), n, ks, b);
  };
  auto unpack_c = [](const uint8_t* t, int n, int ks, uint8_t* b) {
    if (have_gfni()) unpack_block_c<true>(reinterpret_cast<const TernaryTile*>(t), n, ks, b);
    else unpack_block_c<false>(reinterpret_cast<const TernaryTile*>(t), n, ks, b);
  };
  gemm_amx(unpack_q, unpack_c, reinterpret_cast<const uint8_t*>(w), KB, 4, nks, mb0, mb1, x, ldx, xsum, T, y, ldy);
}

void ternary5_gemm_amx(const TernaryTile5* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                       const int32_t* xsum, int T, int32_t* y, int ldy) {
  if (T < kAmxMinTokens) {
    ternary5_gemm_avx512vbmi(w, KB, mb0, mb1, x, ldx, xsum, T, y, ldy);
    return;
  }
  const int nks = (KB * kTile5Digits + 15) / 16;  // 64-column steps; ldx >= 20 * KB rounded up to 64
  auto unpack_q = [](const uint8_t* t, int n, int ks, int8_t* b) {
    ternary5_unpack_q(reinterpret_cast<const TernaryTile5*>(t), n, 16 * ks, b);
  };
  auto unpack_c = [](const uint8_t* t, int n, int ks, uint8_t* b) {
    ternary5_unpack_c(reinterpret_cast<const TernaryTile5*>(t), n, 16 * ks, b);
  };
  gemm_amx(unpack_q, unpack_c, reinterpret_cast<const uint8_t*>(w), KB, kTile5Digits, nks, mb0, mb1, x, ldx, xsum, T,
           y, ldy);
}

}  // namespace bitnet
