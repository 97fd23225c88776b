"""Engine speed measurements: prefill / decode tokens per second, load time, peak RSS, and the
per-layer projection toward large models (``bitnet bench``; benchmarks/bench_engine.py).

Random weights are built straight in the kernels' input format (transformers' packed uint8 layout,
bf16 embeddings) so the 2B4T shape needs no file and no PyTorch model.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _C
from bitnet.config import BitNetConfig

__all__ = ["random_packed", "random_bf16", "random_model", "time_prefill_decode", "time_pp_tg", "peak_rss_bytes",
           "transparent_hugepage_mode",
           "PROJECT_SHAPES", "REAL_SHAPES", "shape_config", "project_table", "measure_read_bandwidth", "last_level_cache_bytes", "cold_decode_s"]


def random_packed(rng: np.random.Generator, out_f: int, in_f: int) -> np.ndarray:
    """Random ternary weights in transformers' packed layout: uint8 (out/4, in), no code 3."""
    x = rng.integers(0, 256, size=(out_f // 4, in_f), dtype=np.uint8)
    both = (x >> 1) & x & 0x55  # low bit of every 2-bit field that holds code 3
    return x ^ (both << 1)  # 3 (0b11) -> 1 (0b01): a zero weight


def random_bf16(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random bf16 bit patterns (as uint16) with magnitudes in [2^-7, 2^-6) and random signs."""
    v = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
    return (v & np.uint16(0x807F)) | np.uint16(120 << 7)


def random_model(cfg: BitNetConfig, threads: int, head: str = "f16", seed: int = 0,
                 layers: int | None = None, weights: str = "i2", kv_cache: str = "f32") -> Any:
    """A ``_C.Model`` of ``cfg``'s shape with random weights (``layers`` overrides the depth;
    ``weights`` is the ternary layout, "i2" or "t5"; ``kv_cache`` the KV cache's element type,
    "f32" or "f16")."""
    rng = np.random.default_rng(seed)
    n_layers = cfg.num_hidden_layers if layers is None else layers
    C, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    m = _C.Model(vocab=cfg.vocab_size, hidden=C, intermediate=I, layers=n_layers, heads=cfg.num_attention_heads,
                 kv_heads=cfg.num_key_value_heads, head_dim=hd, max_positions=cfg.max_position_embeddings,
                 eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, act=cfg.hidden_act, sub_norms=cfg.use_sub_norms,
                 inner_norm=False, threads=threads)
    m.set_weight_format(weights)
    m.set_kv_dtype(kv_cache)
    m.set_embedding(random_bf16(rng, cfg.vocab_size, C), "bf16")
    if not cfg.tie_word_embeddings:
        m.set_lm_head(random_bf16(rng, cfg.vocab_size, C), "bf16")
    ones_c, ones_i = np.ones(C, np.float32), np.ones(I, np.float32)
    m.set_norm(-1, "norm", ones_c)
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = {"self_attn.q_proj": (q, C), "self_attn.k_proj": (kv, C), "self_attn.v_proj": (kv, C),
              "self_attn.o_proj": (C, q), "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I)}
    for i in range(n_layers):
        for name in ("input_layernorm", "post_attention_layernorm"):
            m.set_norm(i, name, ones_c)
        if cfg.use_sub_norms:
            m.set_norm(i, "self_attn.attn_sub_norm", ones_c)
            m.set_norm(i, "mlp.ffn_sub_norm", ones_i)
        for name, (o, k) in shapes.items():
            m.set_linear(i, name, random_packed(rng, o, k), 0.02)
    m.set_head_mode(head)
    return m


def time_prefill_decode(model: Any, vocab: int, prompt_len: int = 128, decode_len: int = 64,
                        seed: int = 0) -> dict[str, float]:
    """Prefill ``prompt_len`` tokens (logits of the last one only, as llama.cpp does), then decode
    ``decode_len`` tokens one at a time (greedy on the engine's own logits). Returns tokens/s."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=prompt_len, dtype=np.int32)
    out = np.empty((1, vocab), np.float32)
    model.reset()
    t0 = time.perf_counter()
    model.forward(ids, 0, prompt_len - 1, out)
    t1 = time.perf_counter()
    nxt = int(out[0].argmax())
    for i in range(decode_len):
        model.forward(np.array([nxt], np.int32), prompt_len + i, 0, out)
        nxt = int(out[0].argmax())
    t2 = time.perf_counter()
    return {"prefill_tok_s": prompt_len / (t1 - t0), "decode_tok_s": decode_len / (t2 - t1),
            "prefill_s": t1 - t0, "decode_s": t2 - t1}


def time_pp_tg(model: Any, vocab: int, n_prompt: int = 128, n_gen: int = 64, reps: int = 3, depth: int = 0,
               seed: int = 0) -> dict[str, float]:
    """Prefill and decode timed the way llama-bench times ``pp<n_prompt>`` and ``tg<n_gen>``.

    Each test runs once untimed (a warm-up, which also grows the KV cache to its final size, as
    llama.cpp allocates its cache up front), then ``reps`` timed repetitions, each starting from a
    cache holding exactly ``depth`` tokens (empty at 0; llama-bench's ``-d``, filled once here):
    pp feeds ``n_prompt`` random tokens in one call and computes the last one's logits; tg feeds
    ``n_gen`` tokens one call each, every one the argmax of the previous logits. Unlike
    :func:`time_prefill_decode` (decode after the prompt, one cold run), tg starts from the empty
    (or depth-filled) cache, as llama-bench's does.

    Args:
        model: a ``_C.Model``; its cache is reset.
        vocab: its vocabulary size.
        n_prompt, n_gen: tokens of each test (0 skips that test).
        reps: timed repetitions (>= 1).
        depth: tokens in the cache before each repetition; depth + max(n_prompt, n_gen) must not
            exceed the model's max_position_embeddings.

    Returns:
        ``pp_tok_s`` / ``tg_tok_s``: the mean over repetitions of tokens/s (llama-bench's avg_ts),
        ``pp_std`` / ``tg_std``: their standard deviation, for the tests that ran.

    Raises:
        ValueError: reps < 1, or negative lengths / depth.
    """
    if reps < 1 or n_prompt < 0 or n_gen < 0 or depth < 0:
        raise ValueError(f"time_pp_tg: need reps >= 1 and lengths, depth >= 0 (got {reps}, {n_prompt}, {n_gen}, {depth})")
    rng = np.random.default_rng(seed)
    out = np.empty((1, vocab), np.float32)
    model.reset()
    if depth:
        model.forward(rng.integers(0, vocab, size=depth, dtype=np.int32), 0, depth - 1, out)

    def pp() -> float:
        ids = rng.integers(0, vocab, size=n_prompt, dtype=np.int32)
        t0 = time.perf_counter()
        model.forward(ids, depth, n_prompt - 1, out)  # pos0 = depth drops anything cached past it
        return n_prompt / (time.perf_counter() - t0)

    def tg() -> float:
        nxt = int(rng.integers(0, vocab))
        t0 = time.perf_counter()
        for i in range(n_gen):
            model.forward(np.array([nxt], np.int32), depth + i, 0, out)
            nxt = int(out[0].argmax())
        return n_gen / (time.perf_counter() - t0)

    res: dict[str, float] = {}
    for name, n, fn in (("pp", n_prompt, pp), ("tg", n_gen, tg)):
        if n == 0:
            continue
        fn()  # warm-up
        ts = np.array([fn() for _ in range(reps)])
        res[f"{name}_tok_s"], res[f"{name}_std"] = float(ts.mean()), float(ts.std(ddof=1) if reps > 1 else 0.0)
    return res


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_read_bandwidth(threads: int, nbytes: int = 1 << 30, repeats: int = 3) -> float:
    """Best-of-N multi-threaded sequential read bandwidth of this machine, bytes/s (C++), measured
    in memory allocated as the weights are (2 MiB pages where the kernel grants them)."""
    return float(_C.read_bandwidth(nbytes, threads, repeats))


@dataclass(frozen=True)
class ProjectShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int


# Llama-family shapes (the "100B" row is a 100B-parameter ternary design in the same family).
# The published ternary models' true dimensions (../shared/FORMATS.md section 3b), for
# `bitnet bench --shape NAME`: random weights at exactly these shapes (SiLU, untied 16-bit head,
# explicit head_dim for Falcon3). Names not here fall back to the presets in configs/model/.
REAL_SHAPES: dict[str, dict[str, Any]] = {
    **{f"falcon3-{n}": dict(vocab_size=131072, hidden_size=h, intermediate_size=i, num_hidden_layers=l,
                            num_attention_heads=nh, num_key_value_heads=4, head_dim=256, hidden_act="silu",
                            rope_theta=1000042.0, tie_word_embeddings=False, use_sub_norms=False,
                            max_position_embeddings=8192)
       for n, h, i, l, nh in (("1b", 2048, 8192, 18, 8), ("3b", 3072, 9216, 22, 12),
                              ("7b", 3072, 23040, 28, 12), ("10b", 3072, 23040, 40, 12))},
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", rope_theta=500000.0,
                      tie_word_embeddings=False, use_sub_norms=False, max_position_embeddings=8192),
}


def shape_config(name: str, **overrides: Any) -> BitNetConfig:
    """The :data:`REAL_SHAPES` entry ``name`` (falcon3-1b/3b/7b/10b, llama3-8b), else the preset
    configs/model/NAME.yaml (bitnet-2b4t, 700m, ...). Raises ValueError naming both lists."""
    if name in REAL_SHAPES:
        return BitNetConfig(**{**REAL_SHAPES[name], **overrides})
    try:
        return BitNetConfig.from_preset(name, **overrides)
    except FileNotFoundError:
        from bitnet.paths import list_model_presets

        presets = list_model_presets()
        raise ValueError(f"--shape {name!r}: unknown (real shapes: {', '.join(REAL_SHAPES)}; presets: "
                         f"{', '.join(presets)})") from None


PROJECT_SHAPES = (
    ProjectShape("bitnet-2b4t", 2560, 6912, 30, 20, 5, 128256),
    ProjectShape("7B", 4096, 11008, 32, 32, 32, 32000),
    ProjectShape("13B", 5120, 13824, 40, 40, 40, 32000),
    ProjectShape("70B", 8192, 28672, 80, 64, 8, 128256),
    ProjectShape("100B", 8192, 45056, 96, 64, 8, 128256),
)


THP_PATH = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_hugepage_mode(path: Path = THP_PATH) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"; the bracketed word
    of ``path``), or None where it cannot be read (not Linux). The engine asks for huge pages for
    its weights (MADV_HUGEPAGE), which "always" and "madvise" grant and "never" refuses."""
    try:
        text = path.read_text()
    except OSError:
        return None
    b, e = text.find("["), text.find("]")
    return text[b + 1 : e] if 0 <= b < e else None


def last_level_cache_bytes() -> int:
    """Size of this CPU's largest cache (Linux sysfs), or 64 MiB where it cannot be read."""
    best = 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (d / "size").read_text().strip()
        except OSError:
            continue
        digits, unit = text.rstrip("KMG"), text[len(text.rstrip("KMG")):]
        if digits.isdigit():
            best = max(best, int(digits) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(unit, 1))
    return best or 64 << 20


def cold_decode_s(model: Any, vocab: int, decode_tokens: int, flush: np.ndarray, seed: int = 0) -> float:
    """Median seconds per decoded token with the weights out of every cache: before each token,
    ``flush`` (an array twice the last-level cache) is read. A few layers of a model fit in a
    large L3; the whole model does not, so a warm measurement would flatter the projection."""
    rng = np.random.default_rng(seed)
    out = np.empty((1, vocab), np.float32)
    model.reset()
    model.forward(rng.integers(0, vocab, size=4, dtype=np.int32), 0, 3, out)
    times = []
    for i in range(decode_tokens):
        int(flush.sum())
        t0 = time.perf_counter()
        model.forward(np.array([int(out[0].argmax())], np.int32), 4 + i, 0, out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# Bytes one row of the output head takes in each head mode, by hidden size: int8 one byte per
# weight (+ a scale), int4 a 68-byte block per 128 columns (+ two 4-byte row values), f16 two bytes.
HEAD_BYTES_PER_ROW = {
    "int8": lambda c: c + 8,
    "int4": lambda c: -(-c // 128) * 68 + 8,
    "f16": lambda c: 2 * c,
}


def project_table(threads: int, layers: int = 4, decode_tokens: int = 16, head: str = "int8",
                  measure_vocab: int = 32000, weights: str = "auto") -> list[dict[str, Any]]:
    """Per-layer decode time at each shape's real matrix sizes, projected to the whole model.

    Two random models per shape (1 and 1 + ``layers`` layers, head over ``measure_vocab`` rows) are
    timed token by token with the caches flushed first (see ``cold_decode_s``); the difference gives
    the time per layer, the rest the head, which is scaled to the real vocabulary (the head is a
    memory-bound stream, linear in its rows). tokens/s = 1 / (ms_per_layer * n_layers + head_ms).
    """
    from .loader import auto_weight_format

    weights = auto_weight_format() if weights == "auto" else weights
    flush = np.ones(2 * last_level_cache_bytes() // 8, np.int64)
    rows = []
    for s in PROJECT_SHAPES:
        cfg = BitNetConfig(vocab_size=measure_vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                           num_hidden_layers=layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                           head_dim=s.hidden // s.heads, hidden_act="silu", max_position_embeddings=256,
                           tie_word_embeddings=True)
        times = {}
        for n in (1, 1 + layers):
            m = random_model(cfg, threads, head=head, layers=n, weights=weights)
            time_prefill_decode(m, measure_vocab, prompt_len=4, decode_len=2)  # warm-up: page in, grow caches
            times[n] = cold_decode_s(m, measure_vocab, decode_tokens, flush)
            del m
        per_layer = max((times[1 + layers] - times[1]) / layers, 1e-9)
        head_s = max(times[1] - per_layer, 0.0) * s.vocab / measure_vocab
        total = per_layer * s.layers + head_s
        kv = s.hidden * s.kv_heads // s.heads
        params = s.layers * (s.hidden * (2 * s.hidden + 2 * kv) + 3 * s.hidden * s.intermediate)
        head_bytes = s.vocab * HEAD_BYTES_PER_ROW[head](s.hidden)
        ternary_bytes = params / (5 if weights == "t5" else 4)  # 1.6 or 2 bits per weight
        rows.append({"model": s.name, "layers": s.layers, "ternary_params_B": params / 1e9, "weights": weights,
                     "ms_per_layer": per_layer * 1e3, "head_ms": head_s * 1e3, "tok_s": 1.0 / total,
                     "weight_GB": (ternary_bytes + head_bytes) / 1e9})
    return rows
