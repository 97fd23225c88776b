"""BitLinear and RMSNorm: the training-time building blocks of BitNet b1.58.

``BitLinear`` keeps a latent full-precision weight and, in the forward pass, fake-quantizes the
weight (absmean ternary, per tensor) and the input activations (8-bit absmax, per token) with a
straight-through estimator, so gradients flow to the latent weight as if the quantizers were the
identity. ``lambda_`` blends full precision (0) into fully quantized (1), for gradual
ternarization of pretrained models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quant import fake_act_quant, fake_weight_quant

__all__ = ["RMSNorm", "BitLinear", "ste"]


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 (as transformers' BitNetRMSNorm / LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * xf.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: a fake quantizer's output; backward: the gradient unchanged (straight-through).

    An autograd Function rather than ``x + (q(x) - x).detach()``: that form costs two extra passes
    over the tensor in the forward and is off by rounding (``x + (y - x) != y`` in floating point).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str, bits: int) -> torch.Tensor:  # type: ignore[override]
        return fake_act_quant(x, bits) if kind == "act" else fake_weight_quant(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None, None


def ste(x: torch.Tensor, x_quant: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Generic straight-through estimator: value ``x + lambda_ * (x_quant - x)``, gradient identity.

    With ``lambda_ == 1`` the forward value is exactly ``x_quant`` (``x - x.detach()`` is exactly 0).
    BitLinear uses the cheaper ``_FakeQuantSTE`` at full strength and this form for ``lambda_ < 1``.
    """
    if lambda_ == 1.0:
        target = x_quant
    else:
        target = x + lambda_ * (x_quant - x)
    return target.detach() + (x - x.detach())


class BitLinear(nn.Linear):
    """Drop-in ``nn.Linear`` with BitNet b1.58 fake quantization (training and reference inference).

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear`` (BitNet uses no bias).
        use_rms_norm: apply an RMSNorm over the input before quantizing it, as in the
            Llama-architecture ternary checkpoints (parameter ``rms_norm.weight``).
        rms_norm_eps: epsilon of that norm.
        lambda_: quantization strength in [0, 1]; 1 is full BitNet b1.58, 0 is a plain linear layer.
        act_bits: activation bit width (8 in BitNet b1.58).

    Shapes: input ``(..., in_features)`` -> output ``(..., out_features)``.
    Works on CPU and CUDA, in fp32 and under bf16 autocast, and under ``torch.compile``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        use_rms_norm: bool = False,
        rms_norm_eps: float = 1e-5,
        lambda_: float = 1.0,
        act_bits: int = 8,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"BitLinear: lambda_ must be in [0, 1], got {lambda_}")
        self.lambda_ = float(lambda_)
        self.act_bits = act_bits
        self.rms_norm = RMSNorm(in_features, eps=rms_norm_eps) if use_rms_norm else None
        if self.rms_norm is not None and device is not None:
            self.rms_norm.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms_norm is not None:
            x = self.rms_norm(x)
        lam = self.lambda_
        if lam == 0.0:
            return F.linear(x, self.weight, self.bias)
        if lam == 1.0:
            x_q = _FakeQuantSTE.apply(x, "act", self.act_bits)  # (..., in)
            w_q = _FakeQuantSTE.apply(self.weight, "weight", 0)  # (out, in)
        else:
            x_q = ste(x, fake_act_quant(x, self.act_bits), lam)
            w_q = ste(self.weight, fake_weight_quant(self.weight), lam)
        return F.linear(x_q, w_q, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lambda_={self.lambda_}, act_bits={self.act_bits}, "
            f"use_rms_norm={self.rms_norm is not None}"
        )
