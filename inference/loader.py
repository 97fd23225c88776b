"""Build the C++ engine from a :class:`~bitnet.formats.TernaryModel` (any source format).

The readers in :mod:`bitnet.formats` turn each source (a transformers-style directory of any
published ternary family, a GGUF file) into one description; this module only hands that
description to the C++ model: ternary linears repacked once (and their source pages released), norms
copied, 16-bit tables borrowed from the file mapping, the head quantized or copied chunk by chunk.
The C++ side checks every shape again, so a hostile file raises ``ValueError`` and is never read
out of bounds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bitnet.config import BitNetConfig
from bitnet.formats import LINEAR_NAMES, TernaryModel, read_model
from bitnet.formats.safetensors import SafetensorsFile, WeightSet, to_f32

from . import _C

__all__ = ["SafetensorsFile", "WeightSet", "open_weights", "build_model", "to_f32", "LINEAR_NAMES"]

HEAD_CHUNK_ROWS = 8192  # rows of the head quantized or copied (and their file pages released) at a time


WEIGHT_FORMATS = ("auto", "i2", "t5")


def auto_weight_format() -> str:
    """The ternary weight layout ``weights="auto"`` loads on this machine.

    "t5" (5 trits per byte, 1.6 bits per weight) where the kernels in use decode it with AVX-512
    VBMI byte tables (the avx512 path on Ice Lake / Zen 4 and later), "i2" (2 bits) everywhere else.
    A rule, not a timing at load: a timing small enough to be quick sits in the cache (it measures
    arithmetic, not the memory-bound decode), one large enough to stream costs seconds per load, and
    both are noisy on a shared machine. The rule comes from inference/csrc/selftest/t5_bench.cpp
    (2B4T's linears, formats alternating in one run; Xeon with AVX-512 VNNI + VBMI, no AMX, 2.3 GHz,
    shared with other jobs, so 1-thread figures in thread CPU time):
    avx512: decode i2 42.8 ms / t5 36.3 ms per token (t5 -15%), prefill of 128 tokens 103 / 116
    tok/s (t5 +13%: a row block is decoded once for all tokens); 2 threads (wall time, loaded
    machine) decode 101 / 83 ms. The t5 decode kernel computes 14.8 GB/s of weights per core in
    cache (i2: 32 GB/s): its decode is at least as fast as i2's while one core streams under
    18.5 GB/s from memory (14.8 x 521 / 417 MB), and t5 keeps its prefill and 20% memory gains.
    avx2: decode 54 / 84 ms, prefill 36 / 23 tok/s: base-3 arithmetic without byte tables is
    compute-bound, so i2. NEON: unmeasured on hardware, so i2. AMX (whose CPUs all have VBMI): one
    token runs the avx512 kernels, several tokens the AMX tiles for both formats (kernels_amx.cpp);
    t5_bench, one core of a Xeon with AMX: decode i2 36.0 / t5 27.5 ms per token, 8 tokens 59 / 54
    ms, 128 tokens 252 / 254 ms, so t5.
    """
    isa, feats = _C.current_isa(), _C.cpu_features()
    return "t5" if isa in ("avx512", "amx") and feats.get("avx512_vbmi", False) else "i2"


# Element types of the engine's KV cache: "f32" (exact against the PyTorch reference) or "f16"
# (rows rounded to nearest-even fp16 when written: half the memory and attention reads per position).
KV_CACHE_DTYPES = ("f32", "f16")


def build_model(source: str | Path | TernaryModel, threads: int, head: str,
                weights: str = "i2", kv_cache: str = "f32") -> tuple[Any, TernaryModel]:
    """Build the C++ model from a description (or a local path, read with :func:`bitnet.formats.read_model`).

    ``weights`` is the ternary layout the linears are repacked into: "i2" or "t5" (see
    :func:`auto_weight_format`); the logits are the same in both (the integer products are exact).
    ``kv_cache`` is the KV cache's element type, one of :data:`KV_CACHE_DTYPES`.

    Returns ``(model, description)``; the description must stay alive as long as the model (the
    engine borrows 16-bit tables from its file mapping).
    """
    desc = source if isinstance(source, TernaryModel) else read_model(source)
    cfg: BitNetConfig = desc.config
    model = _C.Model(
        vocab=cfg.vocab_size, hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, layers=cfg.num_hidden_layers,
        heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
        max_positions=cfg.max_position_embeddings, eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        act=cfg.hidden_act, sub_norms=cfg.use_sub_norms, inner_norm=cfg.use_rms_norm, inner_eps=desc.inner_eps,
        threads=threads,
    )
    model.set_weight_format(weights)
    model.set_kv_dtype(kv_cache)
    if desc.rope_inv_freq is not None:
        model.set_rope_inv_freq(np.ascontiguousarray(desc.rope_inv_freq, dtype=np.float32))
    model.set_embedding(desc.embed.array, desc.embed.dtype)
    if desc.lm_head is not None:
        model.set_lm_head(desc.lm_head.array, desc.lm_head.dtype)
    model.set_norm(-1, "norm", np.ascontiguousarray(desc.final_norm, dtype=np.float32))
    for i in range(cfg.num_hidden_layers):
        for name, w in desc.layer_norms[i].items():
            model.set_norm(i, name, np.ascontiguousarray(w, dtype=np.float32))
        for lin in LINEAR_NAMES:
            t = desc.linear(i, lin)
            norm = None if t.norm is None else np.ascontiguousarray(t.norm, dtype=np.float32)
            model.set_linear(i, lin, np.ascontiguousarray(t.packed), float(t.beta), norm)
            if t.bias is not None:  # the attention_bias extension: added after the scaling
                model.set_norm(i, lin + ".bias", np.ascontiguousarray(t.bias, dtype=np.float32))
            if t.row_scale is not None:
                model.set_row_scales(i, lin, np.ascontiguousarray(t.row_scale, dtype=np.float32))
            if t.release is not None:
                t.release()  # the engine holds its own repacked copy now
    model.check_complete()
    # The head is built in chunks, each chunk's file pages dropped at once, so peak memory stays at
    # the ternary weights + one head: int8 / int4 quantize it (embedding lookups and int4's exact
    # rescoring page single rows back in later); f16 copies it into huge pages the decode streams
    # faster than the page cache.
    prepare = {"int8": model.quantize_head_rows, "int4": model.quantize_head_rows_int4}.get(head, model.copy_head_rows)
    table = desc.lm_head if desc.lm_head is not None else desc.embed
    for r0 in range(0, cfg.vocab_size, HEAD_CHUNK_ROWS):
        r1 = min(cfg.vocab_size, r0 + HEAD_CHUNK_ROWS)
        prepare(r0, r1)
        if table.release is not None:
            table.release(r0, r1)
    model.set_head_mode(head)
    return model, desc


def open_weights(directory: str | Path) -> WeightSet:
    return WeightSet(Path(directory))


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
