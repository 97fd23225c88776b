"""Fixtures for the export tests (helpers live in export_helpers.py)."""

from __future__ import annotations

import os

# transformers wraps its BitNet quantizers in torch.compile; compare in eager mode.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest
from export_helpers import TINY_VOCAB, byte_tokenizer, tiny_model

from bitnet import BitNetForCausalLM


@pytest.fixture
def model() -> BitNetForCausalLM:
    return tiny_model(vocab_size=TINY_VOCAB)


@pytest.fixture
def tokenizer():
    return byte_tokenizer()
