"""Ternary weights in numpy: transformers' 2-bit packing, absmean quantization, scale detection.

Torch-free twins of :mod:`bitnet.quant` (the oracle; tests pin these against it), so the engine's
loader runs on numpy alone. Packing (../shared/FORMATS.md section 2): uint8 ``(out/4, in)``, bits
``2i..2i+1`` of ``[r, c]`` hold ``q[i*out/4 + r, c] + 1``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["WEIGHT_EPS", "pack", "unpack", "absmean_quantize", "bf16_to_f32", "row_scales_of_ternary"]

WEIGHT_EPS = 1e-5  # as bitnet.quant.WEIGHT_EPS: mean|W| clamped below


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def pack(q: np.ndarray) -> np.ndarray:
    """(out, in) integers in {-1, 0, 1} -> uint8 (out/4, in). Raises ValueError on out % 4 or a bad value."""
    out, cols = q.shape
    if out % 4:
        raise ValueError(f"out_features={out} is not a multiple of 4")
    codes = (q.astype(np.int16) + 1)
    if codes.size and (codes.min() < 0 or codes.max() > 2):
        raise ValueError("values outside {-1, 0, 1}")
    codes = codes.astype(np.uint8).reshape(4, out // 4, cols)  # (4, R, in)
    return codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)


def unpack(packed: np.ndarray) -> np.ndarray:
    """uint8 (out/4, in) -> int8 (out, in) in {-1, 0, 1}. Raises ValueError on a code 3."""
    codes = np.stack([(packed >> (2 * i)) & 3 for i in range(4)])  # (4, R, in)
    if codes.size and codes.max() > 2:
        raise ValueError("2-bit code 3 is not a ternary value")
    return (codes.astype(np.int8) - 1).reshape(-1, packed.shape[1])


def absmean_quantize(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-tensor absmean ternary quantization in fp32, as transformers' ``WeightQuant`` and
    1bitLLM's ``weight_quant`` compute it (``s = 1 / mean|W|``; ``q = clamp(round(W * s), -1, 1)``;
    ``W ~= q / s``). Returns ``(q int8 (out, in), beta = 1 / s as float32 rounds it)``."""
    wf = np.asarray(w, dtype=np.float32)
    mean = np.float32(max(np.float32(np.abs(wf, dtype=np.float32).mean(dtype=np.float64)), np.float32(WEIGHT_EPS)))
    inv = np.float32(1.0) / mean
    q = np.clip(np.rint(wf * inv), -1, 1).astype(np.int8)
    return q, float(np.float32(1.0) / inv)


def row_scales_of_ternary(w: np.ndarray, rtol: float = 0.0) -> np.ndarray | None:
    """If every row of ``w`` (out, in) is ``s_r * q_r`` with ``q_r`` ternary, its ``s_r`` (out,)
    float32 (1 for an all-zero row); else None. ``rtol`` allows a relative spread of the nonzero
    magnitudes within a row (0: exactly equal, as fp16 ternary-times-scale values are)."""
    a = np.abs(np.asarray(w, dtype=np.float32))  # (out, in)
    big = a.max(axis=1)  # (out,)
    small = np.where(a > 0, a, np.inf).min(axis=1)
    small = np.where(np.isfinite(small), small, big)
    if not np.all(big - small <= rtol * big):
        return None
    return np.where(big > 0, big, 1.0).astype(np.float32)
