"""Sampling parameters (validated once) and the next-token sampler.

    params = SamplingParams(temperature=0.8, top_p=0.95, seed=7, max_tokens=64)   # ValueError if out of range
    rng = params.rng()
    token = sample(logits_row, params, rng)                                         # logits_row: (vocab,) float32

One :class:`SamplingParams` is what ``bitnet serve`` (from the HTTP body), ``bitnet generate`` /
``bitnet chat`` (from the flags) and :meth:`Engine.generate` build; every value is checked when it
is made (finite numbers, ranges), so the engine thread never meets a NaN temperature or a seed numpy
refuses.

:func:`sample` is the fast path: float32 throughout, top-k by a partial sort (``np.argpartition``),
top-p on the few tokens that can be in the nucleus, one uniform draw per token (inverse CDF over the
kept tokens). :func:`sample_reference` is the readable twin (float64, full sort), kept next to it;
``tests/inference/test_sampling.py`` checks both against transformers' logits processors and each
other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

__all__ = ["SamplingParams", "SamplingError", "sample", "sample_rows", "sample_reference", "kept_probs",
           "kept_probs_reference", "MIN_TEMPERATURE", "MAX_SEED"]

# Temperatures in (0, MIN_TEMPERATURE) are raised to it (vLLM's floor, same reason): logits / 1e-308
# overflow to inf and the softmax turns into NaN. At 0.01 the sampler is already greedy in effect for
# any logit gap above ~0.3.
MIN_TEMPERATURE = 1e-2
# Seeds are numpy SeedSequence entropy; the range is OpenAI's (a signed 64-bit integer), negatives refused.
MAX_SEED = 2**63 - 1
# Top-p without top-k: tokens with probability below (1 - top_p) / vocab * this factor cannot be in the
# nucleus (kept_probs); the factor 0.5 leaves a margin far above float32 rounding of the sums.
_TOP_P_SAFETY = 0.5


class SamplingError(ValueError):
    """A sampling value out of range; ``field`` is the :class:`SamplingParams` field it is about."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _integer(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _checked(values: dict[str, Any], name: Callable[[str], str]) -> dict[str, Any]:
    """``values`` (SamplingParams fields) checked and normalised; raises SamplingError naming ``name(field)``."""
    v = dict(values)
    t = v["temperature"]
    if not (_number(t) and math.isfinite(t) and t >= 0):
        raise SamplingError("temperature", f"{name('temperature')} must be a number >= 0 (0 = greedy), got {t}")
    v["temperature"] = 0.0 if t == 0 else max(float(t), MIN_TEMPERATURE)
    k = v["top_k"]
    if k is not None and not (_integer(k) and k >= 0):
        raise SamplingError("top_k", f"{name('top_k')} must be an integer >= 0 (0 = off), got {k}")
    v["top_k"] = int(k) if k else None
    p = v["top_p"]
    if p is not None and not (_number(p) and 0.0 < p <= 1.0):  # NaN fails the comparison
        raise SamplingError("top_p", f"{name('top_p')} must be in (0, 1], got {p}")
    v["top_p"] = float(p) if p is not None and p < 1.0 else None
    rp = v["repetition_penalty"]
    if not (_number(rp) and math.isfinite(rp) and rp > 0):
        raise SamplingError("repetition_penalty",
                            f"{name('repetition_penalty')} must be a number > 0 (1 = off), got {rp}")
    v["repetition_penalty"] = float(rp)
    s = v["seed"]
    if s is not None and not (_integer(s) and 0 <= s <= MAX_SEED):
        raise SamplingError("seed", f"{name('seed')} must be an integer in [0, 2**63 - 1] "
                                    f"(leave it out for a random seed), got {s}")
    v["seed"] = int(s) if s is not None else None
    m = v["max_tokens"]
    if m is not None and not (_integer(m) and m >= 0):
        raise SamplingError("max_tokens", f"{name('max_tokens')} must be an integer >= 0, got {m}")
    stop = v["stop"]
    if isinstance(stop, str):
        stop = (stop,)
    if not (isinstance(stop, (list, tuple)) and all(isinstance(x, str) for x in stop)):
        raise SamplingError("stop", f"{name('stop')} must be a string or a list of strings, got {stop!r}")
    v["stop"] = tuple(x for x in stop if x)
    ids = v["stop_token_ids"]
    if not all(_integer(i) and i >= 0 for i in ids):
        raise SamplingError("stop_token_ids", f"{name('stop_token_ids')} must be non-negative integers, got {ids!r}")
    v["stop_token_ids"] = frozenset(int(i) for i in ids)
    v["ignore_eos"] = bool(v["ignore_eos"])
    return v


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop, checked when made.

    Attributes:
        temperature: 0 = greedy; otherwise finite > 0 (values below :data:`MIN_TEMPERATURE` are raised to it).
        top_k: keep the k most likely tokens (None or 0 = off).
        top_p: keep the smallest set of most likely tokens whose probability reaches p, in (0, 1]
            (None or 1 = off).
        repetition_penalty: > 0 (1 = off); CTRL / transformers rule on the prompt and generated ids.
        seed: of the request's numpy Generator, in [0, 2**63 - 1] (None = fresh entropy).
        max_tokens: most tokens to generate, >= 0 (None = until the context is full).
        stop: stop strings; the text ends before the first one (not included).
        stop_token_ids: tokens that end generation and are not part of the output (eos, end of turn).
        ignore_eos: keep going through ``stop_token_ids`` (benchmarks: exactly ``max_tokens`` tokens).

    Raises:
        SamplingError (a ValueError): a value out of range; its ``field`` names the attribute.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        for k, v in _checked({f.name: getattr(self, f.name) for f in fields(self)}, str).items():
            object.__setattr__(self, k, v)

    @classmethod
    def named(cls, names: Callable[[str], str], **kwargs: Any) -> "SamplingParams":
        """Like the constructor, but errors name each field as ``names(field)`` (e.g. a CLI flag)."""
        defaults = {f.name: getattr(cls, f.name, None) for f in fields(cls)}
        defaults["stop_token_ids"] = frozenset()
        return cls(**_checked({**defaults, **kwargs}, names))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


# ---------------------------------------------------------------------- the reference (readable)
def kept_probs_reference(logits: np.ndarray, params: SamplingParams, context: Sequence[int] = ()) -> np.ndarray:
    """The distribution :func:`sample_reference` draws from, float64 (vocab,): zero outside the kept set.

    In transformers' order: repetition penalty, temperature, top-k, softmax, top-p. Greedy (temperature
    0) is a one-hot at the argmax.
    """
    z = np.asarray(logits, dtype=np.float64).copy()  # (V,)
    if params.repetition_penalty != 1.0 and len(context):
        idx = np.unique(np.asarray(context, dtype=np.int64))
        v = z[idx]
        z[idx] = np.where(v > 0, v / params.repetition_penalty, v * params.repetition_penalty)
    if params.greedy:
        p = np.zeros_like(z)
        p[int(np.argmax(z))] = 1.0
        return p
    z = z / params.temperature
    if params.top_k is not None and params.top_k < z.size:
        kth = np.sort(z)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p is not None:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, params.top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return p


def sample_reference(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                     context: Sequence[int] = ()) -> int:
    """One token from :func:`kept_probs_reference` by inverse CDF over vocabulary order (one draw)."""
    p = kept_probs_reference(logits, params, context)
    if params.greedy:
        return int(np.argmax(p))
    cum = np.cumsum(p)
    x = rng.random() * cum[-1]
    return int(np.flatnonzero(p)[-1]) if x >= cum[-1] else int(np.searchsorted(cum, x, side="right"))


# ---------------------------------------------------------------------- the fast path
def _penalised(logits: np.ndarray, params: SamplingParams, context: Sequence[int]) -> np.ndarray:
    if params.repetition_penalty == 1.0 or not len(context):
        return logits
    z = np.array(logits, dtype=np.float32)  # one float32 copy (the caller's row is never changed)
    idx = np.unique(np.asarray(context, dtype=np.int64))
    v = z[idx]
    z[idx] = np.where(v > 0, v / params.repetition_penalty, v * params.repetition_penalty)
    return z


def kept_probs(logits: np.ndarray, params: SamplingParams, context: Sequence[int] = ()
               ) -> tuple[np.ndarray, np.ndarray]:
    """(token ids ascending, their probabilities float64 summing to 1): the kept set :func:`sample` draws from.

    Cost per call at vocabulary V: one float32 pass for the max, the exp and the candidate cut (O(V)),
    then a sort of the candidates only (k for top-k; the tokens that can be in the nucleus for top-p).
    """
    z = _penalised(np.asarray(logits), params, context)  # (V,) float32
    if params.greedy:
        return np.array([int(np.argmax(z))]), np.array([1.0])
    t = np.float32(params.temperature)
    if params.top_k is not None and params.top_k < z.size:
        cand = np.argpartition(z, -params.top_k)[-params.top_k:]  # (k,) unordered
        kth = z[cand].min()
        cand = np.flatnonzero(z >= kth)  # ties with the k-th are kept, as the reference does
        zc = z[cand].astype(np.float64) / params.temperature
    else:
        cand, zc = None, None
    if params.top_p is None:
        if cand is None:  # the whole vocabulary: float32 exp, no copy to float64
            e = np.exp((z - z.max()) / t)  # (V,) float32
            return np.arange(z.size), e / e.sum(dtype=np.float64)
        e = np.exp(zc - zc.max())
        return cand, e / e.sum()
    if cand is None:
        # Which tokens can be in the nucleus: a token with probability below c = (1 - top_p) / V * 0.5
        # is never needed, because all V tokens below c weigh less than (1 - top_p) / 2 together, so
        # the tokens above c hold more than top_p and reach it first (in descending order).
        zmax = z.max()
        e = np.exp((z - zmax) / t)  # (V,) float32, the largest is 1
        total = float(e.sum(dtype=np.float64))
        cut = (1.0 - params.top_p) * total / z.size * _TOP_P_SAFETY
        cand = np.flatnonzero(e >= cut)
        pc = e[cand].astype(np.float64) / total
    else:
        e = np.exp(zc - zc.max())
        pc = e / e.sum()
    order = np.argsort(-pc, kind="stable")  # (candidates,): the only sort
    cum = np.cumsum(pc[order])
    n = min(int(np.searchsorted(cum, params.top_p)) + 1, cum.size)  # first prefix reaching top_p
    sel = np.sort(order[:n])  # cand is ascending, so ids stay ascending
    return cand[sel], pc[sel] / pc[sel].sum()


def _draw(w: np.ndarray, u: float) -> int:
    """The index i where u * sum(w) falls in the running sum of the weights ``w`` (>= 0), i.e. the
    inverse CDF, without a running sum over all of ``w`` (np.cumsum is sequential: 2.6 ms at 128k):
    sums of 256-blocks, the running sum of those, then of one block.

    Raises:
        ValueError: the weights are not finite or all zero.
    """
    block = 256
    nb = w.size // block
    if nb < 4:  # short: one running sum
        cum = np.cumsum(w, dtype=np.float64)
        if not (np.isfinite(cum[-1]) and cum[-1] > 0):
            raise ValueError("the logits are not finite: cannot sample")
        if u * cum[-1] >= cum[-1]:  # rounded up to the total: the last token with weight
            return int(np.flatnonzero(w)[-1])
        return int(np.searchsorted(cum, u * cum[-1], side="right"))
    sums = np.empty(nb + 1)  # (nb + 1,): the blocks' sums, the last one the remainder
    sums[:nb] = w[:nb * block].reshape(nb, block).sum(axis=1, dtype=np.float64)
    sums[nb] = w[nb * block:].sum(dtype=np.float64)
    cb = np.cumsum(sums)
    if not (np.isfinite(cb[-1]) and cb[-1] > 0):
        raise ValueError("the logits are not finite: cannot sample")
    x = u * cb[-1]
    if x >= cb[-1]:  # rounded up to the total: the last token with weight
        return int(np.flatnonzero(w)[-1])
    b = int(np.searchsorted(cb, x, side="right"))  # the block x falls in (one with weight)
    start = b * block
    cum = (cb[b - 1] if b else 0.0) + np.cumsum(w[start:start + block], dtype=np.float64)
    return start + min(int(np.searchsorted(cum, x, side="right")), cum.size - 1)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | None = None,
           context: Sequence[int] = ()) -> int:
    """Pick the next token from one row of logits (vocab,): the fast twin of :func:`sample_reference`
    (same distribution, same draw: one ``rng.random()`` per sampled token, inverse CDF over the kept
    tokens in vocabulary order). Greedy draws nothing.

    Raises:
        ValueError: the logits are not finite.
    """
    if params.greedy and (params.repetition_penalty == 1.0 or not len(context)):
        return int(np.argmax(logits))
    rng = rng if rng is not None else np.random.default_rng()
    if params.top_k is None and params.top_p is None and not params.greedy:
        # the whole vocabulary: draw from the float32 exponentials directly (no normalised copy)
        z = _penalised(np.asarray(logits), params, context)  # (V,) float32
        return _draw(np.exp((z - z.max()) / np.float32(params.temperature)), rng.random())
    ids, p = kept_probs(logits, params, context)
    if params.greedy:
        return int(ids[0])
    return int(ids[_draw(p, rng.random())])


def sample_rows(logits: np.ndarray, params: Sequence[SamplingParams | None],
                rngs: Sequence[np.random.Generator | None], contexts: Sequence[Sequence[int]]
                ) -> list[int | Exception | None]:
    """:func:`sample` for each row of ``logits`` (n, vocab) with its own ``params[i]``, ``rngs[i]``
    and ``contexts[i]``: element i is the token ``sample(logits[i], params[i], rngs[i], contexts[i])``
    gives (drawing from ``rngs[i]`` as it does), the exception it raises, or None where
    ``params[i]`` is None (a row not to sample). Row by row on purpose: numpy's argmax of one
    contiguous row keeps the GIL and took 8.6 us at 128,256 entries, where one argmax over the
    (8, vocab) batch (axis 1) took 157 us and released the GIL, so that another thread (the server's
    event loop) could hold the sampling thread up in the middle of a batch.
    """
    if len(params) != len(logits) or len(rngs) != len(logits) or len(contexts) != len(logits):
        raise ValueError(f"sample_rows: {len(logits)} rows, {len(params)} params, {len(rngs)} generators and "
                         f"{len(contexts)} contexts")
    out: list[int | Exception | None] = []
    for row, p, rng, context in zip(logits, params, rngs, contexts):
        try:
            out.append(None if p is None else sample(row, p, rng, context))
        except Exception as e:  # e.g. logits that are not finite: this row's request fails, the others go on
            out.append(e)
    return out
