"""Learning-rate and weight-decay schedules as pure functions of the step.

``two_stage`` is the BitNet b1.58 recipe (paper and "Training Tips" notes; 2B4T report): linear
warmup to a high peak LR, a slow linear decay over stage one, a sharp drop at ``stage_boundary``
(midway by default) and a linear cool-down to ``final_scale * lr``; weight decay ``weight_decay``
(0.1) in stage one and 0 in stage two, so the latent weights are free to settle near their ternary
levels. ``cosine`` (warmup then cosine to ``final_scale * lr``, constant weight decay) is the usual
schedule for the full-precision twin.

We set ``param_group["lr"]`` and ``["weight_decay"]`` by hand each step instead of using a torch
LR scheduler because torch has no weight-decay schedules.
"""

from __future__ import annotations

import math

from torch import nn

from .config import OptimConfig

__all__ = ["lr_at", "wd_at", "stage_boundary_step", "param_groups"]


def stage_boundary_step(cfg: OptimConfig, max_steps: int) -> int:
    """First step of stage two (0-based)."""
    return int(round(cfg.stage_boundary * max_steps))


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate used for optimizer step ``step`` (0-based, ``0 <= step < max_steps``)."""
    peak = cfg.lr
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    last = max(max_steps - 1, 1)
    if cfg.schedule == "cosine":
        span = max(last - cfg.warmup_steps, 1)
        t = min((step - cfg.warmup_steps) / span, 1.0)
        return peak * (cfg.final_scale + (1 - cfg.final_scale) * 0.5 * (1 + math.cos(math.pi * t)))
    b = stage_boundary_step(cfg, max_steps)
    if step < b:  # stage one: peak -> stage1_end_scale * peak
        t = (step - cfg.warmup_steps) / max(b - cfg.warmup_steps, 1)
        return peak * (1 + (cfg.stage1_end_scale - 1) * t)
    t = (step - b) / max(last - b, 1)  # stage two: sharp drop, then linear to final_scale * peak
    return peak * (cfg.stage2_start_scale + (cfg.final_scale - cfg.stage2_start_scale) * t)


def wd_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Weight decay of the decayed parameter group at ``step``: 0 in the BitNet recipe's stage two."""
    if cfg.schedule == "two_stage" and step >= stage_boundary_step(cfg, max_steps):
        return 0.0
    return cfg.weight_decay


def param_groups(model: nn.Module) -> list[dict]:
    """Two AdamW groups: matrices of linear layers decay; norms, embeddings (and the tied head)
    and biases never do. Group 0 is the decayed one (its ``weight_decay`` follows ``wd_at``)."""
    no_decay_ids = set()
    for m in model.modules():
        if isinstance(m, nn.Embedding) or "Norm" in type(m).__name__:
            no_decay_ids.update(id(p) for p in m.parameters(recurse=False))
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (no_decay if id(p) in no_decay_ids or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}]
