"""The dense ternary layout ("t5", 5 trits per byte): its tiles against a numpy oracle of the
layout, every t5 kernel path against the reference (and the reference against numpy), exact
integers on random and extreme inputs, NEON under qemu, and the engine's logits in both formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import HAVE_AARCH64_EMULATION, NO_AARCH64_EMULATION, every_isa, export, run_neon_selftest, tiny

from bitnet.inference import _C, Engine, current_isa, set_isa
from bitnet.quant import pack_ternary

ISAS = every_isa()  # the ones this CPU cannot run are skipped with the reason (conftest.py)
TILE_ROWS, TILE5_COLS = 16, 20
POW3 = np.array([81, 27, 9, 3, 1])  # digit i of a byte has weight 3^(4-i)


def _packed(q: np.ndarray) -> np.ndarray:
    return pack_ternary(torch.from_numpy(q)).numpy()


def _oracle_tiles(q: np.ndarray) -> np.ndarray:
    """The layout written out (kernels.h, TernaryTile5): byte [tile, r, j] = ceil(v * 256 / 243),
    v = sum_i c[16 mb + r, 20 kb + 4 i + j] * 3^(4-i), c = q + 1, padding c = 1."""
    out, K = q.shape
    MB, KB = -(-out // TILE_ROWS), -(-K // TILE5_COLS)
    c = np.ones((MB * TILE_ROWS, KB * TILE5_COLS), np.int64)
    c[:out, :K] = q + 1
    # (MB, r, KB, i, j) -> (MB, KB, r, j, i)
    d = c.reshape(MB, TILE_ROWS, KB, 5, 4).transpose(0, 2, 1, 4, 3)
    v = d @ POW3
    return (-(-v * 256 // 243)).astype(np.uint8).reshape(MB * KB, TILE_ROWS, 4)


def _every_tuple(rows: int = 16, tiles: int = 16) -> np.ndarray:
    """q (rows, 20 * tiles) whose tile bytes run through all 243 five-code tuples (and more)."""
    q = np.empty((rows, TILE5_COLS * tiles), np.int8)
    for kb in range(tiles):
        for r in range(rows):
            for j in range(4):
                u = ((kb * rows + r) * 4 + j) % 243
                for i in range(5):
                    q[r, kb * TILE5_COLS + 4 * i + j] = (u // POW3[i]) % 3 - 1
    return q


def test_tiles_match_the_layout_oracle():
    rng = np.random.default_rng(0)
    for out_f, in_f in [(16, 20), (36, 50), (100, 333), (64, 6912)]:
        q = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.int8)
        np.testing.assert_array_equal(_C.ternary5_tiles(_packed(q)), _oracle_tiles(q))
    q = _every_tuple()
    tiles = _C.ternary5_tiles(_packed(q))
    assert len(np.unique(tiles)) == 243  # every valid byte occurs (the 13 others never do)
    np.testing.assert_array_equal(tiles, _oracle_tiles(q))


# (out, in, tokens): tile-aligned, odd (padding rows/columns), decode (T=1), every token-tile
# remainder, K = 6912 (2B4T's down_proj: pads to 6920), a prefill-sized T.
SHAPES = [(16, 20, 1), (16, 16, 1), (64, 64, 1), (36, 50, 3), (100, 333, 9), (256, 2560, 1), (12, 21, 17),
          (64, 100, 8), (48, 200, 70), (32, 6912, 2), (32, 2560, 128)] + [(24, 57, T) for T in range(1, 12)] + [
    (40, 700, 16), (36, 1000, 80), (20, 330, 64)]  # AMX: one whole token tile, 4 + 1 tiles, 4 tiles exactly


@pytest.mark.parametrize("out_f,in_f,T", SHAPES)
def test_t5_ref_is_exact(out_f, in_f, T):
    rng = np.random.default_rng(out_f * 1000 + in_f + T)
    q = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.int8)
    x = rng.integers(-128, 128, size=(T, in_f)).astype(np.int8)
    want = x.astype(np.int64) @ q.T.astype(np.int64)
    np.testing.assert_array_equal(_C.ternary5_matmul("ref", _packed(q), x), want)


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "ref"])
@pytest.mark.parametrize("out_f,in_f,T", SHAPES)
def test_t5_simd_equals_ref(isa, out_f, in_f, T):
    rng = np.random.default_rng(in_f * 7 + T)
    q = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.int8)
    x = rng.integers(-128, 128, size=(T, in_f)).astype(np.int8)
    p = _packed(q)
    np.testing.assert_array_equal(_C.ternary5_matmul(isa, p, x), _C.ternary5_matmul("ref", p, x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", [1, 2, 9])  # the one-token kernels rescale per digit; the others do not
def test_t5_every_byte_value(isa, T):
    """All 243 stored bytes (so every t_i of the digit arithmetic) through each kernel, x extreme too."""
    q = _every_tuple()
    rng = np.random.default_rng(T)
    for x in (rng.integers(-128, 128, size=(T, q.shape[1])), np.full((T, q.shape[1]), -128), np.full((T, q.shape[1]), 127)):
        x = x.astype(np.int8)
        np.testing.assert_array_equal(_C.ternary5_matmul(isa, _packed(q), x), x.astype(np.int64) @ q.T.astype(np.int64))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", [1, 2, 9])
@pytest.mark.parametrize("K", [4100, 6912])
def test_t5_adversarial_extremes(isa, T, K):
    """All +1 / all -1 weights against all -128 / all 127 activations: the largest sums, exact."""
    for qv in (1, -1):
        q = np.full((32, K), qv, np.int8)
        for xv in (-128, 127):
            x = np.full((T, K), xv, np.int8)
            np.testing.assert_array_equal(_C.ternary5_matmul(isa, _packed(q), x), np.full((T, 32), qv * xv * K))


def test_t5_code_3_is_rejected():
    bad = np.full((4, 20), 0x55, np.uint8)
    bad[2, 7] = 0x57  # one code 3 among zeros
    with pytest.raises(ValueError, match="code 3"):
        _C.ternary5_matmul("ref", bad, np.zeros((1, 20), np.int8))
    with pytest.raises(ValueError, match="code 3"):
        _C.ternary5_tiles(bad)


# ---- the engine in both formats ----

@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    return export(tiny(seed=3, hidden_act="relu2"), tmp_path_factory.mktemp("t5") / "export")


@pytest.fixture
def _restore_isa():
    before = current_isa()
    yield
    set_isa(before)


@pytest.mark.parametrize("isa", ISAS)
def test_engine_logits_identical_in_both_formats(tiny_export, isa, _restore_isa):
    """Prefill and decode logits are bit-identical with i2 and t5 tiles (the integer products are exact)."""
    set_isa(isa)
    ids = [5, 17, 3, 99, 42, 7, 7, 250, 1, 64, 33, 12]
    got = {}
    for w in ("i2", "t5"):
        eng = Engine(tiny_export, threads=2, head="f16", weights=w)
        assert eng.weights == w and eng._model.weight_format == w
        prefill = eng.logits(ids)
        step = eng.logits(ids + [8], start=len(ids), reuse_cache=True)  # a one-token (decode) forward
        got[w] = (prefill, step)
    np.testing.assert_array_equal(got["t5"][0], got["i2"][0])
    np.testing.assert_array_equal(got["t5"][1], got["i2"][1])


def test_engine_weight_format_choice(tiny_export):
    eng = Engine(tiny_export, threads=1, weights="auto")
    assert eng.weights in ("i2", "t5")
    i2 = Engine(tiny_export, threads=1, weights="i2")._model.weight_bytes
    t5 = Engine(tiny_export, threads=1, weights="t5")._model.weight_bytes
    assert t5 < i2  # fewer bytes (test-tiny's widths round up to whole tiles, so not exactly 0.8x)
    with pytest.raises(ValueError, match="weights must be one of"):
        Engine(tiny_export, threads=1, weights="i3")


def test_weight_format_must_precede_the_linears(tiny_export):
    eng = Engine(tiny_export, threads=1, weights="i2")
    with pytest.raises(ValueError, match="before loading any linear"):
        eng._model.set_weight_format("t5")
    with pytest.raises(ValueError, match="'i2' or 't5'"):
        _C.Model(vocab=8, hidden=16, intermediate=16, layers=1, heads=1, kv_heads=1, head_dim=16, max_positions=4,
                 eps=1e-5, rope_theta=1e4, act="silu", sub_norms=True, inner_norm=False).set_weight_format("x")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_AARCH64_EMULATION, reason=NO_AARCH64_EMULATION)
def test_t5_neon_matches_ref_under_emulation(tmp_path):
    """Cross-compile the t5 self-test for aarch64 and run it with qemu: NEON vs ref vs q.x, exact."""
    run = run_neon_selftest(tmp_path, ["kernels_ref.cpp", "dispatch.cpp", "cpu_features.cpp", "layouts.cpp", "model.cpp",
                                       "threadpool.cpp", "attention.cpp", "elementwise.cpp", "selftest/t5_selftest.cpp", "kernels_neon.cpp"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "codec ok" in run.stdout and "neon ok" in run.stdout
