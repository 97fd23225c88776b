"""Lookup-table ternary products (kernels_lut_inl.h, the scalar ternary_lut_ref): the same integers
as the multiply path, on random and extreme inputs, every token count 1..64, K not a multiple of
the group, both layouts (i2: 4 trits per byte, t5: 5); the engine's logits with lut equal mac."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import (
    HAVE_AARCH64_EMULATION,
    NO_AARCH64_EMULATION,
    build_neon_selftest,
    every_isa,
    export,
    run_under_qemu,
    tiny,
)

from bitnet.inference import _C, Engine, available_isas, current_isa, set_isa
from bitnet.quant import pack_ternary

ISAS = available_isas()
# The paths with lookup-table kernels, runnable here or not: the ones this CPU or build cannot run are
# reported as skipped with the reason (conftest.py), never left out silently.
LUT_ISAS = [i for i in every_isa() if i in ("ref", "avx2", "avxvnni", "avx512", "neon")]
MATMUL = {"i2": _C.ternary_matmul, "t5": _C.ternary5_matmul}


def _packed(q: np.ndarray) -> np.ndarray:
    return pack_ternary(torch.from_numpy(q)).numpy()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_AARCH64_EMULATION, reason=NO_AARCH64_EMULATION)
def test_neon_lut_matches_definition_under_emulation(tmp_path):
    """The NEON lookup tables (kernels_lut_inl.h in kernels_neon.cpp), cross-compiled for aarch64 and run
    under qemu: both layouts equal the definition and the NEON mac kernels on this file's cases (T = 1..64,
    the extremes over K = 6912, mixed rows), with L1 table blocks of both sizes."""
    exe = build_neon_selftest(tmp_path, ["kernels_ref.cpp", "dispatch.cpp", "cpu_features.cpp", "layouts.cpp",
                                         "model.cpp", "threadpool.cpp", "attention.cpp", "elementwise.cpp",
                                         "selftest/lut_selftest.cpp", "kernels_neon.cpp"])
    for budget in ("small", "wide"):
        run = run_under_qemu(exe, {"BITNET_LUT_L1": budget})
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"neon lut ok (tables of {budget} blocks)" in run.stdout, run.stdout


@pytest.mark.parametrize("isa", LUT_ISAS)
@pytest.mark.parametrize("fmt", ["i2", "t5"])
def test_lut_equals_mac_every_token_count(isa, fmt):
    """T = 1..64 (every register tile width and remainder: 8, 16, 32 lanes), K = 333 (a partial group,
    a partial tile and, for K > 15 / 12 tiles, several flushes), 36 rows (a padded row block)."""
    rng = np.random.default_rng(5)
    q = rng.integers(-1, 2, size=(36, 333)).astype(np.int8)
    x_all = rng.integers(-128, 128, size=(64, 333)).astype(np.int8)
    want_all = x_all.astype(np.int64) @ q.T.astype(np.int64)
    for T in range(1, 65):
        got = MATMUL[fmt](isa, _packed(q), x_all[:T], family="lut")
        np.testing.assert_array_equal(got, want_all[:T], err_msg=f"T={T}")


@pytest.mark.parametrize("isa", LUT_ISAS)
@pytest.mark.parametrize("fmt", ["i2", "t5"])
@pytest.mark.parametrize("T", [1, 9, 33])
def test_lut_extremes(isa, fmt, T):
    """All +1 / all -1 rows against all -128 / all 127 activations over K = 6912 (2B4T's down_proj: many
    flushes, each at the largest int16 magnitude the flush interval allows)."""
    K = 6912
    for qv in (1, -1):
        q = np.full((32, K), qv, np.int8)
        for xv in (-128, 127):
            x = np.full((T, K), xv, np.int8)
            got = MATMUL[fmt](isa, _packed(q), x, family="lut")
            np.testing.assert_array_equal(got, np.full((T, 32), qv * xv * K))


@pytest.mark.parametrize("isa", LUT_ISAS)
@pytest.mark.parametrize("fmt", ["i2", "t5"])
def test_lut_mixed_extremes_and_random(isa, fmt):
    """Rows alternating extremes with random rows, x mixing -128 / 127 columns, against the ref mac."""
    rng = np.random.default_rng(9)
    K = 2561
    q = rng.integers(-1, 2, size=(52, K)).astype(np.int8)
    q[0], q[1] = 1, -1
    q[2, ::2] = -1
    x = rng.integers(-128, 128, size=(20, K)).astype(np.int8)
    x[0] = -128
    x[1] = 127
    x[2, ::2] = -128
    want = MATMUL[fmt]("ref", _packed(q), x)
    np.testing.assert_array_equal(MATMUL[fmt](isa, _packed(q), x, family="lut"), want)
    np.testing.assert_array_equal(want, x.astype(np.int64) @ q.T.astype(np.int64))


@pytest.mark.parametrize("isa", LUT_ISAS)
@pytest.mark.parametrize("fmt", ["i2", "t5"])
@pytest.mark.parametrize("rows", [4, 16, 48, 80])
def test_lut_row_block_counts(isa, fmt, rows):
    """One row block (padded or full), an odd and an even number of them: the kernels make the next
    block's table offsets while this block's lookups run (two buffers), so the first, the last and a
    lone block must each read their own."""
    rng = np.random.default_rng(rows)
    K = 700
    q = rng.integers(-1, 2, size=(rows, K)).astype(np.int8)
    x = rng.integers(-128, 128, size=(40, K)).astype(np.int8)
    want = x.astype(np.int64) @ q.T.astype(np.int64)
    for T in (9, 32, 40):
        got = MATMUL[fmt](isa, _packed(q), x[:T], family="lut")
        np.testing.assert_array_equal(got, want[:T], err_msg=f"T={T}")


@pytest.mark.parametrize("isa", LUT_ISAS)
@pytest.mark.parametrize("fmt", ["i2", "t5"])
def test_lut_rows_in_several_passes(isa, fmt):
    """1026 row blocks (the last one padded): more than one pass over the rows keeps its running sums
    within kLutL2Bytes (kernels_lut_inl.h), so 32-token tiles take 3 passes and 16-token ones 2, each
    building the tables again; every row of every pass lands in its place."""
    rng = np.random.default_rng(11)
    rows, K = 16 * 1025 + 4, 70
    q = rng.integers(-1, 2, size=(rows, K)).astype(np.int8)
    x = rng.integers(-128, 128, size=(40, K)).astype(np.int8)
    want = x.astype(np.int64) @ q.T.astype(np.int64)
    for T in (16, 40):
        got = MATMUL[fmt](isa, _packed(q), x[:T], family="lut")
        np.testing.assert_array_equal(got, want[:T], err_msg=f"T={T}")


# Run in a fresh process: the table budget is read once per process (dispatch.cpp, lut_wide_tables).
_BUDGET_CHECK = """
import numpy as np, torch
from bitnet.inference import _C, available_isas
from bitnet.quant import pack_ternary

rng = np.random.default_rng(7)
q = rng.integers(-1, 2, size=(36, 333)).astype(np.int8)
x = rng.integers(-128, 128, size=(64, 333)).astype(np.int8)
want = x.astype(np.int64) @ q.T.astype(np.int64)
p = pack_ternary(torch.from_numpy(q)).numpy()
ext_q = pack_ternary(torch.full((32, 6912), -1, dtype=torch.int8)).numpy()
ext_x = np.full((33, 6912), -128, np.int8)
n = 0
for isa in ("avx2", "avxvnni", "avx512"):
    if isa not in available_isas():
        continue
    for mm in (_C.ternary_matmul, _C.ternary5_matmul):
        for T in (1, 7, 8, 9, 16, 17, 31, 32, 33, 64):
            np.testing.assert_array_equal(mm(isa, p, x[:T], family="lut"), want[:T], err_msg=f"{isa} T={T}")
            n += 1
        np.testing.assert_array_equal(mm(isa, ext_q, ext_x, family="lut"), np.full((33, 32), 128 * 6912))
        n += 1
print(n)
"""


@pytest.mark.parametrize("budget", ["small", "wide"])
def test_lut_both_table_budgets(budget):
    """Both table blocks (24 KiB for a 32 KiB L1D, 42 KiB for a 48 KiB one), whichever this CPU would
    pick, forced with BITNET_LUT_L1: the same integers as the exact product, block edges (K = 333:
    21 i2 / 17 t5 tiles, odd against 2-tile blocks), every tile width and the flush bound."""
    if not any(i in ISAS for i in ("avx2", "avxvnni", "avx512")):
        pytest.skip("this CPU runs no SIMD lookup-table kernel")
    env = {**os.environ, "BITNET_LUT_L1": budget}
    r = subprocess.run([sys.executable, "-c", _BUDGET_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.split()[-1]) > 0


def test_family_names_are_checked():
    q = np.zeros((16, 16), np.int8)
    with pytest.raises(ValueError, match="family must be"):
        _C.ternary_matmul("ref", _packed(q), np.zeros((1, 16), np.int8), family="magic")
    with pytest.raises(ValueError, match="kernel family must be"):
        _C.set_kernel_family("magic")
    assert _C.kernel_family() in ("auto", "mac", "lut")


CHOICE_H = Path(__file__).resolve().parents[2] / "inference" / "csrc" / "kernel_choice.h"
CLASS_T = (1, 5, 20, 100)  # one token count inside each shape class (kernels.h shape_class)


def test_dispatch_follows_the_checked_in_choice_and_the_forced_family():
    """auto: each shape class runs the family kernel_choice.h names for the path (paths it does not list:
    mac); BITNET_KERNEL=mac|lut (set_kernel_family) overrides it for every class."""
    table = {m[0]: (int(m[1], 16), int(m[2], 16))
             for m in re.findall(r'\{"(\w+)", 0x([0-9a-f]+), 0x([0-9a-f]+)\}', CHOICE_H.read_text())}
    before = _C.kernel_family()
    try:
        for isa in ISAS:
            has_lut = isa in ("ref", "avx2", "avxvnni", "avx512", "amx")
            for w, col in (("i2", 0), ("t5", 1)):
                _C.set_kernel_family("auto")
                bits = table.get(isa, (0, 0))[col]
                for c, T in enumerate(CLASS_T):
                    assert _C.kernel_choice(isa, w, T) == ("lut" if (bits >> c) & 1 else "mac"), (isa, w, T)
                for fam in ("mac", "lut"):
                    _C.set_kernel_family(fam)
                    for T in CLASS_T:
                        assert _C.kernel_choice(isa, w, T) == (fam if has_lut else "mac")
    finally:
        _C.set_kernel_family(before)


@pytest.mark.skipif(not {"avx2", "avx512"} & set(ISAS), reason="the lut bound loops need AVX2 or AVX-512")
def test_lut_peak_runs_and_rejects_bad_arguments():
    isa = "avx512" if "avx512" in ISAS else "avx2"
    rate = _C.lut_peak(isa, 1, 0.01)
    assert np.isfinite(rate) and rate > 0
    with pytest.raises(ValueError, match="isa must be"):
        _C.lut_peak("neon", 1, 0.01)


INNER_NORM = dict(use_sub_norms=False, use_rms_norm=True, hidden_act="silu", tie_word_embeddings=False)


@pytest.mark.parametrize("weights", ["i2", "t5"])
@pytest.mark.parametrize("shape", ["sub-norms", "inner-norm"])
def test_engine_logits_lut_equal_mac(tmp_path, weights, shape):
    """The whole forward pass with the lut family forced gives the same logits as the mac family, bit
    for bit, on every path that has lut kernels: prefills of 40 tokens (2 threads: each takes a range
    of row blocks) and of 100 (each takes a range of tokens), and a batched step of 3 sequences. With
    sub-norms q/k/v and gate/up share their quantized input and run as one span of rows each; with
    inner RMSNorms every linear quantizes its own input and runs on its own."""
    path = export(tiny(seed=3, **(INNER_NORM if shape == "inner-norm" else {})), tmp_path / "m")
    eng = Engine(path, threads=2, weights=weights)
    ids = np.random.default_rng(0).integers(0, eng.vocab_size, size=100).astype(np.int32)
    before_isa, before_family = current_isa(), _C.kernel_family()
    try:
        for isa in (i for i in LUT_ISAS if i in ISAS):
            set_isa(isa)
            out = {}
            for fam in ("mac", "lut"):
                _C.set_kernel_family(fam)
                short, full = eng.logits(ids[:40]), eng.logits(ids)
                m = eng._model
                m.set_slots(3, 64)
                step = np.empty((3, eng.vocab_size), np.float32)
                m.forward_batch(np.arange(3, dtype=np.int32), np.zeros(3, np.int32), np.array([5, 9, 2], np.int32),
                                ids[:16], step)
                out[fam] = (short, full, step)
            for got, want in zip(out["lut"], out["mac"]):
                np.testing.assert_array_equal(got, want, err_msg=isa)
    finally:
        set_isa(before_isa)
        _C.set_kernel_family(before_family)
