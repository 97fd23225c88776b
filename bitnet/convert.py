"""Turn any transformers causal LM into a ternary one by swapping its ``nn.Linear`` layers for BitLinear."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .layers import BitLinear

__all__ = ["to_bitnet", "set_lambda"]


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
    """Set the quantization strength of every BitLinear in ``model``; returns how many were set."""
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
    n = 0
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.lambda_ = float(lambda_)
            n += 1
    return n

