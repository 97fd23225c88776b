"""BitNet b1.58 quantization: the reference (oracle) every other implementation is tested against.

Pure functions on tensors; nothing here mutates its input.

Conventions (see ../shared/FORMATS.md, section 1):
- weights, per tensor:  beta = mean(|W|) clamped to >= 1e-5,  q = clamp(round(W / beta), -1, 1),
  so W ~= q * beta;
- activations, per token (last dim): s = 127 / max(|x|) (max clamped to >= 1e-5),
  x_q = clamp(round(x * s), -128, 127), so x ~= x_q * scale with scale = 1 / s.

Scales are always *multiplied* inside this codebase; formats that store the inverse convert at the
file boundary (bitnet.export).

Packing follows transformers' ``bitnet`` offline layout: a ternary matrix of shape (out, in) is
stored as uint8 of shape (out / 4, in). With R = out / 4, bits 2i..2i+1 of packed[r, c] hold the
code (q + 1) of row i * R + r, column c.
"""

from __future__ import annotations

import torch

__all__ = [
    "WEIGHT_EPS",
    "ACT_EPS",
    "weight_quant",
    "act_quant",
    "fake_weight_quant",
    "fake_act_quant",
    "pack_ternary",
    "unpack_ternary",
]

WEIGHT_EPS = 1e-5  # lower clamp of mean(|W|): an all-zero weight maps to q = 0, not NaN
ACT_EPS = 1e-5  # lower clamp of max(|x|): an all-zero token maps to x_q = 0, not NaN
VALUES_PER_BYTE = 4  # four 2-bit codes per uint8


def weight_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization of a weight tensor (per tensor).

    Args:
        w: float tensor of any shape.

    Returns:
        ``(q, beta)``: ``q`` int8 of ``w.shape`` with values in {-1, 0, 1}; ``beta`` a 0-dim float32
        tensor, ``mean(|w|)`` clamped to >= WEIGHT_EPS, such that ``w ~= q * beta``.
    """
    wf = w.detach().float()
    beta = wf.abs().mean().clamp(min=WEIGHT_EPS)
    q = (wf / beta).round().clamp(-1, 1).to(torch.int8)
    return q, beta


def act_quant(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax symmetric quantization of activations, per token (over the last dim).

    Args:
        x: float tensor of shape ``(..., C)``.
        bits: bit width; 8 gives the int8 range [-128, 127].

    Returns:
        ``(x_q, scale)``: ``x_q`` int8 (int16 for bits > 8) of ``x.shape``; ``scale`` float32 of shape
        ``x.shape[:-1] + (1,)`` such that ``x ~= x_q * scale``.

    Raises:
        ValueError: if ``bits`` is not in [2, 16].
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"act_quant: bits must be in [2, 16], got {bits}")
    qmax = 2 ** (bits - 1) - 1  # 127 for 8 bits
    qmin = -(2 ** (bits - 1))  # -128 for 8 bits
    xf = x.detach().float()
    s = qmax / xf.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)  # (..., 1)
    x_q = (xf * s).round().clamp(qmin, qmax)
    dtype = torch.int8 if bits <= 8 else torch.int16
    return x_q.to(dtype), 1.0 / s


def _compiling() -> bool:
    """True while torch.compile traces: the fake quantizers then use out-of-place ops only.

    Inductor fuses either form into one pass, so nothing is lost; and an output of an
    ``autograd.Function``'s forward (BitLinear's straight-through estimator) that aliases an
    intermediate, whether mutated in place or returned by a no-op ``.to(dtype)``, makes torch
    2.11's compiled backward route the gradient to the wrong output: the latent weights got an
    all-zero gradient (pytorch/pytorch#180642; tests/test_layers.py::test_torch_compile_matches_eager
    on torch 2.11).
    """
    return torch.compiler.is_compiling()


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, never a no-op ``.to`` (its alias is what torch 2.11 mis-routes)."""
    return t if t.dtype == dtype else t.to(dtype)


def fake_weight_quant(w: torch.Tensor) -> torch.Tensor:
    """``q * beta`` in ``w``'s dtype, computed the way transformers' BitNet does (divide by 1/beta).

    Matches ``transformers.integrations.bitnet.WeightQuant`` bit for bit, so our model and theirs
    agree exactly in eager mode. No gradient handling here (see bitnet.layers.BitLinear for the STE).
    The in-place ops act on fresh temporaries only (the caller's tensor is never modified); they
    halve the memory passes, which is most of BitLinear's cost over nn.Linear on CPU. Under
    ``torch.compile`` the same ops run out of place (see ``_compiling``).
    """
    wf = w.detach().float()
    if _compiling():
        inv_beta = 1.0 / wf.abs().mean().clamp(min=WEIGHT_EPS)
        return _cast((wf * inv_beta).round().clamp(-1, 1).div(inv_beta), w.dtype)
    inv_beta = 1.0 / wf.abs().mean().clamp_(min=WEIGHT_EPS)
    return (wf * inv_beta).round_().clamp_(-1, 1).div_(inv_beta).to(w.dtype)


def fake_act_quant(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``x_q * scale`` in ``x``'s dtype, computed as transformers' BitNet ``ActQuant`` does.

    Same values as ``act_quant`` dequantized; in-place ops on fresh temporaries only.
    """
    qmax = 2 ** (bits - 1) - 1
    qmin = -(2 ** (bits - 1))
    xf = x.detach().float()
    if _compiling():
        s = qmax / xf.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)  # (..., 1)
        return _cast((xf * s).round().clamp(qmin, qmax).div(s), x.dtype)
    s = qmax / xf.abs().amax(dim=-1, keepdim=True).clamp_(min=ACT_EPS)  # (..., 1)
    return (xf * s).round_().clamp_(qmin, qmax).div_(s).to(x.dtype)


def pack_ternary(q: torch.Tensor) -> torch.Tensor:
    """Pack a ternary matrix into transformers' bitnet offline layout.

    Args:
        q: integer (or integral float) tensor of shape ``(out, in)`` with values in {-1, 0, 1};
           ``out`` must be a multiple of 4.

    Returns:
        uint8 tensor of shape ``(out // 4, in)``; bits 2i..2i+1 of ``[r, c]`` hold ``q[i*R + r, c] + 1``
        where ``R = out // 4``.

    Raises:
        ValueError: wrong rank, ``out`` not a multiple of 4, or a value outside {-1, 0, 1}.
    """
    if q.dim() != 2:
        raise ValueError(f"pack_ternary: expected a 2-D (out, in) tensor, got shape {tuple(q.shape)}")
    out_features = q.shape[0]
    if out_features % VALUES_PER_BYTE != 0:
        raise ValueError(
            f"pack_ternary: out_features={out_features} is not a multiple of {VALUES_PER_BYTE}"
        )
    qi = q.to(torch.int16) if not q.is_floating_point() else q.round().to(torch.int16)
    if q.is_floating_point() and not torch.equal(q.round(), q):
        raise ValueError("pack_ternary: input has non-integer values; quantize it first")
    if qi.numel() and (qi.min() < -1 or qi.max() > 1):
        raise ValueError(
            f"pack_ternary: values must be in {{-1, 0, 1}}, found range [{int(qi.min())}, {int(qi.max())}]"
        )
    rows = out_features // VALUES_PER_BYTE
    codes = (qi + 1).to(torch.uint8).view(VALUES_PER_BYTE, rows, q.shape[1])  # (4, R, in)
    packed = torch.zeros(rows, q.shape[1], dtype=torch.uint8, device=q.device)
    for i in range(VALUES_PER_BYTE):
        packed |= codes[i] << (2 * i)
    return packed


def unpack_ternary(packed: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`.

    Args:
        packed: uint8 tensor of shape ``(out // 4, in)``.
        out_features: expected ``out``; defaults to ``4 * packed.shape[0]``.

    Returns:
        int8 tensor of shape ``(out, in)`` with values in {-1, 0, 1}.

    Raises:
        ValueError: wrong dtype or rank, ``out_features`` inconsistent with the packed rows, or a
        2-bit code of 3 (not a valid ternary code).
    """
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_ternary: expected uint8, got {packed.dtype}")
    if packed.dim() != 2:
        raise ValueError(f"unpack_ternary: expected a 2-D tensor, got shape {tuple(packed.shape)}")
    rows = packed.shape[0]
    if out_features is None:
        out_features = rows * VALUES_PER_BYTE
    if out_features != rows * VALUES_PER_BYTE:
        raise ValueError(
            f"unpack_ternary: out_features={out_features} does not match {rows} packed rows "
            f"(expected {rows * VALUES_PER_BYTE})"
        )
    codes = torch.stack([(packed >> (2 * i)) & 3 for i in range(VALUES_PER_BYTE)])  # (4, R, in)
    if codes.numel() and int(codes.max()) > 2:
        raise ValueError("unpack_ternary: found 2-bit code 3, which is not a ternary value")
    return (codes.to(torch.int8) - 1).reshape(out_features, packed.shape[1])
