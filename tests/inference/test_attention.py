"""The blocked attention (attention.h) against the reference attend: impl "avx512" (the avx512 and amx
paths, 16 lanes) and "avx2" (the avx2 and avxvnni paths, 8 lanes).

attend_group runs several queries over the same K/V rows at once (GQA's query heads, a prefill's
block of tokens), each over its own prefix of the rows; each query's result must match
attend("ref") on that prefix, and a float64 softmax, within fp32 summation-order error.
"""

from __future__ import annotations

import numpy as np
import pytest

from bitnet.inference import _C

IMPLS = [
    pytest.param("avx512", marks=pytest.mark.skipif("avx512" not in _C.available_isas(), reason="needs AVX-512")),
    pytest.param("avx2", marks=pytest.mark.skipif("avx2" not in _C.available_isas(), reason="needs AVX2")),
]

RTOL = 1e-5  # fp32 dots and sums in another order, as test_kernels.DOT_RTOL


def _float64_attention(q: np.ndarray, K: np.ndarray, V: np.ndarray, scale: float) -> np.ndarray:
    s = K.astype(np.float64) @ q.astype(np.float64) * scale
    p = np.exp(s - s.max())
    return (p / p.sum()) @ V.astype(np.float64)


# head sizes each kernel takes: AVX-512 multiples of 16, AVX2 multiples of 8
IMPL_HDS = [pytest.param(p.values[0], hd, marks=p.marks) for p in IMPLS
            for hd in ([16, 64, 128, 256] if p.values[0] == "avx512" else [8, 24, 64, 128, 256])]


@pytest.mark.parametrize("impl,hd", IMPL_HDS)
@pytest.mark.parametrize("ns", [[1], [15], [16], [17], [5, 5, 5, 5], [1, 2, 3, 31, 32, 33], list(range(60, 76)), [193, 7, 64]])
def test_attend_group_matches_reference(impl, hd, ns):
    rng = np.random.default_rng(hd * 1000 + sum(ns))
    rows = max(ns) + 3  # rows past every n: never read
    q = rng.standard_normal((len(ns), hd)).astype(np.float32)
    K = (3 * rng.standard_normal((rows, hd))).astype(np.float32)  # peaked scores: the max shift matters
    V = rng.standard_normal((rows, hd)).astype(np.float32)
    scale = float(1 / np.sqrt(hd))
    got = _C.attend_group(q, K, V, ns, scale, impl=impl)
    assert got.shape == (len(ns), hd)
    for i, n in enumerate(ns):
        ref = _C.attend("ref", q[i], K[:n], V[:n], scale)
        want = _float64_attention(q[i], K[:n], V[:n], scale)
        atol = RTOL * np.abs(want).max()
        np.testing.assert_allclose(got[i], ref, rtol=RTOL, atol=atol, err_msg=f"query {i}, n={n}")
        np.testing.assert_allclose(got[i], want, rtol=RTOL, atol=atol, err_msg=f"query {i}, n={n}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("hd", [64, 128])
@pytest.mark.parametrize("ns", [[3], [16, 17, 40], list(range(60, 68))])
def test_attend_group_f16_cache_matches_reference(impl, hd, ns):
    # The fp16 cache (serve's default): the same rows widened exactly, against attend_f16("ref").
    rng = np.random.default_rng(hd + len(ns))
    rows = max(ns)
    q = rng.standard_normal((len(ns), hd)).astype(np.float32)
    K = (3 * rng.standard_normal((rows, hd))).astype(np.float16).view(np.uint16)
    V = rng.standard_normal((rows, hd)).astype(np.float16).view(np.uint16)
    scale = float(1 / np.sqrt(hd))
    got = _C.attend_group(q, K, V, ns, scale, impl=impl)
    for i, n in enumerate(ns):
        ref = _C.attend_f16("ref", q[i], np.ascontiguousarray(K[:n]), np.ascontiguousarray(V[:n]), scale)
        want = _float64_attention(q[i], K[:n].view(np.float16), V[:n].view(np.float16), scale)
        atol = RTOL * np.abs(want).max()
        np.testing.assert_allclose(got[i], ref, rtol=RTOL, atol=atol, err_msg=f"query {i}, n={n}")
        np.testing.assert_allclose(got[i], want, rtol=RTOL, atol=atol, err_msg=f"query {i}, n={n}")
    # fp16 rows equal their fp32 widening through the fp32 cache's kernel bit for bit
    Kf = K.view(np.float16).astype(np.float32)
    Vf = V.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, _C.attend_group(q, Kf, Vf, ns, scale, impl=impl))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("f16", [False, True])
def test_a_query_gets_the_same_bits_in_any_group(impl, f16):
    """A query's output does not depend on the other queries it runs with: alone it equals the same
    query in a group whose other queries reach further into the rows (a prefill's block of tokens).
    The engine relies on it: a prompt read in one step equals the same prompt read a token a step
    (tests/inference/test_batch.py), so a faster schedule of the blocks must keep each query's sums."""
    hd, rows = 128, 80
    rng = np.random.default_rng(11)
    q = rng.standard_normal((6, hd)).astype(np.float32)
    K = (3 * rng.standard_normal((rows, hd))).astype(np.float32)
    V = rng.standard_normal((rows, hd)).astype(np.float32)
    if f16:
        K, V = K.astype(np.float16).view(np.uint16), V.astype(np.float16).view(np.uint16)
    ns = [1, 7, 16, 17, 40, 63]
    group = _C.attend_group(np.concatenate([q, q[:1]]), K, V, ns + [rows], 0.1, impl=impl)
    for i, n in enumerate(ns):
        alone = _C.attend_group(q[i:i + 1], K, V, [n], 0.1, impl=impl)
        np.testing.assert_array_equal(group[i], alone[0], err_msg=f"n={n}")


@pytest.mark.parametrize("impl", IMPLS)
def test_attend_group_very_negative_scores_and_nan(impl):
    # Scores far below the max (their e^x underflows: clamped at e^-87, still ~0 next to 1) and a NaN
    # query (NaN must reach the output, as in the reference, never a silent number).
    hd, n = 32, 40
    rng = np.random.default_rng(5)
    K = rng.standard_normal((n, hd)).astype(np.float32)
    K[7] *= 1000
    V = rng.standard_normal((n, hd)).astype(np.float32)
    q = np.stack([K[7] / 1000, np.full(hd, np.nan, np.float32)]).astype(np.float32)
    got = _C.attend_group(q, K, V, [n, n], 1.0, impl=impl)
    np.testing.assert_allclose(got[0], _C.attend("ref", q[0], K, V, 1.0), rtol=RTOL, atol=RTOL)
    assert np.isnan(got[1]).all()


@pytest.mark.parametrize("impl,hd,ns", [("avx512", 24, [4]), ("avx512", 272, [4]), ("avx512", 64, [0]), ("avx512", 64, [9]),
                                         ("avx2", 12, [4]), ("avx2", 264, [4]), ("avx2", 64, [0]), ("avx2", 64, [9]),
                                         ("sse", 64, [4])])
def test_attend_group_rejects_bad_shapes(impl, hd, ns):
    if impl in ("avx512", "avx2") and impl not in _C.available_isas():
        pytest.skip(f"needs {impl}")
    q = np.zeros((1, hd), np.float32)
    K = np.zeros((8, hd), np.float32)
    with pytest.raises(ValueError, match="attend_group"):
        _C.attend_group(q, K, K, ns, 1.0, impl=impl)
