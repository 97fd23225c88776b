// The several-token ternary product of the AVX-512 VNNI paths, shared by both weight layouts:
// included by kernels_avx512.cpp (i2 tiles) and kernels_avx512vbmi.cpp (t5 tiles), each compiled
// with its own ISA flags (everything here is in an anonymous namespace: one copy per file).
// Scalar twins: ternary_gemm_ref / ternary5_gemm_ref in kernels_ref.cpp; tested against them in
// tests/inference/test_kernels.py, test_kernels_t5.py and test_kernels_tiles.py.
//
// Both layouts reduce to the same stream of "code vectors": vector g of a row block holds, in its
// 32-bit lane r, the codes c = q + 1 in {0, 1, 2} of row r for the four input columns 4g .. 4g + 3,
// i.e. exactly the u8 operand of vpdpbusd against the 4 activation bytes of word g (i2: tile kb
// gives the vectors 4 kb .. 4 kb + 3, t5: 5 kb .. 5 kb + 4). A layout only supplies the decode of
// one tile into registers (Dec), run ONCE per tile and call: the first group of up to 8 tokens
// uses the vectors straight from the registers (block_fused), and where more tokens follow they are
// also stored to a per-thread buffer (two row blocks: 2 x K/4 x 64 bytes, in L1/L2) that the other
// groups read (block_rt) at one vpdpbusd per 64 weight-activation products, with no decode.
//
// Register tile: R row blocks (1 or 2) x TT tokens, R * TT accumulators. Two row blocks double the
// independent vpdpbusd chains of a small token group (8 tokens: 16 chains, enough to cover the
// instruction's latency at two per cycle), and share each activation word between them.
#pragma once

#include <cpuid.h>
#include <immintrin.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels.h"

namespace bitnet {
namespace {

struct alignas(64) CodeVec {  // one decoded code vector: 64 codes in {0, 1, 2}
  uint8_t c[64];
};

// acc += u8 . (the 4 bytes at p broadcast to every lane), vpdpbusd with an embedded broadcast, in
// place. Through the intrinsic GCC 12 copies every accumulator out and back around each vpdpbusd
// and broadcasts x with a separate instruction (48 instructions per 16 products instead of 18).
inline void dpbusd_bcast(__m512i& acc, __m512i u8, const void* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(u8), "m"(*static_cast<const int32_t*>(p)));
}

// GFNI (cpuid 7.0 ECX bit 8; every CPU with VBMI but Cannon Lake has it, as do Zen 4 and later):
// checked here, not in dispatch.cpp, because only the decode below uses it, through inline asm
// (the files are compiled without -mgfni) and only where this returns true. BITNET_NO_GFNI=1 turns
// it off (the tests run the shift-and-mask decode that way on CPUs with GFNI).
inline bool have_gfni() {
  static const bool v = [] {
    const char* off = std::getenv("BITNET_NO_GFNI");
    if (off != nullptr && off[0] == '1') return false;
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((c >> 8) & 1);
  }();
  return v;
}

// The 2-bit field k of every byte of p moved down to bits 0..1, the rest zero: one
// vgf2p8affineqb (a bit matrix per byte; output bit i is row 7 - i of the matrix ANDed with the
// byte, parity) instead of a shift and a mask. Only where have_gfni().
template <int k>
inline __m512i field2_gfni(__m512i p) {
  static_assert(k >= 0 && k < 4, "four 2-bit fields per byte");
  const __m512i m = _mm512_set1_epi64(static_cast<long long>((1ull << (2 * k)) << 56 | (1ull << (2 * k + 1)) << 48));
  __m512i r;
  asm("vgf2p8affineqb $0, %2, %1, %0" : "=v"(r) : "v"(p), "v"(m));
  return r;
}
// The same with a 16-bit shift and a mask (the shift only moves bits that the mask then drops).
template <int k>
inline __m512i field2_shift(__m512i p) {
  const __m512i m3 = _mm512_set1_epi8(3);
  return k == 0 ? _mm512_and_si512(p, m3) : _mm512_and_si512(_mm512_srli_epi16(p, 2 * k), m3);
}
// The four 2-bit fields of every byte of p as four u8 code vectors.
template <bool kGfni>
inline void fields2(__m512i p, __m512i* v) {
  v[0] = field2_shift<0>(p);
  v[1] = kGfni ? field2_gfni<1>(p) : field2_shift<1>(p);
  v[2] = kGfni ? field2_gfni<2>(p) : field2_shift<2>(p);
  v[3] = kGfni ? field2_gfni<3>(p) : field2_shift<3>(p);
}

// acc += u8 . s8 (registers), in place.
inline void dpbusd_reg(__m512i& acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
}

// 16 x 16 transpose of 32-bit words: r[i] word j -> r[j] word i.
inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  __m512i u[16];  // u[4 G + k], 128-bit lane L: words 4 L + k of rows 4 G .. 4 G + 3
  for (int G = 0; G < 4; ++G) {
    u[4 * G + 0] = _mm512_unpacklo_epi64(t[4 * G], t[4 * G + 2]);
    u[4 * G + 1] = _mm512_unpackhi_epi64(t[4 * G], t[4 * G + 2]);
    u[4 * G + 2] = _mm512_unpacklo_epi64(t[4 * G + 1], t[4 * G + 3]);
    u[4 * G + 3] = _mm512_unpackhi_epi64(t[4 * G + 1], t[4 * G + 3]);
  }
  for (int k = 0; k < 4; ++k) {  // a 4 x 4 transpose of 128-bit lanes among u[k], u[4+k], u[8+k], u[12+k]
    const __m512i v0 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x44), v1 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xee);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x44), v3 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xee);
    r[k] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + k] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
    r[8 + k] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + k] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
  }
}

// The activations of a group of tt <= 16 tokens interleaved by 4-byte word: xg[g * tt + t] = bytes
// 4g .. 4g + 3 of token t (g < words), so every broadcast in block_rt is one base register plus a
// constant offset (16 token pointers do not fit the registers). 16 words of 16 tokens at a time by
// a register transpose; the rows read up to 4 * ceil16(words) <= ldx bytes (ldx is a multiple of
// 64 and >= 4 * words), and the masked stores write only words < words and tokens < tt.
inline void interleave(const int8_t* x, int ldx, int tt, int words, int32_t* xg) {
  const __mmask16 m = static_cast<__mmask16>((1u << tt) - 1);
  for (int g0 = 0; g0 < words; g0 += 16) {
    __m512i r[16];
    for (int t = 0; t < 16; ++t)
      r[t] = t < tt ? _mm512_loadu_si512(x + static_cast<size_t>(t) * ldx + 4 * g0) : _mm512_setzero_si512();
    transpose16x16(r);
    for (int w = 0; w < 16 && g0 + w < words; ++w) _mm512_mask_storeu_epi32(xg + static_cast<size_t>(g0 + w) * tt, m, r[w]);
  }
}

// R decoded row blocks (c0, and c1 when R == 2) against the TT tokens of one
// interleaved group, G code vectors each: y0[t * ldy + r] (and y0[t * ldy + 16 + r], the next row
// block) = sum_g c . x - xsum[t]. The accumulators are named variables updated in place by
// dpbusd_bcast (an array updated by inline asm stays in memory); the unused ones are never touched.
// Invariant: c (unsigned, <= 2) times x in [-128, 127] (signed): each vpdpbusd adds at most 4 * 256
// per 32-bit lane, so G < 2^21 vectors cannot overflow int32. sum c*x - xsum = q.x exactly.
// The accumulators of a register tile (R row blocks x TT tokens): named variables updated in place
// by dpbusd_bcast (an array updated by inline asm stays in memory); the unused ones are never
// touched and cost nothing. BITNET_MAC(u0, u1, w): a_t += u0 . word t of w, b_t += u1 . word t.
// Two row blocks share one register broadcast of the word (one load per two vpdpbusd: measured
// 85% of the vpdpbusd peak at 128 tokens on one core against 77% with an embedded broadcast in
// each, which issues a load per vpdpbusd); a lone row block takes the embedded broadcast.
#define BITNET_ACCS                                                                                          \
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, \
          a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;                              \
  __m512i b0 = a0, b1 = a0, b2 = a0, b3 = a0, b4 = a0, b5 = a0, b6 = a0, b7 = a0, b8 = a0, b9 = a0, b10 = a0, \
          b11 = a0, b12 = a0, b13 = a0, b14 = a0, b15 = a0
#define BITNET_MAC1(n, u0, u1, w)                           \
  if constexpr (TT > n) {                                   \
    if constexpr (R > 1) {                                  \
      const __m512i xb = _mm512_set1_epi32((w)[n]);         \
      dpbusd_reg(a##n, u0, xb);                             \
      dpbusd_reg(b##n, u1, xb);                             \
    } else {                                                \
      dpbusd_bcast(a##n, u0, (w) + n);                      \
    }                                                       \
  }
#define BITNET_MAC(u0, u1, w)                                                                                     \
  BITNET_MAC1(0, u0, u1, w) BITNET_MAC1(1, u0, u1, w) BITNET_MAC1(2, u0, u1, w) BITNET_MAC1(3, u0, u1, w)          \
  BITNET_MAC1(4, u0, u1, w) BITNET_MAC1(5, u0, u1, w) BITNET_MAC1(6, u0, u1, w) BITNET_MAC1(7, u0, u1, w)          \
  BITNET_MAC1(8, u0, u1, w) BITNET_MAC1(9, u0, u1, w) BITNET_MAC1(10, u0, u1, w) BITNET_MAC1(11, u0, u1, w)        \
  BITNET_MAC1(12, u0, u1, w) BITNET_MAC1(13, u0, u1, w) BITNET_MAC1(14, u0, u1, w) BITNET_MAC1(15, u0, u1, w)

// y0[t * ldy + r] = a_t - xsum[t] (and y0[t * ldy + 16 + r] = b_t - xsum[t]: the next row block).
template <int R, int TT>
inline void store_tile(const __m512i (&A)[16], const __m512i (&B)[16], const int32_t* xsum, int32_t* y0, int ldy) {
  for (int t = 0; t < TT; ++t) {
    const __m512i s = _mm512_set1_epi32(xsum[t]);
    _mm512_storeu_si512(y0 + static_cast<size_t>(t) * ldy, _mm512_sub_epi32(A[t], s));
    if constexpr (R > 1) _mm512_storeu_si512(y0 + static_cast<size_t>(t) * ldy + kTileRows, _mm512_sub_epi32(B[t], s));
  }
}
#define BITNET_STORE(xsum, y0, ldy)                                                                                  \
  store_tile<R, TT>({a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15},                            \
                    {b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15}, xsum, y0, ldy)

// R decoded row blocks (c0, and c1 when R == 2) against the TT tokens of one interleaved group,
// G code vectors each, from the buffer block_fused filled.
// Invariant: c (unsigned, <= 2) times x in [-128, 127] (signed): each vpdpbusd adds at most 4 * 256
// per 32-bit lane, so G < 2^21 vectors cannot overflow int32. sum c*x - xsum = q.x exactly.
template <int R, int TT>
void block_rt(const CodeVec* c0, const CodeVec* c1, int G, const int32_t* xg, const int32_t* xsum, int32_t* y0,
              int ldy) {
  static_assert(R >= 1 && R <= 2 && TT >= 1 && TT <= 16 && R * TT <= 24, "at most 24 accumulators");
  BITNET_ACCS;
  for (int g = 0; g < G; ++g) {
    const __m512i u0 = _mm512_load_si512(c0[g].c);
    const __m512i u1 = R > 1 ? _mm512_load_si512(c1[g].c) : u0;
    const int32_t* w = xg + static_cast<size_t>(g) * TT;
    BITNET_MAC(u0, u1, w)
  }
  BITNET_STORE(xsum, y0, ldy);
}

// The first token group straight from the weight tiles: each tile of the R row blocks (w0, w1) is
// decoded in registers (dec(tile, v): its Dec::kDigits code vectors) and used at once, with a
// software prefetch kPrefetchBytes ahead (the weights stream from memory); where more groups
// follow, the vectors also go to the buffers s0, s1 (nullptr: none), so no tile is decoded twice
// and a call of a few tokens (a batched decode step) pays no buffer round trip. Same invariant
// as block_rt (G = kDigits * KB vectors).
template <int R, int TT, typename Dec>
void block_fused(const Dec& dec, const typename Dec::Tile* w0, const typename Dec::Tile* w1, int KB,
                 const int32_t* xg, const int32_t* xsum, int32_t* y0, int ldy, CodeVec* s0, CodeVec* s1) {
  static_assert(R >= 1 && R <= 2 && TT >= 1 && TT <= 8, "at most 16 accumulators beside the decode");
  constexpr int D = Dec::kDigits;
  BITNET_ACCS;
  for (int kb = 0; kb < KB; ++kb) {
    // Past the last row block this runs ahead into whatever follows; a prefetch never faults.
    _mm_prefetch(reinterpret_cast<const char*>(w0 + kb) + kPrefetchBytes, _MM_HINT_T0);
    if constexpr (R > 1) _mm_prefetch(reinterpret_cast<const char*>(w1 + kb) + kPrefetchBytes, _MM_HINT_T0);
    __m512i v0[D], v1[D];
    dec(w0[kb], v0);
    if constexpr (R > 1) dec(w1[kb], v1);
    if (s0 != nullptr) {
      for (int i = 0; i < D; ++i) {
        _mm512_store_si512(s0[kb * D + i].c, v0[i]);
        if constexpr (R > 1) _mm512_store_si512(s1[kb * D + i].c, v1[i]);
      }
    }
    const int32_t* w = xg + static_cast<size_t>(kb) * D * TT;
    for (int i = 0; i < D; ++i) {
      const __m512i u1 = R > 1 ? v1[i] : v0[i];
      BITNET_MAC(v0[i], u1, w + i * TT)
    }
  }
  BITNET_STORE(xsum, y0, ldy);
}
#undef BITNET_ACCS
#undef BITNET_MAC1
#undef BITNET_MAC
#undef BITNET_STORE

// Calls f(std::integral_constant<int, n>{}) for the n == k in 1..N.
template <int N, typename F>
inline void with_const(int k, F&& f) {
  if constexpr (N >= 1) {
    if (k == N) f(std::integral_constant<int, N>{});
    else with_const<N - 1>(k, f);
  }
}

// Tokens [0, T) in ceil(T / TT) groups of near-equal size (f(tt, t): tt tokens from t), so no group
// runs with a handful of chains: 16 tokens at TT = 12 are 8 + 8, not 12 + 4.
template <int TT, typename F>
inline void for_token_groups(int T, F&& f) {
  const int n = (T + TT - 1) / TT;
  for (int i = 0, t = 0; i < n; ++i) {
    const int tt = (T - t) / (n - i);
    f(tt, t);
    t += tt;
  }
}

// The several-token product over row blocks [mb0, mb1) for T <= kTokenChunk tokens, either layout
// (Dec: the tile type, its kDigits code vectors per tile and the in-register decode). Row blocks go
// in pairs (one alone at an odd end); the first token group (up to 8 tokens) runs from the tiles
// (block_fused), the others (up to 12) from the decoded buffer (block_rt).
template <typename Dec>
void gemm_token_chunk(const Dec& dec, const typename Dec::Tile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                      const int32_t* xsum, int T, int32_t* y, int ldy) {
  constexpr int TTF = 8, TTB = 12;  // tokens per group: fused (16 accumulators + decode), buffered (24)
  const int G = Dec::kDigits * KB;  // code vectors per row block = 4-byte activation words per token
  const int t1 = T <= TTF ? T : (T + (T + TTF - 1) / TTF - 1) / ((T + TTF - 1) / TTF);  // first group
  thread_local std::vector<CodeVec> codes;  // two decoded row blocks: 2 G vectors
  thread_local std::vector<int32_t> xg;     // every token group's interleaved activations
  if (T > t1 && codes.size() < 2 * static_cast<size_t>(G)) codes.resize(2 * static_cast<size_t>(G));
  if (xg.size() < static_cast<size_t>(T) * G) xg.resize(static_cast<size_t>(T) * G);
  // Group of tt tokens starting at t sits at xg + t * G: [0, t1), then [t1, T) in groups of <= TTB.
  auto groups = [&](auto&& f) {
    f(t1, 0);
    for_token_groups<TTB>(T - t1, [&](int tt, int t) { f(tt, t1 + t); });
  };
  groups([&](int tt, int t) {
    if (tt > 0) interleave(x + static_cast<size_t>(t) * ldx, ldx, tt, G, xg.data() + static_cast<size_t>(t) * G);
  });
  for (int mb = mb0; mb < mb1; mb += 2) {
    const bool pair = mb + 1 < mb1;
    const typename Dec::Tile* w0 = w + static_cast<size_t>(mb) * KB;
    CodeVec* s0 = T > t1 ? codes.data() : nullptr;
    CodeVec* s1 = T > t1 ? codes.data() + G : nullptr;
    int32_t* ym = y + mb * kTileRows;
    with_const<TTF>(t1, [&](auto k) {
      if (pair) block_fused<2, decltype(k)::value>(dec, w0, w0 + KB, KB, xg.data(), xsum, ym, ldy, s0, s1);
      else block_fused<1, decltype(k)::value>(dec, w0, nullptr, KB, xg.data(), xsum, ym, ldy, s0, s1);
    });
    for_token_groups<TTB>(T - t1, [&](int tt, int t0) {
      const int t = t1 + t0;
      const int32_t* xt = xg.data() + static_cast<size_t>(t) * G;
      int32_t* yt = ym + static_cast<size_t>(t) * ldy;
      with_const<TTB>(tt, [&](auto k) {
        if (pair) block_rt<2, decltype(k)::value>(s0, s1, G, xt, xsum + t, yt, ldy);
        else block_rt<1, decltype(k)::value>(s0, nullptr, G, xt, xsum + t, yt, ldy);
      });
    });
  }
}

// Any number of tokens, in near-equal chunks of at most kTokenChunk: the interleaved activations of
// a chunk (kTokenChunk * K bytes, 885 KB at 2B4T's down_proj) stay within a core's L2 and the
// per-thread buffer stays bounded however long the prompt; each chunk decodes the weights again,
// under 2% of a 128-token chunk's work.
constexpr int kTokenChunk = 128;
template <typename Dec>
void gemm_tokens(const Dec& dec, const typename Dec::Tile* w, int KB, int mb0, int mb1, const int8_t* x, int ldx,
                 const int32_t* xsum, int T, int32_t* y, int ldy) {
  for_token_groups<kTokenChunk>(T, [&](int n, int t) {
    gemm_token_chunk(dec, w, KB, mb0, mb1, x + static_cast<size_t>(t) * ldx, ldx, xsum + t, n,
                     y + static_cast<size_t>(t) * ldy, ldy);
  });
}

}  // namespace
}  // namespace bitnet
