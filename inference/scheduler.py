"""Continuous batching on the C++ engine: many requests, one engine thread, one weight read per step.

    sched = Scheduler(engine, parallel=8, ctx_size=2048)      # engine: bitnet.inference.Engine
    sched.start()
    h = sched.submit(Request(prompt_ids=ids, max_tokens=64), deliver=print)   # deliver(Delta) on the engine thread
    ...                                                       # or, from asyncio: async for d in sched.submit_async(req)
    sched.stop()

The engine thread repeats one *step*:
1. drop cancelled requests (their slot is free again) and admit queued ones into free slots. A new
   request takes the free slot whose cached tokens share the longest prefix with its prompt (least
   recently used on a tie), or copies a longer prefix from a busy slot (``Engine.copy_slot``), so
   a shared system prompt is computed once;
2. builds one batch: every decoding sequence advances by one token, and sequences still reading
   their prompt share a budget of at most ``prefill_chunk`` prompt tokens (in arrival order), so a
   long prompt is read in chunks between the decode steps of the others instead of stalling them
   (a step costs about its token count once the weights are read: a small chunk keeps every
   stream's inter-token latency near the batch's own). When no sequence is decoding there is
   nobody to stall, and prompts are read :data:`PREFILL_ALONE` tokens at a time;
3. runs it with ``Engine.step`` (one read of the weights, GIL released);
4. samples each finished segment's next token (``sample_next``, a numpy Generator per request),
   detokenizes it through :class:`TextStream` (held back like ``Engine.stream``) and delivers the
   new text. A sequence ends at ``max_tokens``, an end token (eos / end of turn), a stop string, or
   when its slot's context is full; its slot keeps the cached tokens for later prefix reuse.

A sequence's tokens do not depend on what else is in the batch (``Engine.step``'s guarantee), so
each request gets what it would get alone, and ``Engine.generate``'s result for the same prompt and
sampling settings.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from .sampling import SamplingParams, sample
from .textstream import TextStream

__all__ = ["Request", "Delta", "Handle", "AsyncStream", "Scheduler", "QueueFull", "PromptTooLong", "SchedulerStopped"]

log = logging.getLogger("bitnet.serve")

# A busy slot's prefix is copied only when it saves at least this many positions over the best free
# slot (a copy moves n_layers * 2 * kv_dim values per position; below this it is not worth it).
MIN_COPY = 8
# Prompt tokens per step while no sequence is decoding (nobody waits on the step): large enough that
# a long prompt is read at the engine's prefill speed.
PREFILL_ALONE = 256
# Default prompt tokens per step while other sequences decode. A step over the weights costs about
# its token count (compute-bound once there are a few): with 8 streams decoding, 8 prompt tokens
# keep a step within about twice the batch's own decode step.
DEFAULT_PREFILL_CHUNK = 8


class QueueFull(RuntimeError):
    """Every slot is busy and the waiting queue is at its bound (HTTP 429)."""


class PromptTooLong(ValueError):
    """The prompt does not fit in one slot's context."""


class SchedulerStopped(RuntimeError):
    """The scheduler is stopping or stopped and takes no new requests (HTTP 503)."""


@dataclass
class Request:
    """One generation request.

    Attributes:
        prompt_ids: the prompt's token ids (non-empty, each in [0, vocab)).
        max_tokens: most tokens to generate (None = until the slot's context is full); >= 1.
        temperature: 0 = greedy. top_p / top_k: as :func:`sample_next`. seed: of the request's own
            numpy Generator (None = fresh entropy).
        stop: stop strings; the text ends before the first one (not included).
        stop_token_ids: tokens that end generation and are not part of the output (eos, end of turn).
        ignore_eos: keep going through ``stop_token_ids`` (benchmarks: exactly ``max_tokens`` tokens).
    """

    prompt_ids: list[int]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False


@dataclass
class Delta:
    """What a request produced in one step (or at its end).

    ``text`` is the new text that is safe to show (may be ""). ``finish_reason`` is None while the
    request runs; on its last delta: "stop" (end token or stop string), "length" (max_tokens or a
    full context), "cancelled" (client gone or scheduler stopped) or "error" (``error`` says why).
    """

    text: str
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int  # prompt positions taken from a cache instead of computed
    finish_reason: str | None = None
    error: str | None = None
    token_ids: tuple[int, ...] = ()  # the token generated in this step (none on an end token or cancel)


class Handle:
    """A submitted request. ``cancel()`` is thread-safe; the slot is freed at the next step."""

    def __init__(self, request: Request, deliver: Callable[[Delta], None], params: SamplingParams) -> None:
        self.request = request
        self.params = params
        self._deliver = deliver
        self._cancelled = threading.Event()
        self.done = threading.Event()  # set after the last delta was delivered

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class AsyncStream:
    """A request seen from asyncio: ``async for delta in stream`` until the delta with a finish_reason.

    Deltas are handed to the event loop with ``loop.call_soon_threadsafe``; the engine thread never
    waits for the loop.
    """

    def __init__(self, scheduler: "Scheduler", request: Request, loop: asyncio.AbstractEventLoop) -> None:
        self._queue: asyncio.Queue[Delta] = asyncio.Queue()
        self._loop = loop
        self.handle = scheduler.submit(request, self._deliver)

    def _deliver(self, delta: Delta) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, delta)

    def cancel(self) -> None:
        self.handle.cancel()

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Delta]:
        while True:
            delta = await self._queue.get()
            yield delta
            if delta.finish_reason is not None:
                return


@dataclass
class _Slot:
    index: int
    tokens: list[int] = field(default_factory=list)  # the ids whose K/V the slot's cache holds, in order
    busy: bool = False
    last_used: int = 0


class _Seq:
    """A running request: its slot, all its ids (prompt + generated), sampling and text state."""

    def __init__(self, handle: Handle, slot: _Slot, cached: int, tokenizer) -> None:
        r = handle.request
        self.handle, self.req, self.slot = handle, r, slot
        self.ids = list(r.prompt_ids)
        self.n_prompt = len(self.ids)
        self.cached_tokens = cached
        self.n_gen = 0
        self.params = handle.params
        self.rng = self.params.rng()
        self.text = TextStream(tokenizer, r.stop)
        self.stop_ids = frozenset() if r.ignore_eos else r.stop_token_ids

    def delta(self, text: str, finish: str | None = None, error: str | None = None,
              tokens: tuple[int, ...] = ()) -> Delta:
        return Delta(text, self.n_gen, self.n_prompt, self.cached_tokens, finish, error, tokens)


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if diff.size else n


class Scheduler:
    """Continuous batching over ``parallel`` sequence slots of ``ctx_size`` positions each.

    Args:
        engine: a :class:`bitnet.inference.Engine` (or an object with its ``configure_slots``,
            ``step``, ``copy_slot``, ``vocab_size`` and ``tokenizer``); only the engine thread
            touches it once :meth:`start` was called.
        parallel: sequence slots (requests generating at once), >= 1.
        ctx_size: positions per slot (prompt + generated), in [1, engine.max_positions].
        max_queue: requests that may wait for a slot; one more is refused with :class:`QueueFull`.
        prefill_chunk: most prompt tokens read per step, over all requests reading their prompt,
            while other requests decode (:data:`PREFILL_ALONE` when none does).

    Raises:
        ValueError: a size out of range (also from ``engine.configure_slots``).
    """

    def __init__(self, engine, *, parallel: int, ctx_size: int, max_queue: int = 64,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> None:
        for name, v, lo in (("parallel", parallel, 1), ("ctx_size", ctx_size, 1), ("max_queue", max_queue, 0),
                            ("prefill_chunk", prefill_chunk, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        max_pos = getattr(engine, "max_positions", None)
        if max_pos is not None and ctx_size > max_pos:
            raise ValueError(f"ctx_size {ctx_size} exceeds the model's max_position_embeddings={max_pos}")
        if getattr(engine, "tokenizer", None) is None:
            raise ValueError("the scheduler streams text and needs a tokenizer (tokenizer.json in the export)")
        self.engine = engine
        self.parallel, self.ctx_size, self.max_queue, self.prefill_chunk = parallel, ctx_size, max_queue, prefill_chunk
        engine.configure_slots(parallel, ctx_size)
        self._slots = [_Slot(i) for i in range(parallel)]
        self._active: list[_Seq] = []  # admission order (= prefill order)
        self._pending: deque[Handle] = deque()
        self._n_active = 0  # len(_active), readable under the lock from other threads
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cancel_all = False  # stop(cancel=True): the engine thread cancels everything it holds
        self._clock = itertools.count(1)
        self.error: str | None = None  # set if the engine thread died
        self.stats = {"steps": 0, "completed": 0, "cancelled": 0, "failed": 0, "prompt_tokens": 0,
                      "cached_tokens": 0, "generated_tokens": 0, "copies": 0}

    # ------------------------------------------------------------------ any thread
    def start(self) -> None:
        """Start the engine thread (once)."""
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        self._thread = threading.Thread(target=self._run, name="bitnet-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request, deliver: Callable[[Delta], None]) -> Handle:
        """Queue a request; ``deliver(delta)`` is called on the engine thread for each step's output.

        Raises:
            ValueError: empty prompt, ids outside the vocabulary, max_tokens < 1.
            PromptTooLong: more prompt tokens than ``ctx_size``.
            QueueFull: all slots busy and ``max_queue`` requests already waiting.
            SchedulerStopped: after :meth:`stop` (or if the engine thread died).
        """
        ids = request.prompt_ids
        if len(ids) == 0:
            raise ValueError("the prompt is empty")
        vocab = self.engine.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab}), got range [{min(ids)}, {max(ids)}]")
        if len(ids) > self.ctx_size:
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; a request's context holds {self.ctx_size}")
        if request.max_tokens is not None and request.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")
        params = SamplingParams(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                                seed=request.seed)  # checked here: the engine thread never meets a bad value
        handle = Handle(request, deliver, params)
        with self._cv:
            if self._stopping or self.error is not None:
                raise SchedulerStopped(self.error or "the server is shutting down")
            if self._n_active + len(self._pending) >= self.parallel + self.max_queue:
                raise QueueFull(f"all {self.parallel} slots are busy and {len(self._pending)} requests are waiting")
            self._pending.append(handle)
            self._cv.notify()
        return handle

    def submit_async(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> AsyncStream:
        """:meth:`submit` for asyncio code (call it on the loop's thread); same errors."""
        return AsyncStream(self, request, loop or asyncio.get_running_loop())

    def stop(self, cancel: bool = True, timeout: float | None = None) -> None:
        """Take no new requests; cancel running and queued ones (``cancel=True``) or let them finish;
        then end the engine thread (waits up to ``timeout`` seconds)."""
        with self._cv:
            self._stopping = True
            self._cancel_all = self._cancel_all or cancel
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict:
        """Slots, busy slots, queued requests and counters (for /health)."""
        with self._cv:
            return {"slots": self.parallel, "slots_busy": self._n_active, "queued": len(self._pending),
                    "ctx_size": self.ctx_size, **self.stats}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ engine thread
    def _send(self, handle: Handle, delta: Delta) -> None:
        try:
            handle._deliver(delta)
        except Exception:  # the receiver is gone (e.g. its event loop closed): nobody is listening
            handle.cancel()
        if delta.finish_reason is not None:
            handle.done.set()

    def _finish(self, seq: _Seq, delta: Delta) -> None:
        seq.slot.busy = False
        seq.slot.last_used = next(self._clock)
        self._active.remove(seq)
        key = {"stop": "completed", "length": "completed", "cancelled": "cancelled"}.get(delta.finish_reason, "failed")
        self.stats[key] += 1
        with self._cv:
            self._n_active = len(self._active)
        self._send(seq.handle, delta)

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._stopping or self._pending or self._active):
                        self._cv.wait()
                    if self._stopping and not self._active and not self._pending:
                        return
                self.run_once()
        except BaseException as e:  # the engine failed: fail everything rather than hang the clients
            msg = f"engine thread failed: {type(e).__name__}: {e}"
            log.exception("engine thread failed; the server stops taking requests")
            with self._cv:
                self.error = msg
                pending, self._pending = list(self._pending), deque()
            for seq in list(self._active):
                self._finish(seq, seq.delta("", "error", msg))
            for h in pending:
                self._send(h, Delta("", 0, len(h.request.prompt_ids), 0, "error", msg))
            raise

    def run_once(self) -> None:
        """One iteration of the engine thread: drop cancelled requests, admit queued ones, run one step.

        The engine thread calls it in a loop; tests call it directly on a scheduler that was never
        started, to arrange "who is in which slot when" step by step instead of racing a thread.
        An error while admitting or sampling one request ends that request; an error of the engine's
        own step propagates (the thread then fails every request and ``error`` says why).
        """
        with self._cv:
            if self._cancel_all:
                for h in self._pending:
                    h.cancel()
                for seq in self._active:
                    seq.handle.cancel()
            pending = [h for h in self._pending if h.cancelled]
            for h in pending:
                self._pending.remove(h)
            free = sum(not s.busy for s in self._slots)
            admit = [self._pending.popleft() for _ in range(min(free, len(self._pending)))]
        for h in pending:
            self.stats["cancelled"] += 1
            self._send(h, Delta("", 0, len(h.request.prompt_ids), 0, "cancelled"))
        for seq in [s for s in self._active if s.handle.cancelled]:
            self._finish(seq, seq.delta("", "cancelled"))
        for h in admit:
            try:
                self._admit(h)
            except Exception as e:  # this request fails, the others go on
                self._fail_admission(h, e)
        if self._active:
            self._step()

    def _fail_admission(self, handle: Handle, e: Exception) -> None:
        """An error while admitting ``handle`` ends it alone (its slot was not taken)."""
        log.exception("request failed while being admitted")
        self.stats["failed"] += 1
        self._send(handle, Delta("", 0, len(handle.request.prompt_ids), 0, "error", f"{type(e).__name__}: {e}"))

    def _admit(self, handle: Handle) -> None:
        """Put a request into the free slot with the longest cached prefix (or copy one from a busy slot).
        The slot is marked busy last, so an exception on the way leaves it free."""
        ids = handle.request.prompt_ids
        free = [s for s in self._slots if not s.busy]
        slot = max(free, key=lambda s: (_lcp(ids, s.tokens), -s.last_used))
        # the last prompt token is always computed: its logits give the first new token
        keep = min(_lcp(ids, slot.tokens), len(ids) - 1)
        seq = _Seq(handle, slot, keep, self.engine.tokenizer)
        busy = [s for s in self._slots if s.busy]
        if busy:
            src = max(busy, key=lambda s: _lcp(ids, s.tokens))
            n = min(_lcp(ids, src.tokens), len(ids) - 1)
            if n >= keep + MIN_COPY:
                slot.tokens = []  # unknown until the copy returns
                self.engine.copy_slot(src.index, slot.index, n)
                slot.tokens = src.tokens[:n]
                keep = seq.cached_tokens = n
                self.stats["copies"] += 1
        del slot.tokens[keep:]
        slot.busy = True
        self._active.append(seq)
        self.stats["prompt_tokens"] += len(ids)
        self.stats["cached_tokens"] += keep
        with self._cv:
            self._n_active = len(self._active)

    def _step(self) -> None:
        """One batched forward: each decoding sequence +1 token, prompts share the prefill budget."""
        batch: list[tuple[int, list[int], int]] = []
        owners: list[tuple[_Seq, bool]] = []  # (sequence, whether its segment ends at a token to sample after)
        decoding = any(len(seq.slot.tokens) >= seq.n_prompt for seq in self._active)
        budget = self.prefill_chunk if decoding else max(self.prefill_chunk, PREFILL_ALONE)
        for seq in self._active:
            pos = len(seq.slot.tokens)
            if pos >= seq.n_prompt:  # decoding: feed the last sampled token
                batch.append((seq.slot.index, [seq.ids[-1]], pos))
                owners.append((seq, True))
            elif budget > 0:
                n = min(seq.n_prompt - pos, budget)
                budget -= n
                batch.append((seq.slot.index, seq.ids[pos:pos + n], pos))
                owners.append((seq, pos + n == seq.n_prompt))
        logits = self.engine.step(batch)  # (len(batch), vocab) float32
        self.stats["steps"] += 1
        for (slot_index, seg, pos), (seq, sample), row in zip(batch, owners, logits):
            seq.slot.tokens.extend(seg)
            if sample:
                try:
                    self._advance(seq, row)
                except Exception as e:  # sampling / detokenizing this sequence failed: end it alone
                    log.exception("request failed while sampling")
                    if seq in self._active:
                        self._finish(seq, seq.delta("", "error", f"{type(e).__name__}: {e}"))

    def _advance(self, seq: _Seq, row: np.ndarray) -> None:
        """Sample the next token from ``row`` and deliver its text (or finish the sequence)."""
        r = seq.req
        nxt = sample(row, seq.params, seq.rng)
        if nxt in seq.stop_ids:
            self._finish(seq, seq.delta(seq.text.flush(), "stop"))
            return
        seq.n_gen += 1
        self.stats["generated_tokens"] += 1
        seq.ids.append(nxt)
        piece = seq.text.push(nxt)
        if seq.text.stopped:
            self._finish(seq, seq.delta(piece, "stop", tokens=(nxt,)))
        elif (r.max_tokens is not None and seq.n_gen >= r.max_tokens) or len(seq.ids) >= self.ctx_size:
            self._finish(seq, seq.delta(piece + seq.text.flush(), "length", tokens=(nxt,)))
        else:
            self._send(seq.handle, seq.delta(piece, tokens=(nxt,)))
