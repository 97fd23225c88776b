// The BitNet b1.58 transformer forward pass on CPU (fp32 activations, ternary x int8 linears).
// Mirrors bitnet/model.py (the PyTorch reference) operation for operation.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <utility>
#include <memory>
#include <string>
#include <vector>

#include "kernels.h"
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
  int out = 0, in = 0, MB = 0, KB = 0;  // MB, KB: 16-row / 16-column tile counts (padded)
  TernaryTile* tiles = nullptr;  // MB * KB tiles inside Model's weight arena (layer order)
  bool is_loaded = false;
  float beta = 1.f;          // w ~= q * beta (multiply convention; the loader converts "bitlinear")
  std::vector<float> norm;   // inner RMSNorm weight, empty if none
  bool loaded() const { return is_loaded; }
};

struct Layer {
  std::vector<float> input_norm, post_norm, attn_sub_norm, ffn_sub_norm;
  Linear q, k, v, o, gate, up, down;
  // [kv_heads][capacity][head_dim]: each KV head's positions are one contiguous stream.
  std::vector<float> kcache, vcache;
};

struct Matrix16 {  // a borrowed row-major (rows, cols) matrix in bf16/f16/f32 (numpy keeps it alive)
  const void* data = nullptr;
  DType dtype = DType::BF16;
  int rows = 0, cols = 0;
  void row_to_f32(int r, float* out) const;  // the whole row r widened to fp32 (exact)
};

// Repacks transformers' packed ternary layout (uint8 (out/4, K)) into kernel tiles
// ((out+15)/16 * (K+15)/16 of them, layout in kernels.h). Returns false if any code is 3.
bool repack_ternary(const uint8_t* packed, int out, int K, TernaryTile* tiles, ThreadPool* pool);

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
  void set_embedding(const Matrix16& m);
  void set_lm_head(const Matrix16& m);
  // "f16" (the stored 16-bit/fp32 table, exact) or "int8" (per-row absmax int8, built here).
  void set_head_mode(const std::string& mode);
  // Quantizes head rows [r0, r1) to int8 ahead of set_head_mode("int8"), so a loader can release
  // the 16-bit pages it has read chunk by chunk (peak memory); set_head_mode does the rest.
  void quantize_head_rows(int r0, int r1);
  // Copies 16-bit head rows [r0, r1) into memory the model owns (2 MiB pages, see
  // aligned_alloc_weights), so a loader can release the file pages it has read chunk by chunk and
  // the f16 head streams from huge pages. Once every row is copied, set_head_mode("f16") uses the
  // copy (and a tied model looks its embeddings up there); otherwise it reads the borrowed table.
  void copy_head_rows(int r0, int r1);
  std::string head_mode() const { return head_int8_ ? "int8" : "f16"; }
  // Throws std::invalid_argument naming the first missing tensor.
  void check_complete() const;

  // Runs tokens[0..T) at positions pos0..pos0+T-1, keeping the first pos0 cache entries.
  // Writes logits of rows logits_from..T-1 to out ((T - logits_from) x vocab, row-major).
  void forward(const int32_t* tokens, int T, int pos0, int logits_from, float* out);
  int cache_len() const { return cache_len_; }
  void reset() { cache_len_ = 0; }

  size_t weight_bytes() const;  // bytes held by repacked ternary weights and the int8 head

 private:
  Linear& linear_ref(int layer, const std::string& name);
  void ensure_cache(int n);
  void linear_forward(std::initializer_list<std::pair<const Linear*, float*>> group, const float* x, int T);
  void attention(Layer& ly, const float* q, int T, int pos0, float* out);
  void head_forward(const float* h, int T, float* out);

  ModelConfig cfg_;
  ThreadPool pool_;
  std::vector<Layer> layers_;
  // Every linear's tiles, one after the other in execution order (q k v o gate up down, layer by
  // layer): one huge-page region the decode streams front to back.
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
  std::vector<float> rope_inv_freq_;
  int cache_cap_ = 0, cache_len_ = 0;
  std::vector<int8_t> scratch_xq_;     // int8 activations of the current linear
  std::vector<int32_t> scratch_acc_;   // its integer outputs
};

}  // namespace bitnet
