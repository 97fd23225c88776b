"""One generation step for one sequence: sample, stop check, incremental detokenize.

    gen = Generation(params, prompt_ids, tokenizer, ctx_limit=2048)
    out = gen.step(logits_row)        # StepOutput(token, text, finish_reason)

``Engine.generate`` / ``Engine.stream`` (one sequence, its own loop) and the scheduler (many
sequences, one batched step) both advance a sequence through :meth:`Generation.step`, so a request
gets the same tokens and the same text pieces either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sampling import SamplingParams, sample, sample_rows
from .textstream import TextStream

__all__ = ["Generation", "StepOutput", "common_prefix", "sample_batch"]


def common_prefix(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(diff[0]) if diff.size else n


@dataclass(frozen=True)
class StepOutput:
    """What one step produced.

    ``token``: the sampled token (None when it was an end token, which is not part of the output).
    ``text``: new text safe to show (may be ""). ``finish_reason``: None while the sequence goes on;
    "stop" (an end token, or a stop string completed by ``token``: its text is cut before the stop
    string) or "length" (``max_tokens`` or the context is full).
    """

    token: int | None
    text: str
    finish_reason: str | None = None


class Generation:
    """A sequence's decoding state: its rng, all its ids (prompt + generated) and its text stream.

    Args:
        params: sampling and stopping settings (already checked).
        prompt_ids: the prompt (the repetition penalty's context starts with it).
        tokenizer: a ``tokenizers.Tokenizer`` for text and stop strings, or None (token ids only;
            then ``params.stop`` must be empty).
        ctx_limit: the sequence ends ("length") once prompt + generated reach this many positions.
    """

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], tokenizer: Any, ctx_limit: int) -> None:
        if params.stop and tokenizer is None:
            raise ValueError("stop strings need a tokenizer; this export has no tokenizer.json")
        self.params = params
        self.rng = params.rng()
        self.ids = [int(t) for t in prompt_ids]
        self.n_prompt = len(self.ids)
        self.n_gen = 0
        self.ctx_limit = ctx_limit
        self.text = TextStream(tokenizer, params.stop) if tokenizer is not None else None
        self.stop_ids = frozenset() if params.ignore_eos else params.stop_token_ids
        self._seen = set(self.ids) if params.repetition_penalty != 1.0 else None

    @property
    def done_by_length(self) -> bool:
        """Nothing may be generated: ``max_tokens`` reached or the context is full."""
        m = self.params.max_tokens
        return (m is not None and self.n_gen >= m) or len(self.ids) >= self.ctx_limit

    def context(self) -> np.ndarray | tuple[()]:
        """The repetition penalty's context (the distinct ids so far), () when no penalty applies."""
        return np.fromiter(self._seen, dtype=np.int64, count=len(self._seen)) if self._seen else ()

    def step(self, logits: np.ndarray) -> StepOutput:
        """Sample the next token from ``logits`` (vocab,) and say what it means for the output.

        Raises:
            ValueError: the logits are not finite (from :func:`~bitnet.inference.sampling.sample`).
        """
        return self.advance(sample(logits, self.params, self.rng, self.context()))

    def advance(self, nxt: int) -> StepOutput:
        """:meth:`step` once its token is sampled (``nxt``: what ``step`` would sample; see
        :func:`sample_batch`): stop check, bookkeeping, incremental detokenize."""
        if nxt in self.stop_ids:
            return StepOutput(None, self.text.flush() if self.text else "", "stop")
        self.n_gen += 1
        self.ids.append(nxt)
        if self._seen is not None:
            self._seen.add(nxt)
        piece = self.text.push(nxt) if self.text is not None else ""
        if self.text is not None and self.text.stopped:
            return StepOutput(nxt, piece, "stop")
        if self.done_by_length:
            return StepOutput(nxt, piece + (self.text.flush() if self.text else ""), "length")
        return StepOutput(nxt, piece)


def sample_batch(gens: Sequence[Generation | None], logits: np.ndarray) -> list[int | Exception | None]:
    """The token each generation's :meth:`Generation.step` would sample from its row of ``logits``
    (len(gens), vocab), drawing from its generator as ``step`` does (or the exception ``step`` would
    raise; None where ``gens[i]`` is None); then ``gens[i].advance(token)`` completes the step
    (:func:`~bitnet.inference.sampling.sample_rows`). The scheduler samples a whole batch before any
    bookkeeping, detokenizing or delivering."""
    return sample_rows(logits, [g.params if g is not None else None for g in gens],
                       [g.rng if g is not None else None for g in gens],
                       [g.context() if g is not None else () for g in gens])
