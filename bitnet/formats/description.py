"""The one in-memory description of a ternary model that every reader yields.

Each source format (a transformers-style directory in one of the published families, a GGUF file)
has a reader that turns it into a :class:`TernaryModel`; the C++ engine (``bitnet.inference.loader``)
and the PyTorch model (``bitnet.export.load_model``) both build from this description, so family
rules live in the readers alone. Conventions inside: scales multiply (``w ~= q * beta``), ternary
codes in transformers' packing (uint8 ``(out/4, in)``), RoPE in the rotate-half order.

Numpy only (no torch): the engine runs without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitnet.config import BitNetConfig

__all__ = ["EXTENSIONS", "LINEAR_NAMES", "LAYER_NORM_NAMES", "Table", "TernaryLinear", "TernaryModel"]

LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Norms of one decoder layer, by our (transformers BitNet) names; the sub-norms only with use_sub_norms.
LAYER_NORM_NAMES = ("input_layernorm", "post_attention_layernorm", "self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
# What bitnet distill's exports may add to the 2B4T layout (training/distill_export.py documents them).
EXTENSIONS = ("attention_bias", "qk_norm")


@dataclass
class Table:
    """A (rows, cols) 16/32-bit float table the engine borrows: ``dtype`` "bf16" (uint16 bit
    patterns), "f16" or "f32". ``release(r0, r1)``, when set, drops the file pages of rows [r0, r1)
    once the engine no longer needs them (a memory-mapped source)."""

    array: np.ndarray
    dtype: str
    release: Callable[[int, int], None] | None = None

    def to_f32(self) -> np.ndarray:
        """(rows, cols) float32 copy."""
        if self.dtype == "bf16":
            return (self.array.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(self.array, dtype=np.float32)


@dataclass
class TernaryLinear:
    """One ternary linear: ``w ~= unpack(packed) * beta`` (times ``row_scale[m]`` on row m when set).

    packed: uint8 (out/4, in) in transformers' packing. beta: multiply convention.
    row_scale: (out,) float32 or None (TriLM's one scale per model-parallel shard of rows).
    norm: (in,) float32 RMSNorm applied to the input first (``use_rms_norm``), or None.
    release: drop the source pages of ``packed`` once repacked (None: nothing to drop).
    where: the source file and tensor name, for messages.
    bias: (out,) float32 added to the scaled output, or None (the ``attention_bias`` extension).
    """

    packed: np.ndarray
    beta: float
    row_scale: np.ndarray | None = None
    norm: np.ndarray | None = None
    release: Callable[[], None] | None = None
    where: str = ""  # "<file>: <tensor>" for error messages
    bias: np.ndarray | None = None  # (out,) float32 added after the scaling (bitnet distill's Qwen2 students)


@dataclass
class TernaryModel:
    """A ternary causal LM as the engine and the PyTorch model build it.

    ``linear(i, name)`` produces layer i's linear ``name`` (one of :data:`LINEAR_NAMES`) on demand,
    so a reader that quantizes or repacks at load holds one tensor at a time. ``layer_norms[i]``
    maps :data:`LAYER_NORM_NAMES` (those present; plus the q/k norms of the ``qk_norm``
    extension) to float32 vectors. ``lm_head`` is None when tied.
    ``rope_inv_freq`` is None for the default RoPE of ``config.rope_theta``. ``notes`` is the load
    log (what was read and decided, one line each). ``keep`` holds objects (file mappings) that
    must outlive the tables borrowed from them.
    """

    config: BitNetConfig
    family: str
    source: Path
    embed: Table
    lm_head: Table | None
    final_norm: np.ndarray
    layer_norms: list[dict[str, np.ndarray]]
    linear: Callable[[int, str], TernaryLinear]
    inner_eps: float
    rope_inv_freq: np.ndarray | None = None
    tokenizer: Callable[[], Any] | None = None  # () -> tokenizers.Tokenizer, or None without one
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    keep: list[Any] = field(default_factory=list)
    check_unused: Callable[[], None] | None = None  # raises ValueError naming tensors nothing used
    # bitnet distill's documented additions to the 2B4T layout (config.json "bitnet_extensions"):
    # "attention_bias" (Qwen2: TernaryLinear.bias on the attention linears) and "qk_norm" (Qwen3:
    # layer_norms "self_attn.q_norm" / "self_attn.k_norm", per-head RMSNorm of Q and K before RoPE)
    extensions: list[str] = field(default_factory=list)
