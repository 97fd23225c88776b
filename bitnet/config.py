"""BitNetConfig: the model's hyper-parameters and their transformers ``config.json`` form.

Torch-free on purpose: the C++ engine (``bitnet.inference``) reads configs with it and runs on numpy
alone. Field names follow transformers' ``BitNetConfig``; ``linear_type``, ``use_sub_norms`` and
``use_rms_norm`` are ours (the full-precision twin and the Llama-architecture ternary layout).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BitNetConfig", "HIDDEN_ACTS", "LINEAR_TYPES", "read_config_json"]

HIDDEN_ACTS = ("relu2", "silu")
LINEAR_TYPES = ("bitlinear", "fp")

# Keys of transformers' config.json that we read but do not model: accepted silently on load.
_HF_IGNORED_KEYS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "attention_dropout", "attention_bias", "quantization_config", "rope_parameters",
    "auto_map", "_name_or_path", "pretraining_tp", "mlp_bias", "rope_type", "output_attentions",
    "output_hidden_states", "return_dict", "chunk_size_feed_forward", "is_encoder_decoder",
    "is_bitnet_config",  # HF1BitLLM's marker; the quantization_config says the same
}


def read_config_json(path: str | Path) -> dict[str, Any]:
    """Read a ``config.json`` (a directory is accepted and its config.json read) into a dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON, or not a JSON object (naming the file).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"no config.json at {p}")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: not a JSON object")
    return d


def _check_positive(key: str, value: Any, types: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, types) or not value > 0:
        kind = "integer" if types is int else "number"
        raise ValueError(f"{key} must be a positive {kind}, got {value!r}")


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
    rope_scaling: dict[str, Any] | None = None  # transformers' rope_scaling ("llama3", "linear"); None = plain RoPE
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        """Raises ValueError naming the field when a value is of the wrong type or inconsistent."""
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings"):
            _check_positive(key, getattr(self, key), int)
        if self.head_dim is not None:
            _check_positive("head_dim", self.head_dim, int)
        for key in ("rms_norm_eps", "rope_theta"):
            _check_positive(key, getattr(self, key), (int, float))
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
        from .formats.rope import check_rope_scaling

        check_rope_scaling(self.rope_scaling)
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
        # transformers 5 folds rope_scaling into rope_parameters; 4.x writes rope_scaling
        scaling = d.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) in ("default", None):
            scaling = None
        kw["rope_scaling"] = dict(scaling) if isinstance(scaling, dict) else scaling
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
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"} if self.rope_scaling is None
            else {**self.rope_scaling, "rope_theta": self.rope_theta},
            "rope_scaling": self.rope_scaling,
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
        d = read_config_json(p)
        try:
            return cls.from_hf_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{p / 'config.json' if p.is_dir() else p}: {e}") from None

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
