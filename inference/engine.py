"""``Engine``: the Python front of the C++ CPU engine (logits, generation, streaming, chat).

All heavy work runs in C++ (``bitnet.inference._C``); this file holds tokenization, the KV-cache
bookkeeping (which tokens the C++ cache holds), sampling and text streaming.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .generation import Generation, StepOutput, common_prefix
from .loader import KV_CACHE_DTYPES, WEIGHT_FORMATS, auto_weight_format, build_model, default_threads
from .sampling import SamplingParams, sample

__all__ = ["Engine", "compile_chat_template", "HEAD_MODES", "AUTO_HEAD", "sample_next", "check_threads", "check_sampling"]

HEAD_MODES = ("auto", "f16", "int8", "int4")
# "auto" picks this head. Measured with `python benchmarks/bench_engine.py --head-accuracy` (a
# 4-layer model trained 300 steps on Shakespeare, 10,240 held-out tokens): top-1 agreement with the
# exact 16-bit head 99.53%, perplexity 111.752 vs 111.719 (+0.03%); it reads half the head bytes per
# decoded token (the head is 30-55% of them at 2B4T), so int8 is the default.
# "int4" (4.25 bits per weight, 0.697 instead of 0.850 GB per decoded token at 2B4T) rescores its
# best candidates exactly, so its top-1 and greedy text follow the 16-bit head (100% top-1 and 8/8
# greedy prompts identical where int8 gave 99.53% and 6/8), but the logits it leaves coarse move
# perplexity by more than the 0.1% "auto" allows: +0.26% on that model, +0.035% on the demo model
# (Shakespeare), -0.93% on WikiText-2 out of domain (`python benchmarks/bench_head.py`). So "auto"
# stays int8; int4 is for greedy / sampled generation where the bytes matter.
AUTO_HEAD = "int8"

# 2B4T's chat format (../shared/FORMATS.md section 2), used when tokenizer_config.json has no template.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + '<|eot_id|>' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '<|eot_id|>' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + '<|eot_id|>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)
END_OF_TURN = "<|eot_id|>"


def compile_chat_template(template: Any, where: Any = "") -> Any:
    """Compile a chat template as transformers does (``ImmutableSandboxedEnvironment`` with
    trim_blocks, lstrip_blocks and loopcontrols; ``raise_exception``, ``tojson`` and
    ``strftime_now`` available). ``template`` may be a string, transformers' list of
    ``{"name", "template"}`` (the "default" one is used) or None (2B4T's format).

    Raises:
        ValueError: naming ``where`` when the template is not a string or does not compile.
    """
    import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None:
        template = DEFAULT_CHAT_TEMPLATE
    if not isinstance(template, str):
        raise ValueError(f"{where}: chat_template must be a string, got {type(template).__name__}")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"{where}: chat_template does not compile ({e})") from None


def check_threads(threads: Any, name: str = "threads") -> None:
    """Raise ``ValueError("<name> must be a positive integer, got <threads>")`` unless ``threads`` is
    ``None`` (the default count) or an int >= 1; the CLIs pass ``name="--threads"``, so every command
    words it the same way."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"{name} must be a positive integer, got {threads}")


def check_sampling(
    max_new_tokens: Any = 0,
    temperature: Any = 0.0,
    top_k: Any = None,
    top_p: Any = None,
    repetition_penalty: Any = 1.0,
    *,
    cli: bool = False,
) -> None:
    """Raise ``ValueError`` naming the first sampling argument out of range (:class:`SamplingParams`'
    rules: ``max_new_tokens`` >= 0; ``temperature`` finite >= 0 (0 = greedy); ``top_k`` None or >= 0
    (0 = off); ``top_p`` None or in (0, 1]; ``repetition_penalty`` finite > 0). With ``cli`` the names
    are the command line's flags (``--top-p``), else the Python parameter names (``top_p``)."""
    engine_params(max_new_tokens, temperature, top_k, top_p, repetition_penalty, cli=cli)


def engine_params(max_new_tokens: Any = 128, temperature: Any = 0.0, top_k: Any = None, top_p: Any = None,
                  repetition_penalty: Any = 1.0, seed: Any = None, stop: Any = None, stop_token_ids: Any = (),
                  *, cli: bool = False) -> SamplingParams:
    """The :class:`SamplingParams` of :meth:`Engine.generate`'s arguments (errors name them, or the CLI's flags)."""
    renamed = {"max_tokens": "max_new_tokens"}

    def name(n: str) -> str:
        n = renamed.get(n, n)
        return "--" + n.replace("_", "-") if cli else n

    return SamplingParams.named(name, max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, seed=seed, stop=stop or (),
                                stop_token_ids=tuple(stop_token_ids))


def sample_next(
    logits: np.ndarray,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    context: Sequence[int] = (),
    rng: np.random.Generator | None = None,
) -> int:
    """Pick the next token from one row of logits (vocab,): :func:`bitnet.inference.sampling.sample`
    with these settings (checked: ``ValueError`` when out of range)."""
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    return sample(logits, params, rng, context)


class Engine:
    """The C++ engine on one packed export directory.

    Args:
        path: a model directory (config.json, model.safetensors[.index.json], tokenizer.json) of any
            published ternary family, a ``.gguf`` file, or a hub id ``owner/name[@revision]``
            (see :mod:`bitnet.formats.hub`).
        threads: worker threads (None = the CPUs this process may use); a positive integer.
        head: output head precision: "f16" (the stored 16-bit table, exact), "int8" (per-row int8,
            half the bytes), "int4" (4.25 bits per weight: int4 groups of 32 with u8 group scales;
            the best coarse candidates of every token are rescored exactly from the 16-bit rows, so
            greedy choices follow the exact head) or "auto" (= :data:`AUTO_HEAD`).
        weights: ternary weight layout in memory: "i2" (2 bits per weight), "t5" (5 trits per byte,
            1.6 bits: 20% fewer bytes per decoded token) or "auto" (the faster here, see
            :func:`~bitnet.inference.loader.auto_weight_format`). The logits are identical.
        kv_cache: KV cache element type: "f32" (exact against the PyTorch reference) or "f16" (K/V
            rows rounded to fp16 as they are written: half the cache memory per position and half
            the bytes attention reads; logits move by about fp16's relative precision, 2^-11).

    Raises:
        FileNotFoundError: missing directory / config / weights.
        ValueError: threads < 1, unknown head, weights or kv_cache, or an invalid / inconsistent /
            unsupported export.
    """

    def __init__(self, path: str | Path, threads: int | None = None, head: str = "auto", weights: str = "auto",
                 kv_cache: str = "f32") -> None:
        check_threads(threads)
        if head not in HEAD_MODES:
            raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {WEIGHT_FORMATS}, got {weights!r}")
        if kv_cache not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache must be one of {KV_CACHE_DTYPES}, got {kv_cache!r}")
        from bitnet.formats import read_model, resolve_model

        self.path = resolve_model(path)  # a local directory / .gguf file, or a hub id fetched into the cache
        self.head = AUTO_HEAD if head == "auto" else head
        self.threads = threads if threads is not None else default_threads()
        self.weights = auto_weight_format() if weights == "auto" else weights
        self.kv_cache = kv_cache
        self.description = read_model(self.path)
        self._model, _ = build_model(self.description, self.threads, self.head, self.weights, kv_cache)
        self.model_config = self.description.config
        self.config = self.model_config.to_hf_dict()
        self.family: str = self.description.family
        self.load_log: list[str] = list(self.description.notes)
        self.vocab_size: int = self.model_config.vocab_size
        self.max_positions: int = self.model_config.max_position_embeddings
        self.bos_token_id: int | None = self.model_config.bos_token_id
        self.eos_token_id: int | None = self.model_config.eos_token_id
        self.tokenizer = self.description.tokenizer() if self.description.tokenizer is not None else None
        self._tokenizer_config: dict[str, Any] = self.description.tokenizer_config
        self._chat_template = None  # compiled on first use
        files = [self.path] if self.path.is_file() else [*self.path.glob("*.safetensors"), *self.path.glob("*.gguf")]
        self.file_bytes: int = sum(f.stat().st_size for f in files)  # the weight files' size on disk
        self._cached: list[int] = []  # tokens whose K/V the C++ cache holds, in order

    # ------------------------------------------------------------------ logits
    def _check_ids(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"token_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids must be integers, got dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got range [{ids.min()}, {ids.max()}]")
        if ids.size > self.max_positions:
            raise ValueError(f"{ids.size} tokens exceed max_position_embeddings={self.max_positions}")
        return ids.astype(np.int32)

    def _lcp(self, ids: np.ndarray) -> int:
        return common_prefix(ids, self._cached)

    def _run(self, ids: np.ndarray, keep: int, logits_from: int) -> np.ndarray:
        """Run ids[keep:] at positions keep.. (cache entries < keep reused); logits rows logits_from..T-1."""
        T = len(ids)
        out = np.empty((T - logits_from, self.vocab_size), dtype=np.float32)
        self._cached = self._cached[:keep]
        self._model.forward(np.ascontiguousarray(ids[keep:]), keep, logits_from - keep, out)
        self._cached = [int(t) for t in ids]
        return out

    def logits(self, token_ids: Sequence[int] | np.ndarray, *, start: int = 0, reuse_cache: bool = False) -> np.ndarray:
        """Next-token logits, float32 of shape (T - start, vocab): row j predicts token start+j+1.

        ``reuse_cache=False`` runs on a fresh KV cache. ``reuse_cache=True`` keeps the cached K/V of
        the first ``min(LCP, start)`` positions (LCP = longest common prefix of ``token_ids`` with
        the tokens in the cache) and computes only from there on.

        Raises:
            ValueError: ids empty / out of range / too long, or ``start`` not in [0, T].
        """
        ids = self._check_ids(token_ids)
        T = len(ids)
        if not 0 <= start <= T:
            raise ValueError(f"start must be in [0, {T}], got {start}")
        if start == T:
            return np.empty((0, self.vocab_size), dtype=np.float32)
        keep = min(self._lcp(ids), start) if reuse_cache else 0
        return self._run(ids, keep, start)

    def reset(self) -> None:
        """Forget the KV cache."""
        self._model.reset()
        self._cached = []

    # ------------------------------------------------------------------ generation
    def _encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer.json: pass token ids instead of text")
        return self.encode(prompt)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Tokenized with the GIL released (``encode_batch``; ``encode`` holds
        it), so a long text does not stall the other threads of a server."""
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer.json")
        return self.tokenizer.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def with_stops(self, params: SamplingParams, chat: bool = False) -> SamplingParams:
        """``params`` plus this model's end tokens: eos, and for a chat reply the model's end-of-turn
        tokens (:meth:`end_of_turn`; their text as stop strings too, for tokenizers that split them)."""
        ids = set(params.stop_token_ids)
        if self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        stop = params.stop
        if chat and self.tokenizer is not None:
            eot_strings, eot_ids = self.end_of_turn()
            ids.update(eot_ids)
            stop = tuple(eot_strings) + tuple(s for s in stop if s not in eot_strings)
        return replace(params, stop_token_ids=frozenset(ids), stop=stop)

    def _params(self, sampling: SamplingParams | None, args: tuple, stop: Any, stop_token_ids: Sequence[int]
                ) -> SamplingParams:
        """The request's SamplingParams (``sampling`` as given, else built from the loose arguments), with eos."""
        p = sampling if sampling is not None else engine_params(*args, stop=stop, stop_token_ids=stop_token_ids)
        return self.with_stops(p)

    def _steps(self, ids: Sequence[int], params: SamplingParams, tokenizer: Any) -> Iterator[StepOutput]:
        """One sequence through :meth:`Generation.step` until it finishes (the cached prefix reused)."""
        arr = self._check_ids(ids)
        gen = Generation(params, arr.tolist(), tokenizer, self.max_positions)
        if params.max_tokens == 0:
            return
        # Reuse the cached prefix (e.g. a shared system prompt or the previous chat turns); the last
        # prompt token is always recomputed because its logits are needed.
        keep = min(self._lcp(arr), len(arr) - 1)
        logits = self._run(arr, keep, len(arr) - 1)[-1]  # (V,)
        out = np.empty((1, self.vocab_size), dtype=np.float32)
        while True:
            step = gen.step(logits)
            yield step
            if step.finish_reason is not None:
                return
            self._model.forward(np.array([step.token], dtype=np.int32), len(gen.ids) - 1, 0, out)
            self._cached.append(step.token)
            logits = out[0]

    def stream(
        self,
        prompt_or_ids: str | Sequence[int],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stop_token_ids: Sequence[int] = (),
        sampling: SamplingParams | None = None,
    ) -> Iterator[str]:
        """Like :meth:`generate`, but yields the new text piece by piece as it is produced.

        Text is held back while it is an incomplete UTF-8 sequence or could be the start of a stop
        string, so the concatenated pieces equal ``generate``'s result exactly. Arguments are
        checked as in :meth:`generate` (when iteration starts: this is a generator).
        """
        params = self._params(sampling, (max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed),
                              stop, stop_token_ids)
        if isinstance(prompt_or_ids, str) and not prompt_or_ids:
            raise ValueError("the prompt is empty: give some text to continue")
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer.json: streaming text needs one")
        ids = self._encode(prompt_or_ids) if isinstance(prompt_or_ids, str) else list(prompt_or_ids)
        for step in self._steps(ids, params, self.tokenizer):
            if step.text:
                yield step.text

    def generate(
        self,
        prompt_or_ids: str | Sequence[int],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        stop_token_ids: Sequence[int] = (),
        sampling: SamplingParams | None = None,
    ) -> str | list[int]:
        """Generate a continuation (greedy when ``temperature == 0``).

        Returns the new text (without the prompt and without the stop string) for a ``str`` prompt,
        or the list of new token ids for a list of ids (eos / stop tokens are never included; with
        ``stop`` strings, the ids produced before the stop string completed). ``sampling`` (a
        :class:`SamplingParams`) replaces the loose sampling arguments when given.

        The KV cache of the longest prefix shared with the previous call is reused.

        Raises:
            ValueError: text given but no tokenizer; an empty prompt; bad ids; a sampling argument
            out of range (:class:`SamplingParams`: ``max_new_tokens`` >= 0, ``temperature`` finite
            >= 0, 0 < ``top_p`` <= 1, ``repetition_penalty`` > 0, ``seed`` in [0, 2**63 - 1]).
        """
        args = (max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        params = self._params(sampling, args, stop, stop_token_ids)
        if isinstance(prompt_or_ids, str):
            return "".join(self.stream(prompt_or_ids, sampling=params))
        tokenizer = self.tokenizer if params.stop else None
        return [s.token for s in self._steps(list(prompt_or_ids), params, tokenizer)
                if s.token is not None and s.finish_reason != "stop"]

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render ``[{"role": "system"|"user"|"assistant", "content": ...}]`` with the model's own
        ``chat_template`` (tokenizer_config.json, chat_template.jinja or the GGUF's
        ``tokenizer.chat_template``), rendered as transformers renders it (sandboxed Jinja,
        trim_blocks / lstrip_blocks, ``raise_exception``, ``tojson``), compiled once; 2B4T's format
        (FORMATS.md section 2) when the model has none.

        Raises:
            ValueError: the template does not compile or raises (one line naming where it came from).
        """
        if self._chat_template is None:
            self._chat_template = compile_chat_template(self._tokenizer_config.get("chat_template"), self.path)
        try:
            return self._chat_template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                              **self._special_tokens())
        except Exception as e:  # jinja2 errors and the template's own raise_exception
            raise ValueError(f"{self.path}: chat_template failed on these messages ({e})") from None

    def _special_tokens(self) -> dict[str, str]:
        """bos_token / eos_token / pad_token / unk_token strings for the template (as transformers passes them)."""
        out: dict[str, str] = {}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            v = self._tokenizer_config.get(key)
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                out[key] = v
        ids = {"bos_token": self.bos_token_id, "eos_token": self.eos_token_id}
        for key, i in ids.items():
            if key not in out and i is not None and self.tokenizer is not None and self.tokenizer.id_to_token(i):
                out[key] = self.tokenizer.id_to_token(i)
        out.setdefault("bos_token", "")
        out.setdefault("eos_token", "")
        return out

    def end_of_turn(self) -> tuple[list[str], list[int]]:
        """Stop strings and token ids that end an assistant turn: Llama-3's ``<|eot_id|>``, the
        template's eos_token (Falcon3's ``<|endoftext|>``) and ``<|im_end|>`` where the vocabulary has
        them, plus the config's eos id."""
        names = [END_OF_TURN, "<|im_end|>", "<|end|>", self._special_tokens().get("eos_token", "")]
        strings, ids = [], [] if self.eos_token_id is None else [self.eos_token_id]
        for n in names:
            i = self.tokenizer.token_to_id(n) if (n and self.tokenizer is not None) else None
            if i is not None and n not in strings:
                strings.append(n)
                ids.append(i)
        return strings or [END_OF_TURN], sorted(set(ids))

    def chat_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of the rendered conversation, ready for the assistant's reply."""
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer: chat needs one")
        return self.encode(self.apply_chat_template(messages), add_special_tokens=False)

    def chat_stream(self, messages: Sequence[dict[str, str]], **gen: Any) -> Iterator[str]:
        """Stream the assistant's reply (the :meth:`stream` arguments); stops at the model's
        end-of-turn marker (:meth:`end_of_turn`)."""
        params = gen.pop("sampling", None) or engine_params(**gen)
        return self.stream(self.chat_ids(messages), sampling=self.with_stops(params, chat=True))

    # ------------------------------------------------------------------ batched serving
    def configure_slots(self, n: int, ctx_size: int) -> None:
        """Give the engine ``n`` sequence slots (0..n-1) for :meth:`step`, each with its own KV
        cache of at most ``ctx_size`` positions, grown on demand: KV memory stays below
        ``n * ctx_size`` positions. The slots are separate from the cache that :meth:`logits` and
        :meth:`generate` use; calling this again drops what the slots held.

        Raises:
            ValueError: ``n < 1`` or ``ctx_size`` outside [1, max_position_embeddings].
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of slots must be a positive integer, got {n!r}")
        if isinstance(ctx_size, bool) or not isinstance(ctx_size, int) or not 1 <= ctx_size <= self.max_positions:
            raise ValueError(f"ctx_size must be an integer in [1, {self.max_positions}] "
                             f"(max_position_embeddings), got {ctx_size!r}")
        self._model.set_slots(n, ctx_size)
        self.ctx_size = ctx_size

    @property
    def num_slots(self) -> int:
        """Slots set by :meth:`configure_slots` (0 before)."""
        return int(self._model.num_slots)

    def slot_len(self, slot: int) -> int:
        """Positions the KV cache of ``slot`` holds."""
        return int(self._model.slot_len(slot))

    def copy_slot(self, src: int, dst: int, n: int) -> None:
        """Copy the first ``n`` cached positions of slot ``src`` into slot ``dst`` (a shared
        prompt prefix computed once), replacing what ``dst`` held."""
        self._model.copy_slot(src, dst, n)

    def step(self, batch: Sequence[tuple[int, Sequence[int] | np.ndarray, int]]) -> np.ndarray:
        """One batched forward over many sequences with one pass over the weights.

        Each ``(slot, token_ids, pos0)`` runs ``token_ids`` at positions ``pos0..`` in that slot's
        KV cache, keeping its first ``pos0`` positions (``pos0 <= slot_len(slot)``): a decode step
        is one token, a prefill chunk several. A slot appears at most once. A sequence's logits do
        not depend on the rest of the batch. Not thread-safe: one caller at a time.

        Returns:
            float32 (len(batch), vocab): the next-token logits after each segment's last token.

        Raises:
            ValueError: an empty batch or segment, bad ids, an unknown or repeated slot, ``pos0``
                beyond the slot's cache, or positions past its ``ctx_size``.
        """
        if not batch:
            raise ValueError("step needs at least one (slot, token_ids, pos0) segment")
        slots, pos0, lengths, parts = [], [], [], []
        for slot, ids, p0 in batch:
            arr = self._check_ids(ids)
            slots.append(slot)
            pos0.append(p0)
            lengths.append(len(arr))
            parts.append(arr)
        out = np.empty((len(parts), self.vocab_size), dtype=np.float32)
        self._model.forward_batch(np.asarray(slots, dtype=np.int32), np.asarray(pos0, dtype=np.int32),
                                  np.asarray(lengths, dtype=np.int32), np.concatenate(parts), out)
        return out
