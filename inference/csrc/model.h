// The BitNet b1.58 transformer forward pass on CPU (fp32 activations, ternary x int8 linears).
// Mirrors bitnet/model.py (the PyTorch reference) operation for operation.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <initializer_list>
#include <utility>
#include <memory>
#include <string>
#include <vector>

#include "exp_poly_inl.h"
#include "kernels.h"
#include "layouts.h"
#include "threadpool.h"

namespace bitnet {

struct ModelConfig {
  int vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int max_positions = 0;
  float eps = 1e-5f, rope_theta = 10000.f;
  float inner_eps = 1e-5f;  // epsilon of the inner RMSNorm (quantization_config.rms_norm_eps)
  bool relu2 = true;       // else SiLU gating
  bool sub_norms = true;   // attn_sub_norm / ffn_sub_norm (bitnet arch); false for the llama arch
  bool inner_norm = false; // an RMSNorm inside every linear (quantization_config.use_rms_norm)
};

enum class DType { BF16, F16, F32 };

// std::free-able memory for `bytes` (> 0), 64-byte aligned; throws std::bad_alloc. Blocks of
// 2 MiB and more (the weights) start on a 2 MiB boundary, cover whole 2 MiB pages and are marked
// MADV_HUGEPAGE on Linux before anything touches them: decode streams every weight once per
// token, and with 4 KiB pages the TLB misses cap one core's sequential read near 11-14 GB/s here
// against 18-19 GB/s with 2 MiB pages. Pages are only committed when written, so reserving a
// whole model's weights up front costs nothing until they are loaded.
void* aligned_alloc_weights(size_t bytes);

// Aligned buffer from aligned_alloc_weights (the kernels use unaligned loads; alignment helps
// cache lines and huge pages).
template <typename T>
struct AlignedBuf {
  T* ptr = nullptr;
  size_t n = 0;
  AlignedBuf() = default;
  explicit AlignedBuf(size_t count) { reset(count); }
  ~AlignedBuf() { std::free(ptr); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  AlignedBuf(AlignedBuf&& o) noexcept : ptr(o.ptr), n(o.n) { o.ptr = nullptr; o.n = 0; }
  AlignedBuf& operator=(AlignedBuf&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(n, o.n);
    return *this;
  }
  void reset(size_t count) {
    std::free(ptr);
    ptr = nullptr;
    n = count;
    if (count) ptr = static_cast<T*>(aligned_alloc_weights(count * sizeof(T)));
  }
  T* data() { return ptr; }
  const T* data() const { return ptr; }
};


struct Linear {
  int out = 0, in = 0, MB = 0, KB = 0;  // MB: 16-row blocks; KB: tiles per row block (padded)
  WeightFormat format = WeightFormat::I2;  // which of the two pointers below holds the weights
  TernaryTile* tiles = nullptr;    // i2: MB * KB tiles of 16 columns inside Model's weight arena
  TernaryTile5* tiles5 = nullptr;  // t5: MB * KB tiles of 20 columns, same place (layer order)
  int tile_cols() const { return bitnet::tile_cols(format); }
  bool is_loaded = false;
  float beta = 1.f;          // w ~= q * beta (multiply convention; the loader converts "bitlinear")
  // Optional per-output-row scales (TriLM: one scale per model-parallel shard of rows): when not
  // empty, w[m] ~= q[m] * beta * row_scale[m]. Applied in the float rescale after the integer product.
  std::vector<float> row_scale;
  std::vector<float> norm;   // inner RMSNorm weight, empty if none
  bool loaded() const { return is_loaded; }
};

struct Layer {
  std::vector<float> input_norm, post_norm, attn_sub_norm, ffn_sub_norm;
  // Optional (empty = absent), for students distilled from Qwen2 (attention biases, added to the
  // projections' outputs) and Qwen3 (an RMSNorm over each head of Q and K before RoPE); see
  // training/distill_export.py for the export's "bitnet_extensions".
  std::vector<float> q_bias, k_bias, v_bias, o_bias, q_norm, k_norm;
  Linear q, k, v, o, gate, up, down;
};

// One sequence's KV cache. Per layer, K and V are [kv_heads][cap][head_dim]: each KV head's
// positions are one contiguous stream. It grows geometrically on demand up to `limit` positions,
// so a server's memory is bounded by (slots x limit) positions. The rows live in k/v (kv dtype
// "f32") or, as IEEE fp16 bit patterns rounded to nearest even, in k16/v16 ("f16": half the
// bytes per position); the other pair stays empty.
struct KVCache {
  std::vector<std::vector<float>> k, v;        // [layer], kv dtype "f32"
  std::vector<std::vector<uint16_t>> k16, v16; // [layer], kv dtype "f16"
  int cap = 0;    // positions allocated
  int len = 0;    // positions holding valid entries
  int limit = 0;  // most positions it may ever hold (<= max_position_embeddings)
};

// One sequence's share of a batched step: tokens[0..T) at positions pos0..pos0+T-1 of the KV
// cache of `slot`, keeping its first pos0 entries.
struct Segment {
  int slot = 0;
  const int32_t* tokens = nullptr;
  int T = 0;
  int pos0 = 0;
};

struct Matrix16 {  // a borrowed row-major (rows, cols) matrix in bf16/f16/f32 (numpy keeps it alive)
  const void* data = nullptr;
  DType dtype = DType::BF16;
  int rows = 0, cols = 0;
  void row_to_f32(int r, float* out) const;  // the whole row r widened to fp32 (exact)
};


struct ExpScalarOps {  // exp_poly's operations on one float
  using V = float;
  static float set1(float v) { return v; }
  static float add(float a, float b) { return a + b; }
  static float sub(float a, float b) { return a - b; }
  static float mul(float a, float b) { return a * b; }
  static float pow2(float n) {  // 2^n, n integral in [-126, 127]
    const int32_t bits = (static_cast<int32_t>(n) + 127) * (1 << 23);
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
};
// e^x in fp32 for the SiLU gate, in arithmetic the compiler vectorizes (a std::exp call per value,
// 1.7M per batched step of 8 at 2B4T, is not): x = n ln2 + r with n = round(x / ln2) and |r| <=
// ln2 / 2 (ln2 in two parts, Cody-Waite), e^r by Cephes' degree-6 polynomial, 2^n from the
// exponent bits. Within 1 ulp of the exact value (tests/inference/test_batch.py) for x in [-87, 88],
// where the caller must keep it (exp_f32 clamps, for one value); NaN stays NaN.
inline float exp_f32_in_range(float x) { return exp_poly<ExpScalarOps>(x); }
// x clamped to [-87, 88] first (e^x stays a normal finite number). A loop should clamp in a pass of
// its own: with the clamp inline, GCC also evaluates the clamped branch's constant and blends,
// and that branch's a / (1 + e^88) is a subnormal (a microcode assist) for every ordinary value.
inline float clamp_exp_arg(float x) {
  x = std::min(x, 88.f);  // NaN: (88 < NaN) is false, so x stays NaN
  return std::max(x, -87.f);
}
inline float exp_f32(float x) { return exp_f32_in_range(clamp_exp_arg(x)); }

// Where a forward pass spends its time (Model::set_profile): the phases of forward_runs, each
// timed on the calling thread (wall time, so a parallel phase counts once, join included).
enum class Phase : int {
  Embed,      // embedding rows, RoPE tables, the first norm
  Quantize,   // activations to int8 before each linear
  Product,    // the ternary products and their rescale to fp32
  RopeCache,  // biases, q/k norms, RoPE and the KV cache writes
  Attention,  // attention over the KV cache (blocked per KV head, or per (token, head))
  Norms,      // sub-norms, residual adds and the next RMSNorm
  Activation, // the gated activation
  Head,       // the final norm and the output head
  kCount
};
inline const char* phase_name(Phase p) {
  static const char* names[] = {"embed", "quantize", "product", "rope_cache", "attention", "norms", "activation",
                                "head"};
  return names[static_cast<int>(p)];
}

class Model {
 public:
  Model(const ModelConfig& cfg, int threads);

  const ModelConfig& config() const { return cfg_; }
  int threads() const { return pool_.size(); }

  // Repacks one linear from transformers' packed layout: uint8 (out/4, in), bits 2i..2i+1 of
  // [r, c] = code of row i*out/4 + r. Throws std::invalid_argument on a shape mismatch or a code 3.
  void set_linear(int layer, const std::string& name, const uint8_t* packed, int64_t rows4, int64_t in,
                  float beta, const float* norm, int64_t norm_len);
  void set_norm(int layer, const std::string& name, const float* w, int64_t n);
  // Per-output-row scales of one linear (multiplied with its beta). Throws std::invalid_argument
  // unless n equals the linear's out features and every value is finite.
  void set_row_scales(int layer, const std::string& name, const float* s, int64_t n);
  // Replaces the RoPE inverse frequencies (head_dim / 2 of them; Llama-3 style rope_scaling is
  // computed by the loader). Throws std::invalid_argument on a wrong length or a non-finite value.
  void set_rope_inv_freq(const float* f, int64_t n);
  void set_embedding(const Matrix16& m);
  void set_lm_head(const Matrix16& m);
  // "f16" (the stored 16-bit/fp32 table, exact), "int8" (per-row absmax int8, built here) or
  // "int4" (4.25 bits per weight: int4 groups of 32 with u8 group scales and one fp32 scale per
  // row, built here; its coarse logits pick candidates whose rows are then rescored exactly from
  // the borrowed 16-bit table, see head_forward). Throws std::invalid_argument on another name, or
  // for "int4" when the hidden size exceeds kHeadI4MaxCols.
  void set_head_mode(const std::string& mode);
  // Quantizes head rows [r0, r1) to int4 ahead of set_head_mode("int4") (as quantize_head_rows).
  void quantize_head_rows_int4(int r0, int r1);
  // Quantizes head rows [r0, r1) to int8 ahead of set_head_mode("int8"), so a loader can release
  // the 16-bit pages it has read chunk by chunk (peak memory); set_head_mode does the rest.
  void quantize_head_rows(int r0, int r1);
  // Copies 16-bit head rows [r0, r1) into memory the model owns (2 MiB pages, see
  // aligned_alloc_weights), so a loader can release the file pages it has read chunk by chunk and
  // the f16 head streams from huge pages. Once every row is copied, set_head_mode("f16") uses the
  // copy (and a tied model looks its embeddings up there); otherwise it reads the borrowed table.
  void copy_head_rows(int r0, int r1);
  std::string head_mode() const { return head_int4_ ? "int4" : head_int8_ ? "int8" : "f16"; }
  // The int4 head's rescoring: k candidates per token first (0 = none: the coarse logits as they
  // are, for measurements), up to k_max in all. Defaults 16 and 64 (benchmarks/bench_head.py).
  // Throws std::invalid_argument unless 0 <= k <= k_max.
  void set_head_rescore(int k, int k_max);
  // Throws std::invalid_argument naming the first missing tensor.
  void check_complete() const;

  // Runs tokens[0..T) at positions pos0..pos0+T-1 of the single-sequence cache, keeping its first
  // pos0 entries. Writes logits of rows logits_from..T-1 to out ((T - logits_from) x vocab, row-major).
  void forward(const int32_t* tokens, int T, int pos0, int logits_from, float* out);
  int cache_len() const { return caches_[0].len; }
  void reset() { caches_[0].len = 0; }

  // Sequence slots for batched serving, separate from the single-sequence cache: n slots
  // (0..n-1), each holding at most ctx positions (1 <= ctx <= max_position_embeddings). Drops
  // whatever the slots held before.
  void set_slots(int n, int ctx);
  // Element type of every KV cache: "f32" (the default; exact against the PyTorch reference) or
  // "f16" (rows rounded to fp16 when written, widened exactly when read: half the cache memory
  // and bytes read per attended position). Drops every cache's contents (the single-sequence
  // cache and every slot); throws std::invalid_argument on another name.
  void set_kv_dtype(const std::string& name);
  std::string kv_dtype() const { return kv_f16_ ? "f16" : "f32"; }
  int num_slots() const { return static_cast<int>(caches_.size()) - 1; }
  int slot_len(int slot) const { return caches_.at(slot_index(slot)).len; }
  // Copies the first n cached positions of slot src into slot dst (a shared prompt prefix).
  void copy_slot(int src, int dst, int n);
  // One step over many sequences with one pass over the weights: every segment's tokens go
  // through each linear together (the multi-token kernels), attention runs per segment on its
  // own slot. out: (n, vocab), the next-token logits after each segment's last token. A token's
  // result does not depend on the other segments (the integer products are exact and every
  // other operation is per token). Throws std::invalid_argument on a bad slot, a slot given
  // twice, pos0 beyond the slot's cached positions or positions past its limit.
  void forward_batch(const Segment* segs, int n, float* out);

  // Phase profile: when on, every forward adds each phase's wall seconds (and one to "calls",
  // the pool's fork/join count to "jobs"); profile() returns the sums, set_profile() clears them.
  void set_profile(bool on);
  std::vector<std::pair<std::string, double>> profile() const;

  size_t weight_bytes() const;  // bytes held by repacked ternary weights and the int8 head

  // Weight layout of every ternary linear: "i2" (TernaryTile, the default) or "t5" (TernaryTile5,
  // 20% fewer bytes per decoded token). Re-lays out the weight arena, so it must come before the
  // first set_linear; throws std::invalid_argument on another name or once a linear is loaded.
  void set_weight_format(const std::string& name);
  std::string weight_format() const { return weight_format_ == WeightFormat::T5 ? "t5" : "i2"; }

 private:
  // A segment resolved to its cache (index 0 is the single-sequence cache, slot s is s + 1).
  struct Run {
    KVCache* cache;
    const int32_t* tokens;
    int T, pos0;
  };
  Linear& linear_ref(int layer, const std::string& name);
  // Sizes the weight arena for weight_format_ and points every linear at its tiles.
  void layout_arena();
  WeightFormat weight_format_ = WeightFormat::I2;
  size_t slot_index(int slot) const;
  void ensure_cache(KVCache& c, int n);
  void validate_run(const Run& r, const std::string& what) const;
  // The forward pass over runs whose tokens are concatenated (rows in run order); writes the
  // logits of rows logit_rows (indices into the concatenation, in order) to out.
  void forward_runs(const std::vector<Run>& runs, const std::vector<int>& logit_rows, float* out);
  class PhaseClock;
  // Laps `clk` to Phase::Quantize, then to Phase::Product for the products.
  void linear_forward(std::initializer_list<std::pair<const Linear*, float*>> group, const float* x, int T,
                      PhaseClock& clk);
  // Causal attention of rows [0, T): row t (its run's cache, at position pos[t]) attends to
  // positions 0..pos[t] of that cache in layer li; q (T, heads*hd) already rotated.
  void attention(int li, const float* q, int T, const std::vector<KVCache*>& cache_of,
                 const std::vector<int>& pos, float* out);
  void head_forward(const float* h, int T, float* out);

  ModelConfig cfg_;
  ThreadPool pool_;
  std::vector<Layer> layers_;
  // Every linear's tiles, one after the other in execution order (q k v o gate up down, layer by
  // layer): one huge-page region the decode streams front to back.
  // t5 tiles live in the same 64-byte slots (TernaryTile5 has TernaryTile's size and alignment).
  AlignedBuf<TernaryTile> arena_;
  std::vector<float> final_norm_;
  Matrix16 embed_, lm_head_;
  const Matrix16& head_source() const { return lm_head_.data ? lm_head_ : embed_; }
  // The table the 16-bit head and the (tied) embedding lookups read: the owned copy when complete.
  const Matrix16& head16() const { return head16_rows_done_ == cfg_.vocab ? head16_view_ : head_source(); }
  const Matrix16& embedding() const { return lm_head_.data ? embed_ : head16(); }
  AlignedBuf<uint8_t> head16_;
  Matrix16 head16_view_;
  int64_t head16_rows_done_ = 0;
  bool head_int8_ = false;
  AlignedBuf<int8_t> head_q_;
  std::vector<float> head_scale_;
  std::vector<int32_t> head_rowsum_;
  int head_cp_ = 0;
  int64_t head_rows_done_ = 0;
  // int4 head: blocks (head4_cp_ / kHeadI4Cols per row), per-row fp32 scale d and the kernels'
  // rowbias; rescoring reads head_source() (the borrowed 16-bit table: no resident copy).
  bool head_int4_ = false;
  AlignedBuf<HeadI4Block> head4_q_;
  std::vector<float> head4_scale_;
  std::vector<int32_t> head4_bias_;
  int head4_cp_ = 0;
  int64_t head4_rows_done_ = 0;
  // Exact rescoring of the int4 logits: the head_rescore_ best coarse candidates of each token are
  // recomputed from the 16-bit rows; further candidates, head_rescore_ at a time up to
  // head_rescore_max_, while the next coarse logit is within kHeadRescoreMargin times the largest
  // coarse error seen on this token's rescored rows of the best exact logit (see head_rescore).
  int head_rescore_ = 16, head_rescore_max_ = 64;
  static constexpr float kHeadRescoreMargin = 2.f;
  void head_rescore(const float* h, int T, float* out);
  std::vector<float> rope_inv_freq_;
  std::vector<KVCache> caches_;  // [0]: the single-sequence cache; [1..]: serving slots
  bool kv_f16_ = false;          // every cache holds fp16 rows (k16/v16) instead of fp32 (k/v)
  // The phase profile (set_profile): seconds per phase, forward calls, pool jobs at the start.
  bool profile_on_ = false;
  std::array<double, static_cast<int>(Phase::kCount)> phase_s_{};
  double profile_calls_ = 0;
  uint64_t profile_jobs0_ = 0;
  // Adds the wall time from its construction to the next lap() (or its destruction) to a phase.
  class PhaseClock {
   public:
    PhaseClock(Model& m, Phase p) : m_(m), p_(p) {
      if (m_.profile_on_) t0_ = std::chrono::steady_clock::now();
    }
    ~PhaseClock() { lap(p_); }
    // Ends the current phase and starts `next`.
    void lap(Phase next) {
      if (m_.profile_on_) {
        const auto t = std::chrono::steady_clock::now();
        m_.phase_s_[static_cast<int>(p_)] += std::chrono::duration<double>(t - t0_).count();
        t0_ = t;
      }
      p_ = next;
    }
   private:
    Model& m_;
    Phase p_;
    std::chrono::steady_clock::time_point t0_{};
  };
  // int8 activations of the current linear and its integer outputs, 64-byte aligned: the AMX tiles
  // load activation rows and store outputs 64 bytes at a time, and a std::vector's 16-byte
  // alignment (which varied with the heap's history) split every such access over two cache lines
  AlignedBuf<int8_t> scratch_xq_;
  AlignedBuf<int32_t> scratch_acc_;
};

}  // namespace bitnet
