"""The int8 head's token tiles (issue 21: AVX2 widens to int16 and reads each row once per tile of up
to 8 tokens; AVX-VNNI biases the activations to u8 and subtracts 128 * rowsum) against numpy's exact
int64 product, at every token count 1..17 and at the extremes of both operands."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import every_isa

from bitnet.inference import _C

ISAS = every_isa()  # the ones this CPU cannot run are skipped with the reason (conftest.py)


def _exact(E: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x.astype(np.int64) @ E.T.astype(np.int64)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", range(1, 18))
def test_every_token_count(isa, T):
    # C = 100: one 64-column step and a zero-padded second one; 21 rows
    rng = np.random.default_rng(1000 + T)
    E = rng.integers(-127, 128, size=(21, 100)).astype(np.int8)
    x = rng.integers(-127, 128, size=(T, 100)).astype(np.int8)
    np.testing.assert_array_equal(_C.head_i8(isa, E, x), _exact(E, x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", [1, 2, 7, 8, 9, 16])
def test_extremes(isa, T):
    # Rows and tokens of all +127 / all -127 (the largest products of either sign, every pair of a
    # vpmaddubsw / vpmaddwd at its bound), all +-1 rows, alternating signs, zeros; C past 2560
    # (2B4T's hidden size) and not a multiple of 64.
    C = 2600
    rng = np.random.default_rng(T)
    E = rng.integers(-127, 128, size=(9, C)).astype(np.int8)
    E[0], E[1], E[2], E[3], E[4] = 127, -127, 1, -1, 0
    E[5] = np.where(np.arange(C) % 2 == 0, 127, -127)
    x = rng.integers(-127, 128, size=(T, C)).astype(np.int8)
    x[0] = 127
    if T > 1:
        x[1] = -127
    if T > 2:
        x[2] = np.where(np.arange(C) % 2 == 0, -127, 127)
    got = _C.head_i8(isa, E, x)
    np.testing.assert_array_equal(got, _exact(E, x))
    assert got[0, 0] == C * 127 * 127  # the largest sum the head can produce at this width
