"""Fixtures for the export tests: tiny models and a tiny tokenizer, built here, never downloaded."""

from __future__ import annotations

import os

# transformers wraps its BitNet quantizers in torch.compile; compare in eager mode.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import pytest
import torch

from bitnet import BitNetConfig, BitNetForCausalLM


TINY_VOCAB = 320  # the byte-level alphabet (256) + specials + merges of byte_tokenizer fit


def tiny_model(seed: int = 0, **overrides) -> BitNetForCausalLM:
    """The test-tiny preset with random weights, in eval mode."""
    torch.manual_seed(seed)
    cfg = BitNetConfig.from_preset("test-tiny", **overrides)
    return BitNetForCausalLM(cfg).eval()


def byte_tokenizer(vocab_size: int = 300, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer from `tokenizers` with a few merges, trained on ``corpus`` (default: a fixed string)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = ["the quick brown fox jumps over the lazy dog; " * 20, "to be or not to be, that is the question. " * 20]
    tok.train_from_iterator(corpus or text, trainer)
    return tok


@pytest.fixture
def model() -> BitNetForCausalLM:
    return tiny_model(vocab_size=TINY_VOCAB)


@pytest.fixture
def tokenizer():
    return byte_tokenizer()
