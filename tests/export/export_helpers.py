"""Helpers for the export tests: tiny models and a tiny tokenizer, built here, never downloaded.

A uniquely named module (not conftest) so that other test folders' conftest files cannot shadow it.
"""

from __future__ import annotations

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


def silu_model(seed: int = 0, vocab_size: int = 320) -> BitNetForCausalLM:
    """The smallest model whose linear inputs fill whole 256-weight TQ blocks."""
    torch.manual_seed(seed)
    cfg = BitNetConfig(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128,
        rope_theta=10000.0, tie_word_embeddings=True,
    )
    return BitNetForCausalLM(cfg).eval()
