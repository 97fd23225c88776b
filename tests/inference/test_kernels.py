"""Every SIMD path against the scalar reference (and the reference against numpy), exact integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import HAVE_AARCH64_EMULATION, NO_AARCH64_EMULATION, every_isa, run_neon_selftest

from bitnet.inference import _C, available_isas
from bitnet.quant import pack_ternary

ISAS = every_isa()  # the ones this CPU cannot run are skipped with the reason (conftest.py)
# fp32 dot products summed in a different order: relative error grows like sqrt(K) * 2^-24.
DOT_RTOL = 1e-5


def _packed(q: np.ndarray) -> np.ndarray:
    return pack_ternary(torch.from_numpy(q)).numpy()


# (out, in, tokens): tile-aligned, odd (padding rows/columns), decode (T=1) and every token-tile remainder
SHAPES = [(16, 16, 1), (64, 64, 1), (36, 50, 3), (100, 333, 9), (256, 2560, 1), (12, 20, 17), (64, 96, 8),
          (48, 200, 70), (32, 2560, 128),  # AMX: several 16-token tiles, a partial group of 4, a remainder
          (40, 700, 16), (36, 1000, 80), (20, 330, 64), (64, 2560, 8)]  # one whole tile, 4 + 1, 4, chunks + remainder


@pytest.mark.parametrize("out_f,in_f,T", SHAPES)
def test_ternary_matmul_ref_is_exact(out_f, in_f, T):
    rng = np.random.default_rng(out_f * 1000 + in_f)
    q = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.int8)
    x = rng.integers(-128, 128, size=(T, in_f)).astype(np.int8)
    want = x.astype(np.int64) @ q.T.astype(np.int64)
    np.testing.assert_array_equal(_C.ternary_matmul("ref", _packed(q), x), want)


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "ref"])
@pytest.mark.parametrize("out_f,in_f,T", SHAPES)
def test_ternary_matmul_simd_equals_ref(isa, out_f, in_f, T):
    rng = np.random.default_rng(in_f * 7 + T)
    q = rng.integers(-1, 2, size=(out_f, in_f)).astype(np.int8)
    x = rng.integers(-128, 128, size=(T, in_f)).astype(np.int8)
    np.testing.assert_array_equal(_C.ternary_matmul(isa, _packed(q), x), _C.ternary_matmul("ref", _packed(q), x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T", [1, 2])  # the one-token (streaming) kernels and the several-token ones
def test_ternary_matmul_adversarial_extremes(isa, T):
    """All +1 / all -1 weights against all -128 / all 127 activations: the largest sums, exact.

    K = 4096 spans many of the int16 accumulation runs the AVX2 kernels widen after (kWiden16, kChunkTiles),
    each at its largest magnitude."""
    K = 4096
    for qv in (1, -1):
        q = np.full((32, K), qv, np.int8)
        for xv in (-128, 127):
            x = np.full((T, K), xv, np.int8)
            np.testing.assert_array_equal(_C.ternary_matmul(isa, _packed(q), x), np.full((T, 32), qv * xv * K))


def test_code_3_is_rejected():
    bad = np.full((4, 16), 0xFF, np.uint8)
    with pytest.raises(ValueError, match="code 3"):
        _C.ternary_matmul("ref", bad, np.zeros((1, 16), np.int8))


@pytest.mark.parametrize("isa", ISAS)
# AMX: whole 16-row blocks and a tail of rows, a full 16-token tile and a remainder
@pytest.mark.parametrize("V,C,T", [(5, 64, 1), (37, 100, 3), (64, 2560, 2), (9, 130, 4), (11, 64, 11), (100, 640, 19)])
def test_int8_head_exact(isa, V, C, T):
    rng = np.random.default_rng(V + C)
    E = rng.integers(-127, 128, size=(V, C)).astype(np.int8)
    x = rng.integers(-127, 128, size=(T, C)).astype(np.int8)
    E[0] = 127  # extremes: the sign trick and the u8 bias must not saturate
    x[0] = -127
    np.testing.assert_array_equal(_C.head_i8(isa, E, x), x.astype(np.int64) @ E.T.astype(np.int64))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("T", [1, 2, 4, 7])  # token groups of 4 and every remainder
def test_16bit_head_rows(isa, dtype, T):
    rng = np.random.default_rng(3)
    V, C = 23, 301  # odd sizes exercise the scalar tails
    W = rng.standard_normal((V, C)).astype(np.float32)
    h = rng.standard_normal((T, C)).astype(np.float32)
    if dtype == "bf16":
        raw = torch.from_numpy(W).bfloat16().view(torch.int16).numpy().view(np.uint16)
        Wf = torch.from_numpy(W).bfloat16().float().numpy()
    elif dtype == "f16":
        raw = W.astype(np.float16).view(np.uint16)
        Wf = W.astype(np.float16).astype(np.float32)
    else:
        raw, Wf = W, W
    want = (h.astype(np.float64) @ Wf.T.astype(np.float64))
    got = _C.dot_rows(isa, raw, dtype, h)
    np.testing.assert_allclose(got, want, rtol=DOT_RTOL, atol=DOT_RTOL * np.abs(want).max())


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,hd", [(1, 64), (7, 128), (193, 128), (5, 72), (9, 256)])
def test_attention_head_matches_softmax(isa, n, hd):
    rng = np.random.default_rng(n + hd)
    q = rng.standard_normal(hd).astype(np.float32)
    K = (3 * rng.standard_normal((n, hd))).astype(np.float32)  # peaked scores: the max shift matters
    V = rng.standard_normal((n, hd)).astype(np.float32)
    scale = 1 / np.sqrt(hd)
    s = K.astype(np.float64) @ q * scale
    p = np.exp(s - s.max())
    want = (p / p.sum()) @ V
    got = _C.attend(isa, q, K, V, scale)
    np.testing.assert_allclose(got, want, rtol=DOT_RTOL, atol=DOT_RTOL * np.abs(want).max())
    np.testing.assert_allclose(got, _C.attend("ref", q, K, V, scale), rtol=DOT_RTOL, atol=DOT_RTOL * np.abs(want).max())


def test_forcing_an_unknown_isa_raises():
    with pytest.raises(ValueError, match="not available"):
        _C.set_isa("sse9")


@pytest.mark.parametrize("isa", ISAS)
def test_activation_quantizer_matches_the_python_oracle(isa):
    """C++ per-token absmax quantization equals bitnet.quant.act_quant bit for bit (ties included)."""
    from bitnet.quant import act_quant

    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 333)).astype(np.float32)
    x[1] = 0.0  # all-zero token: clamped max, all codes 0
    x[2, :] = np.arange(333, dtype=np.float32) - 166.0  # exact .5 ties after scaling (x * 127/166)
    x[3, 7] = 1e4  # one outlier dominates the scale
    q, s = _C.quantize_rows(isa, x)
    want_q, want_scale = act_quant(torch.from_numpy(x))
    np.testing.assert_array_equal(q, want_q.numpy())
    np.testing.assert_allclose(1.0 / s, want_scale.numpy()[:, 0], rtol=1e-7)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_AARCH64_EMULATION, reason=NO_AARCH64_EMULATION)
def test_neon_path_matches_ref_under_emulation(tmp_path):
    """Cross-compile the C++ kernel self-test for aarch64 and run it with qemu: NEON vs ref, exact."""
    run = run_neon_selftest(tmp_path, ["kernels_ref.cpp", "dispatch.cpp", "cpu_features.cpp", "layouts.cpp", "model.cpp",
                                       "threadpool.cpp", "attention.cpp", "elementwise.cpp", "selftest/kernel_selftest.cpp", "kernels_neon.cpp"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "neon ok" in run.stdout


@pytest.mark.skipif("avx2" not in available_isas(), reason="the AVX2 bound loops need an AVX2 CPU")
def test_mac_peak_loops_run_and_reject_bad_arguments():
    # Only that the loops run and count something: how fast they are is the benchmark's business.
    for acc in (False, True):
        rate = _C.int8_mac_peak("avx2", 1, 0.01, accumulate=acc)
        assert np.isfinite(rate) and rate > 0
    with pytest.raises(ValueError, match="isa must be"):
        _C.int8_mac_peak("neon", 1, 0.01)
    with pytest.raises(ValueError, match="bad int8_mac_peak arguments"):
        _C.int8_mac_peak("avx2", 0, 0.01)
