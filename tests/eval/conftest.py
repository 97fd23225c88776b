"""Fixtures of the eval tests; the helpers they use live in eval_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_helpers import build_tokenizer, one_torch_thread, train_tiny, training_text


@pytest.fixture(scope="session")
def trained_export(tmp_path_factory) -> Path:
    """Export directory of the tiny trained model (config.json, model.safetensors, tokenizer.json)."""
    from bitnet.export import export_hf

    text = training_text()
    tok = build_tokenizer(text)
    with one_torch_thread():
        model = train_tiny(tok, text)
    return export_hf(model, tmp_path_factory.mktemp("eval") / "export", tokenizer=tok)
