"""The BitNet b1.58 transformer in one readable file.

Architecture = Llama (pre-norm RMSNorm, RoPE in the rotate-half convention, grouped-query attention,
no biases) plus BitNet's two sub-norms: ``self_attn.attn_sub_norm`` on the attention output before
``o_proj`` and ``mlp.ffn_sub_norm`` on ``act(gate) * up`` before ``down_proj``. Every projection is a
``BitLinear`` (or ``nn.Linear`` when ``linear_type == "fp"``, the full-precision twin used for
comparisons). Parameter names equal transformers' ``BitNetForCausalLM`` state-dict keys.

``use_sub_norms=False`` with ``use_rms_norm=True`` gives the Llama-architecture ternary layout
(an RMSNorm inside every linear instead of sub-norms), as in Falcon3-*-1.58bit / Llama3-8B-1.58.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import BitNetConfig
from .layers import BitLinear, RMSNorm

__all__ = ["BitNetConfig", "BitNetForCausalLM", "BitNetModel"]

def _linear(cfg: BitNetConfig, in_f: int, out_f: int) -> nn.Linear:
    if cfg.linear_type == "fp":
        return nn.Linear(in_f, out_f, bias=False)
    return BitLinear(in_f, out_f, bias=False, use_rms_norm=cfg.use_rms_norm, rms_norm_eps=cfg.rms_norm_eps)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype, scaling: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotate-half RoPE: positions (T,) -> two (T, head_dim) tensors in ``dtype``.

    ``scaling``: transformers' ``rope_scaling`` ("llama3", "linear"; see bitnet.formats.rope)."""
    if scaling is not None:
        from .formats.rope import rope_inv_freq

        inv_freq = torch.from_numpy(rope_inv_freq(head_dim, theta, scaling)).to(positions.device)
    else:
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd), cos/sin (T, hd) -> (B, H, T, hd)."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, cfg: BitNetConfig) -> None:
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = _linear(cfg, cfg.hidden_size, self.n_head * self.head_dim)
        self.k_proj = _linear(cfg, cfg.hidden_size, self.n_kv * self.head_dim)
        self.v_proj = _linear(cfg, cfg.hidden_size, self.n_kv * self.head_dim)
        self.o_proj = _linear(cfg, self.n_head * self.head_dim, cfg.hidden_size)
        # transformers' BitNet normalizes over hidden_size; heads * head_dim equals it for every
        # published BitNet shape.
        self.attn_sub_norm = RMSNorm(self.n_head * self.head_dim, cfg.rms_norm_eps) if cfg.use_sub_norms else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv != self.n_head:
            rep = self.n_head // self.n_kv
            k = k.repeat_interleave(rep, dim=1)  # (B, H, T, hd)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, H*hd)
        if self.attn_sub_norm is not None:
            y = self.attn_sub_norm(y)
        return self.o_proj(y)  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: BitNetConfig) -> None:
        super().__init__()
        self.gate_proj = _linear(cfg, cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = _linear(cfg, cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = _linear(cfg, cfg.intermediate_size, cfg.hidden_size)
        self.ffn_sub_norm = RMSNorm(cfg.intermediate_size, cfg.rms_norm_eps) if cfg.use_sub_norms else None
        self.act = cfg.hidden_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate_proj(x)  # (B, T, I)
        # ReLU^2 overflows fp16 on real checkpoints; callers use fp32 or bf16.
        g = F.relu(g).square() if self.act == "relu2" else F.silu(g)
        h = g * self.up_proj(x)  # (B, T, I)
        if self.ffn_sub_norm is not None:
            h = self.ffn_sub_norm(h)
        return self.down_proj(h)  # (B, T, C)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: BitNetConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class BitNetModel(nn.Module):
    def __init__(self, cfg: BitNetConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class BitNetForCausalLM(nn.Module):
    """The BitNet causal LM. ``model(input_ids)`` -> logits ``(B, T, vocab)`` in float32.

    ``state_dict()`` keys equal those of ``transformers.BitNetForCausalLM`` for the same config
    (``lm_head.weight`` is present and shares storage with the embedding when tied).
    """

    def __init__(self, config: BitNetConfig) -> None:
        super().__init__()
        self.config = config
        self.model = BitNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) for linears and embeddings, ones for norms (as transformers)."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """input_ids (B, T) int64 -> logits (B, T, vocab) float32. ``start_pos`` offsets RoPE positions."""
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        positions = torch.arange(start_pos, start_pos + T, device=input_ids.device)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, dtype,
                                self.config.rope_scaling)  # (T, hd)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        return self.lm_head(x).float()  # (B, T, V)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy; ``labels`` (B, T) already shifted, -100 ignored."""
        logits = self(input_ids)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_token_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reference sampling loop (no KV cache: recomputes the window each step; small models only).

        input_ids (1, T) -> (1, T + n) with n <= max_new_tokens. ``temperature == 0`` is greedy.
        """
        ids = input_ids
        ctx = self.config.max_position_embeddings
        for _ in range(max_new_tokens):
            logits = self(ids[:, -ctx:])[:, -1, :]  # (1, V)
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            ids = torch.cat([ids, nxt], dim=1)
            if eos_token_id is not None and int(nxt) == eos_token_id:
                break
        return ids

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        seen: set[int] = set()
        n = 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embeddings and ("embed_tokens" in name or "lm_head" in name)):
                continue
            seen.add(id(p))
            n += p.numel()
        return n
