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

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BitLinear, RMSNorm

__all__ = ["BitNetConfig", "BitNetForCausalLM", "BitNetModel"]

HIDDEN_ACTS = ("relu2", "silu")
LINEAR_TYPES = ("bitlinear", "fp")

# Keys of transformers' config.json that we read but do not model: accepted silently on load.
_HF_IGNORED_KEYS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "attention_dropout", "attention_bias", "quantization_config", "rope_parameters", "rope_scaling",
    "auto_map", "_name_or_path", "pretraining_tp", "mlp_bias", "rope_type", "output_attentions",
    "output_hidden_states", "return_dict", "chunk_size_feed_forward", "is_encoder_decoder",
}


@dataclass
class BitNetConfig:
    """Model hyper-parameters; field names follow transformers' ``BitNetConfig``.

    ``linear_type``, ``use_sub_norms`` and ``use_rms_norm`` are ours: they select the full-precision
    twin and the Llama-architecture ternary layout. ``head_dim`` defaults to hidden / heads.
    """

    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1376
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "relu2"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    linear_type: str = "bitlinear"
    use_sub_norms: bool = True
    use_rms_norm: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by "
                    f"num_attention_heads={self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act must be one of {HIDDEN_ACTS}, got {self.hidden_act!r}")
        if self.linear_type not in LINEAR_TYPES:
            raise ValueError(f"linear_type must be one of {LINEAR_TYPES}, got {self.linear_type!r}")

    # ------------------------------------------------------------------ (de)serialization
    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, strict: bool = True) -> "BitNetConfig":
        """Build from our own dict (YAML presets, checkpoints). Unknown keys raise if ``strict``."""
        unknown = set(d) - cls.field_names()
        if unknown and strict:
            raise ValueError(f"unknown BitNetConfig keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in cls.field_names()})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "BitNetConfig":
        """Read a transformers ``config.json`` dict (``bitnet`` or ``llama`` model_type).

        Raises:
            ValueError: unsupported ``model_type`` / ``hidden_act``, or missing required keys.
        """
        model_type = d.get("model_type", "bitnet")
        if model_type not in ("bitnet", "llama"):
            raise ValueError(f"unsupported model_type {model_type!r} (expected 'bitnet' or 'llama')")
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"config.json is missing required keys: {missing}")
        kw: dict[str, Any] = {k: d[k] for k in cls.field_names() if k in d}
        rope = d.get("rope_parameters") or {}
        if "rope_theta" not in kw and "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", "default") if rope else (d.get("rope_scaling") or {}).get("rope_type", "default")
        if rope_type not in ("default", None):
            raise ValueError(f"unsupported rope_type {rope_type!r}: only the default RoPE is implemented")
        eos = kw.get("eos_token_id")
        if isinstance(eos, list):
            kw["eos_token_id"] = eos[0] if eos else None
        qc = d.get("quantization_config") or {}
        if model_type == "llama":
            kw.setdefault("hidden_act", d.get("hidden_act", "silu"))
            kw["use_sub_norms"] = False
            kw["use_rms_norm"] = bool(qc.get("use_rms_norm", False))
            kw.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", False))
        else:
            kw.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", False))
            kw["use_rms_norm"] = bool(qc.get("use_rms_norm", False))
        if not qc and "linear_type" not in d:
            kw.setdefault("linear_type", "bitlinear")
        extra = {k: v for k, v in d.items() if k not in cls.field_names() and k not in _HF_IGNORED_KEYS}
        cfg = cls(**kw)
        cfg.extra = extra
        return cfg

    def to_hf_dict(self, dtype: str = "bfloat16") -> dict[str, Any]:
        """A transformers ``config.json`` dict with every field written (never rely on defaults).

        ``quantization_config`` is not included: the exporter adds it for the layout it writes.
        """
        arch = "BitNetForCausalLM" if self.use_sub_norms else "LlamaForCausalLM"
        d: dict[str, Any] = {
            "architectures": [arch],
            "model_type": "bitnet" if self.use_sub_norms else "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_cache": True,
            "torch_dtype": dtype,
        }
        if not self.use_sub_norms:
            d["mlp_bias"] = False
        return d

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "BitNetConfig":
        """Read a transformers ``config.json`` file (a directory is accepted and its config.json read)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {p}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        try:
            return cls.from_hf_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{p}: {e}") from None

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "BitNetConfig":
        """Load ``configs/model/NAME.yaml`` (e.g. ``test-tiny``, ``10m``, ``25m``, ``bitnet-2b4t``)."""
        from .paths import load_model_preset

        d = load_model_preset(name)
        d.update(overrides)
        return cls.from_dict(d)

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameter count of the model this config builds (tied head counted once)."""
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q = self.num_attention_heads * hd
        kv = self.num_key_value_heads * hd
        per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
        if self.use_sub_norms:
            per_layer += h + i
        n = self.num_hidden_layers * per_layer + h
        if include_embeddings:
            n += self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return n


def _linear(cfg: BitNetConfig, in_f: int, out_f: int) -> nn.Linear:
    if cfg.linear_type == "fp":
        return nn.Linear(in_f, out_f, bias=False)
    return BitLinear(in_f, out_f, bias=False, use_rms_norm=cfg.use_rms_norm, rms_norm_eps=cfg.rms_norm_eps)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotate-half RoPE: positions (T,) -> two (T, head_dim) tensors in ``dtype``."""
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
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, dtype)  # (T, hd)
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
