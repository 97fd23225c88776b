// Register / L1 microbenchmark for issue 21's pure 8-token lookup-table product (AVX2, i2 tiles):
// cycles per 32 products of the multiply kernel's inner loop (chunk_n<4> over unpacked codes, two
// 4-token passes = 8 tokens) against lookup loops over 8-lane int16 tables (one 128-bit add of 32
// products per lookup: 4 columns x 8 tokens), all data in L1. The kernel built on it (not merged:
// 1.00-1.07x the multiply kernel on a 2B4T layer at 8 tokens) is on branch avx2step8-lut8.
// Lookup forms (a row adds 4 NK lookups in registers per block, then one round trip of its sum):
//   off16    a 16-bit byte offset loaded per lookup (kernels_lut_inl.h's form): 2 loads a lookup
//   b32      2 x compact index per byte (one vpshufb pair per 32 weight bytes), a 32-bit load per
//            row and tile, bytes taken apart with movzx / shr on the scalar ports (GCC's choice),
//            table row at [tab + idx * 8 + disp]; vex: vpaddw xmm, xmm, m128 (unlaminated by
//            Intel cores: the address has an index register), sse: legacy paddw xmm, m128 (two
//            operands: stays micro-fused; needs clean upper ymm state)
//   b64      64-bit loads (two tiles' dwords interleaved by row)
//   ah       b32 by hand: movzx al / ah, shr 16 (the high-byte reads were slower here)
//   mem      every index byte loaded by movzx from memory (2 loads a lookup)
//   noh      b32 by hand without high-byte registers: movzx al, shr 8, four times
//   mix      issue 21's "balance the ports": a share of the index bytes loaded by movzx from memory
//            (a pure load uop), the rest taken from the word as noh: 1/8 (noh on even tiles, mix
//            1/4 on odd), 1/4 (byte 3 of every word loaded), 1/2 (bytes 2 and 3 loaded, 0 and 1 from
//            a 16-bit load). Uops per lookup, loads L / ALU A (the add included): noh 1.25 / 2.5,
//            mix1/8 1.31 / 2.44, mix1/4 1.5 / 2.25, mix1/2 1.75 / 1.75, mem 2 / 1.
//   rawlea   no index bytes (branch lut8raw): the weight bytes themselves index sparse 256-row tables
//            (row b at 16 b, 81 rows written), the index register holding 2 b: (2 d) & 0x01FE01FE and
//            (d >> 7) & 0x01FE01FE, then movzwl / shr 16: 2 scalar uops a lookup (noh: 1.5)
//   rawpdep  the same with pdep (BMI2) depositing bytes 0-1 and 2-3 into 16-bit fields: 1.75
// "made per row block": the index bytes are made right before that row block's lookups read them;
// "ahead": made once for every row block (in the kernel: one chunk ahead).
// Measured (Xeon family 6 model 167, KVM, shared; core cycles = TSC x the vpmaddubsw peak ratio;
// two rounds of this file as it is): mac 0.80-0.81, mac + unpack 0.89-0.90; made per row block:
// off16 vex 0.87-0.89, b32 vex 0.84-0.87, b32 sse 0.70, b64 sse 0.71-0.73, ah 0.69-0.71, mem 0.83-0.84,
// noh 0.71; ahead: b32 sse 0.59-0.60 (1.34-1.36x the mac loop), noh 0.57 (1.39-1.42x), mem 0.76.
// Earlier builds of the same loops (other code around them) ranged 10% either way: b32 sse ahead
// 0.50-0.57, ah 0.75-0.82. The engine's row loop (branch avx2step8-lut8, lut8_rows) on L1 data:
// 0.59-0.67; inside the engine, with the index bytes made one chunk of 8 row blocks ahead, the
// table builds and the output: 1.00-1.07x the multiply kernel per 2B4T layer at 8 tokens.
// Port balance (branch lut8mix, four runs, quiet machine): ahead, noh 0.555-0.589, mix1/8
// 0.572-0.601, mix1/4 0.611-0.643, mix1/2 0.659-0.692, mem 0.736-0.777 (mac 0.80-0.85): every index
// byte moved from the ALU ports to the load ports costs time. The loads top out near 2.6 a cycle
// (mix1/2 and mem: 1.75 and 2 loads a lookup), so noh, at 1.25 loads and 2.5 ALU uops a lookup,
// sits where the load bound (1.25 / 2.6 = 0.48) and the ALU bound (2.5 / 5 ports = 0.50) meet:
// about 0.5 cycles a lookup is this design's floor on this core, and noh runs at 85-90% of it.
// The kernel (lut8mix) takes its bytes apart as noh does; in the engine, with the index bytes read
// from a copy made at load (BITNET_LUT8_INDEX=1), it runs about 0.72 cycles a lookup (1.17-1.19x
// the multiply kernel per 2B4T layer at 8 tokens; benchmarks/proto/ab_lut8_layer.py).
// Raw forms (branch lut8raw, three runs, shared machine): rawlea 0.68-0.72, rawpdep 0.67-0.73
// against noh ahead 0.54-0.58 (1.2-1.3x its time; a second accumulator per row, to halve the add
// chain, changed neither), about noh made per row block (0.68): the scalar uops of taking raw bytes
// apart cost what the index pass costs, and a copy of the index bytes remains the fast form.
// Build: g++ -O2 -mavx2 -mfma -o /tmp/lut8mb benchmarks/proto/lut8_microbench.cpp && /tmp/lut8mb
#include <immintrin.h>
#include <x86intrin.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

static inline void pin(__m256i& v) { asm volatile("" : "+x"(v)); }
static inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

constexpr int RB = 16;  // row blocks cycled over (weights 4 KiB at NK = 4)
constexpr int NK = 4;   // tiles per block (16 groups of tables)
constexpr int kRows = 81;
constexpr int kTab = kRows * 16;  // compact table bytes per group (1296)

alignas(64) static uint8_t tab[4 * NK * kTab];
alignas(64) static uint8_t wts[RB][NK][64];  // raw i2 tiles
alignas(64) static __m128i acc16[RB * 16];
alignas(64) static uint8_t cbuf[16 * 4 * 64];  // mac: 16 unpacked tiles
alignas(64) static int8_t xs[8][256];
alignas(64) static int32_t y32[8][16];

// ---- multiply baseline: the engine's chunk_n<4> (16 tiles of one row block, 4 tokens) twice.
template <int N>
__attribute__((noinline)) void chunk4(const uint8_t* c, int n, const int8_t* const* xt, int32_t* const* yt) {
  __m256i a0 = _mm256_setzero_si256(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
  auto step = [](const int8_t* x, __m256i c0, __m256i c1, __m256i& a, __m256i& b) {
    const __m256i xb = bcast4(x);
    a = _mm256_add_epi16(a, _mm256_maddubs_epi16(c0, xb));
    pin(a);
    b = _mm256_add_epi16(b, _mm256_maddubs_epi16(c1, xb));
    pin(b);
  };
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < 4; ++i) {
      const __m256i* cv = (const __m256i*)(c + (4 * j + i) * 64);
      const __m256i c0 = _mm256_load_si256(cv), c1 = _mm256_load_si256(cv + 1);
      const int col = j * 16 + 4 * i;
      step(xt[0] + col, c0, c1, a0, b0);
      step(xt[1] + col, c0, c1, a1, b1);
      step(xt[2] + col, c0, c1, a2, b2);
      step(xt[3] + col, c0, c1, a3, b3);
    }
  const __m256i acc[4][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
  const __m256i ones = _mm256_set1_epi16(1);
  for (int t = 0; t < 4; ++t)
    for (int h = 0; h < 2; ++h) {
      __m256i* yp = (__m256i*)(yt[t] + 8 * h);
      _mm256_storeu_si256(yp, _mm256_add_epi32(_mm256_loadu_si256(yp), _mm256_madd_epi16(acc[t][h], ones)));
    }
}
__attribute__((noinline)) void unpack16(const uint8_t* w, uint8_t* c) {
  const __m256i m3 = _mm256_set1_epi8(3);
  for (int j = 0; j < 16; ++j)
    for (int h = 0; h < 2; ++h) {
      const __m256i p = _mm256_loadu_si256((const __m256i*)(w + 64 * (j & 3) + 32 * h));
      uint8_t* cj = c + (4 * j * 2 + h) * 32;
      _mm256_store_si256((__m256i*)cj, _mm256_and_si256(p, m3));
      _mm256_store_si256((__m256i*)(cj + 64), _mm256_and_si256(_mm256_srli_epi16(p, 2), m3));
      _mm256_store_si256((__m256i*)(cj + 128), _mm256_and_si256(_mm256_srli_epi16(p, 4), m3));
      _mm256_store_si256((__m256i*)(cj + 192), _mm256_and_si256(_mm256_srli_epi16(p, 6), m3));
    }
}
template <bool Unpack>
__attribute__((noinline)) uint64_t run_mac(int reps) {  // products: reps * RB * 16 tiles * 256 * 8
  const int8_t* xt0[4] = {xs[0], xs[1], xs[2], xs[3]};
  const int8_t* xt1[4] = {xs[4], xs[5], xs[6], xs[7]};
  int32_t* yt0[4] = {y32[0], y32[1], y32[2], y32[3]};
  int32_t* yt1[4] = {y32[4], y32[5], y32[6], y32[7]};
  for (int rep = 0; rep < reps; ++rep)
    for (int rb = 0; rb < RB; ++rb) {
      if (Unpack) unpack16(wts[rb][0], cbuf);
      chunk4<4>(cbuf, 16, xt0, yt0);
      chunk4<4>(cbuf, 16, xt1, yt1);
    }
  return (uint64_t)reps * RB * 16 * 256 * 8;
}

// ---- lookups. Compact index of a weight byte (c0 | c1 << 2 | c2 << 4 | c3 << 6) times Scale.
template <int Scale>
static inline __m256i compact(__m256i b) {
  const __m256i lo = _mm256_setr_epi8(0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 0, 0, 0, 0, 0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 0, 0, 0, 0);
  const __m256i hi = _mm256_setr_epi8(0, 9, 18, 0, 27, 36, 45, 0, 54, 63, 72, 0, 0, 0, 0, 0, 0, 9, 18, 0, 27, 36, 45, 0, 54, 63, 72, 0, 0, 0, 0, 0);
  const __m256i m15 = _mm256_set1_epi8(15);
  __m256i r = _mm256_add_epi8(_mm256_shuffle_epi8(lo, _mm256_and_si256(b, m15)),
                              _mm256_shuffle_epi8(hi, _mm256_and_si256(_mm256_srli_epi16(b, 4), m15)));
  if (Scale == 2) r = _mm256_add_epi8(r, r);
  return r;
}

// Index data of one row block (NK tiles of wts[rb]) into buf: 16-bit offsets (Off16) or bytes.
template <int Form>
static inline void prep(int rb, uint8_t* buf) {
  for (int k = 0; k < NK; ++k)
    for (int h = 0; h < 2; ++h) {
      const __m256i w = _mm256_loadu_si256((const __m256i*)(wts[rb][k] + 32 * h));
      if (Form == 0) {  // off16: compact * 16 + the group's table
        const __m256i idx = compact<1>(w);
        const __m256i go = _mm256_mullo_epi16(_mm256_add_epi16(_mm256_setr_epi16(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3), _mm256_set1_epi16(4 * k)), _mm256_set1_epi16(kTab));
        uint16_t* o = (uint16_t*)buf + 64 * k + 32 * h;
        _mm256_store_si256((__m256i*)o, _mm256_add_epi16(_mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(idx)), 4), go));
        _mm256_store_si256((__m256i*)(o + 16), _mm256_add_epi16(_mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(idx, 1)), 4), go));
      } else if (Form == 3) {  // b64: tiles k, k + 1 interleaved by row (odd k: done with k - 1)
        if (k & 1) continue;
        const __m256i p = compact<2>(w), q = compact<2>(_mm256_loadu_si256((const __m256i*)(wts[rb][k + 1] + 32 * h)));
        const __m256i lo = _mm256_unpacklo_epi32(p, q), hi = _mm256_unpackhi_epi32(p, q);
        _mm256_store_si256((__m256i*)(buf + 64 * k + 64 * h), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_store_si256((__m256i*)(buf + 64 * k + 64 * h + 32), _mm256_permute2x128_si256(lo, hi, 0x31));
      } else {
        _mm256_store_si256((__m256i*)(buf + 64 * k + 32 * h), compact<2>(w));
      }
    }
}

// One lookup: s += 16 bytes at t + Disp + idx * 8 (legacy SSE or VEX).
template <bool Sse, int Disp>
static inline void lk(__m128i& s, const uint8_t* t, uint64_t idx) {
  if (Sse) asm("paddw %c[d](%[t],%[i],8), %[s]" : [s] "+x"(s) : [t] "r"(t), [i] "r"(idx), [d] "i"(Disp));
  else asm("vpaddw %c[d](%[t],%[i],8), %[s], %[s]" : [s] "+x"(s) : [t] "r"(t), [i] "r"(idx), [d] "i"(Disp));
}
template <bool Sse, int K>
static inline void lk4(__m128i& s, const uint8_t* t, uint32_t d) {
  lk<Sse, (4 * K + 0) * kTab>(s, t, d & 255);
  lk<Sse, (4 * K + 1) * kTab>(s, t, (d >> 8) & 255);
  lk<Sse, (4 * K + 2) * kTab>(s, t, (d >> 16) & 255);
  lk<Sse, (4 * K + 3) * kTab>(s, t, d >> 24);
}
#define LKA(D) "paddw " #D "(%[t],%q[i],8), %[s]\n\t"
#define DD(K) [d0] "i"((4 * K) * kTab), [d1] "i"((4 * K + 1) * kTab), [d2] "i"((4 * K + 2) * kTab), [d3] "i"((4 * K + 3) * kTab)
// Hand-written forms of one row and tile K (4 index bytes at p): 4 ah, 5 mem, 6 noh (see the top).
template <int Form, int K>
static inline void hand4(__m128i& s, const uint8_t* t, const uint8_t* p) {
  uint64_t w, i, j;
  if (Form == 4)
    asm("movl (%[p]), %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d0]) "movzbl %h[w], %k[j]\n\tpaddw %c[d1](%[t],%q[j],8), %[s]\n\t"
        "shrl $16, %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d2]) "movzbl %h[w], %k[j]\n\tpaddw %c[d3](%[t],%q[j],8), %[s]\n\t"
        : [s] "+x"(s), [w] "=&Q"(w), [i] "=&r"(i), [j] "=&R"(j) : [t] "r"(t), [p] "r"(p), DD(K) : "memory");
  if (Form == 5)
    asm("movzbl (%[p]), %k[i]\n\t" LKA(%c[d0]) "movzbl 1(%[p]), %k[i]\n\t" LKA(%c[d1])
        "movzbl 2(%[p]), %k[i]\n\t" LKA(%c[d2]) "movzbl 3(%[p]), %k[i]\n\t" LKA(%c[d3])
        : [s] "+x"(s), [i] "=&r"(i) : [t] "r"(t), [p] "r"(p), DD(K) : "memory");
  if (Form == 6)
    asm("movl (%[p]), %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d0]) "shrl $8, %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d1])
        "shrl $8, %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d2]) "shrl $8, %k[w]\n\t" "paddw %c[d3](%[t],%q[w],8), %[s]\n\t"
        : [s] "+x"(s), [w] "=&r"(w), [i] "=&r"(i) : [t] "r"(t), [p] "r"(p), DD(K) : "memory");
  if (Form == 7 || (Form == 9 && K % 2 == 1))  // noh for bytes 0-2, byte 3 by movzx from memory
    asm("movl (%[p]), %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d0]) "shrl $8, %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d1])
        "shrl $8, %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d2]) "movzbl 3(%[p]), %k[j]\n\t" "paddw %c[d3](%[t],%q[j],8), %[s]\n\t"
        : [s] "+x"(s), [w] "=&r"(w), [i] "=&r"(i), [j] "=&r"(j) : [t] "r"(t), [p] "r"(p), DD(K) : "memory");
  if (Form == 9 && K % 2 == 0) hand4<6, K>(s, t, p);
  if (Form == 8)  // bytes 0, 1 from the word (movzx, shr 8, movzx), bytes 2, 3 by movzx from memory
    asm("movzwl (%[p]), %k[w]\n\tmovzbl %b[w], %k[i]\n\t" LKA(%c[d0]) "shrl $8, %k[w]\n\t" "paddw %c[d1](%[t],%q[w],8), %[s]\n\t"
        "movzbl 2(%[p]), %k[i]\n\t" LKA(%c[d2]) "movzbl 3(%[p]), %k[j]\n\t" "paddw %c[d3](%[t],%q[j],8), %[s]\n\t"
        : [s] "+x"(s), [w] "=&r"(w), [i] "=&r"(i), [j] "=&r"(j) : [t] "r"(t), [p] "r"(p), DD(K) : "memory");
  (void)j;
}
// Raw forms: the weight bytes themselves index sparse tables (row b at 16 b, groups kRawTab apart),
// the index register holding 2 b: 10 rawlea ((2 d) & 0x01FE01FE and (d >> 7) & 0x01FE01FE, then
// movzwl / shr 16: 8 scalar uops a row and tile), 11 rawpdep (pdep of bytes 0-1 and 2-3 into 16-bit
// fields, BMI2: 7).
constexpr int kRawTab = 45 * 64;
alignas(64) static uint8_t tabraw[4 * NK * kRawTab + 4096];
#define RD(K) [d0] "i"((4 * K) * kRawTab), [d1] "i"((4 * K + 1) * kRawTab), [d2] "i"((4 * K + 2) * kRawTab), [d3] "i"((4 * K + 3) * kRawTab)
template <int Form, int K>
static inline void raw4(__m128i& s, const uint8_t* t, const uint8_t* p) {
  uint64_t d, e, i;
  if (Form == 10)
    asm("movl (%[p]), %k[d]\n\tleal (%q[d],%q[d]), %k[e]\n\tandl $0x01FE01FE, %k[e]\n\tshrl $7, %k[d]\n\t"
        "andl $0x01FE01FE, %k[d]\n\tmovzwl %w[e], %k[i]\n\tshrl $16, %k[e]\n\t" LKA(%c[d0])
        "movzwl %w[d], %k[i]\n\tshrl $16, %k[d]\n\t" "paddw %c[d2](%[t],%q[e],8), %[s]\n\t" LKA(%c[d1])
        "paddw %c[d3](%[t],%q[d],8), %[s]"
        : [s] "+x"(s), [d] "=&r"(d), [e] "=&r"(e), [i] "=&r"(i) : [t] "r"(t), [p] "r"(p), RD(K) : "memory");
  if (Form == 11)
    asm("movl (%[p]), %k[d]\n\tpdepl %[m], %k[d], %k[e]\n\tshrl $16, %k[d]\n\tmovzwl %w[e], %k[i]\n\tshrl $16, %k[e]\n\t"
        LKA(%c[d0]) "pdepl %[m], %k[d], %k[d]\n\t" "paddw %c[d1](%[t],%q[e],8), %[s]\n\t"
        "movzwl %w[d], %k[i]\n\tshrl $16, %k[d]\n\t" LKA(%c[d2]) "paddw %c[d3](%[t],%q[d],8), %[s]"
        : [s] "+x"(s), [d] "=&r"(d), [e] "=&r"(e), [i] "=&r"(i) : [t] "r"(t), [p] "r"(p), [m] "r"(0x01FE01FEu), RD(K)
        : "memory");
}

// Form: 0 off16 (vex), 1 b32 vex, 2 b32 sse, 3 b64 sse, 4 ah, 5 mem, 6 noh, 7 mix 1/4, 8 mix 1/2,
// 9 mix 1/8 (see the top). Ahead: the index data of
// every row block made once before the timed loops (else right before each row block's lookups).
alignas(64) static uint8_t ib_all[RB][NK * 128];
template <int Form, bool Ahead>
__attribute__((noinline)) uint64_t run_lut(int reps) {
  alignas(64) uint8_t local[NK * 128];
  if (Ahead && Form < 10)
    for (int rb = 0; rb < RB; ++rb) prep<Form>(rb, ib_all[rb]);
  for (int rep = 0; rep < reps; ++rep)
    for (int rb = 0; rb < RB; ++rb) {
      const uint8_t* ib = Form >= 10 ? wts[rb][0] : Ahead ? ib_all[rb] : local;
      if (!Ahead && Form < 10) prep<Form>(rb, local);
      if (Form >= 2) _mm256_zeroupper();  // legacy SSE below
      asm volatile("" : "+r"(ib) : : "memory");
      __m128i* a = acc16 + rb * 16;
#pragma GCC unroll 16
      for (int r = 0; r < 16; ++r) {
        __m128i s = _mm_load_si128(a + r);
        if (Form == 0) {
          const uint16_t* op = (const uint16_t*)ib;
#pragma GCC unroll 4
          for (int k = 0; k < NK; ++k)
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) s = _mm_add_epi16(s, _mm_loadu_si128((const __m128i*)((const char*)tab + op[64 * k + 4 * r + j])));
        } else if (Form == 1 || Form == 2) {
          uint32_t d[NK];
          memcpy(d, ib + 4 * r, 4), memcpy(d + 1, ib + 64 + 4 * r, 4), memcpy(d + 2, ib + 128 + 4 * r, 4), memcpy(d + 3, ib + 192 + 4 * r, 4);
          lk4<Form == 2, 0>(s, tab, d[0]), lk4<Form == 2, 1>(s, tab, d[1]), lk4<Form == 2, 2>(s, tab, d[2]), lk4<Form == 2, 3>(s, tab, d[3]);
        } else if (Form == 3) {
          uint64_t d0, d1;
          memcpy(&d0, ib + 8 * r, 8), memcpy(&d1, ib + 128 + 8 * r, 8);
          lk4<true, 0>(s, tab, (uint32_t)d0), lk4<true, 1>(s, tab, (uint32_t)(d0 >> 32));
          lk4<true, 2>(s, tab, (uint32_t)d1), lk4<true, 3>(s, tab, (uint32_t)(d1 >> 32));
        } else if (Form >= 10) {
          raw4<Form, 0>(s, tabraw, ib + 4 * r), raw4<Form, 1>(s, tabraw, ib + 64 + 4 * r);
          raw4<Form, 2>(s, tabraw, ib + 128 + 4 * r), raw4<Form, 3>(s, tabraw, ib + 192 + 4 * r);
        } else {
          hand4<Form, 0>(s, tab, ib + 4 * r), hand4<Form, 1>(s, tab, ib + 64 + 4 * r);
          hand4<Form, 2>(s, tab, ib + 128 + 4 * r), hand4<Form, 3>(s, tab, ib + 192 + 4 * r);
        }
        _mm_store_si128(a + r, s);
      }
    }
  return (uint64_t)reps * RB * 16 * NK * 4 * 32;
}

__attribute__((noinline)) uint32_t madpeak(int64_t it) {
  __m256i b = _mm256_set1_epi8(1);
  __m256i a0 = b, a1 = b, a2 = b, a3 = b, a4 = b, a5 = b, a6 = b, a7 = b, a8 = b, a9 = b, a10 = b, a11 = b;
  for (int64_t i = 0; i < it; ++i) {
    a0 = _mm256_maddubs_epi16(a0, b); a1 = _mm256_maddubs_epi16(a1, b); a2 = _mm256_maddubs_epi16(a2, b);
    a3 = _mm256_maddubs_epi16(a3, b); a4 = _mm256_maddubs_epi16(a4, b); a5 = _mm256_maddubs_epi16(a5, b);
    a6 = _mm256_maddubs_epi16(a6, b); a7 = _mm256_maddubs_epi16(a7, b); a8 = _mm256_maddubs_epi16(a8, b);
    a9 = _mm256_maddubs_epi16(a9, b); a10 = _mm256_maddubs_epi16(a10, b); a11 = _mm256_maddubs_epi16(a11, b);
    pin(a0); pin(a1); pin(a2); pin(a3); pin(a4); pin(a5); pin(a6); pin(a7); pin(a8); pin(a9); pin(a10); pin(a11);
  }
  __m256i s = _mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3));
  s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_add_epi16(a4, a5), _mm256_add_epi16(a6, a7)));
  s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_add_epi16(a8, a9), _mm256_add_epi16(a10, a11)));
  uint32_t r;
  memcpy(&r, &s, 4);
  return r;
}
// Core cycles per TSC tick, assuming 2 vpmaddubsw a cycle (ports 0 and 1).
double core_per_tsc() {
  double best = 1e30;
  for (int k = 0; k < 5; ++k) {
    uint64_t t0 = __rdtsc();
    volatile uint32_t r = madpeak(5000000);
    (void)r;
    uint64_t t1 = __rdtsc();
    best = best < (t1 - t0) ? best : (double)(t1 - t0);
  }
  return 30e6 / best;
}

typedef uint64_t (*Fn)(int);
double bench(const char* name, Fn f, double cpt, double ref) {
  f(10);
  double best = 1e30;
  uint64_t prods = 0;
  for (int k = 0; k < 7; ++k) {
    uint64_t t0 = __rdtsc();
    prods = f(400);
    uint64_t t1 = __rdtsc();
    best = best < (t1 - t0) ? best : (double)(t1 - t0);
  }
  const double cyc32 = best * cpt / (prods / 32.0);
  printf("%-14s cycles per 32 products %.3f  (products per cycle %.1f)%s", name, cyc32, 32 / cyc32, ref > 0 ? "" : "\n");
  if (ref > 0) printf("  speed vs mac loop %.3fx\n", ref / cyc32);
  return cyc32;
}

int main() {
  srand(1);
  for (auto& rb : wts)
    for (auto& t : rb)
      for (auto& b : t) b = (uint8_t)(rand() % 3 | (rand() % 3) << 2 | (rand() % 3) << 4 | (rand() % 3) << 6);
  for (auto& r : xs)
    for (auto& v : r) v = (int8_t)(rand() % 255 - 127);
  for (auto& v : tab) v = (uint8_t)rand();
  for (auto& v : tabraw) v = (uint8_t)rand();
  for (int i = 0; i < (int)sizeof cbuf; ++i) cbuf[i] = rand() % 3;
  for (int round = 0; round < 2; ++round) {
    const double cpt = core_per_tsc();
    printf("core cycles per TSC tick %.3f\n", cpt);
    const double mac = bench("mac", run_mac<false>, cpt, 0);
    bench("mac+unpack", run_mac<true>, cpt, mac);
    bench("off16 vex", run_lut<0, false>, cpt, mac);
    bench("b32 vex", run_lut<1, false>, cpt, mac);
    bench("b32 sse", run_lut<2, false>, cpt, mac);
    bench("b64 sse", run_lut<3, false>, cpt, mac);
    bench("ah", run_lut<4, false>, cpt, mac);
    bench("mem", run_lut<5, false>, cpt, mac);
    bench("noh", run_lut<6, false>, cpt, mac);
    bench("b32 sse ahead", run_lut<2, true>, cpt, mac);
    bench("mem ahead", run_lut<5, true>, cpt, mac);
    bench("noh ahead", run_lut<6, true>, cpt, mac);
    bench("mix1/8 ahead", run_lut<9, true>, cpt, mac);
    bench("mix1/4 ahead", run_lut<7, true>, cpt, mac);
    bench("mix1/2 ahead", run_lut<8, true>, cpt, mac);
    bench("rawlea", run_lut<10, true>, cpt, mac);
    bench("rawpdep", run_lut<11, true>, cpt, mac);
  }
}
