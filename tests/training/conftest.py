"""Shared fixtures: a small slice of the bundled Shakespeare and a quick test-tiny training config."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet.training import bundled_text, load_config

CORPUS_CHARS = 40_000  # enough for a few hundred 32-token windows, tokenized in well under a second


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    p = d / "shakespeare_head.txt"
    p.write_text(bundled_text().read_text()[:CORPUS_CHARS])
    return p


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")


@pytest.fixture
def tiny_overrides(corpus, token_cache, tmp_path) -> list[str]:
    """Overrides for a seconds-long test-tiny run; tests add their own (out_dir, steps, ...)."""
    return [
        "model=test-tiny", f"data.paths=[{corpus}]", f"data.cache_dir={token_cache}",
        "data.tokenizer=train", "data.tokenizer_vocab_size=300", "data.seq_len=32",
        "batch_size=4", "micro_batch_size=2", "max_steps=6", "optim.warmup_steps=2",
        "log.log_every=2", "log.eval_every=3", "log.eval_batches=2", "log.progress=false",
        "log.tensorboard=false", "log.plot=false", f"out_dir={tmp_path / 'run'}", "threads=1",
    ]


def make_config(overrides: list[str]):
    return load_config(None, overrides)


def losses(out_dir) -> list[tuple[int, str, float]]:
    """(step, kind, value) rows of a run's metrics.jsonl, for comparing runs."""
    from bitnet.training.loop import read_metrics

    return [(r["step"], k, r[k]) for r in read_metrics(out_dir) for k in ("loss", "val_loss") if k in r]
