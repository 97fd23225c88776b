"""Sliding-window perplexity of a text file.

The file is tokenized once (no special tokens), then scored in windows of ``context`` tokens that
start every ``stride`` tokens; each window scores only the tokens the previous one did not, so
every token after the first is scored exactly once, with up to ``context - stride`` tokens of
history (the scheme of transformers' "Perplexity of fixed-length models" guide).
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
    if context < 2:
        raise ValueError(f"context must be >= 2, got {context}")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    nll, scored, computed, prev_end = 0.0, 0, 0, 0
    starts = range(0, n, stride)
    for begin in tqdm(starts, desc="perplexity", unit="window", disable=not progress):
        end = min(begin + context, n)
        w = list(tokens[begin:end])
        first = max(len(w) - (end - prev_end), 1)  # index in w of the first token not yet scored
        rows = logits_fn(w[:-1], first - 1).astype(np.float64)  # (len(w) - first, V)
        rows -= rows.max(axis=-1, keepdims=True)
        logz = np.log(np.exp(rows).sum(axis=-1))  # (len(w) - first,)
        target = np.asarray(w[first:])
        nll += float((logz - rows[np.arange(len(target)), target]).sum())
        scored += len(target)
        computed += len(w) - 1
        prev_end = end
        if end == n:
            break
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
