"""The int4 output head: every kernel path against the numpy definition (exact integers, random and
extreme values, odd widths, 1..11 tokens, NEON under qemu), and the engine's "int4" head mode (a
coarse int4 pass plus an exact rescoring of the best candidates) against the exact 16-bit head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_helpers import (HAVE_AARCH64_EMULATION, NO_AARCH64_EMULATION, every_isa, export, run_neon_selftest, tiny,
                            tokenizer)
from engine_helpers import trained_tiny as train_tiny

from bitnet.inference import Engine, _C, current_isa, set_isa

ISAS = every_isa()  # the ones this CPU cannot run are skipped with the reason (conftest.py)
GROUP = 32  # columns per u8 group scale (kHeadI4Group)
MAX_COLS = 8192  # widest row the int4 head takes (kHeadI4MaxCols)
# Coarse (not rescored) int4 logits: RMS error over RMS of the exact logits. For weights quantized
# independently of h it is about the weights' relative RMS quantization error, ~0.1 for 15 levels
# per group of 32 (0.094 for Gaussian rows); the int8 activations add ~0.01.
INT4_COARSE_RRMS = 0.2


@pytest.fixture(autouse=True)
def _restore_isa():
    before = current_isa()
    yield
    set_isa(before)


def _oracle(q: np.ndarray, sc: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum over groups g of sc[r, g] * (q[r] . x[t] over the columns of g), in int64."""
    V, C = q.shape
    G = sc.shape[1]
    qp = np.zeros((V, G * GROUP), np.int64)
    qp[:, :C] = q
    xp = np.zeros((x.shape[0], G * GROUP), np.int64)
    xp[:, :C] = x
    dots = np.einsum("vgc,tgc->tvg", qp.reshape(V, G, GROUP), xp.reshape(-1, G, GROUP))
    return (dots * sc.astype(np.int64)[None]).sum(-1)


# (rows, columns, tokens): one block, odd widths (padded groups and blocks), the 2B4T width, the
# widest rows, and token counts 1..11 (one token, groups of 4 and every remainder)
SHAPES = [(5, 128, 1), (37, 100, 3), (64, 2560, 2), (9, 130, 4), (11, 200, 11), (7, 33, 5), (13, 1000, 6),
          (4, 257, 7), (6, 384, 8), (3, 640, 9), (8, 96, 10), (3, MAX_COLS, 1)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("V,C,T", SHAPES)
def test_int4_head_equals_the_definition(isa, V, C, T):
    rng = np.random.default_rng(V * 100 + C + T)
    G = -(-C // GROUP)
    q = rng.integers(-8, 8, size=(V, C)).astype(np.int8)
    sc = rng.integers(0, 256, size=(V, G)).astype(np.uint8)
    x = rng.integers(-127, 128, size=(T, C)).astype(np.int8)
    q[0], sc[0], x[0] = -8, 255, 127  # extremes: the u8 bias and the int16 pairs must not saturate
    if V > 1:
        q[1], sc[1] = 7, 255
    got = _C.head_i4(isa, q, sc, x)
    assert got.dtype == np.int32 and got.shape == (T, V)
    np.testing.assert_array_equal(got, _oracle(q, sc, x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", range(1, 12))
def test_int4_head_largest_sums_at_the_widest_rows(isa, T):
    """q = -8 / 7 everywhere, scale 255, x = +-127: the largest sums the kernels must hold exactly
    (|-8 * -127 * 255 * 8192| = 2,122,383,360 < 2^31; the biased lanes wrap and come back)."""
    q = np.stack([np.full(MAX_COLS, -8), np.full(MAX_COLS, 7), np.tile([-8, 7], MAX_COLS // 2)]).astype(np.int8)
    sc = np.full((3, MAX_COLS // GROUP), 255, np.uint8)
    x = np.stack([np.full(MAX_COLS, 127 if t % 2 else -127) for t in range(T)]).astype(np.int8)
    got = _C.head_i4(isa, q, sc, x)
    want = _oracle(q, sc, x)
    assert np.abs(want).max() > 2**30  # the bound is really approached
    np.testing.assert_array_equal(got, want)


def test_int4_head_rejects_values_it_cannot_hold():
    x = np.zeros((1, 64), np.int8)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        _C.head_i4("ref", np.full((1, 64), 8, np.int8), np.ones((1, 2), np.uint8), x)
    with pytest.raises(ValueError, match="too many columns"):
        wide = MAX_COLS + 1
        _C.head_i4("ref", np.zeros((1, wide), np.int8), np.ones((1, -(-wide // GROUP)), np.uint8),
                   np.zeros((1, wide), np.int8))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_AARCH64_EMULATION, reason=NO_AARCH64_EMULATION)
def test_neon_int4_head_matches_ref_under_emulation(tmp_path):
    """The C++ self-test (random blocks, the extremes at the widest rows, 1..11 tokens) for aarch64
    under qemu: NEON's int4 head equals ref exactly."""
    run = run_neon_selftest(tmp_path, ["kernels_ref.cpp", "dispatch.cpp", "cpu_features.cpp", "layouts.cpp", "model.cpp",
                                       "threadpool.cpp", "attention.cpp", "elementwise.cpp", "selftest/kernel_selftest.cpp", "kernels_neon.cpp"])
    assert "neon head_i4 ok" in run.stdout, run.stdout + run.stderr


# ------------------------------------------------------------------------------ the engine's head
def _last_logits(eng: Engine, ids: list[int]) -> np.ndarray:
    """Logits after the last of ids through the one-token head (the path greedy decoding takes)."""
    out = np.empty((1, eng.vocab_size), np.float32)
    eng._model.reset()
    eng._model.forward(np.asarray(ids, np.int32), 0, len(ids) - 1, out)
    return out[0]


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory) -> Path:
    """A tiny model (hidden 160: the last 128-column block is padded) after a few optimizer steps
    on repetitive text (peaked, non-random logits), exported once for this module."""
    tok = tokenizer()
    model, _ = train_tiny(tok, hidden_size=160, num_attention_heads=4)
    return export(model, tmp_path_factory.mktemp("trained") / "exp", tok)


@pytest.mark.parametrize("trained", [False, True])
def test_int4_head_rescores_the_top_candidates_exactly(tmp_path, trained_tiny, trained):
    """One-token logits: the int4 head's argmax is the exact head's, at least the 16 rescored rows
    (among them the argmax) carry the exact head's logits bit for bit, every coarse logit left is
    below the best exact one, and the coarse values are close to (not equal to) the exact ones.

    A random model is the harder case (flat logits, many near-ties for the rescoring to sort out);
    the trained one has the peaked logits of real use. hidden 160 pads the last block."""
    out = trained_tiny if trained else export(tiny(hidden_size=160, num_attention_heads=4), tmp_path / "exp")
    f16 = Engine(out, threads=2, head="f16")
    i4 = Engine(out, threads=2, head="int4")
    assert i4.head == "int4" and i4._model.head_mode == "int4"
    rng = np.random.default_rng(0)
    n_exact, rrms_seen = [], []
    for trial in range(12):
        ids = rng.integers(0, f16.vocab_size, size=int(rng.integers(1, 30))).tolist()
        a, b = _last_logits(f16, ids), _last_logits(i4, ids)
        assert a.argmax() == b.argmax()
        exact = a == b  # rescored rows: the exact head's values
        assert exact.sum() >= 16 and exact[b.argmax()]
        assert b[~exact].max(initial=-np.inf) < b.max()
        rrms = np.sqrt(np.mean((b - a) ** 2) / np.mean(a**2))
        assert rrms < INT4_COARSE_RRMS
        rrms_seen.append(rrms)
        n_exact.append(int(exact.sum()))
    assert max(n_exact) < f16.vocab_size and min(rrms_seen) > 0  # the rest really is the coarse int4 pass
    print(f"coarse RMS error / RMS logit: {min(rrms_seen):.3f}-{max(rrms_seen):.3f}; rows rescored "
          f"{min(n_exact)}-{max(n_exact)}")


@pytest.mark.parametrize("trained", [False, True])
def test_int4_greedy_generation_equals_the_exact_head(tmp_path, trained_tiny, trained):
    """Greedy continuations of several prompts are token for token the 16-bit head's."""
    out = trained_tiny if trained else export(tiny(seed=3), tmp_path / "exp")
    f16 = Engine(out, threads=2, head="f16")
    i4 = Engine(out, threads=2, head="int4")
    rng = np.random.default_rng(1)
    for n in (1, 3, 8, 17):
        prompt = rng.integers(0, f16.vocab_size, size=n).tolist()
        assert i4.generate(prompt, max_new_tokens=24) == f16.generate(prompt, max_new_tokens=24)


def test_int4_head_is_4_25_bits_per_weight_and_thread_independent(tmp_path):
    out = export(tiny(hidden_size=160, num_attention_heads=4), tmp_path / "exp")
    f16 = Engine(out, threads=1, head="f16")
    i4 = Engine(out, threads=1, head="int4")
    V = f16.vocab_size
    blocks = -(-160 // 128)  # 128-column blocks of 68 bytes; plus a fp32 scale and an int32 bias per row
    assert i4._model.weight_bytes - f16._model.weight_bytes == V * (blocks * 68 + 8)
    ids = list(range(1, 40))
    np.testing.assert_array_equal(i4.logits(ids), Engine(out, threads=3, head="int4").logits(ids))


def test_unknown_head_mode_is_rejected(tmp_path):
    out = export(tiny(), tmp_path / "exp")
    eng = Engine(out, threads=1, head="int4")
    with pytest.raises(ValueError, match="'f16', 'int8' or 'int4'"):
        eng._model.set_head_mode("int3")
    eng._model.set_head_mode("int8")  # switching modes rebuilds from the borrowed table
    assert eng._model.head_mode == "int8"
    eng._model.set_head_mode("int4")
    assert eng._model.head_mode == "int4"
