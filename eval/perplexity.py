"""Sliding-window perplexity of a text file.

The file is tokenized once (no special tokens) and every token after the first is scored exactly
once, in chunks of ``stride`` tokens; each chunk is predicted by one forward pass over at most
``context`` input tokens that end just before its last token, so every scored token sees at least
``context - stride + 1`` tokens of history (all of it near the start). ``stride == context`` is the
cheapest (non-overlapping windows); smaller strides give more history per token at more compute.
This is the scheme of transformers' "Perplexity of fixed-length models" guide, indexed so that no
token is left unscored at a window boundary.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .backends import load_backend, load_tokenizer

__all__ = ["sliding_window_nll", "perplexity", "read_text"]

# logits_fn(tokens (T,), start) -> float32 logits (T - start, V): the backend interface's logits().
LogitsFn = Callable[[Sequence[int], int], np.ndarray]


def read_text(path: str | Path) -> str:
    """The file's text (UTF-8). Raises FileNotFoundError / ValueError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: text file not found")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text ({e})") from None


def sliding_window_nll(
    tokens: Sequence[int], logits_fn: LogitsFn, context: int, stride: int, progress: bool = False
) -> tuple[float, int, int]:
    """Sum of negative log-likelihoods (nats) of ``tokens[1:]`` scored in sliding windows.

    Returns ``(nll_sum, tokens_scored, positions_computed)``; perplexity is
    ``exp(nll_sum / tokens_scored)``.

    Raises:
        ValueError: fewer than 2 tokens, ``context < 2``, or ``stride`` outside ``[1, context]``.
    """
    n = len(tokens)
    if n < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n}")
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    nll, scored, computed = 0.0, 0, 0
    for s in tqdm(range(1, n, stride), desc="perplexity", unit="window", disable=not progress):
        e = min(s + stride, n)  # this chunk scores tokens s..e-1
        b = max(0, e - 1 - context)  # the window's input is tokens[b:e-1], at most `context` tokens
        rows = logits_fn(list(tokens[b:e - 1]), s - 1 - b).astype(np.float64)  # (e - s, V)
        rows -= rows.max(axis=-1, keepdims=True)
        logz = np.log(np.exp(rows).sum(axis=-1))  # (e - s,)
        target = np.asarray(tokens[s:e])
        nll += float((logz - rows[np.arange(len(target)), target]).sum())
        scored += len(target)
        computed += e - 1 - b
    return nll, scored, computed


def perplexity(
    model_dir: str | Path,
    file: str | Path,
    context: int | None = None,
    stride: int | None = None,
    backend: str = "engine",
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Perplexity of ``file`` under the model in ``model_dir``.

    ``context`` defaults to the model's ``max_position_embeddings`` and ``stride`` to half of it.
    Returns a dict: ``perplexity``, ``nll_per_token`` (nats), ``tokens`` (scored), ``seconds``
    (wall time of the scoring loop), ``tokens_per_s`` (scored tokens per second of that time),
    ``positions_per_s`` (positions the model computed per second), ``context``, ``stride``.

    Raises:
        FileNotFoundError: missing model dir, tokenizer.json or text file.
        ValueError: bad context / stride, text too short, unknown backend.
    """
    text = read_text(file)
    tok = load_tokenizer(model_dir)
    model = load_backend(model_dir, backend, threads=threads)
    context = int(context or model.max_length)
    if context > model.max_length:
        raise ValueError(f"context={context} exceeds the model's max_position_embeddings={model.max_length}")
    stride = int(stride or max(context // 2, 1))
    tokens = tok.encode(text, add_special_tokens=False).ids
    if len(tokens) < 2:
        raise ValueError(f"{file}: too short to score ({len(tokens)} tokens)")
    t0 = time.perf_counter()
    nll, scored, computed = sliding_window_nll(
        tokens, lambda ids, start: model.logits(ids, start=start), context, stride, progress=progress
    )
    seconds = time.perf_counter() - t0
    return {
        "file": str(file),
        "model_dir": str(model_dir),
        "backend": backend,
        "perplexity": math.exp(nll / scored),
        "nll_per_token": nll / scored,
        "tokens": scored,
        "seconds": seconds,
        "tokens_per_s": scored / seconds if seconds > 0 else float("inf"),
        "positions_per_s": computed / seconds if seconds > 0 else float("inf"),
        "context": context,
        "stride": stride,
    }
