"""The quantization oracle: hand-computed cases, properties, and byte equality with transformers."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.bitnet import pack_weights, unpack_weights

from bitnet.quant import (
    act_quant,
    fake_act_quant,
    fake_weight_quant,
    pack_ternary,
    unpack_ternary,
    weight_quant,
)


def test_weight_quant_hand_computed():
    w = torch.tensor([[0.5, -1.5], [0.1, 2.0]])
    # mean |w| = (0.5 + 1.5 + 0.1 + 2.0) / 4 = 1.025; w / 1.025 = [0.49, -1.46, 0.098, 1.95]
    q, beta = weight_quant(w)
    assert beta.dim() == 0 and beta.item() == pytest.approx(1.025)
    assert q.dtype == torch.int8
    assert q.tolist() == [[0, -1], [0, 1]]


def test_weight_quant_zero_tensor_is_finite():
    q, beta = weight_quant(torch.zeros(4, 4))
    assert beta.item() == pytest.approx(1e-5)
    assert torch.count_nonzero(q) == 0


def test_act_quant_hand_computed():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    x_q, scale = act_quant(x)
    # row 0: s = 127 / 2 = 63.5 -> [63.5, -127, 31.75] -> round half to even: [64, -127, 32]
    assert x_q.dtype == torch.int8
    assert x_q[0].tolist() == [64, -127, 32]
    assert scale.shape == (2, 1)
    assert scale[0, 0].item() == pytest.approx(2.0 / 127)
    # an all-zero token stays zero (max clamped to 1e-5, no NaN)
    assert x_q[1].tolist() == [0, 0, 0] and torch.isfinite(scale).all()


@pytest.mark.parametrize("shape", [(3, 7), (2, 5, 64), (1, 1)])
def test_act_quant_properties(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    x_q, scale = act_quant(x)
    assert x_q.shape == x.shape and scale.shape == x.shape[:-1] + (1,)
    assert x_q.abs().amax(-1).eq(127).all()  # the absmax element of every token maps to +-127
    # dequantization error is at most half a step per element
    assert ((x_q.float() * scale - x).abs() <= scale / 2 + 1e-6).all()
    # the fake quantizer equals the dequantized oracle (within float rounding of 1/s vs s)
    torch.testing.assert_close(fake_act_quant(x), x_q.float() * scale, rtol=1e-6, atol=1e-6)


def test_weight_quant_properties():
    torch.manual_seed(0)
    w = torch.randn(64, 48)
    q, beta = weight_quant(w)
    assert set(q.unique().tolist()) <= {-1, 0, 1}
    assert beta.item() == pytest.approx(w.abs().mean().item())
    torch.testing.assert_close(fake_weight_quant(w), q.float() * beta, rtol=1e-6, atol=1e-7)
    # quantization is idempotent up to the scale: re-quantizing q*beta gives q back
    q2, _ = weight_quant(q.float() * beta)
    assert torch.equal(q, q2)


def test_act_quant_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits"):
        act_quant(torch.randn(2, 2), bits=1)


def test_fake_quant_does_not_mutate_input():
    torch.manual_seed(0)
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    x0, w0 = x.clone(), w.clone()
    fake_act_quant(x)
    fake_weight_quant(w)
    assert torch.equal(x, x0) and torch.equal(w, w0)


def test_pack_hand_computed():
    # out = 4 -> R = 1: row i goes to bits 2i..2i+1 of the single packed row
    q = torch.tensor([[-1], [0], [1], [1]], dtype=torch.int8)
    packed = pack_ternary(q)
    codes = [0, 1, 2, 2]  # q + 1
    assert packed.tolist() == [[codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6]]


@pytest.mark.parametrize("shape", [(4, 1), (8, 3), (64, 33), (256, 128), (12, 7)])
def test_pack_equals_transformers_bytes(shape):
    g = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    q = torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)
    ours = pack_ternary(q)
    theirs = pack_weights(q.clone())
    assert ours.dtype == torch.uint8 and ours.shape == (shape[0] // 4, shape[1])
    assert torch.equal(ours, theirs)
    assert torch.equal(unpack_ternary(ours, shape[0]), q)
    assert torch.equal(unpack_weights(ours, dtype=torch.int8), q)


def test_pack_round_trip_of_quantized_weights():
    torch.manual_seed(1)
    q, _ = weight_quant(torch.randn(128, 96))
    assert torch.equal(unpack_ternary(pack_ternary(q)), q)


def test_pack_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_ternary(torch.zeros(6, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack_ternary(torch.tensor([[2], [0], [0], [0]], dtype=torch.int8))
    with pytest.raises(ValueError, match="non-integer"):
        pack_ternary(torch.full((4, 2), 0.5))
    with pytest.raises(ValueError, match="2-D"):
        pack_ternary(torch.zeros(4, dtype=torch.int8))


def test_unpack_errors():
    with pytest.raises(ValueError, match="uint8"):
        unpack_ternary(torch.zeros(2, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="does not match"):
        unpack_ternary(torch.zeros(2, 2, dtype=torch.uint8), out_features=7)
    with pytest.raises(ValueError, match="code 3"):
        unpack_ternary(torch.full((1, 2), 0b11, dtype=torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_quant_traced_branch_equals_eager(monkeypatch, dtype):
    """While torch.compile traces, the fake quantizers use out-of-place ops and no no-op ``.to``
    (torch 2.11's compile gave BitLinear's latent weights an all-zero gradient otherwise; checked by
    test_layers.py::test_torch_compile_matches_eager on torch 2.11): the same values, bit for bit."""
    import bitnet.quant as quant

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(24, 32, generator=g) * 0.05).to(dtype)
    x = (torch.randn(3, 5, 32, generator=g) * 4).to(dtype)
    want_w, want_x = fake_weight_quant(w), fake_act_quant(x)
    monkeypatch.setattr(quant, "_compiling", lambda: True)
    got_w, got_x = fake_weight_quant(w), fake_act_quant(x)
    for got, want, src in ((got_w, want_w, w), (got_x, want_x, x)):
        assert got.dtype == dtype and torch.equal(got, want)
        assert got.data_ptr() != src.data_ptr()
