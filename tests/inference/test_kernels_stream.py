"""The i2 products at a few tokens (issue 21: AVX2 streams the row blocks two tokens at a time, plus a
last odd one, from 2 to 4 tokens, AVX-VNNI from 2 to 3, instead of unpacking chunks; AVX-VNNI runs
the chunks 3 tokens a pass with even / odd plane accumulators) against the scalar reference: every
token count 1..16, K not a multiple of 16 nor of the 7-tile int16 runs nor of the 16-tile chunks,
and the largest sums of either sign in every accumulator (all +1 / all -1 rows against -128 / 127
tokens mixed in one call)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import every_isa

from bitnet.inference import _C
from bitnet.quant import pack_ternary

ISAS = [i for i in every_isa() if i != "ref"]  # the ones this CPU cannot run are skipped (conftest.py)


def _packed(q: np.ndarray) -> np.ndarray:
    return pack_ternary(torch.from_numpy(q)).numpy()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("out_f,in_f", [(16, 16), (40, 333), (32, 16 * 7 * 3 + 16), (48, 2560)])
def test_every_token_count_equals_ref(isa, out_f, in_f):
    rng = np.random.default_rng(out_f + in_f)
    q = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.int8)
    p = _packed(q)
    for T in range(1, 17):
        x = rng.integers(-128, 128, size=(T, in_f)).astype(np.int8)
        np.testing.assert_array_equal(_C.ternary_matmul(isa, p, x), _C.ternary_matmul("ref", p, x), err_msg=f"T={T}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", [2, 3, 4, 5, 6, 7, 8, 9, 16])
def test_extremes(isa, T):
    # K = 16 * 7 * 9 + 48: nine whole 7-tile runs at their largest int16 magnitudes and a partial one
    K = 16 * 7 * 9 + 48
    x = np.where(np.arange(T)[:, None] % 2 == 0, -128, 127).astype(np.int8).repeat(K, axis=1)
    q = np.empty((48, K), np.int8)
    q[:16], q[16:32] = 1, -1
    q[32:] = np.where(np.arange(K) % 3 == 0, 1, -1)  # mixed signs in the upper row block
    want = x.astype(np.int64) @ q.T.astype(np.int64)
    got = _C.ternary_matmul(isa, _packed(q), x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, _C.ternary_matmul("ref", _packed(q), x))
