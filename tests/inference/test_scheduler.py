"""The continuous-batching scheduler's logic on a fake engine (no C++; see test_serve.py for the real one).

The fake's logits after a position are a pseudo-random function of every token its slot holds up to
that position, so feeding a wrong position, reusing a wrong prefix or mixing up slots changes the
generated tokens; each request is checked against a plain one-sequence loop over the same function.
"""

from __future__ import annotations

import functools
import threading
import time
import zlib

import numpy as np
import pytest
from engine_helpers import tokenizer

from bitnet.inference.sampling import SamplingParams
from bitnet.inference.scheduler import PromptTooLong, QueueFull, Request, RequestStatus, Scheduler, SchedulerStopped
from bitnet.inference.textstream import TextStream

# A hang fails the test (pytest-timeout, a dev dependency) instead of stalling the suite.
pytestmark = pytest.mark.timeout(300)

VOCAB = 300
WAIT_S = 20.0  # bound on any wait for the engine thread


_tokenizer = functools.cache(tokenizer)


class FakeEngine:
    """``Engine``'s slot API (configure_slots / step / copy_slot / slot_len) in pure Python."""

    max_positions = 96
    vocab_size = VOCAB

    def __init__(self, delay: float = 0.0) -> None:
        self.tokenizer = _tokenizer()
        self.delay = delay  # seconds per step (to keep requests in flight)
        self.batches: list[list[tuple[int, list[int], int]]] = []
        self.copies: list[tuple[int, int, int]] = []

    def configure_slots(self, n: int, ctx_size: int) -> None:
        self.cache = [[] for _ in range(n)]
        self.ctx = ctx_size

    def slot_len(self, slot: int) -> int:
        return len(self.cache[slot])

    def copy_slot(self, src: int, dst: int, n: int) -> None:
        assert 0 <= n <= len(self.cache[src])
        self.cache[dst] = self.cache[src][:n]
        self.copies.append((src, dst, n))

    @staticmethod
    def logits_for(tokens: list[int]) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(np.asarray(tokens, dtype=np.int64).tobytes()))
        return rng.standard_normal(VOCAB).astype(np.float32) * 3

    def step(self, batch) -> np.ndarray:
        slots = [s for s, _, _ in batch]
        assert len(set(slots)) == len(slots), "a slot twice in one step"
        out = np.empty((len(batch), VOCAB), dtype=np.float32)
        for i, (s, ids, pos0) in enumerate(batch):
            assert 0 <= pos0 <= len(self.cache[s]) and len(ids) >= 1
            self.cache[s] = self.cache[s][:pos0] + [int(t) for t in ids]
            assert len(self.cache[s]) <= self.ctx
            out[i] = self.logits_for(self.cache[s])
        self.batches.append([(s, list(ids), p) for s, ids, p in batch])
        if self.delay:
            time.sleep(self.delay)
        return out


def req(prompt: list[int], **params) -> Request:
    return Request(prompt, SamplingParams(**params))


def reference_sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Written out here, not the implementation's sampler: argmax, or the softmax at ``temperature``
    drawn by inverse CDF with one uniform (the documented draw of bitnet.inference.sampling.sample)."""
    z = logits.astype(np.float64)
    if temperature == 0:
        return int(np.argmax(z))
    p = np.exp((z - z.max()) / temperature)
    cum = np.cumsum(p / p.sum())
    return int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))


def alone(prompt: list[int], max_tokens: int, ctx: int, temperature: float = 0.0, seed: int | None = None,
          stop_ids: frozenset[int] = frozenset()) -> list[int]:
    """What one request gets with no scheduler: a plain one-sequence loop on the fake's logits."""
    rng = np.random.default_rng(seed)
    seq, new = list(prompt), []
    while len(new) < max_tokens:
        nxt = reference_sample(FakeEngine.logits_for(seq), temperature, rng)
        if nxt in stop_ids:
            break
        new.append(nxt)
        seq.append(nxt)
        if len(seq) >= ctx:
            break
    return new


class Collector:
    """deliver() target: gathers one request's deltas (called on the engine thread)."""

    def __init__(self) -> None:
        self.deltas = []
        self.done = threading.Event()

    def __call__(self, d) -> None:
        self.deltas.append(d)
        if d.finish_reason is not None:
            self.done.set()

    def wait(self):
        assert self.done.wait(WAIT_S), "request did not finish"
        return self

    @property
    def tokens(self) -> list[int]:
        return [t for d in self.deltas for t in d.token_ids]

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def last(self):
        return self.deltas[-1]


def wait_for(condition, what: str = "condition") -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < WAIT_S, f"timed out waiting for {what}"
        time.sleep(0.001)


def run_all(sched: Scheduler, reqs: list[Request]) -> list[Collector]:
    cols = [Collector() for _ in reqs]
    for r, c in zip(reqs, cols):
        sched.submit(r, c)
    return [c.wait() for c in cols]


@pytest.fixture
def sched_factory():
    made = []

    def make(engine=None, **kw):
        s = Scheduler(engine or FakeEngine(), **{"parallel": 3, "ctx_size": 64, "prefill_chunk": 5, **kw})
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop(timeout=WAIT_S)


def test_each_request_gets_what_it_gets_alone(sched_factory):
    rng = np.random.default_rng(0)
    shared = rng.integers(0, VOCAB, 12).tolist()
    prompts = [(shared if i % 2 else []) + rng.integers(0, VOCAB, int(rng.integers(1, 20))).tolist() for i in range(10)]
    sched = sched_factory()
    reqs = [req(p, max_tokens=8 + i, temperature=0.0 if i < 5 else 0.9, seed=i) for i, p in enumerate(prompts)]
    cols = run_all(sched, reqs)
    for r, c in zip(reqs, cols):
        p = r.params
        assert c.tokens == alone(r.prompt_ids, p.max_tokens, 64, p.temperature, p.seed)
        assert c.last.finish_reason == "length" and c.last.completion_tokens == p.max_tokens
        assert c.text == sched.engine.tokenizer.decode(c.tokens)
    assert max(len(b) for b in sched.engine.batches) == 3  # the slots ran together


def drive(sched: Scheduler, until, max_steps: int = 1000) -> None:
    """Run the (never started) scheduler's iterations until ``until()`` holds."""
    for _ in range(max_steps):
        if until():
            return
        sched.run_once()
    raise AssertionError(f"not reached in {max_steps} scheduler iterations")


def test_chunked_prefill_does_not_stall_decoding():
    eng = FakeEngine()
    sched = Scheduler(eng, parallel=2, ctx_size=96, prefill_chunk=4)  # driven step by step
    short, long = [1, 2, 3], list(range(10, 50))
    a, b = Collector(), Collector()
    sched.submit(req(short, max_tokens=80, temperature=0.0), a)
    drive(sched, lambda: a.deltas)  # a is decoding
    sched.submit(req(long, max_tokens=2, temperature=0.0), b)
    drive(sched, lambda: a.done.is_set() and b.done.is_set())
    assert b.tokens == alone(long, 2, 96) and a.tokens == alone(short, 80, 96)
    slot_a = eng.batches[0][0][0]
    prefill_steps = [batch for batch in eng.batches
                     if any(s != slot_a and p + len(ids) <= len(long) for s, ids, p in batch)]
    assert len(prefill_steps) == len(long) // 4  # 40 prompt tokens in chunks of 4 ...
    for batch in prefill_steps:  # ... each in a step that also advanced a by one token
        assert sorted(len(ids) for s, ids, p in batch) == [1, 4]


def test_prefix_reuse_from_a_free_slot_and_copy_from_a_busy_one():
    eng = FakeEngine()
    sched = Scheduler(eng, parallel=3, ctx_size=64, prefill_chunk=5)  # driven step by step
    system = list(range(100, 130))
    first, second, busy, other = Collector(), Collector(), Collector(), Collector()
    sched.submit(req(system + [1, 2], max_tokens=3, temperature=0.0), first)
    drive(sched, first.done.is_set)
    assert first.last.cached_tokens == 0
    sched.submit(req(system + [7], max_tokens=3, temperature=0.0), second)
    drive(sched, second.done.is_set)
    assert second.last.cached_tokens == len(system)  # the free slot that held it was chosen
    assert second.tokens == alone(system + [7], 3, 64)
    # a busy slot holds the prefix: the new request copies it into a free slot
    sched.submit(req(system + [9, 9], max_tokens=25, temperature=0.0), busy)
    drive(sched, lambda: busy.deltas)  # busy has read its whole prompt and is decoding
    assert not busy.done.is_set()
    sched.submit(req(system + [9, 9, 5, 6], max_tokens=4, temperature=0.0), other)
    sched.run_once()  # other is admitted while busy is still running
    assert [n for _, _, n in eng.copies] == [len(system) + 2] and not busy.done.is_set()
    drive(sched, lambda: other.done.is_set() and busy.done.is_set())
    assert other.last.cached_tokens == len(system) + 2
    assert other.tokens == alone(system + [9, 9, 5, 6], 4, 64)
    assert busy.tokens == alone(system + [9, 9], 25, 64)


def test_cancel_frees_the_slot():
    sched = Scheduler(FakeEngine(), parallel=1, ctx_size=96)  # driven step by step
    a, b = Collector(), Collector()
    ha = sched.submit(req([5, 6, 7], max_tokens=80, temperature=0.0, ignore_eos=True), a)
    sched.submit(req([8, 9], max_tokens=3, temperature=0.0), b)
    drive(sched, lambda: len(a.deltas) >= 3)
    assert ha.status is RequestStatus.RUNNING
    ha.cancel()
    drive(sched, lambda: a.done.is_set() and b.done.is_set())
    assert a.last.finish_reason == "cancelled" and a.last.completion_tokens == 3
    assert ha.status is RequestStatus.FINISHED_CANCELLED
    assert b.tokens == alone([8, 9], 3, 96) and b.last.finish_reason == "length"
    assert sched.status()["slots_busy"] == 0 and sched.status()["cancelled"] == 1


def test_end_token_stop_string_and_full_context():
    eng = FakeEngine()
    sched = Scheduler(eng, parallel=2, ctx_size=20, prefill_chunk=8)
    sched.start()
    try:
        prompt = [3, 1, 4, 1, 5]
        ref = alone(prompt, 50, 20)  # greedy until the context (20 positions) is full
        assert len(ref) == 20 - len(prompt)
        (full,) = run_all(sched, [req(prompt, temperature=0.0)])
        assert full.tokens == ref and full.last.finish_reason == "length"
        (eos,) = run_all(sched, [req(prompt, max_tokens=50, temperature=0.0, stop_token_ids=frozenset({ref[3]}))])
        assert eos.tokens == ref[:ref.index(ref[3])] and eos.last.finish_reason == "stop"
        text = eng.tokenizer.decode(ref)
        stop = text[len(text) // 2:len(text) // 2 + 2]
        (st,) = run_all(sched, [req(prompt, max_tokens=50, temperature=0.0, stop=[stop])])
        assert st.text == text[:text.index(stop)] and st.last.finish_reason == "stop"
        (prompt_fills,) = run_all(sched, [req(list(range(20)), max_tokens=5, temperature=0.0)])
        assert prompt_fills.last.completion_tokens == 1 and prompt_fills.last.finish_reason == "length"
    finally:
        sched.stop(timeout=WAIT_S)


def test_bad_requests_and_a_bounded_queue():
    sched = Scheduler(FakeEngine(), parallel=1, ctx_size=16, max_queue=1)  # not started: nothing leaves the queue
    with pytest.raises(PromptTooLong):
        sched.submit(req(list(range(17))), Collector())
    with pytest.raises(ValueError, match="must be in"):
        sched.submit(req([VOCAB]), Collector())
    with pytest.raises(ValueError, match="empty"):
        sched.submit(req([]), Collector())
    with pytest.raises(ValueError, match="max_tokens"):
        sched.submit(req([1], max_tokens=0), Collector())
    sched.submit(req([1]), Collector())  # takes the slot
    sched.submit(req([2]), Collector())  # waits
    with pytest.raises(QueueFull):
        sched.submit(req([3]), Collector())
    with pytest.raises(ValueError, match="ctx_size"):
        Scheduler(FakeEngine(), parallel=1, ctx_size=FakeEngine.max_positions + 1)


def test_stop_cancels_running_and_queued_requests():
    gate = threading.Event()

    class GatedEngine(FakeEngine):
        def step(self, batch):  # the first step waits for the test: a is running when stop() comes
            assert gate.wait(WAIT_S)
            return super().step(batch)

    sched = Scheduler(GatedEngine(), parallel=1, ctx_size=96)
    sched.start()
    a, b = Collector(), Collector()
    sched.submit(req([1, 2], max_tokens=90, temperature=0.0), a)
    sched.submit(req([3], max_tokens=5), b)
    wait_for(lambda: sched.status()["slots_busy"] == 1, "a to be admitted")
    stopper = threading.Thread(target=sched.stop, kwargs={"cancel": True, "timeout": WAIT_S})
    stopper.start()
    gate.set()
    stopper.join(WAIT_S)
    assert not sched.running
    assert a.wait().last.finish_reason == "cancelled" and b.wait().last.finish_reason == "cancelled"
    assert a.last.completion_tokens <= 1
    with pytest.raises(SchedulerStopped):
        sched.submit(req([1]), Collector())


def test_text_stream_holds_back_partial_stop_strings_and_utf8():
    tok = _tokenizer()
    ids = tok.encode("to be or not to be é").ids
    ts = TextStream(tok, ["not t"])
    pieces = [ts.push(t) for t in ids]
    assert "".join(pieces) == "to be or " and ts.stopped and ts.flush() == ""
    ts = TextStream(tok, ["zz"])
    pieces = [ts.push(t) for t in ids] + [ts.flush()]
    assert "".join(pieces) == "to be or not to be é"
    assert all("\ufffd" not in p for p in pieces)  # é (2 bytes) is never split


def test_a_lone_prompt_is_read_in_large_chunks(sched_factory):
    from bitnet.inference.scheduler import PREFILL_ALONE

    eng = FakeEngine()
    eng.max_positions = PREFILL_ALONE + 64
    sched = sched_factory(eng, parallel=2, ctx_size=PREFILL_ALONE + 64, prefill_chunk=4)
    prompt = list(range(10, 10 + PREFILL_ALONE + 20))
    (c,) = run_all(sched, [req(prompt, max_tokens=2, temperature=0.0)])
    assert c.tokens == alone(prompt, 2, PREFILL_ALONE + 64)
    # nobody decodes while it reads its prompt: PREFILL_ALONE tokens, then the rest, then 1 per step
    assert [len(ids) for batch in eng.batches for s, ids, p in batch] == [PREFILL_ALONE, 20, 1]


class FaultyEngine(FakeEngine):
    """NaN logits for one slot's rows; copy_slot raises when ``copy_fails``."""

    def __init__(self, nan_slot: int | None = None, copy_fails: bool = False) -> None:
        super().__init__()
        self.nan_slot, self.copy_fails = nan_slot, copy_fails

    def step(self, batch) -> np.ndarray:
        out = super().step(batch)
        for i, (s, _, _) in enumerate(batch):
            if s == self.nan_slot:
                out[i] = np.nan
        return out

    def copy_slot(self, src: int, dst: int, n: int) -> None:
        if self.copy_fails:
            raise RuntimeError("copy failed")
        super().copy_slot(src, dst, n)


def test_a_failure_while_sampling_ends_that_request_only(sched_factory):
    sched = sched_factory(FaultyEngine(nan_slot=0), parallel=2)
    bad, good = Collector(), Collector()
    sched.submit(req([1, 2, 3], max_tokens=5, temperature=0.7, seed=1), bad)  # admitted first: slot 0
    sched.submit(req([4, 5], max_tokens=5, temperature=0.0), good)
    bad.wait(), good.wait()
    assert bad.last.finish_reason == "error" and "not finite" in bad.last.error
    assert good.tokens == alone([4, 5], 5, 64) and good.last.finish_reason == "length"
    (after,) = run_all(sched, [req([7, 8], max_tokens=3, temperature=0.0)])  # the engine thread lives on
    assert after.last.finish_reason == "length" and sched.running and sched.error is None
    assert sched.status()["failed"] == 1 and sched.status()["slots_busy"] == 0


def test_a_failure_while_admitting_ends_that_request_only():
    eng = FaultyEngine(copy_fails=True)
    sched = Scheduler(eng, parallel=2, ctx_size=64, prefill_chunk=64)  # driven step by step, never started
    system = list(range(100, 130))
    busy, copier, after = Collector(), Collector(), Collector()
    sched.submit(req(system + [1], max_tokens=5, temperature=0.0), busy)
    sched.run_once()  # busy reads its prompt and samples its first token
    assert len(busy.deltas) == 1
    sched.submit(req(system + [1, 2], max_tokens=3, temperature=0.0), copier)  # would copy busy's prefix
    sched.run_once()
    assert copier.last.finish_reason == "error" and "copy failed" in copier.last.error
    eng.copy_fails = False
    sched.submit(req([7, 8], max_tokens=3, temperature=0.0), after)
    for _ in range(10):
        sched.run_once()
    assert busy.tokens == alone(system + [1], 5, 64) and after.tokens == alone([7, 8], 3, 64)
    assert sched.error is None and sched.status()["slots_busy"] == 0 and sched.status()["failed"] == 1


def test_a_steps_deltas_go_out_after_the_whole_batch_is_sampled():
    """Delivering wakes the receiver's thread (the server's event loop), which then competes for the
    GIL with the sampling of the rest of the batch: every request of a step is sampled and advanced
    before the step's first delta is delivered, and all of them are delivered by the end of the step."""
    sched = Scheduler(FakeEngine(), parallel=3, ctx_size=64, prefill_chunk=64)  # driven step by step
    reqs = [req([i + 1, i + 2], max_tokens=4, temperature=0.0) for i in range(3)]
    seen: list[list[int]] = []  # at each delivery: every request's completion_tokens

    def collect(col: Collector):
        def deliver(d):
            seen.append([r.completion_tokens for r in reqs])
            col(d)
        return deliver

    cols = [Collector() for _ in reqs]
    for r, c in zip(reqs, cols):
        sched.submit(r, collect(c))
    for step in range(1, 5):
        seen.clear()
        sched.run_once()
        assert len(seen) == 3 and all(s == [step] * 3 for s in seen), (step, seen)  # delivered after all advanced
        assert all(len(c.deltas) == step for c in cols)
    assert all(c.last.finish_reason == "length" and c.tokens == alone(r.prompt_ids, 4, 64) for r, c in zip(reqs, cols))


def test_out_of_range_sampling_values_are_refused_when_made():
    for kw in ({"temperature": float("nan")}, {"top_p": 0.0}, {"top_p": float("nan")}, {"seed": -1},
               {"seed": 2**70}, {"temperature": float("inf")}):
        with pytest.raises(ValueError):
            req([1], **kw)


def test_an_idle_scheduler_gathers_a_burst_into_one_step(sched_factory):
    """Requests that arrive together at an idle server read their prompts in one step and then
    decode in step; without the window, the second prompt would be read behind the first one's
    decoding (the window ends here as soon as both slots are taken, so the test does not race it)."""
    eng = FakeEngine()
    sched = Scheduler(eng, parallel=2, ctx_size=64, prefill_chunk=2, batch_window=WAIT_S, arrival_gap=WAIT_S)
    sched.start()
    try:
        a, b = Collector(), Collector()
        sched.submit(req([1, 2, 3, 4, 5], max_tokens=3, temperature=0.0), a)
        time.sleep(0.05)  # the engine thread is waiting in the window now
        sched.submit(req([6, 7, 8, 9, 10], max_tokens=3, temperature=0.0), b)
        a.wait(), b.wait()
    finally:
        sched.stop(timeout=WAIT_S)
    assert [sorted(len(ids) for _, ids, _ in batch) for batch in eng.batches] == [[5, 5], [1, 1], [1, 1]]
    assert a.tokens == alone([1, 2, 3, 4, 5], 3, 64) and b.tokens == alone([6, 7, 8, 9, 10], 3, 64)
    st = sched.status()
    assert st["steps"] == 3 and st["step_seconds"] > 0 and st["advance_seconds"] > 0


def test_a_lone_request_waits_one_arrival_gap_at_most(sched_factory):
    """The window is far longer than the wait for the request (run_all's WAIT_S deadline): the
    request finishes in time only if the quiet arrival gap ends the window."""
    eng = FakeEngine()
    sched = sched_factory(eng, parallel=4, batch_window=100 * WAIT_S, arrival_gap=0.05)
    (c,) = run_all(sched, [req([1, 2, 3], max_tokens=1, temperature=0.0)])
    assert c.tokens == alone([1, 2, 3], 1, 64)


@pytest.mark.parametrize("bad", [{"batch_window": -1}, {"arrival_gap": float("nan")}, {"batch_window": "5"}])
def test_bad_batch_windows_are_refused(bad):
    with pytest.raises(ValueError, match="must be a number of seconds"):
        Scheduler(FakeEngine(), parallel=1, ctx_size=8, **bad)


def test_the_batch_window_waits_for_requests_on_their_way():
    """A request being prepared (Scheduler.arriving, as bitnet serve marks each one while it parses
    and tokenizes) holds an idle engine's window open past the arrival gap, so it joins the first step."""
    eng = FakeEngine()
    sched = Scheduler(eng, parallel=2, ctx_size=64, batch_window=WAIT_S, arrival_gap=0.001)
    sched.start()
    try:
        a, b = Collector(), Collector()
        with sched.arriving():
            sched.submit(req([1, 2, 3], max_tokens=2, temperature=0.0), a)
            time.sleep(0.1)  # 100 arrival gaps: without the mark the engine would have stepped with a alone
            sched.submit(req([4, 5, 6, 7], max_tokens=2, temperature=0.0), b)
        a.wait(), b.wait()
    finally:
        sched.stop(timeout=WAIT_S)
    assert [sorted(len(ids) for _, ids, _ in batch) for batch in eng.batches] == [[3, 4], [1, 1]]
