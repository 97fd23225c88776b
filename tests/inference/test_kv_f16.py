"""The 16-bit (fp16) KV cache: the fp32 -> fp16 converter against numpy, every path's attend_f16
against a float64 softmax, and the engine with ``kv_cache="f16"`` against the exact fp32 cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitnet.inference import Engine, _C

from engine_helpers import (HAVE_AARCH64_EMULATION, NO_AARCH64_EMULATION, every_isa, export, run_neon_selftest, tiny,
                            tokenizer, trained_tiny)

ISAS = every_isa()  # the ones this CPU cannot run are skipped with the reason (conftest.py)
# attend_f16 vs a float64 softmax over the same fp16 rows: fp32 dots and sums in another order
# (relative error ~ sqrt(n) * 2^-24), as test_kernels.DOT_RTOL for attend.
DOT_RTOL = 1e-5
# Engine logits, f16 cache vs f32 cache, relative to the largest |logit| (trained tiny model).
# Rounding K and V to fp16 moves each by at most 2^-11 relatively, so the attention outputs move by
# about 1e-3 relatively; where an activation sits near an int8 rounding boundary of the next
# linear's absmax quantization, that flips a code by 1 and a few logits move by up to ~0.3% of the
# range (measured 0.32% at most over 900 positions). Most logits move far less.
KV_F16_MAX_RTOL = 1e-2
KV_F16_Q90_RTOL = 2e-3  # the 90th percentile (measured <= 0.08%)
VOCAB = 256


# ------------------------------------------------------------------------------ the converter
def _f16_bits(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow to inf is the expected result
        return x.astype(np.float16).view(np.uint16)


# The converters: the scalar one (the reference, and the ref / neon paths'), and the vcvtps2ph rows
# the engine writes its fp16 cache with on the x86 SIMD paths (F16C).
CONVERTERS = ["ref", pytest.param("f16c", marks=pytest.mark.skipif(not _C.cpu_features().get("f16c"),
                                                                      reason="needs F16C"))]


@pytest.mark.parametrize("impl", CONVERTERS)
def test_f32_to_f16_matches_numpy_on_every_rounding_boundary(impl):
    """Every fp16 value, every midpoint between neighbours (a tie: round half to even) and the
    floats one ulp either side of it, both signs: each converter equals numpy's float16."""
    h = np.arange(0x10000, dtype=np.uint32).astype(np.uint16)
    v = h.view(np.float16).astype(np.float32)
    finite = np.isfinite(v) & (np.abs(v) < 65504)  # has an upper neighbour (65504's is inf)
    w = (h[finite] + 1).view(np.float16).astype(np.float64)  # next value away from zero
    mid = ((v[finite].astype(np.float64) + w) / 2).astype(np.float32)  # exact in fp32
    bits = mid.view(np.uint32)
    x = np.concatenate([v[~np.isnan(v)], mid, (bits + 1).view(np.float32), (bits - 1).view(np.float32)])
    np.testing.assert_array_equal(_C.f32_to_f16(x, impl), _f16_bits(x))
    assert (_C.f32_to_f16(mid, impl) != _C.f32_to_f16((bits + 1).view(np.float32), impl)).any()  # ties really sit there


@pytest.mark.parametrize("impl", CONVERTERS)
def test_f32_to_f16_extremes_and_random_patterns(impl):
    f = np.float32
    edges = np.array([0.0, 65504, 65519.996, 65520, 65536, 1e30, np.finfo(f).max, np.inf,
                      2**-14, 2**-14 * (1 - 2**-11), 2**-24, 2**-25, 2**-25 * (1 + 2**-23), 1.5 * 2**-25,
                      2**-26, 2**-149, np.finfo(f).tiny, 1.0, 1 + 2**-11, 1 + 3 * 2**-11], f)
    edges = np.concatenate([edges, -edges])
    got = _C.f32_to_f16(edges, impl)
    np.testing.assert_array_equal(got, _f16_bits(edges))
    assert got[2] == 0x7bff and got[3] == 0x7c00 and got[11] == 0 and got[12] == 1  # 65519.99 / 65520 / 2^-25 ties to 0
    assert got[len(edges) // 2] == 0x8000  # -0.0 keeps its sign
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1 << 32, size=2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    np.testing.assert_array_equal(_C.f32_to_f16(x, impl), _f16_bits(x))
    for n in range(1, 40):  # every tail length of the 8- and 16-lane loops
        np.testing.assert_array_equal(_C.f32_to_f16(x[:n], impl), _f16_bits(x[:n]))
    nan = _C.f32_to_f16(np.array([np.nan, -np.nan], f), impl).view(np.float16)
    assert np.isnan(nan).all()


@pytest.mark.parametrize("impl", CONVERTERS[1:])
def test_vector_converters_keep_nan_payloads_as_the_scalar_one(impl):
    """NaNs, quiet and signalling, with payloads in every bit: the same fp16 patterns as the scalar
    converter (quiet, the top 10 payload bits kept), so the cache holds the same bits on every path."""
    rng = np.random.default_rng(1)
    payload = rng.integers(1, 1 << 23, size=4096, dtype=np.uint32)
    payload[:23] = 1 << np.arange(23, dtype=np.uint32)
    bits = np.concatenate([0x7F800000 | payload, 0xFF800000 | payload]).astype(np.uint32)
    x = bits.view(np.float32)
    np.testing.assert_array_equal(_C.f32_to_f16(x, impl), _C.f32_to_f16(x, "ref"))


def test_f32_to_f16_rejects_an_unknown_converter():
    with pytest.raises(ValueError, match="impl must be"):
        _C.f32_to_f16(np.zeros(4, np.float32), "sse")


# ------------------------------------------------------------------------------ the kernels
def _rows(rng: np.random.Generator, n: int, hd: int, sigma: float) -> np.ndarray:
    return (sigma * rng.standard_normal((n, hd))).astype(np.float16).view(np.uint16)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,hd", [(1, 64), (7, 128), (193, 128), (5, 72), (9, 256), (33, 16), (4, 7), (300, 64)])
def test_attend_f16_matches_a_float64_softmax(isa, n, hd):
    """hd 64/128/256 take AVX-512's register path, 72/16/7 the generic loop (7: scalar tails)."""
    rng = np.random.default_rng(n * 1000 + hd)
    q = rng.standard_normal(hd).astype(np.float32)
    K = _rows(rng, n, hd, 3.0)  # peaked scores: the max shift matters
    V = _rows(rng, n, hd, 1.0)
    Kf, Vf = K.view(np.float16).astype(np.float32), V.view(np.float16).astype(np.float32)
    scale = 1 / np.sqrt(hd)
    s = Kf.astype(np.float64) @ q * scale
    p = np.exp(s - s.max())
    want = (p / p.sum()) @ Vf
    got = _C.attend_f16(isa, q, K, V, scale)
    np.testing.assert_allclose(got, want, rtol=DOT_RTOL, atol=DOT_RTOL * np.abs(want).max())
    # Widening fp16 -> fp32 is exact and both run one loop over the same fp32 operations: the f16
    # path equals attend on the widened rows bit for bit.
    np.testing.assert_array_equal(got, _C.attend(isa, q, Kf, Vf, scale))


def test_attend_f16_rejects_mismatched_shapes():
    K = np.zeros((3, 8), np.uint16)
    with pytest.raises(ValueError, match="must agree"):
        _C.attend_f16("ref", np.zeros(8, np.float32), K, np.zeros((3, 9), np.uint16), 1.0)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_AARCH64_EMULATION, reason=NO_AARCH64_EMULATION)
def test_neon_attend_f16_and_converter_under_emulation(tmp_path):
    """selftest/kv_f16_selftest.cpp for aarch64 under qemu: NEON attend_f16 equals attend on the
    widened rows bit for bit (and ref within 1e-4), and the scalar converter equals the hardware
    FCVT on every rounding boundary, the extremes and 10^6 random patterns."""
    run = run_neon_selftest(tmp_path, ["kernels_ref.cpp", "dispatch.cpp", "cpu_features.cpp",
                                       "selftest/kv_f16_selftest.cpp", "kernels_neon.cpp"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "neon attend_f16 ok" in run.stdout and "f32_to_f16 vs hardware ok" in run.stdout


# ------------------------------------------------------------------------------ the engine
@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    """A tiny model after a few optimizer steps on repetitive text (peaked logits, as in real use;
    a random tiny model's logits are so flat that near-ties flip under any perturbation)."""
    tok = tokenizer()
    model, _ = trained_tiny(tok, max_position_embeddings=1024)
    return export(model, tmp_path_factory.mktemp("kvf16") / "m", tok)


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory) -> Path:
    return export(tiny(seed=3, vocab_size=VOCAB, max_position_embeddings=1024), tmp_path_factory.mktemp("kvrand") / "m")


def test_f16_cache_logits_are_close_to_the_f32_cache(trained_dir):
    f32 = Engine(trained_dir, threads=2, head="f16")
    f16 = Engine(trained_dir, threads=2, head="f16", kv_cache="f16")
    assert (f32.kv_cache, f16.kv_cache) == ("f32", "f16") and f16._model.kv_dtype == "f16"
    rng = np.random.default_rng(0)
    for n in (5, 40, 300, 900):  # 300 / 900: past the first cache growth (256 positions) and the next
        ids = rng.integers(0, f32.vocab_size, size=n).tolist()
        a, b = f32.logits(ids), f16.logits(ids)
        err, scale = np.abs(a - b), float(np.abs(a).max())
        assert err.max() > 0  # the cache really holds rounded rows
        assert err.max() < KV_F16_MAX_RTOL * scale
        assert np.quantile(err, 0.9) < KV_F16_Q90_RTOL * scale
        assert (a.argmax(-1) == b.argmax(-1)).all()


def test_f16_cache_greedy_generation_equals_the_f32_cache(trained_dir):
    f32 = Engine(trained_dir, threads=2, head="f16")
    f16 = Engine(trained_dir, threads=2, head="f16", kv_cache="f16")
    for prompt in ("the quick", "to be or not", "the lazy dog;", "brown"):
        assert f16.generate(prompt, max_new_tokens=24) == f32.generate(prompt, max_new_tokens=24)
    rng = np.random.default_rng(1)
    for n in (1, 3, 8, 17):
        ids = rng.integers(0, f32.vocab_size, size=n).tolist()
        assert f16.generate(ids, max_new_tokens=24) == f32.generate(ids, max_new_tokens=24)


def _prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=int(rng.integers(3, 40))).tolist() for _ in range(n)]


def test_f16_cache_logits_alone_equal_logits_in_a_batch(random_dir):
    eng = Engine(random_dir, threads=2, head="f16", kv_cache="f16")
    prompts = _prompts(8)
    eng.configure_slots(8, 128)
    batched = eng.step([(i, p, 0) for i, p in enumerate(prompts)])
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(batched[i], eng.logits(p)[-1])  # exact: per-token float ops


def test_f16_cache_chunked_prefill_and_copied_prefix_equal_one_pass(random_dir):
    """Cache growth (fp16 rows moved to a wider stride) and copy_slot keep the rows bit for bit."""
    eng = Engine(random_dir, threads=2, kv_cache="f16")
    rng = np.random.default_rng(5)
    ids = rng.integers(0, VOCAB, size=300).tolist()
    want = eng.logits(ids)
    eng.configure_slots(3, 512)
    for c0 in range(0, 300, 64):
        out = eng.step([(0, ids[c0:c0 + 64], c0), (2, [1], eng.slot_len(2))])
    np.testing.assert_array_equal(out[0], want[-1])
    eng.copy_slot(0, 1, 200)
    out = eng.step([(1, ids[200:], 200)])
    np.testing.assert_array_equal(out[0], want[-1])


def test_unknown_kv_cache_dtype_is_rejected(random_dir):
    with pytest.raises(ValueError, match="kv_cache must be one of"):
        Engine(random_dir, threads=1, kv_cache="bf16")
    eng = Engine(random_dir, threads=1)
    with pytest.raises(ValueError, match="'f32' or 'f16'"):
        eng._model.set_kv_dtype("int8")


def test_changing_the_kv_dtype_drops_every_cache(random_dir):
    eng = Engine(random_dir, threads=1)
    ids = list(range(1, 30))
    want = eng.logits(ids)[-1]
    eng.configure_slots(2, 64)
    eng.step([(0, ids, 0)])
    assert eng._model.cache_len == 29 and eng.slot_len(0) == 29
    eng._model.set_kv_dtype("f16")
    assert eng._model.cache_len == 0 and eng.slot_len(0) == 0 and eng._model.num_slots == 2
    eng._model.set_kv_dtype("f32")
    np.testing.assert_array_equal(eng.logits(ids)[-1], want)  # back to the exact cache
