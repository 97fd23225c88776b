"""The several-token ternary products of every path against the scalar reference at every token count
1..64 (register tiles of up to 8 tokens straight from the weight tiles, then groups of up to 12 from
the decoded row blocks: every group size and split occurs), with an even and an odd number of row
blocks (the AVX-512 kernels take row blocks in pairs, a lone one at an odd end), for both weight
layouts (i2, t5), on random and on extreme inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import every_isa

from bitnet.inference import _C
from bitnet.quant import pack_ternary

ISAS = [i for i in every_isa() if i != "ref"]  # the ones this CPU cannot run are skipped (conftest.py)
MATMUL = {"i2": _C.ternary_matmul, "t5": _C.ternary5_matmul}


def _packed(q: np.ndarray) -> np.ndarray:
    return pack_ternary(torch.from_numpy(q)).numpy()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", ["i2", "t5"])
@pytest.mark.parametrize("out_f,in_f", [(48, 83), (64, 700)])  # 3 row blocks (odd) with padding, 4 (pairs)
def test_every_token_count_equals_ref(isa, layout, out_f, in_f):
    rng = np.random.default_rng(out_f * 7 + in_f)
    q = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.int8)
    p = _packed(q)
    f = MATMUL[layout]
    for T in range(1, 65):
        x = rng.integers(-128, 128, size=(T, in_f)).astype(np.int8)
        np.testing.assert_array_equal(f(isa, p, x), f("ref", p, x), err_msg=f"T={T}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", ["i2", "t5"])
@pytest.mark.parametrize("T", [129, 300])  # the AVX-512 kernels take tokens in chunks of at most 128
def test_long_prompts_equal_ref(isa, layout, T):
    rng = np.random.default_rng(T)
    q = rng.integers(-1, 2, size=(48, 130)).astype(np.int8)
    x = rng.integers(-128, 128, size=(T, 130)).astype(np.int8)
    f = MATMUL[layout]
    np.testing.assert_array_equal(f(isa, _packed(q), x), f("ref", _packed(q), x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("layout", ["i2", "t5"])
@pytest.mark.parametrize("T", [3, 8, 13, 29])  # fused group alone, then with 1, 2 buffered groups
def test_extremes_at_several_tokens(isa, layout, T):
    """All +1 / all -1 rows against tokens of all -128 and all 127 (mixed in one call): the largest
    sums, exact, in every accumulator of the register tile."""
    K, out_f = 6912, 48
    f = MATMUL[layout]
    x = np.where(np.arange(T)[:, None] % 2 == 0, -128, 127).astype(np.int8).repeat(K, axis=1)
    for qv in (1, -1):
        q = np.full((out_f, K), qv, np.int8)
        want = (x[:, :1].astype(np.int64) * qv * K).repeat(out_f, axis=1)
        np.testing.assert_array_equal(f(isa, _packed(q), x), want)


@pytest.mark.parametrize("isa", ISAS)
def test_int8_head_every_token_count_equals_ref(isa):
    """The int8 head's several-token kernels (AVX-512: rows in pairs, a lone row at an odd end,
    token groups of up to 8) at every token count 1..24, random and extreme (+-127) values."""
    rng = np.random.default_rng(5)
    V, C = 7, 200
    E = rng.integers(-127, 128, size=(V, C), dtype=np.int8)
    E[0], E[1] = 127, -127  # the largest row sums
    for T in range(1, 25):
        x = rng.integers(-127, 128, size=(T, C), dtype=np.int8)
        x[0] = 127
        want = x.astype(np.int64) @ E.T.astype(np.int64)
        np.testing.assert_array_equal(_C.head_i8(isa, E, x), want, err_msg=f"T={T}")


NO_GFNI_SCRIPT = """
import numpy as np, torch
from bitnet.inference import _C
from bitnet.quant import pack_ternary
rng = np.random.default_rng(3)
q = rng.integers(-1, 2, size=(48, 300)).astype(np.int8)
p = pack_ternary(torch.from_numpy(q)).numpy()
for f in (_C.ternary_matmul, _C.ternary5_matmul):
    for T in range(1, 30):
        x = rng.integers(-128, 128, size=(T, 300)).astype(np.int8)
        np.testing.assert_array_equal(f("avx512", p, x), f("ref", p, x), err_msg=f"T={T}")
"""
NO_GFNI_TIMEOUT_S = 120  # a fresh interpreter importing torch and the engine, then ~60 small products


@pytest.mark.parametrize("isa", ["avx512"])
def test_decode_without_gfni_equals_ref(isa):
    """BITNET_NO_GFNI=1 makes the AVX-512 kernels decode 2-bit fields with shifts and masks instead of
    vgf2p8affineqb: that path too equals the reference (this CPU may have GFNI; others do not)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "BITNET_NO_GFNI": "1"}
    r = subprocess.run([sys.executable, "-c", NO_GFNI_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=NO_GFNI_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-2000:]
