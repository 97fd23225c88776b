"""Sequence slots and batched steps: a sequence gets the same logits alone and in a batch."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet.inference import Engine

from engine_helpers import export, tiny

VOCAB = 256


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export(tiny(seed=3, vocab_size=VOCAB, max_position_embeddings=1024), tmp_path_factory.mktemp("batch") / "m")


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=int(rng.integers(3, 40))).tolist() for _ in range(n)]


def _greedy_alone(eng: Engine, ids: list[int], n_new: int) -> list[int]:
    return eng.generate(ids, max_new_tokens=n_new)


@pytest.mark.parametrize("head", ["int8", "f16"])
def test_logits_alone_equal_logits_in_a_batch(model_dir, head):
    eng = Engine(model_dir, threads=2, head=head)
    prompts = _prompts(8)
    eng.configure_slots(8, 128)
    batched = eng.step([(i, p, 0) for i, p in enumerate(prompts)])
    for i, p in enumerate(prompts):
        alone = eng.logits(p)[-1]
        np.testing.assert_array_equal(batched[i], alone)  # exact: integer products, per-token float ops


def test_greedy_tokens_alone_and_in_a_batch_of_8(model_dir):
    eng = Engine(model_dir, threads=2)
    prompts = _prompts(8, seed=1)
    n_new = 12
    want = [_greedy_alone(eng, p, n_new) for p in prompts]
    eng.configure_slots(8, 128)
    # Staggered: prompts join at different steps, as under continuous batching.
    got: list[list[int]] = [[] for _ in prompts]
    pos = [0] * 8
    pending = {i: list(p) for i, p in enumerate(prompts)}
    for step in range(n_new + 7):  # prompt i joins at step i and takes one token per step: 7 + n_new steps
        batch = []
        for i in range(8):
            if i > step or len(got[i]) >= n_new:
                continue
            toks = pending[i]
            batch.append((i, toks, pos[i]))
        logits = eng.step(batch)
        for (i, toks, p0), row in zip(batch, logits):
            pos[i] = p0 + len(toks)
            nxt = int(np.argmax(row))
            got[i].append(nxt)
            pending[i] = [nxt]
    assert got == want


def test_chunked_prefill_and_copied_prefix_equal_one_pass(model_dir):
    eng = Engine(model_dir, threads=2)
    rng = np.random.default_rng(5)
    ids = rng.integers(0, VOCAB, size=300).tolist()  # past the first 256-position cache growth
    want = eng.logits(ids)[-1]
    eng.configure_slots(3, 512)
    for c0 in range(0, 300, 64):  # prefill in chunks, with another sequence decoding beside it
        chunk = ids[c0:c0 + 64]
        out = eng.step([(0, chunk, c0), (2, [1], eng.slot_len(2))])
    np.testing.assert_array_equal(out[0], want)
    assert eng.slot_len(0) == 300
    eng.copy_slot(0, 1, 200)  # a shared prefix: slot 1 computes only the rest
    assert eng.slot_len(1) == 200
    np.testing.assert_array_equal(eng.step([(1, ids[200:], 200)])[0], want)
    # Rewinding a slot (pos0 < slot_len) recomputes from there.
    np.testing.assert_array_equal(eng.step([(0, ids[250:], 250)])[0], want)


def test_slots_do_not_disturb_the_single_sequence_cache(model_dir):
    eng = Engine(model_dir, threads=1)
    a, b = _prompts(2, seed=7)
    eng.logits(a)
    cached = eng._model.cache_len
    eng.configure_slots(2, 64)
    eng.step([(0, b, 0)])
    assert eng._model.cache_len == cached
    np.testing.assert_array_equal(eng.logits(a + [5], start=len(a), reuse_cache=True)[0], eng.logits(a + [5])[-1])


def test_bad_batches_are_clear_errors(model_dir):
    eng = Engine(model_dir, threads=1)
    with pytest.raises(ValueError, match="slot 0 out of range"):
        eng.step([(0, [1, 2], 0)])  # no slots configured yet
    eng.configure_slots(2, 16)
    with pytest.raises(ValueError, match="slot 2 out of range"):
        eng.step([(2, [1], 0)])
    with pytest.raises(ValueError, match="given twice"):
        eng.step([(0, [1], 0), (0, [2], 0)])
    with pytest.raises(ValueError, match="pos0 beyond"):
        eng.step([(1, [1], 3)])
    with pytest.raises(ValueError, match="ctx_size=16"):
        eng.step([(1, list(range(17)), 0)])
    with pytest.raises(ValueError, match="at least one"):
        eng.step([])
    with pytest.raises(ValueError, match="ctx_size must be"):
        eng.configure_slots(2, 10**9)
    with pytest.raises(ValueError, match="slots must be a positive"):
        eng.configure_slots(0, 16)
    with pytest.raises(ValueError, match="copy_slot"):
        eng.copy_slot(0, 1, 5)  # slot 0 holds nothing
    assert eng.slot_len(0) == 0 and eng.slot_len(1) == 0  # a failed step leaves the slots unchanged


def test_phase_profile_adds_up_and_counts_the_pool_jobs(model_dir):
    """Model.profile: each phase's seconds are >= 0, they sum to no more than the steps' wall time,
    "calls" counts the forwards and "jobs" the thread pool's fork/joins (none with one thread);
    set_profile clears it, and off means nothing is added."""
    import time

    phases = {"embed", "quantize", "product", "rope_cache", "attention", "norms", "activation", "head"}
    for threads in (1, 2):
        eng = Engine(model_dir, threads=threads)
        m = eng._model
        eng.configure_slots(4, 64)
        m.set_profile(True)
        t0 = time.perf_counter()
        eng.step([(i, p, 0) for i, p in enumerate(_prompts(4))])
        eng.step([(i, [7], 3) for i in range(4)])
        wall = time.perf_counter() - t0
        p = m.profile()
        assert set(p) == phases | {"calls", "jobs"} and p["calls"] == 2
        assert all(p[k] >= 0 for k in phases) and p["product"] > 0 and p["head"] > 0
        assert sum(p[k] for k in phases) <= wall
        assert (p["jobs"] > 0) == (threads > 1)
        m.set_profile(False)
        eng.step([(i, [7], 3) for i in range(4)])
        assert m.profile() == {k: 0.0 for k in p}


def test_prompt_in_one_step_equals_one_token_a_step(tmp_path):
    """Every row of a prompt read in one step (its RMSNorms over ranges of 16 rows and more, the
    final norm over all 48 logit rows at once: on the avx512 / amx paths 16 rows' sums in AVX-512
    lanes, elsewhere 8 interleaved chains) gets the logits it gets when the prompt is read one token
    a step (each norm one serial sum): the sums are the same floats. intermediate_size 200 is not a
    multiple of 16 (the lanes' masked tail)."""
    d = export(tiny(seed=4, vocab_size=VOCAB, intermediate_size=200), tmp_path / "m")
    eng = Engine(d, threads=2)
    ids = np.random.default_rng(6).integers(0, VOCAB, size=48).tolist()  # 2 ranges of 24 rows: 16 + 8
    want = eng.logits(ids)
    eng.configure_slots(1, 64)
    for p, tok in enumerate(ids):
        np.testing.assert_array_equal(eng.step([(0, [tok], p)])[0], want[p], err_msg=f"position {p}")
