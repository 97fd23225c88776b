"""Continuous batching on the C++ engine: many requests, one engine thread, one weight read per step.

    sched = Scheduler(engine, parallel=8, ctx_size=2048)      # engine: bitnet.inference.Engine
    sched.start()
    req = sched.submit(Request(ids, SamplingParams(max_tokens=64)), deliver=print)  # deliver(Delta), engine thread
    ...                                                       # or, from asyncio: async for d in sched.submit_async(req)
    sched.stop()

A :class:`Request` carries one request from admission to its last delta; its ``status``
(:class:`RequestStatus`) says where it is: waiting, running, or how it finished.

The engine thread repeats one *step*:
0. (only when idle) wait up to ``batch_window`` for a burst of requests to arrive, so that their
   prompts are read in one step and they decode in step (see :data:`DEFAULT_BATCH_WINDOW`);
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
4. advances each sequence whose segment ended at a token to sample after through
   :meth:`Generation.step` (sample, stop check, incremental detokenize: the same step
   ``Engine.generate`` takes; the batch's tokens are sampled first, together:
   :func:`~bitnet.inference.generation.sample_batch`) and delivers the new text, every request's
   at once after the batch's sampling. A sequence ends at ``max_tokens``, an end token (eos / end
   of turn), a stop string, when its slot's context is full, or at its deadline; its slot keeps
   the cached tokens for later prefix reuse.

A failure while admitting or advancing one request (a copy that fails, logits that are not
finite, a tokenizer error) ends that request with an error delta; the engine thread goes on. Only
an exception from ``Engine.step`` itself stops it; then ``error`` says why and every held request
gets an error delta.

A sequence's tokens do not depend on what else is in the batch (``Engine.step``'s guarantee), so
each request gets what it would get alone, and ``Engine.generate``'s result for the same prompt and
sampling settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from .generation import Generation, common_prefix, sample_batch
from .sampling import SamplingParams

__all__ = ["Request", "RequestStatus", "Delta", "AsyncStream", "Scheduler", "SchedulerObserver", "QueueFull",
           "PromptTooLong", "SchedulerStopped"]

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
# An idle engine thread that gets a request waits for more before its first step (a burst of requests
# then reads its prompts together and decodes in step, instead of each new prompt queueing behind the
# others' in prefill_chunk pieces while a few sequences decode alone): while requests are being
# prepared (Scheduler.arriving), else until ARRIVAL_GAP seconds pass without a new request; never
# past every slot taken or DEFAULT_BATCH_WINDOW seconds. A lone request therefore waits ARRIVAL_GAP
# before its prompt step (through bitnet serve too: the engine thread mostly wakes after its
# preparation ended, so nothing is on its way; ending the window there instead would start a burst
# with its first request alone, its arrivals being 5-9 ms apart at 8 streams). At
# bench_serve's 8 streams (prompt 32, 48 tokens) a level took 96 steps instead of 128, and the
# server's CPU seconds per generated token fell by a fifth (AMX kernels; 2.8x -> 3.4x one stream's
# in CPU terms, as modelled from the step costs: 3.0x -> 3.4x). Under heavy load a burst's HTTP
# arrivals can be spread wider than this (one run in three still took 128 steps): raise
# --batch-window there.
DEFAULT_BATCH_WINDOW = 0.1
ARRIVAL_GAP = 0.01


class QueueFull(RuntimeError):
    """Every slot is busy and the waiting queue is at its bound (HTTP 429)."""


class PromptTooLong(ValueError):
    """The prompt does not fit in one slot's context."""


class SchedulerStopped(RuntimeError):
    """The scheduler is stopping or stopped and takes no new requests (HTTP 503)."""


class RequestStatus(enum.Enum):
    """Where a request is. The finished states' values are the last delta's ``finish_reason``."""

    WAITING = "waiting"  # queued for a slot
    RUNNING = "running"  # in a slot: reading its prompt or decoding
    FINISHED_STOPPED = "stop"  # an end token or a stop string
    FINISHED_LENGTH = "length"  # max_tokens or a full context
    FINISHED_CANCELLED = "cancelled"  # the client went away (or stopped reading), or the server stops
    FINISHED_TIMEOUT = "timeout"  # past its deadline
    FINISHED_ERROR = "error"  # a failure while handling it (``Request.error`` says which)

    @property
    def finished(self) -> bool:
        return self not in (RequestStatus.WAITING, RequestStatus.RUNNING)


@dataclass(eq=False)
class Request:
    """One generation request, from admission to its last delta.

    Args:
        prompt_ids: the prompt's token ids (non-empty, each in [0, vocab)).
        params: sampling and stopping (``max_tokens`` None = until the slot's context is full).
        id: shown in logs and responses.
        timeout: seconds from submission after which the request ends with status
            ``FINISHED_TIMEOUT`` (None = no limit).

    The scheduler fills in the rest: ``status``, the timing fields (scheduler clock seconds) and,
    once finished, ``error``. ``cancel()`` is thread-safe; the slot is freed at the next step.
    """

    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timeout: float | None = None
    status: RequestStatus = field(default=RequestStatus.WAITING, init=False)
    error: str | None = field(default=None, init=False)
    cached_tokens: int = field(default=0, init=False)  # prompt positions taken from a cache
    arrival_time: float | None = field(default=None, init=False)
    first_token_time: float | None = field(default=None, init=False)
    last_token_time: float | None = field(default=None, init=False)
    finished_time: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.prompt_ids = list(self.prompt_ids)
        self._cancel_reason: str | None = None
        self._cancelled = threading.Event()
        self.done = threading.Event()  # set after the last delta was delivered
        self._deliver: Callable[[Delta], None] | None = None
        self._gen: Generation | None = None
        self._slot: _Slot | None = None
        self._deadline: float | None = None

    def cancel(self, reason: str | None = None) -> None:
        """Ask the engine thread to end this request (``reason`` goes to its last delta and the log)."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def completion_tokens(self) -> int:
        return self._gen.n_gen if self._gen is not None else 0


@dataclass
class Delta:
    """What a request produced in one step (or at its end).

    ``text`` is the new text that is safe to show (may be ""). ``finish_reason`` is None while the
    request runs; on its last delta the value of its finished :class:`RequestStatus` ("stop",
    "length", "cancelled", "timeout" or "error"; ``error`` then says why).
    """

    text: str
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int  # prompt positions taken from a cache instead of computed
    finish_reason: str | None = None
    error: str | None = None
    token_ids: tuple[int, ...] = ()  # the token generated in this step (none on an end token or cancel)


class SchedulerObserver:
    """Hooks the engine thread calls (metrics); the default does nothing. Keep them cheap."""

    def on_step(self, seconds: float, segments: int, tokens: int) -> None:
        """One ``Engine.step`` of ``segments`` sequences and ``tokens`` tokens took ``seconds``."""

    def on_token(self, request: Request, seconds_since_last: float, first: bool) -> None:
        """``request`` got a token: ``first`` (then the seconds since arrival) or the inter-token gap."""

    def on_finish(self, request: Request) -> None:
        """``request`` finished (any status)."""


class AsyncStream:
    """A request seen from asyncio: ``async for delta in stream`` until the delta with a finish_reason.

    Deltas are handed to the event loop with ``loop.call_soon_threadsafe``; the engine thread never
    waits for the loop. A consumer that takes nothing for ``stall_timeout`` seconds while deltas
    wait (a client that stopped reading its socket) has its request cancelled, so it gives its slot back.
    """

    def __init__(self, scheduler: "Scheduler", request: Request, loop: asyncio.AbstractEventLoop,
                 stall_timeout: float | None = None) -> None:
        self._queue: asyncio.Queue[Delta] = asyncio.Queue()
        self._loop = loop
        self._stall_timeout = stall_timeout
        self._unread = 0  # deltas delivered and not yet taken (engine thread increments, loop decrements)
        self._last_take = time.monotonic()
        self.request = scheduler.submit(request, self._deliver)

    def _deliver(self, delta: Delta) -> None:
        if (self._stall_timeout is not None and self._unread > 0 and delta.finish_reason is None
                and time.monotonic() - self._last_take > self._stall_timeout):
            self.request.cancel(f"the client read nothing for {self._stall_timeout:g} s")
        self._unread += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, delta)

    def cancel(self, reason: str | None = None) -> None:
        self.request.cancel(reason)

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Delta]:
        while True:
            delta = await self._queue.get()
            self._unread -= 1
            self._last_take = time.monotonic()
            yield delta
            if delta.finish_reason is not None:
                return


@dataclass
class _Slot:
    index: int
    tokens: list[int] = field(default_factory=list)  # the ids whose K/V the slot's cache holds, in order
    busy: bool = False
    last_used: int = 0


def _name_os_thread(name: str) -> None:
    """Give the calling thread an OS-level name (Linux: what ``top -H`` and /proc/<pid>/task/*/comm
    show, 15 bytes at most); a no-op where that is not available."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _delta(req: Request, text: str = "", tokens: tuple[int, ...] = ()) -> Delta:
    return Delta(text, req.completion_tokens, len(req.prompt_ids), req.cached_tokens,
                 req.status.value if req.status.finished else None, req.error, tokens)


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
        batch_window: most seconds an idle engine thread waits, after a request arrives, for more
            (0 = none); it stops waiting once ``arrival_gap`` seconds pass without a new one or every
            slot is taken (see :data:`DEFAULT_BATCH_WINDOW`).
        arrival_gap: see ``batch_window``.
        observer: hooks for metrics (:class:`SchedulerObserver`).
        clock: seconds, monotonic (tests pass a controllable one).

    Raises:
        ValueError: a size out of range (also from ``engine.configure_slots``).
    """

    def __init__(self, engine, *, parallel: int, ctx_size: int, max_queue: int = 64,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, batch_window: float = DEFAULT_BATCH_WINDOW,
                 arrival_gap: float = ARRIVAL_GAP, observer: SchedulerObserver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for name, v, lo in (("parallel", parallel, 1), ("ctx_size", ctx_size, 1), ("max_queue", max_queue, 0),
                            ("prefill_chunk", prefill_chunk, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name, v in (("batch_window", batch_window), ("arrival_gap", arrival_gap)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {v!r}")
        self.batch_window, self.arrival_gap = float(batch_window), float(arrival_gap)
        max_pos = getattr(engine, "max_positions", None)
        if max_pos is not None and ctx_size > max_pos:
            raise ValueError(f"ctx_size {ctx_size} exceeds the model's max_position_embeddings={max_pos}")
        if getattr(engine, "tokenizer", None) is None:
            raise ValueError("the scheduler streams text and needs a tokenizer (tokenizer.json in the export)")
        self.engine = engine
        self.parallel, self.ctx_size, self.max_queue, self.prefill_chunk = parallel, ctx_size, max_queue, prefill_chunk
        self.observer = observer or SchedulerObserver()
        self.clock = clock
        engine.configure_slots(parallel, ctx_size)
        self._slots = [_Slot(i) for i in range(parallel)]
        self._active: list[Request] = []  # admission order (= prefill order)
        self._pending: deque[Request] = deque()
        self._n_active = 0  # len(_active), readable under the lock from other threads
        self._arriving = 0  # requests on their way to submit() (see arriving())
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cancel_all = False  # stop(cancel=True): the engine thread cancels everything it holds
        self._lru = itertools.count(1)
        # Deltas made by this iteration of the engine thread, delivered together at its end (_flush).
        self._outbox: list[tuple[Request, Delta]] = []
        self.error: str | None = None  # set if the engine thread died
        self.stats = {"steps": 0, "completed": 0, "cancelled": 0, "failed": 0, "timeouts": 0, "prompt_tokens": 0,
                      "cached_tokens": 0, "generated_tokens": 0, "copies": 0,
                      # engine-thread seconds (clock) in Engine.step, and in sampling / detokenizing / delivering
                      "step_seconds": 0.0, "advance_seconds": 0.0}

    # ------------------------------------------------------------------ any thread
    def start(self) -> None:
        """Start the engine thread (once)."""
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        self._thread = threading.Thread(target=self._run, name="bitnet-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request, deliver: Callable[[Delta], None]) -> Request:
        """Queue a request; ``deliver(delta)`` is called on the engine thread for each step's output.
        Returns ``request`` (now WAITING).

        Raises:
            ValueError: empty prompt, ids outside the vocabulary, max_tokens < 1, a request submitted twice.
            PromptTooLong: more prompt tokens than ``ctx_size``.
            QueueFull: all slots busy and ``max_queue`` requests already waiting.
            SchedulerStopped: after :meth:`stop` (or if the engine thread died).
        """
        ids = request.prompt_ids
        if request._deliver is not None:
            raise ValueError(f"request {request.id} was already submitted")
        if len(ids) == 0:
            raise ValueError("the prompt is empty")
        vocab = self.engine.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab}), got range [{min(ids)}, {max(ids)}]")
        if len(ids) > self.ctx_size:
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; a request's context holds {self.ctx_size}")
        if request.params.max_tokens is not None and request.params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {request.params.max_tokens}")
        if request.timeout is not None and not request.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {request.timeout}")
        with self._cv:
            if self._stopping or self.error is not None:
                raise SchedulerStopped(self.error or "the server is shutting down")
            if self._n_active + len(self._pending) >= self.parallel + self.max_queue:
                raise QueueFull(f"all {self.parallel} slots are busy and {len(self._pending)} requests are waiting")
            request._deliver = deliver
            request.arrival_time = self.clock()
            if request.timeout is not None:
                request._deadline = request.arrival_time + request.timeout
            self._pending.append(request)
            self._cv.notify()
        return request

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Marks a request on its way to :meth:`submit` (its body being parsed and tokenized on
        another thread) for as long as the block runs: an idle engine thread's batch window waits
        for it instead of stepping without it (``bitnet serve`` wraps each request's preparation)."""
        with self._cv:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cv:
                self._arriving -= 1
                self._cv.notify()

    def submit_async(self, request: Request, loop: asyncio.AbstractEventLoop | None = None,
                     stall_timeout: float | None = None) -> AsyncStream:
        """:meth:`submit` for asyncio code (call it on the loop's thread); same errors."""
        return AsyncStream(self, request, loop or asyncio.get_running_loop(), stall_timeout)

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
    def _send(self, req: Request, delta: Delta) -> None:
        self._outbox.append((req, delta))

    def _flush(self) -> None:
        """Deliver what this iteration made, all at once after the step's sampling: a delivery wakes
        the receiver's thread (the server's event loop), and delivered between two requests'
        sampling it took the GIL from the engine thread in the middle of the batch."""
        out, self._outbox = self._outbox, []
        for req, delta in out:
            try:
                req._deliver(delta)
            except Exception:  # the receiver is gone (e.g. its event loop closed): nobody is listening
                req.cancel("the receiver failed")
            if delta.finish_reason is not None:
                req.done.set()

    def _finish(self, req: Request, status: RequestStatus, text: str = "", error: str | None = None,
                tokens: tuple[int, ...] = ()) -> None:
        """End ``req`` with ``status``: free its slot (keeping its cached tokens), count, deliver the last delta."""
        req.status, req.error, req.finished_time = status, error, self.clock()
        if req._slot is not None:
            req._slot.busy = False
            req._slot.last_used = next(self._lru)
        if req in self._active:
            self._active.remove(req)
            with self._cv:
                self._n_active = len(self._active)
        key = {RequestStatus.FINISHED_STOPPED: "completed", RequestStatus.FINISHED_LENGTH: "completed",
               RequestStatus.FINISHED_CANCELLED: "cancelled", RequestStatus.FINISHED_TIMEOUT: "timeouts"}
        self.stats[key.get(status, "failed")] += 1
        if status in (RequestStatus.FINISHED_CANCELLED, RequestStatus.FINISHED_TIMEOUT, RequestStatus.FINISHED_ERROR):
            log.info("request %s %s after %d tokens%s", req.id, status.value, req.completion_tokens,
                     f": {error}" if error else "")
        try:
            self.observer.on_finish(req)
        finally:
            self._send(req, _delta(req, text, tokens))

    def _fail(self, req: Request, what: str, e: Exception) -> None:
        log.error("request %s failed while %s", req.id, what, exc_info=e)
        if req._slot is not None and not req._slot.busy:
            req._slot.tokens = []  # a failed admission: what the slot holds is unknown
        self._finish(req, RequestStatus.FINISHED_ERROR, error=f"{type(e).__name__}: {e}")

    def _run(self) -> None:
        _name_os_thread("bitnet-engine")
        try:
            while True:
                with self._cv:
                    while not (self._stopping or self._pending or self._active):
                        self._cv.wait()
                    if self._stopping and not self._active and not self._pending:
                        return
                    if not self._active:
                        self._gather()
                self.run_once()
        except BaseException as e:  # the engine failed: fail everything rather than hang the clients
            msg = f"engine thread failed: {type(e).__name__}: {e}"
            log.exception("engine thread failed; the server stops taking requests")
            with self._cv:
                self.error = msg
                pending, self._pending = list(self._pending), deque()
            for req in list(self._active) + pending:
                self._finish(req, RequestStatus.FINISHED_ERROR, error=msg)
            self._flush()
            # logged above; the thread ends here (error set, running False: /health answers 503)

    def _gather(self) -> None:
        """(Engine thread, holding the lock, nothing running.) Wait for more requests to arrive, up to
        ``batch_window`` seconds: while requests are on their way (:meth:`arriving`), else until
        ``arrival_gap`` seconds bring none; or until every slot is taken or the scheduler stops.
        Real time (``time.monotonic``): it is a wait on the condition."""
        deadline = time.monotonic() + self.batch_window
        while not self._stopping and len(self._pending) < self.parallel:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            n, coming = len(self._pending), self._arriving
            self._cv.wait(left if coming else min(left, self.arrival_gap))
            if len(self._pending) == n and (not coming or not self._arriving):
                return  # a quiet gap, or what was on its way ended without a request: the burst is over

    def run_once(self) -> None:
        """One iteration of the engine thread: end cancelled and timed-out requests, admit queued
        ones, run one step.

        The engine thread calls it in a loop; tests call it directly on a scheduler that was never
        started, to arrange "who is in which slot when" step by step instead of racing a thread.
        An error while admitting or advancing one request ends that request; an error of the
        engine's own step propagates (the thread then fails every request and ``error`` says why).
        """
        try:
            self._run_once()
        finally:  # also what was made before an engine failure
            self._flush()

    def _run_once(self) -> None:
        now = self.clock()
        with self._cv:
            if self._cancel_all:
                for req in list(self._pending) + self._active:
                    req.cancel("the server is shutting down")
            ended = [r for r in self._pending if r.cancelled or (r._deadline is not None and now > r._deadline)]
            for req in ended:
                self._pending.remove(req)
            free = sum(not s.busy for s in self._slots)
            admit = [self._pending.popleft() for _ in range(min(free, len(self._pending)))]
        for req in ended + [r for r in self._active if r.cancelled or (r._deadline is not None and now > r._deadline)]:
            if req.cancelled:
                self._finish(req, RequestStatus.FINISHED_CANCELLED, error=req._cancel_reason)
            else:
                self._finish(req, RequestStatus.FINISHED_TIMEOUT, req._gen.text.flush() if req._gen else "",
                             error=f"the request ran past its timeout of {req.timeout:g} s")
        for req in admit:
            try:
                self._admit(req)
            except Exception as e:  # this request fails, the others go on
                self._fail(req, "being admitted", e)
        if self._active:
            self._step()

    def _admit(self, req: Request) -> None:
        """Put a request into the free slot with the longest cached prefix (or copy one from a busy slot).
        The slot is marked busy last, so an exception on the way leaves it free."""
        ids = req.prompt_ids
        free = [s for s in self._slots if not s.busy]
        slot = max(free, key=lambda s: (common_prefix(ids, s.tokens), -s.last_used))
        req._slot = slot
        # the last prompt token is always computed: its logits give the first new token
        keep = min(common_prefix(ids, slot.tokens), len(ids) - 1)
        req._gen = Generation(req.params, ids, self.engine.tokenizer, self.ctx_size)
        busy = [s for s in self._slots if s.busy]
        if busy:
            src = max(busy, key=lambda s: common_prefix(ids, s.tokens))
            n = min(common_prefix(ids, src.tokens), len(ids) - 1)
            if n >= keep + MIN_COPY:
                slot.tokens = []  # unknown until the copy returns
                self.engine.copy_slot(src.index, slot.index, n)
                slot.tokens = src.tokens[:n]
                keep = n
                self.stats["copies"] += 1
        del slot.tokens[keep:]
        req.cached_tokens = keep
        slot.busy = True
        req.status = RequestStatus.RUNNING
        self._active.append(req)
        self.stats["prompt_tokens"] += len(ids)
        self.stats["cached_tokens"] += keep
        with self._cv:
            self._n_active = len(self._active)

    def _step(self) -> None:
        """One batched forward: each decoding sequence +1 token, prompts share the prefill budget."""
        batch: list[tuple[int, list[int], int]] = []
        owners: list[tuple[Request, bool]] = []  # (request, whether its segment ends at a token to sample after)
        decoding = any(len(r._slot.tokens) >= r._gen.n_prompt for r in self._active)
        budget = self.prefill_chunk if decoding else max(self.prefill_chunk, PREFILL_ALONE)
        for req in self._active:
            slot, gen = req._slot, req._gen
            pos = len(slot.tokens)
            if pos >= gen.n_prompt:  # decoding: feed the last sampled token
                batch.append((slot.index, [gen.ids[-1]], pos))
                owners.append((req, True))
            elif budget > 0:
                n = min(gen.n_prompt - pos, budget)
                budget -= n
                batch.append((slot.index, gen.ids[pos:pos + n], pos))
                owners.append((req, pos + n == gen.n_prompt))
        t0 = self.clock()
        logits = self.engine.step(batch)  # (len(batch), vocab) float32; an exception here is the engine's
        now = self.clock()
        self.stats["steps"] += 1
        self.stats["step_seconds"] += now - t0
        self.observer.on_step(now - t0, len(batch), sum(len(seg) for _, seg, _ in batch))
        # Every token of the batch first, then each request's bookkeeping and text; the deltas go
        # out together at the end (_flush).
        tokens = sample_batch([req._gen if to_sample else None for req, to_sample in owners], logits)
        for (slot_index, seg, pos), (req, to_sample), token in zip(batch, owners, tokens):
            req._slot.tokens.extend(seg)
            if to_sample:
                try:
                    if isinstance(token, Exception):
                        raise token
                    self._advance(req, token, now)
                except Exception as e:  # sampling / detokenizing this request failed: end it alone
                    if req in self._active:
                        self._fail(req, "sampling", e)
        self._flush()
        self.stats["advance_seconds"] += self.clock() - now

    def _advance(self, req: Request, token: int, now: float) -> None:
        """:meth:`Generation.advance` with the request's sampled ``token``; deliver its text or finish it."""
        out = req._gen.advance(token)
        if out.token is not None:
            self.stats["generated_tokens"] += 1
            first = req.first_token_time is None
            self.observer.on_token(req, now - (req.arrival_time if first else req.last_token_time), first)
            if first:
                req.first_token_time = now
            req.last_token_time = now
        tokens = (out.token,) if out.token is not None else ()
        if out.finish_reason is not None:
            self._finish(req, RequestStatus(out.finish_reason), out.text, tokens=tokens)
        else:
            self._send(req, _delta(req, out.text, tokens))
