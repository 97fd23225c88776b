#include "model.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
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

// y = w * (x * rsqrt(mean(x^2) + eps)), in fp32 (bitnet.layers.RMSNorm).
void rmsnorm(const float* x, const float* w, int n, float eps, float* y) {
  float ss = 0.f;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int i = 0; i < n; ++i) y[i] = w[i] * (x[i] * r);
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
  size_t total = 0;
  for (Layer& l : layers_)
    for (auto [L, out, in] : {std::tuple{&l.q, QD, cfg.hidden}, {&l.k, KVD, cfg.hidden}, {&l.v, KVD, cfg.hidden},
                              {&l.o, cfg.hidden, QD}, {&l.gate, cfg.intermediate, cfg.hidden},
                              {&l.up, cfg.intermediate, cfg.hidden}, {&l.down, cfg.hidden, cfg.intermediate}}) {
      L->out = out;
      L->in = in;
      L->MB = (out + kTileRows - 1) / kTileRows;
      L->KB = (in + kTileCols - 1) / kTileCols;
      total += static_cast<size_t>(L->MB) * L->KB;
    }
  arena_.reset(total);
  size_t off = 0;
  for (Layer& l : layers_)
    for (Linear* L : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      L->tiles = arena_.data() + off;
      off += static_cast<size_t>(L->MB) * L->KB;
    }
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
  L.is_loaded = repack_ternary(packed, want_out, want_in, L.tiles, &pool_);
  if (!L.is_loaded) {
    throw std::invalid_argument(where(layer, name) + ".weight: found 2-bit code 3, not a ternary value");
  }
}

bool repack_ternary(const uint8_t* packed, int out, int K, TernaryTile* tiles, ThreadPool* pool) {
  const int R = out / 4, MB = (out + kTileRows - 1) / kTileRows, KB = (K + kTileCols - 1) / kTileCols;
  std::atomic<bool> bad{false};
  pool->parallel_for(MB, [&](int mb0, int mb1) {
    uint8_t seen3 = 0;
    for (int mb = mb0; mb < mb1; ++mb) {
      for (int kb = 0; kb < KB; ++kb) std::memset(tiles[static_cast<size_t>(mb) * KB + kb].b, 0, 64);
      for (int r = 0; r < kTileRows; ++r) {
        const int m = mb * kTileRows + r;
        // transformers' layout: row m = i*R + r' lives in packed row r' = m % R, bits 2i = 2*(m / R).
        const uint8_t* src = m < out ? packed + static_cast<size_t>(m % R) * K : nullptr;
        const int shift = m < out ? 2 * (m / R) : 0;
        const int full = src != nullptr ? K / kTileCols : 0;  // column blocks with no padding
        for (int kb = 0; kb < full; ++kb) {
          // Four source bytes at a time: in each byte of (w >> shift) & 0x03..03 sit that byte's
          // own bits shift..shift+1 (shift <= 6: the bits moved in from the next byte are masked
          // off), i.e. the codes of columns 16kb + 4i + 0..3; OR-ing plane i in at bit 2i builds
          // the four tile bytes of row r exactly as the scalar loop below does.
          uint32_t tile_word = 0;
          for (int i = 0; i < 4; ++i) {
            uint32_t w;
            std::memcpy(&w, src + kb * kTileCols + 4 * i, 4);
            const uint32_t c = (w >> shift) & 0x03030303u;
            seen3 |= static_cast<uint8_t>((c & (c >> 1) & 0x01010101u) != 0);  // a code 3
            tile_word |= c << (2 * i);
          }
          std::memcpy(tiles[static_cast<size_t>(mb) * KB + kb].b + 4 * r, &tile_word, 4);
        }
        for (int kb = full; kb < KB; ++kb) {  // padding rows and the last partial column block
          uint8_t* dst = tiles[static_cast<size_t>(mb) * KB + kb].b + 4 * r;
          for (int i = 0; i < 4; ++i) {
            for (int j = 0; j < 4; ++j) {
              const int k = kb * kTileCols + 4 * i + j;
              uint8_t c = 1;  // padding: a zero weight
              if (src != nullptr && k < K) c = (src[k] >> shift) & 3;
              seen3 |= static_cast<uint8_t>(c == 3);
              dst[j] |= static_cast<uint8_t>(c << (2 * i));
            }
          }
        }
      }
    }
    if (seen3) bad.store(true);
  });
  return !bad.load();
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
    else throw std::invalid_argument("unknown norm " + name);
  }
  if (n != want)
    throw std::invalid_argument((layer < 0 ? std::string("model.norm") : where(layer, name)) + ".weight: length " +
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
    return;
  }
  if (mode != "int8") throw std::invalid_argument("head mode must be 'f16' or 'int8', got '" + mode + "'");
  if (head_rows_done_ < cfg_.vocab) {
    head_rows_done_ = 0;
    quantize_head_rows(0, cfg_.vocab);
  }
  head_int8_ = true;
  head16_.reset(0);  // the embedding lookups go back to the borrowed table
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
  }
}

size_t Model::weight_bytes() const {
  return head_q_.n + arena_.n * sizeof(TernaryTile);
}

void Model::ensure_cache(int n) {
  if (n <= cache_cap_) return;
  const int KV = cfg_.kv_heads, hd = cfg_.head_dim;
  // Grow geometrically (at least 256 positions), never past max_position_embeddings.
  const int cap = std::max(n, std::min(cfg_.max_positions, std::max(256, 2 * cache_cap_)));
  for (Layer& l : layers_) {
    std::vector<float> k(static_cast<size_t>(KV) * cap * hd), v(k.size());
    for (int g = 0; g < KV; ++g) {
      const size_t from = static_cast<size_t>(g) * cache_cap_ * hd, to = static_cast<size_t>(g) * cap * hd;
      const size_t len = static_cast<size_t>(cache_len_) * hd;
      std::copy(l.kcache.begin() + from, l.kcache.begin() + from + len, k.begin() + to);
      std::copy(l.vcache.begin() + from, l.vcache.begin() + from + len, v.begin() + to);
    }
    l.kcache.swap(k);
    l.vcache.swap(v);
  }
  cache_cap_ = cap;
}

// y_i (T, out_i) = dequant(ternary(W_i) x int8(x)) for linears W_i sharing the input x (T, in):
// y[t][m] = (q.x_q)[m] * beta / s_t. One job over all their row blocks (q/k/v, gate/up) means one
// thread-pool round trip per group, and the input is quantized once unless the linears carry
// their own inner RMSNorm (then each quantizes its normed copy).
void Model::linear_forward(std::initializer_list<std::pair<const Linear*, float*>> group, const float* x, int T) {
  const Kernels& kern = kernels();
  struct Item {
    const Linear* L;
    float* y;
    int Kp, Mp, mb_begin;
    size_t xq_off, acc_off;
    int xs;     // index of its quantized input
    bool owns;  // quantizes that input itself (else it shares item 0's)
  };
  std::vector<Item> items;
  size_t xq_total = 0, acc_total = 0;
  int mb_total = 0, n_inputs = 0;
  for (const auto& [L, y] : group) {
    Item it{L, y, (L->KB * kTileCols + kXAlign - 1) / kXAlign * kXAlign, L->MB * kTileRows, mb_total, 0, 0, 0, true};
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
    it.acc_off = acc_total;
    acc_total += static_cast<size_t>(T) * it.Mp;
    mb_total += L->MB;
    items.push_back(it);
  }
  // Scratch reused across calls (no page faults per linear); the model runs one forward at a time.
  if (scratch_xq_.size() < xq_total) scratch_xq_.resize(xq_total);
  if (scratch_acc_.size() < acc_total) scratch_acc_.resize(acc_total);
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
  pool_.parallel_for(mb_total, [&](int b, int e) {
    for (const Item& it : items) {
      const Linear& L = *it.L;
      const int mb0 = std::max(b, it.mb_begin) - it.mb_begin, mb1 = std::min(e, it.mb_begin + L.MB) - it.mb_begin;
      if (mb0 >= mb1) continue;
      const int32_t* xs = xsum.data() + static_cast<size_t>(it.xs) * T;
      int32_t* acc = scratch_acc_.data() + it.acc_off;
      kern.ternary_gemm(L.tiles, L.KB, mb0, mb1, scratch_xq_.data() + it.xq_off, it.Kp, xs, T, acc, it.Mp);
      const int m1 = std::min(L.out, mb1 * kTileRows);
      for (int t = 0; t < T; ++t) {
        const float r = L.beta * inv_s[static_cast<size_t>(it.xs) * T + t];
        for (int m = mb0 * kTileRows; m < m1; ++m)
          it.y[static_cast<size_t>(t) * L.out + m] = static_cast<float>(acc[static_cast<size_t>(t) * it.Mp + m]) * r;
      }
    }
  }, T == 1 ? 1 : 4);  // one token: one sequential stream per thread (the linears are adjacent)
}

// Causal grouped-query attention over the cache; q (T, heads*hd) already rotated.
void Model::attention(Layer& ly, const float* q, int T, int pos0, float* out) {
  const Kernels& kern = kernels();
  const int H = cfg_.heads, hd = cfg_.head_dim, group = H / cfg_.kv_heads;
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  pool_.parallel_for(T * H, [&](int b, int e) {
    std::vector<float> sc(pos0 + T);
    for (int job = b; job < e; ++job) {
      const int t = job / H, h = job % H, g = h / group;
      const size_t off = static_cast<size_t>(t) * H * hd + h * hd;
      const size_t kv = static_cast<size_t>(g) * cache_cap_ * hd;
      kern.attend(q + off, ly.kcache.data() + kv, ly.vcache.data() + kv, hd, pos0 + t + 1, hd, scale, sc.data(),
                  out + off);
    }
  });
}

void Model::head_forward(const float* h, int T, float* out) {
  const Kernels& kern = kernels();
  const int V = cfg_.vocab, C = cfg_.hidden;
  if (head_int8_) {
    const int Cp = head_cp_;
    std::vector<int8_t> xq(static_cast<size_t>(T) * Cp);
    std::vector<float> inv_s(T);
    for (int t = 0; t < T; ++t) {
      int32_t sum;
      inv_s[t] = 1.f / kern.quantize_row(h + static_cast<size_t>(t) * C, C, Cp, xq.data() + static_cast<size_t>(t) * Cp, &sum);
    }
    if (scratch_acc_.size() < static_cast<size_t>(T) * V) scratch_acc_.resize(static_cast<size_t>(T) * V);
    int32_t* acc = scratch_acc_.data();
    pool_.parallel_for(V, [&](int r0, int r1) {
      kern.head_i8(head_q_.data(), head_rowsum_.data(), Cp, r0, r1, xq.data(), T, acc, V);
      for (int t = 0; t < T; ++t)
        for (int r = r0; r < r1; ++r)
          out[static_cast<size_t>(t) * V + r] =
              static_cast<float>(acc[static_cast<size_t>(t) * V + r]) * head_scale_[r] * inv_s[t];
    }, 1);
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

void Model::forward(const int32_t* tokens, int T, int pos0, int logits_from, float* out) {
  if (T <= 0) throw std::invalid_argument("forward: no tokens");
  if (pos0 < 0 || pos0 > cache_len_) throw std::invalid_argument("forward: pos0 beyond the cached positions");
  if (pos0 + T > cfg_.max_positions)
    throw std::invalid_argument("forward: " + std::to_string(pos0 + T) + " positions exceed max_position_embeddings=" +
                                std::to_string(cfg_.max_positions));
  if (logits_from < 0 || logits_from > T) throw std::invalid_argument("forward: logits_from out of range");
  for (int t = 0; t < T; ++t)
    if (tokens[t] < 0 || tokens[t] >= cfg_.vocab)
      throw std::invalid_argument("forward: token id " + std::to_string(tokens[t]) + " outside [0, vocab_size=" +
                                  std::to_string(cfg_.vocab) + ")");
  check_complete();
  ensure_cache(pos0 + T);
  cache_len_ = pos0;  // entries past pos0 are overwritten below

  const int C = cfg_.hidden, I = cfg_.intermediate, H = cfg_.heads, KV = cfg_.kv_heads, hd = cfg_.head_dim;
  const int QD = H * hd, KVD = KV * hd, half = hd / 2;
  std::vector<float> x(static_cast<size_t>(T) * C), xn(x.size()), tmp(x.size());
  std::vector<float> q(static_cast<size_t>(T) * QD), att(q.size()), k(static_cast<size_t>(T) * KVD), v(k.size());
  std::vector<float> g(static_cast<size_t>(T) * I), u(g.size());
  for (int t = 0; t < T; ++t) embedding().row_to_f32(tokens[t], x.data() + static_cast<size_t>(t) * C);
  // RoPE tables for these positions (rotate-half convention, fp32 angles as PyTorch computes them).
  std::vector<float> cosv(static_cast<size_t>(T) * half), sinv(cosv.size());
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      const float a = static_cast<float>(pos0 + t) * rope_inv_freq_[i];
      cosv[static_cast<size_t>(t) * half + i] = std::cos(a);
      sinv[static_cast<size_t>(t) * half + i] = std::sin(a);
    }
  auto rope = [&](float* buf, int nh) {
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < nh; ++h) {
        float* p = buf + static_cast<size_t>(t) * nh * hd + h * hd;
        const float* cs = cosv.data() + static_cast<size_t>(t) * half;
        const float* sn = sinv.data() + static_cast<size_t>(t) * half;
        for (int i = 0; i < half; ++i) {
          const float a = p[i], b = p[i + half];
          p[i] = a * cs[i] - b * sn[i];
          p[i + half] = b * cs[i] + a * sn[i];
        }
      }
  };

  for (Layer& ly : layers_) {
    for (int t = 0; t < T; ++t)
      rmsnorm(&x[static_cast<size_t>(t) * C], ly.input_norm.data(), C, cfg_.eps, &xn[static_cast<size_t>(t) * C]);
    linear_forward({{&ly.q, q.data()}, {&ly.k, k.data()}, {&ly.v, v.data()}}, xn.data(), T);
    rope(q.data(), H);
    rope(k.data(), KV);
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < KV; ++g) {
        const size_t from = static_cast<size_t>(t) * KVD + g * hd, to = (static_cast<size_t>(g) * cache_cap_ + pos0 + t) * hd;
        std::copy(k.begin() + from, k.begin() + from + hd, ly.kcache.begin() + to);
        std::copy(v.begin() + from, v.begin() + from + hd, ly.vcache.begin() + to);
      }
    attention(ly, q.data(), T, pos0, att.data());
    if (cfg_.sub_norms)
      for (int t = 0; t < T; ++t) {
        float* a = &att[static_cast<size_t>(t) * QD];
        rmsnorm(a, ly.attn_sub_norm.data(), QD, cfg_.eps, a);
      }
    linear_forward({{&ly.o, tmp.data()}}, att.data(), T);
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];

    for (int t = 0; t < T; ++t)
      rmsnorm(&x[static_cast<size_t>(t) * C], ly.post_norm.data(), C, cfg_.eps, &xn[static_cast<size_t>(t) * C]);
    linear_forward({{&ly.gate, g.data()}, {&ly.up, u.data()}}, xn.data(), T);
    // The gated activation elementwise over all T * I values in blocks (one token still uses every
    // thread), then the sub-norm per token.
    constexpr size_t kActBlock = 1024;
    const size_t n_act = static_cast<size_t>(T) * I;
    pool_.parallel_for(static_cast<int>((n_act + kActBlock - 1) / kActBlock), [&](int b0, int b1) {
      const size_t end = std::min(n_act, static_cast<size_t>(b1) * kActBlock);
      for (size_t i = static_cast<size_t>(b0) * kActBlock; i < end; ++i) {
        const float a = g[i];
        // relu(a)^2 in fp32 (it overflows fp16 on real checkpoints), or silu(a) = a * sigmoid(a).
        const float act = cfg_.relu2 ? (a > 0.f ? a * a : 0.f) : a / (1.f + std::exp(-a));
        g[i] = act * u[i];
      }
    });
    if (cfg_.sub_norms)
      pool_.parallel_for(T, [&](int t0, int t1) {
        for (int t = t0; t < t1; ++t) {
          float* a = &g[static_cast<size_t>(t) * I];
          rmsnorm(a, ly.ffn_sub_norm.data(), I, cfg_.eps, a);
        }
      });
    linear_forward({{&ly.down, tmp.data()}}, g.data(), T);
    for (size_t i = 0; i < x.size(); ++i) x[i] += tmp[i];
  }
  cache_len_ = pos0 + T;

  const int n_out = T - logits_from;
  if (n_out == 0) return;
  std::vector<float> hn(static_cast<size_t>(n_out) * C);
  for (int t = 0; t < n_out; ++t)
    rmsnorm(&x[static_cast<size_t>(logits_from + t) * C], final_norm_.data(), C, cfg_.eps, &hn[static_cast<size_t>(t) * C]);
  head_forward(hn.data(), n_out, out);
}

}  // namespace bitnet
