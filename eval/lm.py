"""The lm-eval model ``bitnet``: lm-eval's request types scored by a :mod:`bitnet.eval.backends` backend.

``lm_eval --model bitnet --model_args pretrained=DIR[,threads=N,batch_size=N,backend=engine|torch]``
(or ``simple_evaluate(model="bitnet", ...)``) once ``bitnet.eval`` is imported.

Tokenization, truncation and the stop rules follow lm-eval's ``hf`` model (``HFLM``) step for step,
so the two agree request by request on the same export: contexts are encoded by lm-eval's own
``TemplateLM._encode_pair``, over-long inputs are cut from the left to ``max_length + 1`` tokens,
rolling windows come from ``lm_eval.utils.get_rolling_token_windows``, and generations are cut by
``lm_eval.models.utils.postprocess_generated_text``.

What differs is the schedule. ``HFLM`` pads requests into batches; a CPU engine runs one sequence at a
time, so requests are sorted by their token lists instead: requests that share a prefix (the
few-shot examples of a task, the four answers of an MMLU question) become neighbours, and each call
asks the backend to keep the key/value cache of that shared prefix (``reuse_cache=True``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from .backends import BACKENDS, DEFAULT_ENGINE_HEAD, Backend, common_prefix_len, load_backend, load_tokenizer, read_model_config

__all__ = ["BitNetLM", "log_softmax_rows"]

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM.max_gen_toks, so generations stop at the same length


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """(T, V) float32 logits -> (T, V) float64 log-probabilities (float64 so long sums stay exact)."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {v!r}")
    return bool(v)


@register_model("bitnet")
class BitNetLM(TemplateLM):
    """lm-eval model over a bitnet export directory.

    Args:
        pretrained: the export directory (``config.json``, ``model.safetensors``, ``tokenizer.json``);
            the ``torch`` backend also reads a training model directory.
        backend: ``"engine"`` (the C++ engine, default) or ``"torch"`` (the slow reference).
        threads: engine threads (``None``: the engine's default).
        batch_size: accepted for command-line compatibility with ``hf``; requests run one at a
            time (the engine's threads parallelize inside each one) so it does not change results.
        prefix_reuse: keep the KV cache of prefixes shared with the previous request (default on);
            off recomputes every request from scratch (the baseline of ``benchmarks/bench_eval.py``).
        max_length: context length (default: the model's ``max_position_embeddings``).
        seed: seed of the sampler used only when a task asks for ``do_sample``.
        head: the engine's output head, ``f16`` (exact, default), ``int8`` or ``auto``.

    Raises:
        FileNotFoundError: missing model directory or tokenizer.json.
        ValueError: unknown backend, bad argument values.
    """

    def __init__(
        self,
        pretrained: str | Path,
        backend: str = "engine",
        threads: int | None = None,
        batch_size: int | str | None = 1,
        prefix_reuse: bool | str = True,
        max_length: int | None = None,
        seed: int = 1234,
        head: str = DEFAULT_ENGINE_HEAD,
        **kwargs: Any,  # lm-eval passes device / max_batch_size for every model; they do not apply on CPU
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.model_dir = Path(pretrained)
        cfg = read_model_config(self.model_dir)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.backend_name = backend
        self.model: Backend = load_backend(
            self.model_dir, backend, threads=int(threads) if threads else None, head=head)
        self._max_length = int(max_length) if max_length else int(self.model.max_length)
        self.batch_size_arg = batch_size
        self.prefix_reuse = _as_bool(prefix_reuse)
        self._rng = np.random.default_rng(int(seed))
        self._bos = cfg.get("bos_token_id")
        eos = cfg.get("eos_token_id")
        self._eos = eos[0] if isinstance(eos, list) else eos
        if self._eos is None:
            raise ValueError(f"{self.model_dir}: the model config has no eos_token_id; lm-eval needs one")
        self._last_tokens: list[int] = []  # what the backend's KV cache holds (tokens of the last call)
        # Counters that show the prefix reuse at work: positions asked for vs computed.
        self.stats = {"requests": 0, "positions": 0, "computed": 0, "seconds": 0.0}

    # ------------------------------------------------------------------ what lm-eval asks about
    @property
    def eot_token_id(self) -> int:
        return int(self._eos)

    @property
    def prefix_token_id(self) -> int:
        # as HFLM: BOS when the model has one, else EOS
        return int(self._bos) if self._bos is not None else int(self._eos)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return DEFAULT_MAX_GEN_TOKS

    @property
    def tokenizer_name(self) -> str:
        return str(self.model_dir / "tokenizer.json")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """As HFLM with ``add_bos_token`` unset: the tokenizer's post-processor decides, except that a
        string already starting with the prefix token's text gets no second one."""
        if add_special_tokens is None:
            add_special_tokens = not string.startswith(self.tok_decode([self.prefix_token_id], skip_special_tokens=False))
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens).ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ one backend call
    def _logits(self, tokens: list[int], start: int) -> np.ndarray:
        """Logits (len(tokens) - start, V) of positions start.. of ``tokens``, reusing the cached prefix."""
        t0 = time.perf_counter()
        reuse = self.prefix_reuse
        kept = min(common_prefix_len(tokens, self._last_tokens), start) if reuse else 0
        out = self.model.logits(tokens, start=start, reuse_cache=reuse)
        self._last_tokens = list(tokens)
        self.stats["requests"] += 1
        self.stats["positions"] += len(tokens)
        self.stats["computed"] += len(tokens) - kept
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ loglikelihood
    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """Each request (key, context tokens, continuation tokens) -> (sum of log p(continuation), greedy?)."""
        inputs = []
        for _, ctx, cont in requests:
            if not ctx or not cont or len(cont) > self.max_length:
                raise ValueError(f"bad loglikelihood request: {len(ctx)} context / {len(cont)} continuation tokens")
            # as HFLM: cut from the left to max_length + 1 tokens, drop the last (it is only predicted)
            inp = (ctx + cont)[-(self.max_length + 1):][:-1]
            inputs.append((inp, cont))
        # Lexicographic order puts requests with shared prefixes next to each other.
        order = sorted(range(len(inputs)), key=lambda i: inputs[i][0])
        results: list[tuple[float, bool] | None] = [None] * len(inputs)
        prev_key: tuple[tuple[int, ...], int] | None = None
        logp: np.ndarray | None = None
        for i in tqdm(order, desc="bitnet loglikelihood", disable=disable_tqdm):
            inp, cont = inputs[i]
            start = len(inp) - len(cont)  # the first position whose logits predict a continuation token
            key = (tuple(inp), start)
            if key != prev_key or not self.prefix_reuse:  # same input, same rows: reuse them
                logp = log_softmax_rows(self._logits(inp, start))  # (len(cont), V)
                prev_key = key
            assert logp is not None
            picked = logp[np.arange(len(cont)), cont]  # (len(cont),)
            greedy = bool((logp.argmax(axis=-1) == np.asarray(cont)).all())
            results[i] = (float(picked.sum()), greedy)
            if requests[i][0] is not None:
                self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each whole string, in disjoint windows of max_length (as HFLM)."""
        out = []
        for req in tqdm(requests, desc="bitnet loglikelihood_rolling", disable=disable_tqdm):
            (string,) = req.args
            windows = [
                (None,) + make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            total = sum(ll for ll, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # ------------------------------------------------------------------ generation
    def _next_token(self, logits: np.ndarray, kw: dict[str, Any]) -> int:
        """Greedy unless the task asks for sampling (temperature, top_k, top_p)."""
        temperature = float(kw.get("temperature", 0.0) or 0.0)
        if not kw.get("do_sample") or temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        top_k = kw.get("top_k")
        if top_k:
            kth = np.sort(z)[-int(top_k)]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max())
        p /= p.sum()
        top_p = kw.get("top_p")
        if top_p and float(top_p) < 1.0:
            idx = np.argsort(-p)
            keep = np.cumsum(p[idx]) - p[idx] < float(top_p)  # smallest set whose mass reaches top_p
            mask = np.zeros_like(p, dtype=bool)
            mask[idx[keep]] = True
            p = np.where(mask, p, 0.0)
            p /= p.sum()
        return int(self._rng.choice(len(p), p=p))

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generate for each (context, gen_kwargs) until a stop string, EOS, or max_gen_toks tokens."""
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        out = []
        for req in tqdm(requests, desc="bitnet generate_until", disable=disable_tqdm):
            context, gen_kwargs = req.args
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos_text)
            max_gen = int(kw.pop("max_gen_toks"))
            if max_gen >= self.max_length:
                raise ValueError(f"max_gen_toks={max_gen} must be below the model's max_length={self.max_length}")
            ids = self.tok_encode(context)[-(self.max_length - max_gen):]  # as HFLM: keep room to generate
            gen: list[int] = []
            for _ in range(max_gen):
                seq = ids + gen
                tok = self._next_token(self._logits(seq, len(seq) - 1)[-1], kw)
                if tok == self.eot_token_id:
                    break
                gen.append(tok)
                text = self.tok_decode(gen, skip_special_tokens=False)
                if any(s and s in text for s in until):
                    break
            s = postprocess_generated_text(self.tok_decode(gen), stop=until, think_end_token=None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), s)
            out.append(s)
        return out
