"""The FFN's gated activation of the SIMD paths (elementwise.h) against the reference loop.

gated_act_avx512 (avx512 / amx paths) and gated_act_avx2 (avx2 / avxvnni) evaluate the reference's
operations in its order on 16 and 8 lanes, so every value must
equal gated_act_ref's bit for bit, extremes included (the exp clamp at -87 / 88, infinities, NaN,
signed zeros, subnormals) and every tail length.
"""

from __future__ import annotations

import numpy as np
import pytest

from bitnet.inference import _C

IMPLS = [
    pytest.param("avx512", marks=pytest.mark.skipif("avx512" not in _C.available_isas(), reason="needs AVX-512")),
    pytest.param("avx2", marks=pytest.mark.skipif("avx2" not in _C.available_isas(), reason="needs AVX2")),
]

EXTREMES = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, 86.9, 87.0, 87.1, 88.0, 88.5, -86.9, -87.0, -87.1, -88.0, -88.5,
                     -100.0, 100.0, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan, 0.5, -0.5], np.float32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


@pytest.mark.parametrize("relu2", [False, True])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 100, 1024, 2085])
@pytest.mark.parametrize("impl", IMPLS)
def test_gated_act_simd_equals_reference(impl, relu2, n):
    rng = np.random.default_rng(n + relu2)
    g = (rng.standard_normal(n) * rng.choice([0.1, 3.0, 30.0], n)).astype(np.float32)
    u = rng.standard_normal(n).astype(np.float32)
    g[: min(n, len(EXTREMES))] = EXTREMES[: min(n, len(EXTREMES))]
    got = _C.gated_act(impl, g, u, relu2)
    want = _C.gated_act("ref", g, u, relu2)
    _same_bits(got, want)
    if relu2:
        assert not np.isnan(got[: min(n, len(EXTREMES))][np.isnan(EXTREMES[: min(n, len(EXTREMES))])]).any()


def test_gated_act_reference_is_silu():
    rng = np.random.default_rng(1)
    g = rng.uniform(-20, 20, 500).astype(np.float32)
    u = rng.standard_normal(500).astype(np.float32)
    want = g.astype(np.float64) / (1 + np.exp(-g.astype(np.float64))) * u
    np.testing.assert_allclose(_C.gated_act("ref", g, u, False), want, rtol=1e-6, atol=1e-30)


def test_gated_act_rejects_bad_input():
    with pytest.raises(ValueError, match="gated_act"):
        _C.gated_act("sse", np.zeros(4, np.float32), np.zeros(4, np.float32), False)
    with pytest.raises(ValueError, match="same size"):
        _C.gated_act("ref", np.zeros(4, np.float32), np.zeros(5, np.float32), False)
