"""Turn any transformers causal LM into a ternary one by swapping its ``nn.Linear`` layers for BitLinear.

``to_bitnet`` swaps the linears; ``insert_subln`` adds BitNet's sub-norms (BitDistill's modeling
refinement) before the attention output and FFN down projections; ``set_lambda`` moves both from
the original full-precision model (0) to the fully ternary one (1).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .layers import BitLinear, RMSNorm

__all__ = ["to_bitnet", "set_lambda", "SubLN", "insert_subln", "subln_input_rms", "SUBLN_TARGETS"]

# Where the 2B4T sub-norms sit in a transformers decoder layer: the input of these projections.
SUBLN_TARGETS = ("self_attn.o_proj", "mlp.down_proj")


def _is_excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.endswith("." + p) or name.startswith(p + ".") for p in patterns)


def to_bitnet(
    model: nn.Module,
    *,
    use_rms_norm: bool = False,
    rms_norm_eps: float = 1e-5,
    lambda_: float = 1.0,
    modules_to_not_convert: Iterable[str] = ("lm_head",),
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` with a ``BitLinear`` that shares its weight (and bias).

    Embeddings and the output head are never converted: the module named ``lm_head`` (and any in
    ``modules_to_not_convert``) and any linear whose weight is tied to an embedding stay as they are.
    The model is modified in place and returned, as transformers' own quantizers do.

    Args:
        model: e.g. a ``transformers`` Llama / Qwen2 / Mistral causal LM.
        use_rms_norm: add an RMSNorm inside every converted linear (Llama-architecture ternary layout).
        lambda_: initial quantization strength (see :func:`set_lambda` for gradual schedules).
        modules_to_not_convert: module names (or suffixes) to leave in full precision.

    Returns:
        ``model`` with BitLinear layers.

    Raises:
        ValueError: if no linear layer was converted.
    """
    embed_ptrs = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    skip = list(modules_to_not_convert)
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Linear and not _is_excluded(name, skip) and m.weight.data_ptr() not in embed_ptrs
    ]
    if not targets:
        raise ValueError("to_bitnet: the model has no nn.Linear layers to convert")
    for name, lin in targets:
        new = BitLinear(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            device="meta",
            use_rms_norm=use_rms_norm,
            rms_norm_eps=rms_norm_eps,
            lambda_=lambda_,
        )
        new.weight = lin.weight
        if lin.bias is not None:
            new.bias = lin.bias
        if new.rms_norm is not None:
            new.rms_norm = type(new.rms_norm)(lin.in_features, rms_norm_eps).to(
                device=lin.weight.device, dtype=lin.weight.dtype
            )
        new.train(lin.training)
        model.set_submodule(name, new)
    return model


def set_lambda(model: nn.Module, lambda_: float) -> int:
    """Set the quantization strength of every BitLinear (and SubLN) in ``model``.

    Returns how many BitLinear layers were set (SubLNs ride along and are not counted).
    """
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
    n = 0
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.lambda_ = float(lambda_)
            n += 1
        elif isinstance(m, SubLN):
            m.lambda_ = float(lambda_)
    return n


class SubLN(RMSNorm):
    """A sub-norm that blends in with the quantization: ``x + lambda_ * (rmsnorm(x) - x)``.

    At ``lambda_ == 0`` it is the identity, so a freshly refined model computes exactly what the
    teacher computes; at ``lambda_ == 1`` it is a plain RMSNorm (what the packed export holds as
    ``attn_sub_norm`` / ``ffn_sub_norm``). ``set_lambda`` moves it together with the BitLinears.
    Its weight starts at the mean RMS of the activations it normalizes (``insert_subln(scales=)``),
    so that at ``lambda_ == 1`` an average token passes through unscaled.
    """

    def __init__(self, dim: int, eps: float = 1e-5, lambda_: float = 1.0) -> None:
        super().__init__(dim, eps)
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lambda_ == 0.0:
            return x
        y = super().forward(x)
        return y if self.lambda_ == 1.0 else x + self.lambda_ * (y - x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lambda_={self.lambda_}"


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformers causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no model.layers (not a transformers decoder-only causal LM)")
    return list(layers)


def insert_subln(
    model: nn.Module, *, eps: float = 1e-5, lambda_: float = 1.0, scales: dict[str, float] | None = None
) -> list[str]:
    """Insert a :class:`SubLN` before ``self_attn.o_proj`` and ``mlp.down_proj`` of every decoder layer.

    The projections must already be BitLinears (call :func:`to_bitnet` first); the norm becomes
    their ``rms_norm`` (applied to the input before it is quantized), parameter
    ``<layer>.self_attn.o_proj.rms_norm.weight``. ``scales`` maps a projection's module name to the
    initial norm weight (see :func:`subln_input_rms`); missing names start at 1.

    Returns the names of the projections that got a sub-norm.

    Raises:
        ValueError: a projection is missing or is not a BitLinear, or it already has a norm.
    """
    names = []
    for i, layer in enumerate(_decoder_layers(model)):
        for target in SUBLN_TARGETS:
            name = f"model.layers.{i}.{target}"
            try:
                lin = layer.get_submodule(target)
            except AttributeError:
                raise ValueError(f"insert_subln: {name} not found") from None
            if not isinstance(lin, BitLinear):
                raise ValueError(f"insert_subln: {name} is a {type(lin).__name__}, not a BitLinear (run to_bitnet first)")
            if lin.rms_norm is not None:
                raise ValueError(f"insert_subln: {name} already has a norm")
            norm = SubLN(lin.in_features, eps, lambda_).to(device=lin.weight.device, dtype=lin.weight.dtype)
            with torch.no_grad():
                norm.weight.fill_((scales or {}).get(name, 1.0))
            lin.rms_norm = norm
            names.append(name)
    return names


@torch.no_grad()
def subln_input_rms(model: nn.Module, input_ids: torch.Tensor) -> dict[str, float]:
    """Mean per-token RMS of the inputs of ``o_proj`` / ``down_proj`` in every layer.

    Run on the (unconverted) teacher with a calibration batch ``input_ids`` (B, T); the result is
    ``insert_subln``'s ``scales``. The model is not changed (its hooks are removed again).
    """
    out: dict[str, float] = {}
    handles = []

    def hook(name: str):
        def fn(_module, args):
            x = args[0].detach().float()  # (B, T, in)
            out[name] = float(x.pow(2).mean(-1).sqrt().mean())
        return fn

    for i, layer in enumerate(_decoder_layers(model)):
        for target in SUBLN_TARGETS:
            handles.append(layer.get_submodule(target).register_forward_pre_hook(hook(f"model.layers.{i}.{target}")))
    try:
        model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return out

