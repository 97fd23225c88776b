// TL2-style one-token product on AVX2 against the engine's i2 one-token kernel (issue 21, last
// bullet of "Targets"): does a 1.67-bit layout that AVX2 decodes with vpshufb make one-token decode
// faster than streaming 2-bit weights? A standalone prototype; nothing in the engine uses it.
//
// Build and run (about 8 s, 1.3 GB of memory):
//   g++ -O2 -mavx2 -mfma -pthread -o /tmp/tl2mb benchmarks/proto/tl2_microbench.cpp && /tmp/tl2mb
// (-DTL2_PF=bytes: TL2's prefetch distance, 2048; -DTL2_TT=n: tokens a pass at 8 tokens, 4.)
// It first checks every kernel against the scalar reference ref_gemv, bit for bit, on 10 shapes
// (K = 1, 2, 3, 4, 47, 100, 241, 2560, 6912, 7001: not multiples of 3, 16 or 24 included) x 5 weight
// kinds (random, sparse, all +1, all -1, rows alternating +1 / -1) x 4 activation kinds (random with
// -128, all -128, all 127, -128 / 127 alternating), TL2 at 8 tokens too, and aborts with a message
// naming the case on any mismatch; the timed runs' outputs are checked again. Then it times:
// - memory-resident: a 2B4T layer's seven linears (q 2560x2560, k and v 640x2560, o 2560x2560,
//   gate and up 6912x2560, down 2560x6912) in copies cycled so that each layout's copies exceed
//   the L3 that lscpu reports (480 MiB: 39 copies, 677 MB i2, 569 MB TL2), one token, 1 and 2
//   threads (std::thread, each thread a share of every linear's row blocks), against a plain
//   streaming sum over the i2 copies (the read bandwidth), 7 interleaved rounds; TL2's times
//   include building the tables of the layer's four inputs in every thread;
// - L2-resident (one 512x2560 or 192x6912 matrix, about 300 KB): core cycles per 32 products
//   (TSC ticks scaled by a dependent-add chain's ticks per cycle), i2 and TL2 at one token and TL2
//   at 8 tokens (per token), best of 5 interleaved rounds.
//
// ---- i2 (the engine's layout, kernels.h TernaryTile): 16 x 16 weights in 64 bytes, byte 4r + j
// holding the codes c = q + 1 of row r, columns 4i + j (i = 0..3) in bits 2i, 2i + 1. Row blocks of
// 16 rows, their KB = ceil(K / 16) tiles stored one after the other. One-token kernel (i2_block):
// the engine's block_t1 written again: per tile two 32-byte loads (rows 0-7, rows 8-15), each split
// by one shift and four masks into planes c (masks 3) and 4c (masks 12), vpmaddubsw against four
// broadcast activation dwords, int16 sums widened by vpmaddwd every 7 tiles (the 4c sums shifted
// back by 2), q.x = c.x - sum(x). Prefetch 4096 bytes ahead, one per tile. Per 32 products: 3.25
// vector ALU uops (1 vpmaddubsw, 1 vpaddw, 1 vpand, 0.25 vpsrlw) + 0.18 for the widening, 0.75 loads.
// Restated here (the engine's is file-local to kernels_avx2.cpp) so that this file builds alone;
// checked once against the engine's own block_t1 on the same L2-resident 512x2560 data (a
// throwaway harness including kernels_avx2.cpp): same results, 1.23-1.31 against 1.23-1.25 cycles
// per 32 products.
//
// ---- TL2 (this file's layout): columns in groups of 3 (K padded with zero weights to 3G). A
// group's trits (t0, t1, t2), 27 patterns, are stored as s and a 4-bit index p: s = 1 when the
// first non-zero trit is -1 (then the pattern is negated), p the index of the remaining pattern
// among 14: 0 = (0,0,0), 1-9 = (1, a, b), 10-12 = (0, 1, b), 13 = (0, 0, 1) (a, b = -1, 0, 1 in that
// order); 5 bits per 3 weights = 1.67 bits a weight. Row blocks of 32 rows (M padded with zero
// rows); per row block, chunks of 8 groups (24 columns; G padded to 8 G8 with zero groups) of 160
// bytes, one after the other: four 32-byte vectors of indices (vector v, byte r: group 2v of row r
// in the low nibble, group 2v + 1 in the high one) and a 32-byte vector of signs (byte r, bit j: s
// of group j of row r). Beside the blocks, one int32 per row: n_neg, the number of its groups with
// s = 1 (1.681 bits a weight in all for a 2B4T layer).
// Per token: a table per group, 32 bytes: the 16 int16 sums T[p] = t(p) . (x0, x1, x2) (entries 14
// and 15 unused, 0), low bytes in the first 16 bytes and high bytes in the last 16 (tl2_tables,
// vpsignw of broadcast x by the patterns' trits: about 9 us for a layer's four inputs). |T| <= 3 *
// 128 = 384; T[0] = 0 whatever x is, so padded groups add nothing.
// One-token kernel (tl2_run), per group of 32 rows: the group's 32 indices (one vpand, plus a
// vpsrlw for the high nibbles: 1.5 ops a group), the sign mask m (0xFF where s = 1: the sign bit
// shifted to bit 7 of its byte, vpcmpgtb against 0: 2 ops, 1 for the chunk's last group), two
// vpshufb lookups of the table's low and high bytes (each table half broadcast to both lanes by a
// load), both xored with m (2 ops), rebuilt into int16 by vpunpcklbw / vpunpckhbw (2 ops) and
// added into two int16 accumulators (rows 0-7 and 16-23, rows 8-15 and 24-31; 2 ops): 91 vector
// ALU uops per chunk of 8 groups (counted in the compiled loop), 3.8 per 32 products, and 0.9
// loads. The xor: for T = 256 h + l (l the unsigned low byte), complementing both bytes gives ~T =
// -T - 1, so a negated group adds -T - 1 and the row's n_neg, added once at the end, makes it
// exact. Each addend lies in [-384, 383]; int16 holds 85 of them, so the int16 sums are widened to
// int32 every kFlushChunks = 10 chunks (80 groups: |sum| <= 80 * 384 = 30720 < 32768).
// At 8 tokens (tl2_run_tt): indices and masks made once per group for 4 tokens; lookups, xors,
// unpacks and adds per token (8 of the 11.4 ops: the tables are per token).
//
// ---- Measured (Intel Xeon family 6 model 167 under KVM, 2 vCPUs, AVX2 path; 2026-12-06, three
// runs of this file; the machine was shared with another session's timings, so ranges; vpshufb and
// vpunpcklbw ymm measured at 2 a cycle here, vpaddw 3, so both kernels are bound by the 3 vector
// ALU ports, not by the shuffle port):
//
//   memory-resident 2B4T layer, one token (best wall of 7 rounds, range over the three runs):
//   threads | read GB/s | i2 ms/layer | i2 GB/s   | TL2 ms/layer | TL2 GB/s  | i2 / TL2 time, per round
//   1       | 16.0-16.6 | 1.127-1.152 | 15.1-15.4 | 1.107-1.131  | 12.9-13.2 | 0.995-1.051
//   2       | 30.2-30.4 | 0.584-0.591 | 29.4-29.7 | 0.582-0.585  | 24.9-25.1 | 0.975-1.050 (one disturbed round 1.28)
//
//   L2-resident, core cycles per 32 products (best of 5 rounds, range over matrices and runs):
//   i2 one token 1.14-1.22 (bound 3.43 uops / 3 ports = 1.14); TL2 one token 1.23-1.32 (bound
//   1.27); TL2 at 8 tokens 1.21-1.30 per token, against 0.89-0.90 for the engine's 8-token i2
//   loop (chunk unpack + vpmaddubsw; lut8_microbench.cpp "mac+unpack", same machine and session).
//
// Tried: TL2 prefetch 1024 / 2048 / 4096 / 8192 bytes ahead, T0 / T1 / T2 (2048, T0 best: 0.58
// ms/layer at 2 threads, 4096 0.63-0.65); a panel-major chunk order keeping a 240-column panel's
// tables in L1 (no faster at 1 thread, 20% slower at 2: the two threads' streams interleave in
// memory); without the register pins GCC's add trees spilled (1.42-1.52 cycles per 32 products).
//
// ---- Conclusion. Per product TL2 costs about 10% more core cycles than i2 (11.4 vector uops per
// 96 products against 10.3: the sign mask, the xor and the rebuild of int16 from two byte lookups
// cost more than vpmaddubsw's unpacking), and it reads 16% fewer bytes. On this machine i2 streams
// at the read bandwidth (29.5 of 30.3 GB/s at 2 threads), TL2 at 82% of it (25 GB/s): with its
// compute at about 80% of its memory time the two do not overlap fully, and the layer takes the
// same time (TL2 / i2 speed 0.98-1.05 at 2 threads, 1.00-1.05 at 1). On the engine's 30-layer
// one-token step (products about 16.9 ms of 29-31 ms) that is -0.8 to +0.4 ms: nothing. TL2 would
// pay only where a core has clearly less read bandwidth than it can decode (about 5.2 GB/s per
// GHz of core clock here, i.e. ~19 GB/s at 3.6 GHz: e.g. many cores sharing two memory channels);
// there the gain is capped by the byte ratio, at most 1.19x the products (not measured).
// The batched step: TL2's tables are per token, so at 8 tokens every lookup is paid 8 times; at
// 1.21-1.30 cycles per 32 token-products against the engine's 0.89-0.90 the 8-token step's
// products (62-68 ms) would take 1.35-1.45x as long (about 83-99 ms) on TL2 alone. So AVX2 would have to
// keep both layouts, i2 for batches and TL2 for one token: 14.6 MB more a layer, 0.44 GB for 30
// layers on top of 0.52 GB of i2 weights (peak RSS about 1.5 -> 1.95 GB), for no gain measured
// here. Not worth it: AVX2 keeps reading the i2 weights at one token.
#include <immintrin.h>
#include <sys/mman.h>
#include <time.h>
#include <x86intrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

constexpr int kPrefetchBytes = 4096;  // as the engine (kernels.h)
#ifndef TL2_PF
#define TL2_PF 2048
#endif
#ifndef TL2_TT
#define TL2_TT 4
#endif
constexpr int kTlPrefetchBytes = TL2_PF;

// ---------------------------------------------------------------------------------------------
// Buffers: zeroed; from 2 MiB up 2 MiB-aligned and in huge pages where the kernel grants them.
constexpr size_t kHuge = size_t(2) << 20;
struct Buf {
  uint8_t* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t bytes = 0) { resize(bytes); }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  void resize(size_t bytes) {
    std::free(p);
    n = bytes;
    p = nullptr;
    if (!bytes) return;
    const size_t align = bytes >= kHuge ? kHuge : 64, size = (bytes + align - 1) / align * align;
    p = static_cast<uint8_t*>(std::aligned_alloc(align, size));
    if (!p) {
      std::fprintf(stderr, "tl2mb: out of memory allocating %zu bytes\n", bytes);
      std::exit(1);
    }
    if (align == kHuge) madvise(p, size, MADV_HUGEPAGE);  // as the engine's weights (model.h)
    std::memset(p, 0, size);
  }
};

[[noreturn]] void fail(const std::string& msg) {
  std::fprintf(stderr, "tl2mb: MISMATCH: %s\n", msg.c_str());
  std::abort();
}

// ---------------------------------------------------------------------------------------------
// Scalar reference: y[r] = sum_k w[r][k] x[k], w ternary (int8 -1/0/1, row-major M x K).
void ref_gemv(const int8_t* w, int M, int K, const int8_t* x, int32_t* y) {
  for (int r = 0; r < M; ++r) {
    int32_t acc = 0;
    for (int k = 0; k < K; ++k) acc += int32_t(w[size_t(r) * K + k]) * int32_t(x[k]);
    y[r] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// i2: the engine's tiles.
constexpr int kI2Rows = 16, kI2Cols = 16, kI2TileBytes = 64;
struct I2Shape {
  int M, K, MB, KB;  // MB row blocks of 16, KB tiles of 16 columns
  size_t bytes() const { return size_t(MB) * KB * kI2TileBytes; }
};
I2Shape i2_shape(int M, int K) { return {M, K, (M + kI2Rows - 1) / kI2Rows, (K + kI2Cols - 1) / kI2Cols}; }

void i2_pack(const int8_t* w, const I2Shape& s, uint8_t* out) {
  std::memset(out, 0x55, s.bytes());  // code 1 = weight 0 for the padding
  for (int r = 0; r < s.M; ++r)
    for (int k = 0; k < s.K; ++k) {
      const int mb = r / kI2Rows, rr = r % kI2Rows, kb = k / kI2Cols, kk = k % kI2Cols;
      const int i = kk / 4, j = kk % 4;
      uint8_t& b = out[(size_t(mb) * s.KB + kb) * kI2TileBytes + 4 * rr + j];
      const int c = w[size_t(r) * s.K + k] + 1;
      b = uint8_t((b & ~(3 << (2 * i))) | (c << (2 * i)));
    }
}

inline void pin(__m256i& v) { asm volatile("" : "+x"(v)); }  // keeps v in a register, here

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// One row block (16 rows) for one token; x padded with zeros to 16 KB columns, xsum = sum x.
// Ranges (as the engine's block_t1): a vpmaddubsw pair of codes c <= 2 is at most 2*2*128 = 512
// in magnitude, of 4c at most 2048; per int16 lane a tile adds 2 of each, so 7 tiles stay within
// 7168 and 28672 (exact in int16) before vpmaddwd widens them; the 4c sums are multiples of 4 and
// the arithmetic shift by 2 divides them exactly.
constexpr int kI2Widen = 7;
inline void i2_block(const uint8_t* wrow, int KB, const int8_t* x, int32_t xsum, int32_t* y) {
  const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12), ones = _mm256_set1_epi16(1);
  __m256i ya = _mm256_setzero_si256(), yb = ya;  // int32 rows 0-7, rows 8-15
  auto planes = [&](__m256i p, __m256i& s1, __m256i& s4, __m256i x0, __m256i x1, __m256i x2, __m256i x3) {
    const __m256i h = _mm256_srli_epi16(p, 4);
    s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(p, m3), x0));
    s4 = _mm256_add_epi16(s4, _mm256_maddubs_epi16(_mm256_and_si256(p, m12), x1));
    s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(h, m3), x2));
    s4 = _mm256_add_epi16(s4, _mm256_maddubs_epi16(_mm256_and_si256(h, m12), x3));
  };
  for (int kb0 = 0; kb0 < KB; kb0 += kI2Widen) {
    const int kb1 = std::min(KB, kb0 + kI2Widen);
    __m256i a1 = _mm256_setzero_si256(), a4 = a1, b1 = a1, b4 = a1;
    for (int kb = kb0; kb < kb1; ++kb) {
      const uint8_t* t = wrow + size_t(kb) * kI2TileBytes;
      _mm_prefetch(reinterpret_cast<const char*>(t) + kPrefetchBytes, _MM_HINT_T0);
      const int8_t* xt = x + kb * kI2Cols;
      const __m256i x0 = bcast4(xt), x1 = bcast4(xt + 4), x2 = bcast4(xt + 8), x3 = bcast4(xt + 12);
      planes(_mm256_load_si256((const __m256i*)t), a1, a4, x0, x1, x2, x3);
      planes(_mm256_load_si256((const __m256i*)(t + 32)), b1, b4, x0, x1, x2, x3);
    }
    ya = _mm256_add_epi32(ya, _mm256_add_epi32(_mm256_madd_epi16(a1, ones), _mm256_srai_epi32(_mm256_madd_epi16(a4, ones), 2)));
    yb = _mm256_add_epi32(yb, _mm256_add_epi32(_mm256_madd_epi16(b1, ones), _mm256_srai_epi32(_mm256_madd_epi16(b4, ones), 2)));
  }
  const __m256i xs = _mm256_set1_epi32(xsum);
  _mm256_storeu_si256((__m256i*)y, _mm256_sub_epi32(ya, xs));
  _mm256_storeu_si256((__m256i*)(y + 8), _mm256_sub_epi32(yb, xs));
}

int32_t sum_x(const int8_t* x, int n) {
  int32_t s = 0;
  for (int k = 0; k < n; ++k) s += x[k];
  return s;
}

// Row blocks [mb0, mb1) of one matrix; y has 16 MB entries.
void i2_gemv(const uint8_t* w, const I2Shape& s, int mb0, int mb1, const int8_t* xpad, int32_t xsum, int32_t* y) {
  for (int mb = mb0; mb < mb1; ++mb) i2_block(w + size_t(mb) * s.KB * kI2TileBytes, s.KB, xpad, xsum, y + mb * kI2Rows);
}

// ---------------------------------------------------------------------------------------------
// TL2: see the top of the file.
constexpr int kTlRows = 32, kTlChunkGroups = 8, kTlChunkBytes = 160, kTlTabBytes = 32, kFlushChunks = 10;
static_assert(kFlushChunks * kTlChunkGroups * 384 < 32768, "int16 sums widened before they can overflow");
struct Tl2Shape {
  int M, K, MB, G, G8;  // MB row blocks of 32; G groups of 3 columns, G8 chunks of 8 groups
  size_t block_bytes() const { return size_t(MB) * G8 * kTlChunkBytes; }
  int cols() const { return G8 * kTlChunkGroups * 3; }  // padded K
};
Tl2Shape tl2_shape(int M, int K) {
  const int G = (K + 2) / 3;
  return {M, K, (M + kTlRows - 1) / kTlRows, G, (G + kTlChunkGroups - 1) / kTlChunkGroups};
}
// Byte offset of chunk c of row block mb: a row block's G8 chunks one after the other.
size_t tl2_chunk_offset(const Tl2Shape& s, int mb, int c) { return (size_t(mb) * s.G8 + c) * kTlChunkBytes; }

// The 14 patterns up to sign, index -> trits.
struct Patterns {
  int8_t t[16][3] = {};  // entries 14, 15: zero
  int8_t index[27];      // (t0 + 1) * 9 + (t1 + 1) * 3 + (t2 + 1) -> index, of the normalized pattern
  Patterns() {
    int n = 1;
    for (int a = -1; a <= 1; ++a)
      for (int b = -1; b <= 1; ++b) t[n][0] = 1, t[n][1] = int8_t(a), t[n][2] = int8_t(b), ++n;
    for (int b = -1; b <= 1; ++b) t[n][1] = 1, t[n][2] = int8_t(b), ++n;
    t[n][2] = 1, ++n;
    if (n != 14) std::abort();
    for (int p = 0; p < 14; ++p) index[(t[p][0] + 1) * 9 + (t[p][1] + 1) * 3 + (t[p][2] + 1)] = int8_t(p);
  }
};
const Patterns kPat;

// blocks: s.block_bytes(); n_neg: 32 MB int32.
void tl2_pack(const int8_t* w, const Tl2Shape& s, uint8_t* blocks, int32_t* n_neg) {
  std::memset(blocks, 0, s.block_bytes());
  std::memset(n_neg, 0, sizeof(int32_t) * kTlRows * s.MB);
  for (int r = 0; r < s.M; ++r)
    for (int g = 0; g < s.G; ++g) {
      int t[3];
      for (int j = 0; j < 3; ++j) t[j] = 3 * g + j < s.K ? w[size_t(r) * s.K + 3 * g + j] : 0;
      const int first = t[0] ? t[0] : t[1] ? t[1] : t[2];
      const int sign = first < 0;
      if (sign)
        for (int& v : t) v = -v;
      const int p = kPat.index[(t[0] + 1) * 9 + (t[1] + 1) * 3 + (t[2] + 1)];
      const int mb = r / kTlRows, rr = r % kTlRows, c = g / kTlChunkGroups, j = g % kTlChunkGroups;
      uint8_t* chunk = blocks + tl2_chunk_offset(s, mb, c);
      chunk[32 * (j / 2) + rr] |= uint8_t(p << (4 * (j % 2)));
      chunk[128 + rr] |= uint8_t(sign << j);
      n_neg[r] += sign;
    }
}

// Tables for one token: x padded with zeros to s.cols(); tab: 8 G8 entries of 32 bytes.
// Per group, v = sign(x0, t0) + sign(x1, t1) + sign(x2, t2) over the 16 patterns (vpsignw: exact,
// |v| <= 384), then its low bytes and high bytes gathered into the two 16-byte halves.
void tl2_tables(const int8_t* xpad, int groups, uint8_t* tab) {
  alignas(32) int16_t tr[3][16];
  for (int j = 0; j < 3; ++j)
    for (int p = 0; p < 16; ++p) tr[j][p] = kPat.t[p][j];
  const __m256i t0 = _mm256_load_si256((const __m256i*)tr[0]), t1 = _mm256_load_si256((const __m256i*)tr[1]),
                t2 = _mm256_load_si256((const __m256i*)tr[2]);
  // per lane: bytes l0 h0 l1 h1 ... l7 h7 -> l0..l7 h0..h7; then qwords 0 2 1 3 -> l0..l15 | h0..h15
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,  //
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int g = 0; g < groups; ++g) {
    const int8_t* xg = xpad + 3 * g;
    __m256i v = _mm256_sign_epi16(_mm256_set1_epi16(xg[0]), t0);
    v = _mm256_add_epi16(v, _mm256_sign_epi16(_mm256_set1_epi16(xg[1]), t1));
    v = _mm256_add_epi16(v, _mm256_sign_epi16(_mm256_set1_epi16(xg[2]), t2));
    v = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(v, split), 0xD8);
    _mm256_store_si256((__m256i*)(tab + size_t(g) * kTlTabBytes), v);
  }
}

// One group of 32 rows: J = the group's place in its chunk (sign bit J).
template <int J>
inline void tl2_group(__m256i idx, __m256i sgn, const uint8_t* tab, __m256i& a0, __m256i& a1) {
  // bit J of each sign byte to bit 7 (a 16-bit shift by 7 - J < 8 keeps each byte's bit 7 its own)
  const __m256i m = _mm256_cmpgt_epi8(_mm256_setzero_si256(), _mm256_slli_epi16(sgn, 7 - J));
  const __m256i tl = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)tab));
  const __m256i th = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)(tab + 16)));
  const __m256i l = _mm256_xor_si256(_mm256_shuffle_epi8(tl, idx), m);
  const __m256i h = _mm256_xor_si256(_mm256_shuffle_epi8(th, idx), m);
  a0 = _mm256_add_epi16(a0, _mm256_unpacklo_epi8(l, h));  // rows 0-7 | 16-23
  a1 = _mm256_add_epi16(a1, _mm256_unpackhi_epi8(l, h));  // rows 8-15 | 24-31
  pin(a0);  // one add chain per accumulator (GCC's add trees spill)
  pin(a1);
}

template <int V>
inline void tl2_pair(const uint8_t* chunk, __m256i sgn, const uint8_t* tab, __m256i& a0, __m256i& a1) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i n = _mm256_load_si256((const __m256i*)(chunk + 32 * V));
  tl2_group<2 * V>(_mm256_and_si256(n, m4), sgn, tab + 2 * V * kTlTabBytes, a0, a1);
  tl2_group<2 * V + 1>(_mm256_and_si256(_mm256_srli_epi16(n, 4), m4), sgn, tab + (2 * V + 1) * kTlTabBytes, a0, a1);
}

// nc (<= kFlushChunks) consecutive chunks of one row block for one token, from chunk c0 of the
// row (tab: the token's tables from that chunk on, tl2_tables); adds the 32 sums to y (int32).
inline void tl2_run(const uint8_t* chunks, int nc, const uint8_t* tab, int32_t* y) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0;  // int16: rows 0-7 | 16-23, rows 8-15 | 24-31
  for (int c = 0; c < nc; ++c) {
    const uint8_t* chunk = chunks + size_t(c) * kTlChunkBytes;
    const char* pf = reinterpret_cast<const char*>(chunk) + kTlPrefetchBytes;  // the chunk's 3 lines
    _mm_prefetch(pf, _MM_HINT_T0);
    _mm_prefetch(pf + 64, _MM_HINT_T0);
    _mm_prefetch(pf + 128, _MM_HINT_T0);
    const __m256i sgn = _mm256_load_si256((const __m256i*)(chunk + 128));
    const uint8_t* t = tab + size_t(c) * kTlChunkGroups * kTlTabBytes;
    tl2_pair<0>(chunk, sgn, t, a0, a1);
    tl2_pair<1>(chunk, sgn, t, a0, a1);
    tl2_pair<2>(chunk, sgn, t, a0, a1);
    tl2_pair<3>(chunk, sgn, t, a0, a1);
  }
  const __m128i part[4] = {_mm256_castsi256_si128(a0), _mm256_castsi256_si128(a1), _mm256_extracti128_si256(a0, 1),
                           _mm256_extracti128_si256(a1, 1)};
  for (int q = 0; q < 4; ++q) {
    __m256i* yp = reinterpret_cast<__m256i*>(y + 8 * q);
    _mm256_storeu_si256(yp, _mm256_add_epi32(_mm256_loadu_si256(yp), _mm256_cvtepi16_epi32(part[q])));
  }
}

// Row blocks [mb0, mb1) of one matrix for one token; y has 32 MB entries. Each row block runs
// through all its chunks, kFlushChunks at a time (the whole table: 27 KB at K = 2560, 72 KB at 6912).
void tl2_gemv(const uint8_t* w, const int32_t* n_neg, const Tl2Shape& s, int mb0, int mb1, const uint8_t* tab, int32_t* y) {
  std::memcpy(y + mb0 * kTlRows, n_neg + mb0 * kTlRows, sizeof(int32_t) * kTlRows * (mb1 - mb0));
  auto run = [&](int mb, int c0) {
    tl2_run(w + tl2_chunk_offset(s, mb, c0), std::min(kFlushChunks, s.G8 - c0),
            tab + size_t(c0) * kTlChunkGroups * kTlTabBytes, y + mb * kTlRows);
  };
  for (int mb = mb0; mb < mb1; ++mb)
    for (int c0 = 0; c0 < s.G8; c0 += kFlushChunks) run(mb, c0);
}

// Several tokens (for the cost of the batched step): TT tokens a pass over a run of chunks, the
// group's indices and sign mask made once and used by every token's own tables. Per token and
// group the lookups, xors, unpacks and adds stay (8 of the 11.5 ops): the tables are per token.
// Same invariants as tl2_run per token; tabs[t]: token t's tables from the run's first chunk on,
// y[t]: its 32 outputs (added to).
template <int TT>
inline void tl2_run_tt(const uint8_t* chunks, int nc, const uint8_t* const* tabs, int32_t* const* y) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256i a[TT][2];
  for (int t = 0; t < TT; ++t) a[t][0] = a[t][1] = _mm256_setzero_si256();
  const uint8_t* tb[TT];
  for (int t = 0; t < TT; ++t) tb[t] = tabs[t];
  for (int c = 0; c < nc; ++c) {
    const uint8_t* chunk = chunks + size_t(c) * kTlChunkBytes;
    const __m256i sgn = _mm256_load_si256((const __m256i*)(chunk + 128));
    auto group = [&](auto jc, __m256i idx) {
      constexpr int J = decltype(jc)::value;
      const __m256i m = _mm256_cmpgt_epi8(_mm256_setzero_si256(), _mm256_slli_epi16(sgn, 7 - J));
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t) {
        const uint8_t* tp = tb[t] + J * kTlTabBytes;
        const __m256i l = _mm256_xor_si256(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)tp)), idx), m);
        const __m256i h = _mm256_xor_si256(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)(tp + 16))), idx), m);
        a[t][0] = _mm256_add_epi16(a[t][0], _mm256_unpacklo_epi8(l, h));
        a[t][1] = _mm256_add_epi16(a[t][1], _mm256_unpackhi_epi8(l, h));
      }
    };
    auto pair = [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      const __m256i n = _mm256_load_si256((const __m256i*)(chunk + 32 * V));
      group(std::integral_constant<int, 2 * V>(), _mm256_and_si256(n, m4));
      group(std::integral_constant<int, 2 * V + 1>(), _mm256_and_si256(_mm256_srli_epi16(n, 4), m4));
    };
    pair(std::integral_constant<int, 0>());
    pair(std::integral_constant<int, 1>());
    pair(std::integral_constant<int, 2>());
    pair(std::integral_constant<int, 3>());
    for (int t = 0; t < TT; ++t) tb[t] += kTlChunkGroups * kTlTabBytes;
  }
  for (int t = 0; t < TT; ++t) {
    const __m128i part[4] = {_mm256_castsi256_si128(a[t][0]), _mm256_castsi256_si128(a[t][1]),
                             _mm256_extracti128_si256(a[t][0], 1), _mm256_extracti128_si256(a[t][1], 1)};
    for (int q = 0; q < 4; ++q) {
      __m256i* yp = reinterpret_cast<__m256i*>(y[t] + 8 * q);
      _mm256_storeu_si256(yp, _mm256_add_epi32(_mm256_loadu_si256(yp), _mm256_cvtepi16_epi32(part[q])));
    }
  }
}

// T tokens (a multiple of kTlPassTokens) over row blocks [mb0, mb1), kTlPassTokens a pass over
// each run of chunks. y: T rows of ldy.
constexpr int kTlPassTokens = TL2_TT;
void tl2_gemm(const uint8_t* w, const int32_t* n_neg, const Tl2Shape& s, int mb0, int mb1, const uint8_t* const* tabs,
              int T, int32_t* y, int ldy) {
  for (int t = 0; t < T; ++t)
    std::memcpy(y + size_t(t) * ldy + mb0 * kTlRows, n_neg + mb0 * kTlRows, sizeof(int32_t) * kTlRows * (mb1 - mb0));
  auto run = [&](int mb, int c0) {
    for (int t = 0; t < T; t += kTlPassTokens) {
      const uint8_t* tp[kTlPassTokens];
      int32_t* yt[kTlPassTokens];
      for (int u = 0; u < kTlPassTokens; ++u)
        tp[u] = tabs[t + u] + size_t(c0) * kTlChunkGroups * kTlTabBytes, yt[u] = y + size_t(t + u) * ldy + mb * kTlRows;
      tl2_run_tt<kTlPassTokens>(w + tl2_chunk_offset(s, mb, c0), std::min(kFlushChunks, s.G8 - c0), tp, yt);
    }
  };
  // column panels of kFlushChunks chunks outermost: the panel's tables (2.5 KB a token) stay in L1
  // while every row block reads them
  for (int c0 = 0; c0 < s.G8; c0 += kFlushChunks)
    for (int mb = mb0; mb < mb1; ++mb) run(mb, c0);
}

// ---------------------------------------------------------------------------------------------
// Correctness: both kernels against ref_gemv, bit for bit.
struct Rng {  // xorshift64*: fast, fixed seed
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  int trit() { return int(next() % 3) - 1; }
};

enum class WKind { Random, Sparse, AllPlus, AllMinus, RowAlt };
enum class XKind { Random, AllMin, AllMax, Alt };
const char* wname(WKind k) {
  const char* n[] = {"random", "sparse", "all +1", "all -1", "rows +1/-1"};
  return n[int(k)];
}
const char* xname(XKind k) {
  const char* n[] = {"random (with -128)", "all -128", "all 127", "-128/127 alternating"};
  return n[int(k)];
}

void fill_w(int8_t* w, int M, int K, WKind kind, Rng& rng) {
  for (int r = 0; r < M; ++r)
    for (int k = 0; k < K; ++k) {
      int v = 0;
      switch (kind) {
        case WKind::Random: v = rng.trit(); break;
        case WKind::Sparse: v = rng.next() % 8 == 0 ? (rng.next() & 1 ? 1 : -1) : 0; break;
        case WKind::AllPlus: v = 1; break;
        case WKind::AllMinus: v = -1; break;
        case WKind::RowAlt: v = r % 2 ? -1 : 1; break;
      }
      w[size_t(r) * K + k] = int8_t(v);
    }
}
void fill_x(int8_t* x, int K, XKind kind, Rng& rng) {
  for (int k = 0; k < K; ++k) {
    int v = 0;
    switch (kind) {
      case XKind::Random: v = k % 17 == 0 ? -128 : int(rng.next() % 256) - 128; break;
      case XKind::AllMin: v = -128; break;
      case XKind::AllMax: v = 127; break;
      case XKind::Alt: v = k % 2 ? 127 : -128; break;
    }
    x[k] = int8_t(v);
  }
}

// Padded copies of x for both layouts (zeros beyond K).
std::vector<int8_t> pad_x(const int8_t* x, int K, int cols) {
  std::vector<int8_t> p(size_t(std::max(cols, K)) + 64, 0);
  std::memcpy(p.data(), x, size_t(K));
  return p;
}

void check_case(int M, int K, WKind wk, XKind xk, uint64_t seed) {
  Rng rng(seed);
  std::vector<int8_t> w(static_cast<size_t>(M) * K), x(static_cast<size_t>(K));
  fill_w(w.data(), M, K, wk, rng);
  fill_x(x.data(), K, xk, rng);
  std::vector<int32_t> ref(static_cast<size_t>(M));
  ref_gemv(w.data(), M, K, x.data(), ref.data());

  const I2Shape si = i2_shape(M, K);
  Buf wi(si.bytes());
  i2_pack(w.data(), si, wi.p);
  const std::vector<int8_t> xi = pad_x(x.data(), K, si.KB * kI2Cols);
  std::vector<int32_t> yi(size_t(si.MB) * kI2Rows, -7);
  i2_gemv(wi.p, si, 0, si.MB, xi.data(), sum_x(x.data(), K), yi.data());

  const Tl2Shape st = tl2_shape(M, K);
  Buf wt(st.block_bytes()), tab(size_t(st.G8) * kTlChunkGroups * kTlTabBytes);
  std::vector<int32_t> n_neg(size_t(st.MB) * kTlRows), yt(size_t(st.MB) * kTlRows, -7);
  tl2_pack(w.data(), st, wt.p, n_neg.data());
  const std::vector<int8_t> xt = pad_x(x.data(), K, st.cols());
  tl2_tables(xt.data(), st.G8 * kTlChunkGroups, tab.p);
  tl2_gemv(wt.p, n_neg.data(), st, 0, st.MB, tab.p, yt.data());

  // eight tokens through tl2_gemm: token 0 this case's x, the others random
  constexpr int T = 8;
  std::vector<std::vector<int8_t>> x8(T);
  std::vector<Buf> tabs8(T);
  std::vector<const uint8_t*> tp(T);
  std::vector<int32_t> ref8(size_t(T) * M), y8(size_t(T) * st.MB * kTlRows, -7);
  for (int t = 0; t < T; ++t) {
    std::vector<int8_t> xr(x);
    if (t) fill_x(xr.data(), K, XKind::Random, rng);
    ref_gemv(w.data(), M, K, xr.data(), ref8.data() + size_t(t) * M);
    x8[t] = pad_x(xr.data(), K, st.cols());
    tabs8[t].resize(tab.n);
    tl2_tables(x8[t].data(), st.G8 * kTlChunkGroups, tabs8[t].p);
    tp[t] = tabs8[t].p;
  }
  tl2_gemm(wt.p, n_neg.data(), st, 0, st.MB, tp.data(), T, y8.data(), st.MB * kTlRows);
  for (int t = 0; t < T; ++t)
    for (int r = 0; r < M; ++r)
      if (y8[size_t(t) * st.MB * kTlRows + r] != ref8[size_t(t) * M + r]) {
        char msg[256];
        std::snprintf(msg, sizeof msg, "tl2 8-token kernel, M=%d K=%d, weights %s, x %s: token %d row %d gives %d, reference %d",
                      M, K, wname(wk), xname(xk), t, r, y8[size_t(t) * st.MB * kTlRows + r], ref8[size_t(t) * M + r]);
        fail(msg);
      }
  for (int r = 0; r < M; ++r) {
    const char* which = yi[r] != ref[r] ? "i2" : yt[r] != ref[r] ? "tl2" : nullptr;
    if (which) {
      char msg[256];
      std::snprintf(msg, sizeof msg, "%s kernel, M=%d K=%d, weights %s, x %s: row %d gives %d, reference %d", which, M,
                    K, wname(wk), xname(xk), r, which[1] == '2' ? yi[r] : yt[r], ref[r]);
      fail(msg);
    }
  }
}

int check_all() {
  const int shapes[][2] = {{1, 1}, {3, 2}, {32, 3}, {33, 4}, {17, 47}, {64, 100}, {40, 241}, {96, 2560}, {64, 6912}, {35, 7001}};
  int n = 0;
  uint64_t seed = 1;
  for (const auto& s : shapes)
    for (WKind wk : {WKind::Random, WKind::Sparse, WKind::AllPlus, WKind::AllMinus, WKind::RowAlt})
      for (XKind xk : {XKind::Random, XKind::AllMin, XKind::AllMax, XKind::Alt}) check_case(s[0], s[1], wk, xk, seed++), ++n;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Timing: one 2B4T layer's seven linears, L copies cycled so that the weights stream from memory.
struct Linear {
  const char* name;
  int M, K, in;  // in: which activation vector (0 attention input, 1 o input, 2 ffn input, 3 down input)
};
constexpr Linear kLayer[] = {{"q", 2560, 2560, 0}, {"k", 640, 2560, 0},    {"v", 640, 2560, 0},   {"o", 2560, 2560, 1},
                             {"gate", 6912, 2560, 2}, {"up", 6912, 2560, 2}, {"down", 2560, 6912, 3}};
constexpr int kLinears = 7, kInputs = 4;
constexpr int kInputCols[kInputs] = {2560, 2560, 2560, 6912};

struct Model {
  int L = 0;
  I2Shape si[kLinears];
  Tl2Shape st[kLinears];
  // offsets in one layer: i2 tiles; TL2 blocks, then the n_neg counts (int32) of all seven
  size_t i2_off[kLinears + 1] = {}, tl_off[kLinears + 1] = {}, neg_off[kLinears + 1] = {};
  Buf i2, tl;  // L copies of the layer in each layout
  std::vector<int8_t> xi[kInputs], xt[kInputs];
  int32_t xsum[kInputs] = {};
  std::vector<int32_t> ref[kLinears];  // ref_gemv of each linear
  size_t i2_layer() const { return i2_off[kLinears]; }
  size_t tl_layer() const { return tl_off[kLinears] + neg_off[kLinears] * sizeof(int32_t); }
  const uint8_t* i2w(int l, int m) const { return i2.p + size_t(l) * i2_layer() + i2_off[m]; }
  uint8_t* tlw(int l, int m) const { return tl.p + size_t(l) * tl_layer() + tl_off[m]; }
  int32_t* negs(int l, int m) const {
    return reinterpret_cast<int32_t*>(tl.p + size_t(l) * tl_layer() + tl_off[kLinears]) + neg_off[m];
  }
};

size_t l3_bytes() {
  size_t v = 0;
  if (FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
    char unit = 0;
    if (std::fscanf(f, "%zu%c", &v, &unit) >= 1) v *= unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1;
    std::fclose(f);
  }
  return v;
}

void build_model(Model& md, int L) {
  md.L = L;
  for (int m = 0; m < kLinears; ++m) {
    md.si[m] = i2_shape(kLayer[m].M, kLayer[m].K);
    md.st[m] = tl2_shape(kLayer[m].M, kLayer[m].K);
    md.i2_off[m + 1] = md.i2_off[m] + md.si[m].bytes();
    md.tl_off[m + 1] = md.tl_off[m] + md.st[m].block_bytes();
    md.neg_off[m + 1] = md.neg_off[m] + size_t(md.st[m].MB) * kTlRows;
  }
  md.i2.resize(size_t(L) * md.i2_layer());
  md.tl.resize(size_t(L) * md.tl_layer());
  Rng rng(2026);
  std::vector<int8_t> x[kInputs];
  for (int i = 0; i < kInputs; ++i) {
    x[i].resize(size_t(kInputCols[i]));
    fill_x(x[i].data(), kInputCols[i], XKind::Random, rng);
    md.xi[i] = pad_x(x[i].data(), kInputCols[i], i2_shape(1, kInputCols[i]).KB * kI2Cols);
    md.xt[i] = pad_x(x[i].data(), kInputCols[i], tl2_shape(1, kInputCols[i]).cols());
    md.xsum[i] = sum_x(x[i].data(), kInputCols[i]);
  }
  for (int m = 0; m < kLinears; ++m) {
    std::vector<int8_t> w(size_t(kLayer[m].M) * kLayer[m].K);
    fill_w(w.data(), kLayer[m].M, kLayer[m].K, WKind::Random, rng);
    i2_pack(w.data(), md.si[m], md.i2.p + md.i2_off[m]);
    tl2_pack(w.data(), md.st[m], md.tlw(0, m), md.negs(0, m));
    md.ref[m].resize(size_t(kLayer[m].M));
    ref_gemv(w.data(), kLayer[m].M, kLayer[m].K, x[kLayer[m].in].data(), md.ref[m].data());
  }
  for (int l = 1; l < L; ++l) {
    std::memcpy(md.i2.p + size_t(l) * md.i2_layer(), md.i2.p, md.i2_layer());
    std::memcpy(md.tl.p + size_t(l) * md.tl_layer(), md.tl.p, md.tl_layer());
  }
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Runs f(thread, nthreads) on nthreads threads (the caller's thread is thread 0): wall seconds and
// the threads' mean CPU seconds (robust to other jobs taking the cores; not to their memory use).
struct Secs {
  double wall, cpu;
};
template <typename F>
Secs timed(int nthreads, F f) {
  std::vector<double> cpu(size_t(nthreads), 0.0);
  auto body = [&](int t) {
    const double c0 = thread_cpu_s();
    f(t, nthreads);
    cpu[size_t(t)] = thread_cpu_s() - c0;
  };
  const double t0 = now_s();
  std::vector<std::thread> th;
  for (int t = 1; t < nthreads; ++t) th.emplace_back(body, t);
  body(0);
  for (auto& x : th) x.join();
  Secs r{now_s() - t0, 0.0};
  for (double c : cpu) r.cpu += c / nthreads;
  return r;
}

struct Outputs {
  std::vector<int32_t> y[kLinears];
  Outputs() {
    for (int m = 0; m < kLinears; ++m) y[m].assign(size_t(kLayer[m].M) + 64, 0);
  }
};

// Every layer copy's seven linears for one token; each thread takes its share of every linear's
// row blocks (one sequential stream per linear, as the engine splits a one-token step).
void run_i2(const Model& md, Outputs& out, int t, int n) {
  for (int l = 0; l < md.L; ++l)
    for (int m = 0; m < kLinears; ++m) {
      const I2Shape& s = md.si[m];
      const int in = kLayer[m].in;
      i2_gemv(md.i2w(l, m), s, s.MB * t / n, s.MB * (t + 1) / n, md.xi[in].data(), md.xsum[in], out.y[m].data());
    }
}
// The same with the tables of the layer's four inputs built first (by every thread for itself:
// about 5k groups a layer, 1-2% of the time).
void run_tl2(const Model& md, Outputs& out, int t, int n) {
  std::vector<Buf> tab(kInputs);
  for (int i = 0; i < kInputs; ++i) tab[i].resize(size_t(tl2_shape(1, kInputCols[i]).G8) * kTlChunkGroups * kTlTabBytes);
  for (int l = 0; l < md.L; ++l) {
    for (int i = 0; i < kInputs; ++i) tl2_tables(md.xt[i].data(), int(tab[i].n / kTlTabBytes), tab[i].p);
    for (int m = 0; m < kLinears; ++m) {
      const Tl2Shape& s = md.st[m];
      tl2_gemv(md.tlw(l, m), md.negs(l, m), s, s.MB * t / n, s.MB * (t + 1) / n, tab[kLayer[m].in].p,
               out.y[m].data());
    }
  }
}
// A plain streaming read: sums 64-bit lanes of [p, p + bytes) in four accumulators.
uint64_t stream_sum(const uint8_t* p, size_t bytes) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (size_t i = 0; i + 128 <= bytes; i += 128) {
    a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i*)(p + i)));
    b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i*)(p + i + 32)));
    c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i*)(p + i + 64)));
    d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i*)(p + i + 96)));
  }
  alignas(32) uint64_t v[4];
  _mm256_store_si256((__m256i*)v, _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d)));
  return v[0] + v[1] + v[2] + v[3];
}

// Core cycles per TSC tick: a chain of dependent adds (one cycle each).
double core_per_tsc() {
  const uint64_t iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    uint64_t n = iters, a = 1;
    const uint64_t t0 = __rdtsc();
    asm volatile(
        "1:\n\t"
        "add %1, %1\n\tadd %1, %1\n\tadd %1, %1\n\tadd %1, %1\n\t"
        "add %1, %1\n\tadd %1, %1\n\tadd %1, %1\n\tadd %1, %1\n\t"
        "dec %0\n\tjnz 1b"
        : "+r"(n), "+r"(a));
    const double r = 8.0 * iters / double(__rdtsc() - t0);
    best = std::max(best, r);
  }
  return best;
}

}  // namespace

// Best / worst over rounds.
struct Range {
  double lo = 1e300, hi = 0;
  void add(double v) { lo = std::min(lo, v), hi = std::max(hi, v); }
};

// L2-resident (one M x K matrix, a few hundred KB): core cycles per 32 products, best of rounds.
struct CacheFigures {
  double i2, tl2, tl2_t8;  // tl2_t8: per 32 token-products at 8 tokens
};
CacheFigures cache_resident(int M, int K, double cpt, int rounds) {
  Rng rng(7);
  std::vector<int8_t> w(size_t(M) * K);
  fill_w(w.data(), M, K, WKind::Random, rng);
  const I2Shape si = i2_shape(M, K);
  const Tl2Shape st = tl2_shape(M, K);
  Buf wi(si.bytes()), wt(st.block_bytes());
  std::vector<int32_t> neg(size_t(st.MB) * kTlRows), y(size_t(8) * st.MB * kTlRows + 64);
  i2_pack(w.data(), si, wi.p);
  tl2_pack(w.data(), st, wt.p, neg.data());
  constexpr int T = 8;
  std::vector<std::vector<int8_t>> xt(T);
  std::vector<Buf> tabs(T);
  std::vector<const uint8_t*> tp(T);
  std::vector<int8_t> x(static_cast<size_t>(K)), xi;
  for (int t = 0; t < T; ++t) {
    fill_x(x.data(), K, XKind::Random, rng);
    xt[size_t(t)] = pad_x(x.data(), K, st.cols());
    tabs[size_t(t)].resize(size_t(st.G8) * kTlChunkGroups * kTlTabBytes);
    tl2_tables(xt[size_t(t)].data(), st.G8 * kTlChunkGroups, tabs[size_t(t)].p);
    tp[size_t(t)] = tabs[size_t(t)].p;
  }
  xi = pad_x(x.data(), K, si.KB * kI2Cols);
  const int32_t xs = sum_x(x.data(), K);
  const double per32 = double(M) * K / 32;
  const int reps = std::max(1, int(4e7 / (double(M) * K)));  // about 10-20 ms a measure
  CacheFigures best{1e300, 1e300, 1e300};
  auto cycles = [&](auto f) {
    f();  // warm the caches
    const uint64_t t0 = __rdtsc();
    for (int r = 0; r < reps; ++r) f();
    return double(__rdtsc() - t0) * cpt / reps / per32;
  };
  for (int r = 0; r < rounds; ++r) {
    best.i2 = std::min(best.i2, cycles([&] { i2_gemv(wi.p, si, 0, si.MB, xi.data(), xs, y.data()); }));
    best.tl2 = std::min(best.tl2, cycles([&] { tl2_gemv(wt.p, neg.data(), st, 0, st.MB, tp[0], y.data()); }));
    best.tl2_t8 = std::min(best.tl2_t8, cycles([&] { tl2_gemm(wt.p, neg.data(), st, 0, st.MB, tp.data(), T, y.data(), st.MB * kTlRows); }) / T);
  }
  return best;
}

int main() {
  std::printf("checking: %d cases (10 shapes x 5 weight kinds x 4 activation kinds): i2, TL2 and TL2 at 8 tokens equal the reference\n",
              check_all());

  // ---- memory-resident: L copies of a 2B4T layer, more than the L3 in the TL2 layout too.
  const size_t l3 = l3_bytes();
  Model md;
  {
    Model probe;
    build_model(probe, 1);
    const size_t need = l3 + l3 / 8;
    md.L = std::max<int>(30, int((need + probe.tl_layer() - 1) / probe.tl_layer()));
  }
  build_model(md, md.L);
  double weights = 0;
  for (const Linear& li : kLayer) weights += double(li.M) * li.K;
  const double gb = 1e9, il = double(md.i2_layer()), tll = double(md.tl_layer());
  std::printf("layer: %.2f MB i2 (2 bits a weight), %.2f MB TL2 (%.3f bits a weight, counts included); L3 %.0f MiB; "
              "%d copies cycled: %.0f MB i2, %.0f MB TL2\n",
              il / 1e6, tll / 1e6, tll * 8 / weights, double(l3) / 1048576.0, md.L, il * md.L / 1e6, tll * md.L / 1e6);
  const double cpt = core_per_tsc();
  std::printf("core cycles per TSC tick (dependent-add chain): %.3f\n", cpt);

  constexpr int kRounds = 7;
  Range bw_r[2], i2_r[2], tl_r[2], i2_c[2], tl_c[2], ratio[2];  // wall (bw, kernels), CPU, i2 / TL2 time
  Outputs oi, ot;
  volatile uint64_t sink = 0;
  const size_t bw_bytes = size_t(md.L) * md.i2_layer() / 256 * 256;
  for (int r = 0; r < kRounds; ++r) {
    for (int nt = 1; nt <= 2; ++nt) {
      const Secs bw = timed(nt, [&](int t, int n) {
        const size_t a = bw_bytes / size_t(n) * size_t(t) / 128 * 128;
        const size_t b = t + 1 == n ? bw_bytes : bw_bytes / size_t(n) * size_t(t + 1) / 128 * 128;
        sink = sink + stream_sum(md.i2.p + a, b - a);
      });
      Secs si{}, st{};
      const bool i2_first = (r + nt) % 2 == 0;  // alternate the order of the two kernels
      for (int k = 0; k < 2; ++k) {
        if ((k == 0) == i2_first)
          si = timed(nt, [&](int t, int n) { run_i2(md, oi, t, n); });
        else
          st = timed(nt, [&](int t, int n) { run_tl2(md, ot, t, n); });
      }
      const int q = nt - 1;
      bw_r[q].add(bw.wall), i2_r[q].add(si.wall), tl_r[q].add(st.wall), i2_c[q].add(si.cpu), tl_c[q].add(st.cpu);
      ratio[q].add(si.wall / st.wall);
    }
  }
  for (int m = 0; m < kLinears; ++m)
    for (int r = 0; r < kLayer[m].M; ++r)
      if (oi.y[m][size_t(r)] != md.ref[m][size_t(r)] || ot.y[m][size_t(r)] != md.ref[m][size_t(r)]) {
        char msg[160];
        std::snprintf(msg, sizeof msg, "timed run, linear %s row %d: i2 %d, TL2 %d, reference %d", kLayer[m].name, r,
                      oi.y[m][size_t(r)], ot.y[m][size_t(r)], md.ref[m][size_t(r)]);
        fail(msg);
      }
  (void)sink;
  auto ms = [&](double sec) { return sec * 1e3 / md.L; };
  auto gbs = [&](double sec, double bytes) { return bytes * md.L / sec / gb; };
  std::printf("\nmemory-resident 2B4T layers, one token, %d interleaved rounds, wall time best .. worst (CPU-time best):\n", kRounds);
  std::printf("threads | read GB/s     | i2 ms/layer           | i2 GB/s     | TL2 ms/layer          | TL2 GB/s    | i2 / TL2 time\n");
  for (int q = 0; q < 2; ++q)
    std::printf("%7d | %5.1f .. %5.1f | %5.3f .. %5.3f (%5.3f) | %4.1f .. %4.1f | %5.3f .. %5.3f (%5.3f) | %4.1f .. %4.1f | %.3f .. %.3f\n", q + 1,
                double(bw_bytes) / bw_r[q].lo / gb, double(bw_bytes) / bw_r[q].hi / gb, ms(i2_r[q].lo), ms(i2_r[q].hi),
                ms(i2_c[q].lo), gbs(i2_r[q].lo, il), gbs(i2_r[q].hi, il), ms(tl_r[q].lo), ms(tl_r[q].hi), ms(tl_c[q].lo),
                gbs(tl_r[q].lo, tll), gbs(tl_r[q].hi, tll), ratio[q].lo, ratio[q].hi);

  // ---- tables: the four inputs of a layer, one thread
  {
    std::vector<Buf> tab(kInputs);
    for (int i = 0; i < kInputs; ++i) tab[i].resize(size_t(tl2_shape(1, kInputCols[i]).G8) * kTlChunkGroups * kTlTabBytes);
    const int reps = 2000;
    double best = 1e300;
    for (int r = 0; r < 3; ++r) {
      const double t0 = now_s();
      for (int k = 0; k < reps; ++k)
        for (int i = 0; i < kInputs; ++i) tl2_tables(md.xt[i].data(), int(tab[i].n / kTlTabBytes), tab[i].p);
      best = std::min(best, (now_s() - t0) / reps);
    }
    std::printf("\nTL2 tables of a layer's four inputs (4.9k groups), one thread: %.1f us (included above)\n", best * 1e6);
  }

  // ---- cache-resident: core cycles per 32 products
  std::printf("\nL2-resident, one thread, core cycles per 32 products (best of 5 interleaved rounds):\n");
  std::printf("matrix      | i2 one token | TL2 one token | TL2 8 tokens (per token) | i2 weights | TL2 weights\n");
  CacheFigures cf[2];
  const int small[2][2] = {{512, 2560}, {192, 6912}};
  for (int k = 0; k < 2; ++k) {
    const int M = small[k][0], K = small[k][1];
    cf[k] = cache_resident(M, K, cpt, 5);
    std::printf("%4d x %4d | %12.3f | %13.3f | %24.3f | %7.0f KB | %8.0f KB\n", M, K, cf[k].i2, cf[k].tl2, cf[k].tl2_t8,
                double(i2_shape(M, K).bytes()) / 1e3, double(tl2_shape(M, K).block_bytes()) / 1e3);
  }

  // ---- derived: the engine's 30-layer AVX2 one-token step (products about 16.9 ms of 29-31 ms)
  for (int q = 0; q < 2; ++q) {
    const double lo = ratio[q].lo, hi = ratio[q].hi;  // i2 time / TL2 time, per round
    std::printf("%s: TL2 runs the layer at %.2f-%.2fx the speed of i2 (best walls: %.2fx); on the engine's 16.9 ms of "
                "products in a 29-31 ms step that is %+.1f to %+.1f ms\n",
                q ? "derived, 2 threads" : "derived, 1 thread ", lo, hi, i2_r[q].lo / tl_r[q].lo, 16.9 / hi - 16.9,
                16.9 / lo - 16.9);
  }
  return 0;
}
