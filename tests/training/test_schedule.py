"""Schedules: the BitNet two-stage shape (warmup, sharp drop at the boundary, WD switch) and cosine."""

from __future__ import annotations

import pytest

from bitnet import BitNetConfig, BitNetForCausalLM
from bitnet.training.config import OptimConfig
from bitnet.training.schedule import lr_at, param_groups, stage_boundary_step, wd_at

STEPS = 200


def test_two_stage_shape():
    cfg = OptimConfig(lr=1e-2, warmup_steps=10, stage_boundary=0.5, stage1_end_scale=0.6,
                      stage2_start_scale=0.2, final_scale=0.02, weight_decay=0.1)
    lrs = [lr_at(s, cfg, STEPS) for s in range(STEPS)]
    b = stage_boundary_step(cfg, STEPS)
    assert b == 100
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)  # linear warmup to the peak
    assert all(x >= y for x, y in zip(lrs[9:b], lrs[10:b]))  # decays through stage one
    assert lrs[b - 1] == pytest.approx(0.6e-2, rel=0.02)
    assert lrs[b] == pytest.approx(0.2e-2)  # the sharp drop midway
    assert lrs[b - 1] / lrs[b] > 2.5
    assert all(x >= y for x, y in zip(lrs[b:], lrs[b + 1:]))
    assert lrs[-1] == pytest.approx(0.02e-2)
    wds = [wd_at(s, cfg, STEPS) for s in range(STEPS)]
    assert set(wds[:b]) == {0.1} and set(wds[b:]) == {0.0}  # WD 0.1 in stage one, 0 in stage two


def test_cosine_shape():
    cfg = OptimConfig(lr=1e-3, warmup_steps=20, schedule="cosine", final_scale=0.1)
    lrs = [lr_at(s, cfg, STEPS) for s in range(STEPS)]
    assert lrs[19] == pytest.approx(1e-3)
    assert all(x >= y for x, y in zip(lrs[19:], lrs[20:]))
    assert lrs[-1] == pytest.approx(1e-4)
    mid = 20 + (STEPS - 1 - 20) // 2
    assert lrs[mid] == pytest.approx(0.55e-3, rel=0.02)  # half-way down the cosine
    assert {wd_at(s, cfg, STEPS) for s in range(STEPS)} == {cfg.weight_decay}


def test_no_decay_on_norms_and_embeddings():
    model = BitNetForCausalLM(BitNetConfig.from_preset("test-tiny"))
    decay, no_decay = (g["params"] for g in param_groups(model))
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 and "proj" in names[id(p)] for p in decay)
    assert {names[id(p)] for p in no_decay} >= {"model.embed_tokens.weight", "model.norm.weight"}
    assert any("sub_norm" in names[id(p)] for p in no_decay)
    total = sum(p.numel() for p in decay) + sum(p.numel() for p in no_decay)
    assert total == model.num_parameters()  # the tied head counted once, nothing missing
