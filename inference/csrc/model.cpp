#include "model.h"

#include "attention.h"
#include "cpu_features.h"
#include "elementwise.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <tuple>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace bitnet {

void* aligned_alloc_weights(size_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t align = bytes >= kHuge ? kHuge : 64;
  bytes = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, bytes);
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Advice only: where transparent huge pages are off this is a no-op.
  if (align == kHuge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return p;
}

void Matrix16::row_to_f32(int r, float* out) const {
  const size_t base = static_cast<size_t>(r) * cols;
  switch (dtype) {
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + base;
      for (int c = 0; c < cols; ++c) out[c] = bf16_to_f32(p[c]);
      break;
    }
    case DType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + base;
      for (int c = 0; c < cols; ++c) out[c] = f16_to_f32(p[c]);
      break;
    }
    default: std::memcpy(out, static_cast<const float*>(data) + base, sizeof(float) * cols);
  }
}

namespace {

// nearbyint for |y| < 2^22 in the default rounding mode (round half to even), without a libm call
// per element: adding and subtracting 1.5 * 2^23 leaves y rounded to an integer (IEEE arithmetic,
// which the build does not reorder: no -ffast-math).
inline float round_half_even(float y) {
  constexpr float kMagic = 12582912.f;  // 1.5 * 2^23
  return (y + kMagic) - kMagic;
}


std::string where(int layer, const std::string& name) {
  return "model.layers." + std::to_string(layer) + "." + name;
}

// y = w * (x * r) with r = rsqrt(mean(x^2) + eps) from the row's sum of squares ss.
void rmsnorm_scale(const float* x, const float* w, int n, float eps, float ss, float* y) {
  const float r = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int i = 0; i < n; ++i) y[i] = w[i] * (x[i] * r);
}

// y = w * (x * rsqrt(mean(x^2) + eps)), in fp32 (bitnet.layers.RMSNorm); the sum of squares in
// index order (the reference for rmsnorm_rows). y may alias x.
void rmsnorm(const float* x, const float* w, int n, float eps, float* y) {
  float ss = 0.f;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  rmsnorm_scale(x, w, n, eps, ss, y);
}

// rmsnorm of R consecutive rows of n: each row's sum in rmsnorm's order (index order, one rounding
// per product and per add: the same floats), the R chains interleaved so that R adds are in flight
// instead of one (a row's serial sum is bound by the add's latency: at 2B4T a token's four norms
// are ~15k dependent adds a layer).
template <int R>
void rmsnorm_group(const float* x, const float* w, int n, float eps, float* y) {
  float ss[R] = {};
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < R; ++j) {
      const float v = x[static_cast<size_t>(j) * n + i];
      ss[j] += v * v;
    }
  for (int j = 0; j < R; ++j) rmsnorm_scale(x + static_cast<size_t>(j) * n, w, n, eps, ss[j], y + static_cast<size_t>(j) * n);
}

}  // namespace

void gated_act_ref(float* g, const float* u, size_t n, bool relu2) {
  // Branch-free loops, one per function, so that both vectorize. relu(a)^2 in fp32 (it overflows
  // fp16 on real checkpoints; max(0, a) is 0 for NaN and -0, as a > 0 ? a : 0 is), or
  // silu(a) = a * sigmoid(a).
  if (relu2) {
    for (size_t i = 0; i < n; ++i) {
      const float r = std::max(0.f, g[i]);
      g[i] = (r * r) * u[i];
    }
    return;
  }
  constexpr size_t kBlock = 1024;
  for (size_t b = 0; b < n; b += kBlock) {  // the clamp in a pass of its own (exp_f32)
    const size_t m = std::min(kBlock, n - b);
    float e[kBlock];
    for (size_t i = 0; i < m; ++i) e[i] = clamp_exp_arg(-g[b + i]);
    for (size_t i = 0; i < m; ++i) e[i] = exp_f32_in_range(e[i]);
    for (size_t i = 0; i < m; ++i) g[b + i] = (g[b + i] / (1.f + e[i])) * u[b + i];
  }
}

namespace {

// rmsnorm of `rows` rows of n (row-major), equal to rmsnorm row by row bit for bit; y may alias x.
// wide (the avx512 / amx paths): 16 rows at a time have their sums in AVX-512 lanes
// (sumsq_rows16_avx512, elementwise.h), the rest as below.
void rmsnorm_rows(const float* x, const float* w, int rows, int n, float eps, float* y, bool wide) {
  constexpr int kChains = 8;
  int t = 0;
  if (wide)
    for (; t + 16 <= rows; t += 16) {
      float ss[16];
      sumsq_rows16_avx512(x + static_cast<size_t>(t) * n, n, n, ss);
      for (int j = 0; j < 16; ++j) {
        const size_t o = static_cast<size_t>(t + j) * n;
        rmsnorm_scale(x + o, w, n, eps, ss[j], y + o);
      }
    }
  for (; t + kChains <= rows; t += kChains)
    rmsnorm_group<kChains>(x + static_cast<size_t>(t) * n, w, n, eps, y + static_cast<size_t>(t) * n);
  const size_t o = static_cast<size_t>(t) * n;
  switch (rows - t) {
    case 7: rmsnorm_group<7>(x + o, w, n, eps, y + o); break;
    case 6: rmsnorm_group<6>(x + o, w, n, eps, y + o); break;
    case 5: rmsnorm_group<5>(x + o, w, n, eps, y + o); break;
    case 4: rmsnorm_group<4>(x + o, w, n, eps, y + o); break;
    case 3: rmsnorm_group<3>(x + o, w, n, eps, y + o); break;
    case 2: rmsnorm_group<2>(x + o, w, n, eps, y + o); break;
    case 1: rmsnorm(x + o, w, n, eps, y + o); break;
    default: break;
  }
}

}  // namespace

Model::Model(const ModelConfig& cfg, int threads) : cfg_(cfg), pool_(threads) {
  if (cfg.vocab <= 0 || cfg.hidden <= 0 || cfg.intermediate <= 0 || cfg.layers <= 0 || cfg.heads <= 0 ||
      cfg.kv_heads <= 0 || cfg.head_dim <= 0 || cfg.max_positions <= 0)
    throw std::invalid_argument("model config: every size must be positive");
  if (cfg.heads % cfg.kv_heads != 0) throw std::invalid_argument("model config: heads must be a multiple of kv_heads");
  if (cfg.head_dim % 2 != 0) throw std::invalid_argument("model config: head_dim must be even (RoPE)");
  if (cfg.sub_norms && cfg.heads * cfg.head_dim != cfg.hidden)
    throw std::invalid_argument("model config: attn_sub_norm needs heads * head_dim == hidden_size");
  layers_.resize(cfg.layers);
  const int QD = cfg.heads * cfg.head_dim, KVD = cfg.kv_heads * cfg.head_dim;
  for (Layer& l : layers_)
    for (auto [L, out, in] : {std::tuple{&l.q, QD, cfg.hidden}, {&l.k, KVD, cfg.hidden}, {&l.v, KVD, cfg.hidden},
                              {&l.o, cfg.hidden, QD}, {&l.gate, cfg.intermediate, cfg.hidden},
                              {&l.up, cfg.intermediate, cfg.hidden}, {&l.down, cfg.hidden, cfg.intermediate}}) {
      L->out = out;
      L->in = in;
    }
  layout_arena();  // i2 until set_weight_format; pages are committed only when a linear is loaded
  caches_.resize(1);
  caches_[0].limit = cfg.max_positions;
  // inv_freq[i] = 1 / theta^(2i / head_dim), in fp32 as bitnet.model.rope_cos_sin computes it.
  for (int i = 0; i < cfg.head_dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(cfg.head_dim);
    rope_inv_freq_.push_back(1.0f / std::pow(cfg.rope_theta, e));
  }
}

Linear& Model::linear_ref(int layer, const std::string& name) {
  if (layer < 0 || layer >= cfg_.layers) throw std::invalid_argument("layer index out of range: " + std::to_string(layer));
  Layer& l = layers_[layer];
  if (name == "self_attn.q_proj") return l.q;
  if (name == "self_attn.k_proj") return l.k;
  if (name == "self_attn.v_proj") return l.v;
  if (name == "self_attn.o_proj") return l.o;
  if (name == "mlp.gate_proj") return l.gate;
  if (name == "mlp.up_proj") return l.up;
  if (name == "mlp.down_proj") return l.down;
  throw std::invalid_argument("unknown linear " + name);
}

void Model::layout_arena() {
  size_t total = 0;
  for (Layer& l : layers_)
    for (Linear* L : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      L->format = weight_format_;
      L->MB = (L->out + kTileRows - 1) / kTileRows;
      L->KB = (L->in + L->tile_cols() - 1) / L->tile_cols();
      total += static_cast<size_t>(L->MB) * L->KB;
    }
  arena_.reset(total);
  size_t off = 0;
  for (Layer& l : layers_)
    for (Linear* L : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      // One 64-byte slot per tile in either format; a slot is only ever accessed as one of them.
      L->tiles = weight_format_ == WeightFormat::I2 ? arena_.data() + off : nullptr;
      L->tiles5 = weight_format_ == WeightFormat::T5 ? reinterpret_cast<TernaryTile5*>(arena_.data() + off) : nullptr;
      off += static_cast<size_t>(L->MB) * L->KB;
    }
}

void Model::set_weight_format(const std::string& name) {
  const WeightFormat f = parse_weight_format(name);
  for (const Layer& l : layers_)
    for (const Linear* L : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down})
      if (L->loaded()) throw std::invalid_argument("set the weight format before loading any linear");
  if (f == weight_format_) return;
  weight_format_ = f;
  layout_arena();
}

void Model::set_linear(int layer, const std::string& name, const uint8_t* packed, int64_t rows4, int64_t in,
                       float beta, const float* norm, int64_t norm_len) {
  Linear& L = linear_ref(layer, name);
  const int want_out = L.out, want_in = L.in;  // fixed by the config in the constructor
  if (want_out % 4 != 0 || rows4 * 4 != want_out || in != want_in)
    throw std::invalid_argument(where(layer, name) + ".weight: packed shape (" + std::to_string(rows4) + ", " +
                                std::to_string(in) + ") disagrees with the config (expected (" +
                                std::to_string(want_out / 4) + ", " + std::to_string(want_in) + "))");
  if (!std::isfinite(beta)) throw std::invalid_argument(where(layer, name) + ".weight_scale is not finite");
  if (cfg_.inner_norm) {
    if (norm == nullptr || norm_len != want_in)
      throw std::invalid_argument(where(layer, name) + ".rms_norm.weight: missing or wrong length (use_rms_norm is set)");
    L.norm.assign(norm, norm + norm_len);
  } else if (norm != nullptr) {
    throw std::invalid_argument(where(layer, name) + ".rms_norm.weight given but use_rms_norm is not set");
  }
  L.beta = beta;
  L.is_loaded = L.format == WeightFormat::T5 ? repack_ternary5(packed, want_out, want_in, L.tiles5, &pool_)
                                              : repack_ternary(packed, want_out, want_in, L.tiles, &pool_);
  if (!L.is_loaded) {
    throw std::invalid_argument(where(layer, name) + ".weight: found 2-bit code 3, not a ternary value");
  }
}

void Model::set_row_scales(int layer, const std::string& name, const float* s, int64_t n) {
  Linear& L = linear_ref(layer, name);
  if (n != L.out)
    throw std::invalid_argument(where(layer, name) + ": " + std::to_string(n) + " row scales for " +
                                std::to_string(L.out) + " rows");
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(s[i])) throw std::invalid_argument(where(layer, name) + ": a row scale is not finite");
  L.row_scale.assign(s, s + n);
}

void Model::set_rope_inv_freq(const float* f, int64_t n) {
  if (n != cfg_.head_dim / 2)
    throw std::invalid_argument("rope inverse frequencies: " + std::to_string(n) + " given, head_dim / 2 = " +
                                std::to_string(cfg_.head_dim / 2) + " expected");
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(f[i])) throw std::invalid_argument("rope inverse frequencies: a value is not finite");
  rope_inv_freq_.assign(f, f + n);
}

void Model::set_norm(int layer, const std::string& name, const float* w, int64_t n) {
  std::vector<float>* dst = nullptr;
  int64_t want = cfg_.hidden;
  if (layer == -1 && name == "norm") {
    dst = &final_norm_;
  } else {
    if (layer < 0 || layer >= cfg_.layers) throw std::invalid_argument("layer index out of range: " + std::to_string(layer));
    Layer& l = layers_[layer];
    if (name == "input_layernorm") dst = &l.input_norm;
    else if (name == "post_attention_layernorm") dst = &l.post_norm;
    else if (name == "self_attn.attn_sub_norm") dst = &l.attn_sub_norm;
    else if (name == "mlp.ffn_sub_norm") { dst = &l.ffn_sub_norm; want = cfg_.intermediate; }
    // the distill extensions (attention_bias, qk_norm): vectors of the same kind, set the same way
    else if (name == "self_attn.q_proj.bias") { dst = &l.q_bias; want = int64_t{cfg_.heads} * cfg_.head_dim; }
    else if (name == "self_attn.k_proj.bias") { dst = &l.k_bias; want = int64_t{cfg_.kv_heads} * cfg_.head_dim; }
    else if (name == "self_attn.v_proj.bias") { dst = &l.v_bias; want = int64_t{cfg_.kv_heads} * cfg_.head_dim; }
    else if (name == "self_attn.o_proj.bias") dst = &l.o_bias;
    else if (name == "self_attn.q_norm") { dst = &l.q_norm; want = cfg_.head_dim; }
    else if (name == "self_attn.k_norm") { dst = &l.k_norm; want = cfg_.head_dim; }
    else throw std::invalid_argument("unknown norm " + name);
  }
  const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  if (n != want)
    throw std::invalid_argument((layer < 0 ? std::string("model.norm") : where(layer, name)) +
                                (is_bias ? "" : ".weight") + ": length " +
                                std::to_string(n) + " disagrees with the config (expected " + std::to_string(want) + ")");
  dst->assign(w, w + n);
}

void Model::set_embedding(const Matrix16& m) {
  if (m.rows != cfg_.vocab || m.cols != cfg_.hidden)
    throw std::invalid_argument("model.embed_tokens.weight: shape (" + std::to_string(m.rows) + ", " +
                                std::to_string(m.cols) + ") disagrees with the config (vocab_size, hidden_size) = (" +
                                std::to_string(cfg_.vocab) + ", " + std::to_string(cfg_.hidden) + ")");
  embed_ = m;
  head16_.reset(0);  // a copy of the old table is stale
  head16_rows_done_ = 0;
}

void Model::set_lm_head(const Matrix16& m) {
  if (m.rows != cfg_.vocab || m.cols != cfg_.hidden)
    throw std::invalid_argument("lm_head.weight: shape disagrees with the config (vocab_size, hidden_size)");
  lm_head_ = m;
  head16_.reset(0);
  head16_rows_done_ = 0;
}

void Model::set_head_mode(const std::string& mode) {
  if (mode == "f16") {
    if (head16_rows_done_ > 0 && head16_rows_done_ < cfg_.vocab) {  // a partial copy: finish it
      head16_rows_done_ = 0;
      copy_head_rows(0, cfg_.vocab);
    }
    head_int8_ = false;
    head_q_.reset(0);
    head_scale_.clear();
    head_rowsum_.clear();
    head_rows_done_ = 0;
    head_int4_ = false;
    head4_q_.reset(0);
    head4_scale_.clear();
    head4_bias_.clear();
    head4_rows_done_ = 0;
    return;
  }
  if (mode != "int8" && mode != "int4")
    throw std::invalid_argument("head mode must be 'f16', 'int8' or 'int4', got '" + mode + "'");
  if (mode == "int8") {
    if (head_rows_done_ < cfg_.vocab) {
      head_rows_done_ = 0;
      quantize_head_rows(0, cfg_.vocab);
    }
    head4_q_.reset(0);
    head4_scale_.clear();
    head4_bias_.clear();
    head4_rows_done_ = 0;
  } else {
    if (head4_rows_done_ < cfg_.vocab) {
      head4_rows_done_ = 0;
      quantize_head_rows_int4(0, cfg_.vocab);
    }
    head_q_.reset(0);
    head_scale_.clear();
    head_rowsum_.clear();
    head_rows_done_ = 0;
  }
  head_int8_ = mode == "int8";
  head_int4_ = mode == "int4";
  head16_.reset(0);  // the embedding lookups (and the int4 rescoring) go back to the borrowed table
  head16_rows_done_ = 0;
}

void Model::copy_head_rows(int r0, int r1) {
  const Matrix16& src = head_source();
  if (src.data == nullptr) throw std::invalid_argument("set the embedding before copying the head");
  const int V = cfg_.vocab;
  if (r0 < 0 || r1 > V || r0 > r1) throw std::invalid_argument("copy_head_rows: row range out of bounds");
  const size_t row_bytes = static_cast<size_t>(src.cols) * (src.dtype == DType::F32 ? 4 : 2);
  if (head16_.data() == nullptr) {
    head16_.reset(row_bytes * V);
    head16_view_ = src;
    head16_view_.data = head16_.data();
  }
  const uint8_t* from = static_cast<const uint8_t*>(src.data);
  pool_.parallel_for(r1 - r0, [&](int b, int e) {
    std::memcpy(head16_.data() + (r0 + b) * row_bytes, from + (r0 + b) * row_bytes, (e - b) * row_bytes);
  });
  head16_rows_done_ += r1 - r0;
}

void Model::quantize_head_rows(int r0, int r1) {
  const Matrix16& src = head_source();
  if (src.data == nullptr) throw std::invalid_argument("set the embedding before choosing the head mode");
  const int V = cfg_.vocab, C = cfg_.hidden;
  if (r0 < 0 || r1 > V || r0 > r1) throw std::invalid_argument("quantize_head_rows: row range out of bounds");
  if (head_q_.data() == nullptr) {
    head_cp_ = (C + kHeadColAlign - 1) / kHeadColAlign * kHeadColAlign;
    head_q_.reset(static_cast<size_t>(V) * head_cp_);
    head_scale_.assign(V, 0.f);
    head_rowsum_.assign(V, 0);
  }
  int8_t* q = head_q_.data();
  // Per-row absmax: scale = max|e| / 127, e_q = round(e / scale) in [-127, 127].
  pool_.parallel_for(r1 - r0, [&](int b, int e) {
    std::vector<float> row(C);
    for (int r = r0 + b; r < r0 + e; ++r) {
      src.row_to_f32(r, row.data());
      float amax = 0.f;
      for (int c = 0; c < C; ++c) amax = std::max(amax, std::fabs(row[c]));
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int8_t* qr = q + static_cast<size_t>(r) * head_cp_;
      int32_t sum = 0;
      for (int c = 0; c < C; ++c) {
        // |row[c] * inv| <= 127 up to an ulp, and the rounding equals std::nearbyint there.
        const float v = std::min(127.f, std::max(-127.f, round_half_even(row[c] * inv)));
        qr[c] = static_cast<int8_t>(v);
        sum += qr[c];
      }
      for (int c = C; c < head_cp_; ++c) qr[c] = 0;
      head_scale_[r] = amax / 127.f;
      head_rowsum_[r] = sum;
    }
  });
  head_rows_done_ += r1 - r0;
}

void Model::quantize_head_rows_int4(int r0, int r1) {
  const Matrix16& src = head_source();
  if (src.data == nullptr) throw std::invalid_argument("set the embedding before choosing the head mode");
  const int V = cfg_.vocab, C = cfg_.hidden;
  if (r0 < 0 || r1 > V || r0 > r1) throw std::invalid_argument("quantize_head_rows_int4: row range out of bounds");
  const int Cp = (C + kHeadI4Cols - 1) / kHeadI4Cols * kHeadI4Cols;
  if (Cp > kHeadI4MaxCols)
    throw std::invalid_argument("head mode 'int4' supports hidden_size up to " + std::to_string(kHeadI4MaxCols) +
                                ", got " + std::to_string(C));
  const int nb = Cp / kHeadI4Cols, G = Cp / kHeadI4Group;
  if (head4_q_.data() == nullptr) {
    head4_cp_ = Cp;
    head4_q_.reset(static_cast<size_t>(V) * nb);
    head4_scale_.assign(V, 0.f);
    head4_bias_.assign(V, 0);
  }
  // Per row: d = max_g(amax_g) / (7 * 255); per group the u8 scale sc and q = round(w / (d * sc))
  // in [-7, 7], sc chosen among steps amax_g / 7 * f (f in kStepFactors, rounded to the d grid) for
  // the least squared error (a smaller step clips the group's largest weight but rounds the
  // others finer; the same search llama.cpp's k-quants make, over fewer candidates).
  static constexpr float kStepFactors[] = {1.f, 0.95f, 0.9f, 0.85f};
  HeadI4Block* q = head4_q_.data();
  pool_.parallel_for(r1 - r0, [&](int b, int e) {
    std::vector<float> row(Cp);
    std::vector<int8_t> qv(Cp);
    std::vector<uint8_t> scv(G);
    for (int r = r0 + b; r < r0 + e; ++r) {
      src.row_to_f32(r, row.data());
      std::fill(row.begin() + C, row.end(), 0.f);
      float gmax = 0.f;
      for (int c = 0; c < Cp; ++c) gmax = std::max(gmax, std::fabs(row[c]));
      float d = gmax / (7.f * 255.f);
      // A row this small (or empty) stays all zero: 1 / (d * sc) must not overflow.
      if (!(d >= std::numeric_limits<float>::min() * 256.f)) {
        std::fill(row.begin(), row.end(), 0.f);
        d = 0.f;
      }
      int64_t bias = 0;
      for (int g = 0; g < G; ++g) {
        const float* w = row.data() + g * kHeadI4Group;
        float amax = 0.f;
        for (int i = 0; i < kHeadI4Group; ++i) amax = std::max(amax, std::fabs(w[i]));
        // Each candidate's squared error in fixed-size, branch-free loops the compiler vectorizes
        // (the sum as a fixed tree: no reassociation needed), then q once for the best scale.
        auto quantize = [&](int sc, float* qf) {
          const float step = d * static_cast<float>(sc), inv = 1.f / step;
          for (int i = 0; i < kHeadI4Group; ++i) qf[i] = std::min(7.f, std::max(-7.f, round_half_even(w[i] * inv)));
          return step;
        };
        int best_sc = 0;
        float best_err = std::numeric_limits<float>::infinity();
        if (amax > 0.f) {
          for (float f : kStepFactors) {
            const int sc = static_cast<int>(std::min(255.f, std::max(1.f, round_half_even(amax / 7.f * f / d))));
            float qf[kHeadI4Group], e[kHeadI4Group];
            const float step = quantize(sc, qf);
            for (int i = 0; i < kHeadI4Group; ++i) e[i] = (w[i] - step * qf[i]) * (w[i] - step * qf[i]);
            for (int half = kHeadI4Group / 2; half >= 1; half /= 2)
              for (int i = 0; i < half; ++i) e[i] += e[i + half];
            if (e[0] < best_err) {
              best_err = e[0];
              best_sc = sc;
            }
          }
        }
        float qf[kHeadI4Group] = {};
        if (best_sc > 0) quantize(best_sc, qf);
        scv[g] = static_cast<uint8_t>(best_sc);
        int32_t qsum = 0;
        for (int i = 0; i < kHeadI4Group; ++i) {
          qv[g * kHeadI4Group + i] = static_cast<int8_t>(qf[i]);
          qsum += qv[g * kHeadI4Group + i];
        }
        bias += static_cast<int64_t>(best_sc) * qsum;
      }
      HeadI4Block* blocks = q + static_cast<size_t>(r) * nb;
      for (int bk = 0; bk < nb; ++bk) {
        const int8_t* qb = qv.data() + bk * kHeadI4Cols;
        for (int j = 0; j < 64; ++j)
          blocks[bk].qs[j] = static_cast<uint8_t>((qb[j] + 8) | ((qb[64 + j] + 8) << 4));
        for (int g = 0; g < kHeadI4Cols / kHeadI4Group; ++g) blocks[bk].sc[g] = scv[bk * 4 + g];
      }
      head4_scale_[r] = d;
      head4_bias_[r] = static_cast<int32_t>(128 * bias);  // |.| <= 128 * Cp * 7 * 255 < 2^31
    }
  });
  head4_rows_done_ += r1 - r0;
}

void Model::check_complete() const {
  if (embed_.data == nullptr) throw std::invalid_argument("missing tensor model.embed_tokens.weight");
  if (final_norm_.empty()) throw std::invalid_argument("missing tensor model.norm.weight");
  static const char* kLinears[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
  for (int i = 0; i < cfg_.layers; ++i) {
    const Layer& l = layers_[i];
    const Linear* ls[] = {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down};
    for (int j = 0; j < 7; ++j)
      if (!ls[j]->loaded()) throw std::invalid_argument("missing tensor " + where(i, kLinears[j]) + ".weight");
    if (l.input_norm.empty()) throw std::invalid_argument("missing tensor " + where(i, "input_layernorm.weight"));
    if (l.post_norm.empty()) throw std::invalid_argument("missing tensor " + where(i, "post_attention_layernorm.weight"));
    if (cfg_.sub_norms && l.attn_sub_norm.empty())
      throw std::invalid_argument("missing tensor " + where(i, "self_attn.attn_sub_norm.weight"));
    if (cfg_.sub_norms && l.ffn_sub_norm.empty())
      throw std::invalid_argument("missing tensor " + where(i, "mlp.ffn_sub_norm.weight"));
    if (l.q_bias.empty() != l.k_bias.empty() || l.q_bias.empty() != l.v_bias.empty())
      throw std::invalid_argument(where(i, "self_attn") + ": q/k/v biases must be all present or all absent");
    if (l.q_norm.empty() != l.k_norm.empty())
      throw std::invalid_argument(where(i, "self_attn") + ": q_norm and k_norm must both be present or both absent");
  }
}

size_t Model::weight_bytes() const {
  return head_q_.n + head4_q_.n * sizeof(HeadI4Block) + (head4_scale_.size() + head4_bias_.size()) * 4 +
         arena_.n * sizeof(TernaryTile);
}

void Model::ensure_cache(KVCache& c, int n) {
  if (n <= c.cap) return;
  const int KV = cfg_.kv_heads, hd = cfg_.head_dim;
  // Grow geometrically (at least 256 positions), never past the cache's limit.
  const int cap = std::max(n, std::min(c.limit, std::max(256, 2 * c.cap)));
  // Per layer, each KV head's first len positions move to the new stride (fp32 or fp16 rows).
  auto grow = [&](auto& rows) {
    rows.resize(cfg_.layers);
    for (auto& old : rows) {
      std::remove_reference_t<decltype(old)> fresh(static_cast<size_t>(KV) * cap * hd);
      const size_t len = static_cast<size_t>(c.len) * hd;
      if (len != 0)
        for (int g = 0; g < KV; ++g) {
          const size_t from = static_cast<size_t>(g) * c.cap * hd, to = static_cast<size_t>(g) * cap * hd;
          std::copy(old.begin() + from, old.begin() + from + len, fresh.begin() + to);
        }
      old.swap(fresh);
    }
  };
  if (kv_f16_) {
    grow(c.k16);
    grow(c.v16);
  } else {
    grow(c.k);
    grow(c.v);
  }
  c.cap = cap;
}

size_t Model::slot_index(int slot) const {
  if (slot < 0 || slot >= num_slots())
    throw std::invalid_argument("slot " + std::to_string(slot) + " out of range (the model has " +
                                std::to_string(num_slots()) + " slots)");
  return static_cast<size_t>(slot) + 1;
}

void Model::set_slots(int n, int ctx) {
  if (n < 0) throw std::invalid_argument("set_slots: the number of slots must be >= 0");
  if (ctx < 1 || ctx > cfg_.max_positions)
    throw std::invalid_argument("set_slots: ctx_size must be in [1, max_position_embeddings=" +
                                std::to_string(cfg_.max_positions) + "], got " + std::to_string(ctx));
  caches_.resize(1);
  caches_.resize(static_cast<size_t>(n) + 1);
  for (size_t i = 1; i < caches_.size(); ++i) caches_[i].limit = ctx;  // rows in kv_f16_'s type on first use
}

void Model::set_kv_dtype(const std::string& name) {
  if (name != "f32" && name != "f16")
    throw std::invalid_argument("kv cache dtype must be 'f32' or 'f16', got '" + name + "'");
  kv_f16_ = name == "f16";
  for (KVCache& c : caches_) {
    const int limit = c.limit;
    c = KVCache();
    c.limit = limit;
  }
}

void Model::copy_slot(int src, int dst, int n) {
  KVCache& a = caches_[slot_index(src)];
  KVCache& b = caches_[slot_index(dst)];
  if (n < 0 || n > a.len) throw std::invalid_argument("copy_slot: n must be in [0, slot_len(src)]");
  if (n > b.limit) throw std::invalid_argument("copy_slot: n exceeds the destination's ctx_size");
  if (src == dst) { b.len = n; return; }
  b.len = 0;  // nothing to carry over when it grows
  ensure_cache(b, n);
  const int KV = cfg_.kv_heads, hd = cfg_.head_dim;
  auto copy = [&](const auto& from_rows, auto& to_rows) {  // fp32 or fp16 rows, layer by layer
    for (int li = 0; li < cfg_.layers; ++li)
      for (int g = 0; g < KV; ++g) {
        const size_t from = static_cast<size_t>(g) * a.cap * hd, to = static_cast<size_t>(g) * b.cap * hd;
        const size_t len = static_cast<size_t>(n) * hd;
        std::copy(from_rows[li].begin() + from, from_rows[li].begin() + from + len, to_rows[li].begin() + to);
      }
  };
  if (n > 0) {  // a cache never written holds no rows yet
    if (kv_f16_) {
      copy(a.k16, b.k16);
      copy(a.v16, b.v16);
    } else {
      copy(a.k, b.k);
      copy(a.v, b.v);
    }
  }
  b.len = n;
}

// Tokens per thread from which a lookup-table product splits its tokens over the threads instead of
// its rows (linear_forward): a full 32-token table row each. Measured on 2B4T, 2 threads, whole
// prefills: split 4% faster at 64 and 128 tokens, 0-1.5% at 96, 8-9% slower at 32 and 48 (16 or
// 24 tokens a thread: narrower or partly empty table rows for every row).
constexpr int kLutSplitTokens = 32;

// y_i (T, out_i) = dequant(ternary(W_i) x int8(x)) for linears W_i sharing the input x (T, in):
// y[t][m] = (q.x_q)[m] * beta / s_t. One job over all their row blocks (q/k/v, gate/up) means one
// thread-pool round trip per group, and the input is quantized once unless the linears carry
// their own inner RMSNorm (then each quantizes its normed copy).
//
// Linears that read the same quantized input and whose tiles follow one another in the arena with
// the same tiles per row block (q k v, gate up: layout_arena lays them out in that order) form one
// span: one kernel call covers the span's rows, its integer outputs side by side in one (T, rows)
// block, so a lookup-table kernel builds its tables once per span and thread, not once per linear.
// Lookup tables for kLutSplitTokens or more tokens a thread split the tokens over the threads: each
// thread builds the tables of its own tokens only, where a split of the rows has every thread build
// the tables of every token.
void Model::linear_forward(std::initializer_list<std::pair<const Linear*, float*>> group, const float* x, int T,
                           PhaseClock& clk) {
  const Kernels& kern = kernels();
  clk.lap(Phase::Quantize);
  struct Item {
    const Linear* L;
    float* y;
    int Kp, Mp, mb_begin;  // padded input width, padded rows, first row block in the job's order
    size_t xq_off;
    int xs;     // index of its quantized input
    bool owns;  // quantizes that input itself (else it shares item 0's)
    int span, row0;  // its span and its first row in the span's outputs
  };
  struct Span {
    const Linear* L;  // the first linear: tiles, KB, format
    int MB, Mp, mb_begin, xs, Kp;
    size_t xq_off, acc_off;
  };
  std::vector<Item> items;
  std::vector<Span> spans;
  size_t xq_total = 0, acc_total = 0;
  int mb_total = 0, n_inputs = 0;
  for (const auto& [L, y] : group) {
    Item it{L, y, (L->KB * L->tile_cols() + kXAlign - 1) / kXAlign * kXAlign, L->MB * kTileRows, mb_total, 0, 0, true, 0, 0};
    const bool share = !items.empty() && L->norm.empty() && items[0].L->norm.empty() && it.Kp == items[0].Kp;
    if (share) {
      it.xq_off = items[0].xq_off;
      it.xs = 0;
      it.owns = false;
    } else {
      it.xq_off = xq_total;
      xq_total += static_cast<size_t>(T) * it.Kp;
      it.xs = n_inputs++;
    }
    // Joins the previous span when it reads the same input and its tiles follow that span's.
    const Span* prev = spans.empty() ? nullptr : &spans.back();
    const bool joins = prev != nullptr && prev->xs == it.xs && prev->L->format == L->format && prev->L->KB == L->KB &&
                       (L->format == WeightFormat::T5
                            ? L->tiles5 == prev->L->tiles5 + static_cast<size_t>(prev->MB) * L->KB
                            : L->tiles == prev->L->tiles + static_cast<size_t>(prev->MB) * L->KB);
    if (!joins) spans.push_back(Span{L, 0, 0, mb_total, it.xs, it.Kp, it.xq_off, 0});
    Span& s = spans.back();
    it.span = static_cast<int>(spans.size()) - 1;
    it.row0 = s.Mp;
    s.MB += L->MB;
    s.Mp += it.Mp;
    mb_total += L->MB;
    items.push_back(it);
  }
  for (Span& s : spans) {
    s.acc_off = acc_total;
    acc_total += static_cast<size_t>(T) * s.Mp;
  }
  // Scratch reused across calls (no page faults per linear); the model runs one forward at a time.
  if (scratch_xq_.n < xq_total) scratch_xq_.reset(xq_total);  // every byte is written before it is read
  if (scratch_acc_.n < acc_total) scratch_acc_.reset(acc_total);
  std::vector<int32_t> xsum(static_cast<size_t>(n_inputs) * T);
  std::vector<float> inv_s(static_cast<size_t>(n_inputs) * T);
  pool_.parallel_for(T, [&](int t0, int t1) {
    for (const Item& it : items) {
      if (!it.owns) continue;
      const Linear& L = *it.L;
      std::vector<float> normed(L.norm.empty() ? 0 : L.in);
      for (int t = t0; t < t1; ++t) {
        const float* src = x + static_cast<size_t>(t) * L.in;
        if (!L.norm.empty()) {
          rmsnorm(src, L.norm.data(), L.in, cfg_.inner_eps, normed.data());
          src = normed.data();
        }
        const size_t k = static_cast<size_t>(it.xs) * T + t;
        inv_s[k] = 1.f / kern.quantize_row(src, L.in, it.Kp, scratch_xq_.data() + it.xq_off + static_cast<size_t>(t) * it.Kp, &xsum[k]);
      }
    }
  });
  clk.lap(Phase::Product);
  // The product for this many tokens (multiply-accumulate or lookup tables: dispatch.cpp). A lookup
  // table is built per call and shared by the call's rows, so the lut kernels get one long range
  // per thread (more rows per table) where the others take a few shorter ones (balance).
  const TernaryGemmFn gemm2 = ternary_gemm_for(kern, T);
  const Ternary5GemmFn gemm5 = ternary5_gemm_for(kern, T);
  const bool lut = weight_format_ == WeightFormat::T5 ? gemm5 == kern.ternary5_gemm_lut : gemm2 == kern.ternary_gemm_lut;
  // Row blocks [mb0, mb1) of span s (its own numbering), tokens [t0, t1).
  auto product = [&](const Span& s, int mb0, int mb1, int t0, int t1) {
    const int8_t* xq = scratch_xq_.data() + s.xq_off + static_cast<size_t>(t0) * s.Kp;
    const int32_t* xs = xsum.data() + static_cast<size_t>(s.xs) * T + t0;
    int32_t* acc = scratch_acc_.data() + s.acc_off + static_cast<size_t>(t0) * s.Mp;
    // The linear's format picks the kernel once per call (its loops hold no branch).
    if (s.L->format == WeightFormat::T5) gemm5(s.L->tiles5, s.L->KB, mb0, mb1, xq, s.Kp, xs, t1 - t0, acc, s.Mp);
    else gemm2(s.L->tiles, s.L->KB, mb0, mb1, xq, s.Kp, xs, t1 - t0, acc, s.Mp);
  };
  // y of item it for its row blocks [mb0, mb1) (its own numbering), tokens [t0, t1).
  auto rescale = [&](const Item& it, int mb0, int mb1, int t0, int t1) {
    const Linear& L = *it.L;
    const Span& s = spans[it.span];
    const int m1 = std::min(L.out, mb1 * kTileRows);
    for (int t = t0; t < t1; ++t) {
      const float r = L.beta * inv_s[static_cast<size_t>(it.xs) * T + t];
      float* yt = it.y + static_cast<size_t>(t) * L.out;
      const int32_t* at = scratch_acc_.data() + s.acc_off + static_cast<size_t>(t) * s.Mp + it.row0;
      if (L.row_scale.empty())
        for (int m = mb0 * kTileRows; m < m1; ++m) yt[m] = static_cast<float>(at[m]) * r;
      else  // per-row scales (TriLM): one more multiply per output
        for (int m = mb0 * kTileRows; m < m1; ++m) yt[m] = static_cast<float>(at[m]) * r * L.row_scale[m];
    }
  };
  // Lookup tables for enough tokens split the tokens over the threads, in runs of whole 8-token
  // tiles (kLutSplitTokens).
  if (lut && T >= kLutSplitTokens * pool_.size()) {
    const int units = (T + 7) / 8;
    pool_.parallel_for(units, [&](int b, int e) {
      const int t0 = 8 * b, t1 = std::min(T, 8 * e);
      for (const Span& s : spans) product(s, 0, s.MB, t0, t1);
      for (const Item& it : items) rescale(it, 0, it.L->MB, t0, t1);
    }, 1);
    return;
  }
  pool_.parallel_for(mb_total, [&](int b, int e) {
    for (const Span& s : spans) {
      const int mb0 = std::max(b, s.mb_begin) - s.mb_begin, mb1 = std::min(e, s.mb_begin + s.MB) - s.mb_begin;
      if (mb0 < mb1) product(s, mb0, mb1, 0, T);
    }
    for (const Item& it : items) {
      const int mb0 = std::max(b, it.mb_begin) - it.mb_begin, mb1 = std::min(e, it.mb_begin + it.L->MB) - it.mb_begin;
      if (mb0 < mb1) rescale(it, mb0, mb1, 0, T);
    }
  }, T == 1 || lut ? 1 : 4);  // one token: one sequential stream per thread (the linears are adjacent)
}

void Model::attention(int li, const float* q, int T, const std::vector<KVCache*>& cache_of,
                      const std::vector<int>& pos, float* out) {
  const Kernels& kern = kernels();
  const int H = cfg_.heads, hd = cfg_.head_dim, group = H / cfg_.kv_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  int most = 0;
  for (int t = 0; t < T; ++t) most = std::max(most, pos[t] + 1);
  const std::string_view isa = kern.name;
  const bool wide = isa == "avx512" || isa == "amx", narrow = isa == "avx2" || isa == "avxvnni";
  if (((wide && attend_group_supports(hd)) || (narrow && attend_group_avx2_supports(hd))) &&
      attention_mode() == "blocked") {
    // Blocked (attention.h): one job per block of consecutive tokens of one sequence (a prefill's
    // run, at most kAttnBlockTokens) and KV head, with every query head of that KV head, so each
    // cache row is read once per job. Few jobs (a one-token step) split the query heads in two.
    constexpr int kAttnBlockTokens = 16;
    std::vector<std::pair<int, int>> blocks;  // [t0, t1)
    int longest = 1;                          // tokens in the longest block (1 in a decode step)
    for (int t = 0; t < T;) {
      int t1 = t + 1;
      while (t1 < T && t1 - t < kAttnBlockTokens && cache_of[t1] == cache_of[t]) ++t1;
      blocks.emplace_back(t, t1);
      longest = std::max(longest, t1 - t);
      t = t1;
    }
    const int KV = cfg_.kv_heads, nb = static_cast<int>(blocks.size());
    const int split = group % 2 == 0 && nb * KV < 4 * pool_.size() ? 2 : 1, gs = group / split;
    const size_t stride = static_cast<size_t>(most + 15) / 16 * 16;
    pool_.parallel_for(nb * KV * split, [&](int b, int e) {
      std::vector<float> sc(static_cast<size_t>(longest) * gs * stride);  // one score row per query of a job
      std::vector<const float*> qs;
      std::vector<float*> outs;
      std::vector<int> ns;
      for (int job = b; job < e; ++job) {
        const auto [t0, t1] = blocks[job / (KV * split)];
        const int g = job / split % KV, h0 = g * group + job % split * gs;
        qs.clear();
        outs.clear();
        ns.clear();
        for (int t = t0; t < t1; ++t)
          for (int h = h0; h < h0 + gs; ++h) {
            const size_t off = static_cast<size_t>(t) * H * hd + h * hd;
            qs.push_back(q + off);
            outs.push_back(out + off);
            ns.push_back(pos[t] + 1);
          }
        const KVCache& c = *cache_of[t0];
        const size_t kv = static_cast<size_t>(g) * c.cap * hd;
        // attention.cpp (16 lanes) on avx512 / amx, attention_avx2.cpp (8 lanes) on avx2 / avxvnni
        auto run = [&](const auto* K, const auto* V) {
          const int nq = static_cast<int>(qs.size());
          if (wide) attend_group(qs.data(), outs.data(), ns.data(), nq, K, V, hd, hd, scale, sc.data());
          else attend_group_avx2(qs.data(), outs.data(), ns.data(), nq, K, V, hd, hd, scale, sc.data());
        };
        if (kv_f16_) run(c.k16[li].data() + kv, c.v16[li].data() + kv);
        else run(c.k[li].data() + kv, c.v[li].data() + kv);
      }
    });
    return;
  }
  pool_.parallel_for(T * H, [&](int b, int e) {
    std::vector<float> sc(most);
    for (int job = b; job < e; ++job) {
      const int t = job / H, h = job % H, g = h / group;
      const KVCache& c = *cache_of[t];
      const size_t off = static_cast<size_t>(t) * H * hd + h * hd;
      const size_t kv = static_cast<size_t>(g) * c.cap * hd;
      if (kv_f16_)
        kern.attend_f16(q + off, c.k16[li].data() + kv, c.v16[li].data() + kv, hd, pos[t] + 1, hd, scale,
                        sc.data(), out + off);
      else
        kern.attend(q + off, c.k[li].data() + kv, c.v[li].data() + kv, hd, pos[t] + 1, hd, scale, sc.data(),
                    out + off);
    }
  });
}

void Model::head_forward(const float* h, int T, float* out) {
  const Kernels& kern = kernels();
  const int V = cfg_.vocab, C = cfg_.hidden;
  // The integer heads: each token's activations quantized to int8 once, the head kernel over row
  // ranges in parallel, each integer logit scaled by its row's scale and the token's 1 / s. A thread
  // takes its rows in pieces of `sub`: rows(s0, n, xq, acc, ld) fills acc[t * ld + i] with row s0 + i's
  // integer logit (i < n), in a per-thread buffer that stays in L2 until it is scaled (a T x V int32
  // scratch went out to memory and back: 4 MB each way at 8 tokens).
  auto integer_head = [&](int Cp, const float* row_scale, auto&& rows) {
    std::vector<int8_t> xq(static_cast<size_t>(T) * Cp);
    std::vector<float> inv_s(T);
    for (int t = 0; t < T; ++t) {
      int32_t sum;
      inv_s[t] = 1.f / kern.quantize_row(h + static_cast<size_t>(t) * C, C, Cp, xq.data() + static_cast<size_t>(t) * Cp, &sum);
    }
    // Rows a piece: at most 2 MB of acc, and at least 4 pieces a thread (small vocabularies, the tests).
    const int sub = std::clamp(std::min((1 << 19) / T, V / (4 * pool_.size())) / 16 * 16, 16, 8192);
    pool_.parallel_for(V, [&](int r0, int r1) {
      thread_local std::vector<int32_t> acc;
      if (acc.size() < static_cast<size_t>(T) * sub) acc.resize(static_cast<size_t>(T) * sub);
      for (int s0 = r0; s0 < r1; s0 += sub) {
        const int n = std::min(sub, r1 - s0);
        rows(s0, n, xq.data(), acc.data(), sub);
        for (int t = 0; t < T; ++t) {
          const int32_t* a = acc.data() + static_cast<size_t>(t) * sub;
          float* o = out + static_cast<size_t>(t) * V + s0;
          for (int i = 0; i < n; ++i) o[i] = static_cast<float>(a[i]) * row_scale[s0 + i] * inv_s[t];
        }
      }
    }, 1);
  };
  // The kernels take rows [0, n) of the table from its row s0 on (rows are stored one after the other).
  if (head_int8_) {
    integer_head(head_cp_, head_scale_.data(), [&](int s0, int n, const int8_t* xq, int32_t* acc, int ld) {
      kern.head_i8(head_q_.data() + static_cast<size_t>(s0) * head_cp_, head_rowsum_.data() + s0, head_cp_, 0, n, xq, T,
                   acc, ld);
    });
    return;
  }
  if (head_int4_) {  // the coarse int4 pass over every row, then the exact rescoring
    integer_head(head4_cp_, head4_scale_.data(), [&](int s0, int n, const int8_t* xq, int32_t* acc, int ld) {
      kern.head_i4(head4_q_.data() + static_cast<size_t>(s0) * (head4_cp_ / kHeadI4Cols), head4_bias_.data() + s0,
                   head4_cp_, 0, n, xq, T, acc, ld);
    });
    head_rescore(h, T, out);
    return;
  }
  const Matrix16& W = head16();
  pool_.parallel_for(V, [&](int r0, int r1) {
    if (T == 1 || W.dtype == DType::F32) {  // decode: stream the 16-bit rows once
      if (W.dtype == DType::BF16) kern.dot_rows_bf16(static_cast<const uint16_t*>(W.data), C, r0, r1, h, T, out, V);
      else if (W.dtype == DType::F16) kern.dot_rows_f16(static_cast<const uint16_t*>(W.data), C, r0, r1, h, T, out, V);
      else kern.dot_rows_f32(static_cast<const float*>(W.data), C, r0, r1, h, T, out, V);
      return;
    }
    // Many tokens: widen a block of rows to fp32 once, then reuse it for every token.
    constexpr int kRows = 64;
    std::vector<float> buf(static_cast<size_t>(kRows) * C);
    for (int rb = r0; rb < r1; rb += kRows) {
      const int n = std::min(kRows, r1 - rb);
      for (int r = 0; r < n; ++r) W.row_to_f32(rb + r, buf.data() + static_cast<size_t>(r) * C);
      kern.dot_rows_f32(buf.data(), C, 0, n, h, T, out + rb, V);
    }
  }, T == 1 ? 1 : 4);
}

// The int4 head's exact rescoring. Per token: the head_rescore_max_ best coarse logits (ties to
// the lower row), then their rows recomputed from the 16-bit table with the kernel the "f16" head
// uses for one token (dot_rows on that row alone: the same value, bit for bit, as the f16 head's
// decode), head_rescore_ at a time, in coarse order. After each batch: best = the largest exact
// logit, err = the largest |coarse - exact| among the rescored rows; the next batch runs while the
// next coarse logit is >= best - kHeadRescoreMargin * err (a row left out could still beat best
// only if its coarse error were over kHeadRescoreMargin times the largest one seen). Unless all
// head_rescore_max_ were used, every logit left coarse is then below best, so the argmax is the
// exact head's whenever the exact top-1 was rescored. Rescored rows get their exact logits; the others keep the coarse ones. (For T > 1 the
// f16 head widens rows to fp32 and groups tokens, which can differ from this by fp32 rounding.)
void Model::set_head_rescore(int k, int k_max) {
  if (k < 0 || k > k_max) throw std::invalid_argument("head rescoring needs 0 <= k <= k_max");
  head_rescore_ = k;
  head_rescore_max_ = k_max;
}

void Model::head_rescore(const float* h, int T, float* out) {
  const Kernels& kern = kernels();
  const int V = cfg_.vocab, C = cfg_.hidden;
  const Matrix16& W = head_source();
  const int kmax = std::min(head_rescore_max_, V);
  if (head_rescore_ == 0 || kmax == 0) return;
  auto exact = [&](int r, const float* ht) {
    float v = 0.f;
    const size_t off = static_cast<size_t>(r) * C;
    if (W.dtype == DType::BF16) kern.dot_rows_bf16(static_cast<const uint16_t*>(W.data) + off, C, 0, 1, ht, 1, &v, 1);
    else if (W.dtype == DType::F16) kern.dot_rows_f16(static_cast<const uint16_t*>(W.data) + off, C, 0, 1, ht, 1, &v, 1);
    else kern.dot_rows_f32(static_cast<const float*>(W.data) + off, C, 0, 1, ht, 1, &v, 1);
    return v;
  };
  auto one = [&](int t) {
    float* o = out + static_cast<size_t>(t) * V;
    const float* ht = h + static_cast<size_t>(t) * C;
    // Top kmax by a threshold scan: (value, row) pairs sorted best first.
    std::vector<std::pair<float, int>> top;
    top.reserve(kmax + 1);
    auto better = [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    for (int r = 0; r < V; ++r) {
      if (static_cast<int>(top.size()) == kmax && !(o[r] > top.back().first)) continue;
      const std::pair<float, int> p(o[r], r);
      top.insert(std::upper_bound(top.begin(), top.end(), p, better), p);
      if (static_cast<int>(top.size()) > kmax) top.pop_back();
    }
    const int n = static_cast<int>(top.size());
    float best = -std::numeric_limits<float>::infinity(), err = 0.f;
    int k = 0;
    do {
      for (const int end = std::min(n, k + head_rescore_); k < end; ++k) {
        const int r = top[k].second;
        const float e = exact(r, ht);
        err = std::max(err, std::fabs(top[k].first - e));
        best = std::max(best, e);
        o[r] = e;
      }
    } while (k < n && top[k].first >= best - kHeadRescoreMargin * err);
  };
  if (T == 1) {
    one(0);
    return;
  }
  pool_.parallel_for(T, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) one(t);
  });
}

void Model::set_profile(bool on) {
  profile_on_ = on;
  phase_s_.fill(0.0);
  profile_calls_ = 0;
  profile_jobs0_ = pool_.jobs();
}

std::vector<std::pair<std::string, double>> Model::profile() const {
  std::vector<std::pair<std::string, double>> out;
  for (int i = 0; i < static_cast<int>(Phase::kCount); ++i) out.emplace_back(phase_name(static_cast<Phase>(i)), phase_s_[i]);
  out.emplace_back("calls", profile_calls_);
  out.emplace_back("jobs", profile_on_ ? static_cast<double>(pool_.jobs() - profile_jobs0_) : 0.0);
  return out;
}

void Model::validate_run(const Run& r, const std::string& what) const {
  if (r.T <= 0) throw std::invalid_argument(what + ": no tokens");
  if (r.pos0 < 0 || r.pos0 > r.cache->len) throw std::invalid_argument(what + ": pos0 beyond the cached positions");
  if (r.pos0 + r.T > r.cache->limit)
    throw std::invalid_argument(what + ": " + std::to_string(r.pos0 + r.T) + " positions exceed " +
                                (r.cache == &caches_[0] ? "max_position_embeddings=" : "the slot's ctx_size=") +
                                std::to_string(r.cache->limit));
  for (int t = 0; t < r.T; ++t)
    if (r.tokens[t] < 0 || r.tokens[t] >= cfg_.vocab)
      throw std::invalid_argument(what + ": token id " + std::to_string(r.tokens[t]) + " outside [0, vocab_size=" +
                                  std::to_string(cfg_.vocab) + ")");
}

void Model::forward(const int32_t* tokens, int T, int pos0, int logits_from, float* out) {
  const Run r{&caches_[0], tokens, T, pos0};
  validate_run(r, "forward");
  if (logits_from < 0 || logits_from > T) throw std::invalid_argument("forward: logits_from out of range");
  std::vector<int> rows;
  for (int t = logits_from; t < T; ++t) rows.push_back(t);
  forward_runs({r}, rows, out);
}

void Model::forward_batch(const Segment* segs, int n, float* out) {
  if (n <= 0) throw std::invalid_argument("forward_batch: no segments");
  std::vector<Run> runs;
  std::vector<int> rows;
  std::vector<bool> used(caches_.size(), false);
  int total = 0;
  for (int i = 0; i < n; ++i) {
    const size_t ci = slot_index(segs[i].slot);
    if (used[ci]) throw std::invalid_argument("forward_batch: slot " + std::to_string(segs[i].slot) + " given twice");
    used[ci] = true;
    const Run r{&caches_[ci], segs[i].tokens, segs[i].T, segs[i].pos0};
    validate_run(r, "forward_batch: slot " + std::to_string(segs[i].slot));
    runs.push_back(r);
    total += r.T;
    rows.push_back(total - 1);
  }
  forward_runs(runs, rows, out);
}

void Model::forward_runs(const std::vector<Run>& runs, const std::vector<int>& logit_rows, float* out) {
  check_complete();
  if (profile_on_) profile_calls_ += 1;
  // Token rows of every run, concatenated: each row's cache and position.
  std::vector<KVCache*> cache_of;
  std::vector<int> pos;
  std::vector<int32_t> tokens;
  for (const Run& r : runs) {
    ensure_cache(*r.cache, r.pos0 + r.T);
    r.cache->len = r.pos0;  // entries past pos0 are overwritten below
    for (int t = 0; t < r.T; ++t) {
      cache_of.push_back(r.cache);
      pos.push_back(r.pos0 + t);
      tokens.push_back(r.tokens[t]);
    }
  }
  const int T = static_cast<int>(tokens.size());
  PhaseClock clk(*this, Phase::Embed);

  const int C = cfg_.hidden, I = cfg_.intermediate, H = cfg_.heads, KV = cfg_.kv_heads, hd = cfg_.head_dim;
  const int QD = H * hd, KVD = KV * hd, half = hd / 2;
  // The pass's activations, every buffer a 64-byte aligned piece of one block that this thread
  // keeps between calls while it holds at most kKeepFloats (a step of 8 prompts of 32 tokens at 2B4T
  // takes 7.5 M floats: allocating and zeroing them took 2% of that step); a longer prefill gets its
  // own block, freed on return. Every buffer is written before it is read.
  constexpr size_t kKeepFloats = size_t{16} << 20;
  static thread_local AlignedBuf<float> kept;
  AlignedBuf<float> own;
  const size_t piece[] = {static_cast<size_t>(T) * C, static_cast<size_t>(T) * QD, static_cast<size_t>(T) * KVD,
                          static_cast<size_t>(T) * I, static_cast<size_t>(T) * 2 * half};
  auto padded = [](size_t n) { return (n + 15) / 16 * 16; };
  const size_t need = 3 * padded(piece[0]) + 2 * padded(piece[1]) + 2 * padded(piece[2]) + 2 * padded(piece[3]) +
                      padded(piece[4]);
  AlignedBuf<float>& block = need <= kKeepFloats ? kept : own;
  if (block.n < need) block.reset(need);
  size_t used = 0;
  auto take = [&](size_t n) {
    float* p = block.data() + used;
    used += padded(n);
    return p;
  };
  float* const x = take(piece[0]);
  float* const xn = take(piece[0]);
  float* const tmp = take(piece[0]);
  float* const q = take(piece[1]);
  float* const att = take(piece[1]);
  float* const k = take(piece[2]);
  float* const v = take(piece[2]);
  float* const g = take(piece[3]);
  float* const u = take(piece[3]);
  float* const rope_cs = take(piece[4]);  // (T, half) cos, then (T, half) sin
  for (int t = 0; t < T; ++t) embedding().row_to_f32(tokens[t], x + static_cast<size_t>(t) * C);
  // RoPE tables for these positions (rotate-half convention, fp32 angles as PyTorch computes them),
  // computed once per position (a step of several prompts repeats the same positions).
  float* const cosv = rope_cs;
  float* const sinv = rope_cs + static_cast<size_t>(T) * half;
  {
    // first[p - lo]: the token that computed position p's table (a decode step of one token needs none)
    const auto [lo_it, hi_it] = std::minmax_element(pos.begin(), pos.end());
    const int lo = *lo_it;
    std::vector<int> first(T > 1 ? static_cast<size_t>(*hi_it - lo) + 1 : 0, -1);
    for (int t = 0; t < T; ++t) {
      float* ct = cosv + static_cast<size_t>(t) * half;
      float* st = sinv + static_cast<size_t>(t) * half;
      if (T > 1) {
        int& f = first[pos[t] - lo];
        if (f >= 0) {
          std::copy_n(cosv + static_cast<size_t>(f) * half, half, ct);
          std::copy_n(sinv + static_cast<size_t>(f) * half, half, st);
          continue;
        }
        f = t;
      }
      for (int i = 0; i < half; ++i) {
        const float a = static_cast<float>(pos[t]) * rope_inv_freq_[i];
        ct[i] = std::cos(a);
        st[i] = std::sin(a);
      }
    }
  }
  auto rope = [&](float* buf, int nh, int t) {
    for (int h = 0; h < nh; ++h) {
      float* p = buf + static_cast<size_t>(t) * nh * hd + h * hd;
      const float* cs = cosv + static_cast<size_t>(t) * half;
      const float* sn = sinv + static_cast<size_t>(t) * half;
      for (int i = 0; i < half; ++i) {
        const float a = p[i], b = p[i + half];
        p[i] = a * cs[i] - b * sn[i];
        p[i + half] = b * cs[i] + a * sn[i];
      }
    }
  };
  // The per-token work between the matrix products (norms, RoPE, cache writes, residual adds) over
  // the tokens in parallel: a prefill of 128 tokens spent about a fifth of its time in these loops
  // on one thread. One token stays on the calling thread (no pool round trip).
  const std::string_view isa = kernels().name;
  const bool wide = isa == "avx512" || isa == "amx";  // rmsnorm_rows: 16 rows' sums in AVX-512 lanes
  // The fp16 cache's rows with F16C's vcvtps2ph where the CPU has it (attention.h: the same bits as
  // the scalar converter, which took 7-9% of a step of 8 prompts of 32 tokens on the amx path);
  // the ref path keeps the scalar one.
  void (*const to_f16)(const float*, uint16_t*, int) =
      cpu_features().f16c && isa != "ref" ? f32_to_f16_row_f16c : +[](const float* src, uint16_t* dst, int n) {
        for (int i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
      };
  const int row_chunks = std::clamp(T / ((wide ? 16 : 8) * pool_.size()), 1, 4);
  auto per_token = [&](auto&& fn) {
    if (T == 1) {
      fn(0);
      return;
    }
    pool_.parallel_for(T, [&](int t0, int t1) {
      for (int t = t0; t < t1; ++t) fn(t);
    }, row_chunks);
  };
  // The norms over ranges of tokens; one token on the calling thread. rmsnorm_rows runs several
  // rows' serial sums at once (8 chains; 16 lanes where wide), so a range should hold that many rows:
  // a batched step of 8 tokens takes one range per thread (4 rows, 4 add chains in flight) instead
  // of the pool's default 4 per thread (1 row each: one chain, bound by the add's latency; the
  // norms of a step of 8 at 2B4T, 2 threads: 2.0 -> 1.4 ms); a prefill keeps up to 4 ranges per
  // thread, of 8 (16) rows and more. row_chunks is computed before per_token, which shares it.
  auto per_rows = [&](auto&& fn) {
    if (T == 1) fn(0, 1);
    else pool_.parallel_for(T, fn, row_chunks);
  };
  // x[t] += tmp[t], then xn[t] = rmsnorm(x[t]) with `norm` (or only the add when norm is null).
  auto residual_norm = [&](const float* norm) {
    per_rows([&](int t0, int t1) {
      const size_t o = static_cast<size_t>(t0) * C, n = static_cast<size_t>(t1 - t0) * C;
      for (size_t i = 0; i < n; ++i) x[o + i] += tmp[o + i];
      if (norm != nullptr) rmsnorm_rows(&x[o], norm, t1 - t0, C, cfg_.eps, &xn[o], wide);
    });
  };

  if (cfg_.layers > 0)
    per_rows([&](int t0, int t1) {
      const size_t o = static_cast<size_t>(t0) * C;
      rmsnorm_rows(&x[o], layers_[0].input_norm.data(), t1 - t0, C, cfg_.eps, &xn[o], wide);
    });
  for (int li = 0; li < cfg_.layers; ++li) {
    Layer& ly = layers_[li];
    linear_forward({{&ly.q, q}, {&ly.k, k}, {&ly.v, v}}, xn, T, clk);
    clk.lap(Phase::RopeCache);
    per_token([&](int t) {
      float* qt = q + static_cast<size_t>(t) * QD;
      float* kt = k + static_cast<size_t>(t) * KVD;
      float* vt = v + static_cast<size_t>(t) * KVD;
      if (!ly.q_bias.empty()) {  // attention_bias extension: y = x_q . W * scale + b
        for (int i = 0; i < QD; ++i) qt[i] += ly.q_bias[i];
        for (int i = 0; i < KVD; ++i) kt[i] += ly.k_bias[i];
        for (int i = 0; i < KVD; ++i) vt[i] += ly.v_bias[i];
      }
      if (!ly.q_norm.empty()) {  // qk_norm extension: RMSNorm over each head, before RoPE
        for (int h = 0; h < H; ++h) rmsnorm(qt + h * hd, ly.q_norm.data(), hd, cfg_.eps, qt + h * hd);
        for (int h = 0; h < KV; ++h) rmsnorm(kt + h * hd, ly.k_norm.data(), hd, cfg_.eps, kt + h * hd);
      }
      rope(q, H, t);
      rope(k, KV, t);
      KVCache& c = *cache_of[t];
      for (int g = 0; g < KV; ++g) {
        const size_t from = static_cast<size_t>(t) * KVD + g * hd, to = (static_cast<size_t>(g) * c.cap + pos[t]) * hd;
        if (kv_f16_) {  // rounded to nearest even once, here; attend_f16 widens exactly
          to_f16(&k[from], c.k16[li].data() + to, hd);
          to_f16(&v[from], c.v16[li].data() + to, hd);
        } else {
          std::copy_n(k + from, hd, c.k[li].begin() + to);
          std::copy_n(v + from, hd, c.v[li].begin() + to);
        }
      }
    });
    clk.lap(Phase::Attention);
    attention(li, q, T, cache_of, pos, att);
    clk.lap(Phase::Norms);
    if (cfg_.sub_norms)
      per_rows([&](int t0, int t1) {
        float* a = &att[static_cast<size_t>(t0) * QD];
        rmsnorm_rows(a, ly.attn_sub_norm.data(), t1 - t0, QD, cfg_.eps, a, wide);
      });
    linear_forward({{&ly.o, tmp}}, att, T, clk);
    clk.lap(Phase::Norms);
    if (!ly.o_bias.empty())
      per_token([&](int t) {
        float* ot = &tmp[static_cast<size_t>(t) * C];
        for (int i = 0; i < C; ++i) ot[i] += ly.o_bias[i];
      });
    residual_norm(ly.post_norm.data());
    linear_forward({{&ly.gate, g}, {&ly.up, u}}, xn, T, clk);
    clk.lap(Phase::Activation);
    // the same values on 16 lanes (avx512 / amx) or 8 (avx2 / avxvnni): elementwise.h
    const auto act = isa == "avx512" || isa == "amx" ? gated_act_avx512
                     : isa == "avx2" || isa == "avxvnni" ? gated_act_avx2 : gated_act_ref;
    if (T == 1) {
      // One token: the gated activation over its I values in blocks, so that it still uses every
      // thread, then the sub-norm on the calling thread.
      constexpr int kActBlock = 1024;
      pool_.parallel_for((I + kActBlock - 1) / kActBlock, [&](int b0, int b1) {
        const int begin = b0 * kActBlock, end = std::min(I, b1 * kActBlock);
        act(g + begin, u + begin, static_cast<size_t>(end - begin), cfg_.relu2);
      });
      clk.lap(Phase::Norms);
      if (cfg_.sub_norms) rmsnorm(g, ly.ffn_sub_norm.data(), I, cfg_.eps, g);
    } else {
      // Several tokens: the activation and then the sub-norm of a range of tokens in one job, one
      // pool round trip instead of two (the profile counts both as activation).
      per_rows([&](int t0, int t1) {
        const size_t o = static_cast<size_t>(t0) * I;
        act(g + o, u + o, static_cast<size_t>(t1 - t0) * I, cfg_.relu2);
        if (cfg_.sub_norms) rmsnorm_rows(&g[o], ly.ffn_sub_norm.data(), t1 - t0, I, cfg_.eps, &g[o], wide);
      });
    }
    linear_forward({{&ly.down, tmp}}, g, T, clk);
    clk.lap(Phase::Norms);
    residual_norm(li + 1 < cfg_.layers ? layers_[li + 1].input_norm.data() : nullptr);
  }
  for (const Run& r : runs) r.cache->len = r.pos0 + r.T;

  clk.lap(Phase::Head);
  const int n_out = static_cast<int>(logit_rows.size());
  if (n_out == 0) return;
  std::vector<float> hn(static_cast<size_t>(n_out) * C);  // the rows that get logits, then normed in place
  for (int i = 0; i < n_out; ++i)
    std::copy_n(&x[static_cast<size_t>(logit_rows[i]) * C], C, &hn[static_cast<size_t>(i) * C]);
  rmsnorm_rows(hn.data(), final_norm_.data(), n_out, C, cfg_.eps, hn.data(), wide);
  head_forward(hn.data(), n_out, out);
}

}  // namespace bitnet
