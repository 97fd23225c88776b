"""RoPE inverse frequencies, including transformers' ``rope_scaling`` types ``llama3`` and ``linear``.

One function used by the PyTorch model and the engine, so the two rotate alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["SUPPORTED_ROPE_TYPES", "rope_inv_freq", "check_rope_scaling"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def check_rope_scaling(scaling: dict[str, Any] | None) -> None:
    """Raise ValueError naming the field unless ``scaling`` is None or a supported rope_scaling dict."""
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be an object, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_scaling.rope_type {kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
    need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                             "original_max_position_embeddings")}.get(kind, ())
    for key in need:
        v = scaling.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"rope_scaling.{key} must be a positive number for rope_type {kind!r}, got {v!r}")
    if kind == "llama3" and scaling["high_freq_factor"] == scaling["low_freq_factor"]:
        raise ValueError("rope_scaling: high_freq_factor must differ from low_freq_factor")


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> np.ndarray:
    """(head_dim/2,) float32: ``1 / theta^(2i/head_dim)``, then rescaled as transformers'
    ``_compute_llama3_parameters`` / linear scaling do (the attention factor of both is 1)."""
    check_rope_scaling(scaling)
    inv = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    inv = inv.astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor, lo, hi = (float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
        old = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old / lo, old / hi
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv
