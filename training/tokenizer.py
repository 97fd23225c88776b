"""Tokenizers: train a byte-level BPE with ``tokenizers``, or load an existing one.

Every tokenizer we use is a ``tokenizers.Tokenizer`` with an end-of-text token (``<|endoftext|>``
for the ones we train and for GPT-2), which separates documents when sequences are packed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

__all__ = ["EOS_TOKEN", "train_bpe", "load_tokenizer", "eos_id"]

EOS_TOKEN = "<|endoftext|>"
MIN_BPE_VOCAB = 257  # the 256 byte symbols + <|endoftext|>


def train_bpe(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style: bytes are never unknown) on an iterator of texts.

    ``<|endoftext|>`` is token 0. Raises ValueError if ``vocab_size`` is smaller than the 256 byte
    symbols plus the special token, or ``min_frequency`` is negative.
    """
    if vocab_size < MIN_BPE_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE (needs >= {MIN_BPE_VOCAB})")
    if min_frequency < 0:
        raise ValueError(f"min_frequency must be >= 0, got {min_frequency}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load ``tokenizer.json``, a folder holding one, or GPT-2's ``vocab.json`` + ``merges.txt``
    (also under their original names ``encoder.json`` + ``vocab.bpe``).

    Raises:
        FileNotFoundError: nothing loadable at ``path``.
        ValueError: the file is not a valid tokenizer, or it has no end-of-text token.
    """
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            p = p / "tokenizer.json"
        else:
            for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
                if (p / vocab).is_file() and (p / merges).is_file():
                    return _gpt2_bpe(p / vocab, p / merges)
            raise FileNotFoundError(f"{p}: no tokenizer.json, vocab.json+merges.txt or encoder.json+vocab.bpe")
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer {p} not found")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
        raise ValueError(f"{p}: not a valid tokenizer.json ({e})") from None
    eos_id(tok, p)
    return tok


def _gpt2_bpe(vocab: Path, merges: Path) -> Tokenizer:
    try:
        bpe = models.BPE.from_file(str(vocab), str(merges))
    except Exception as e:
        raise ValueError(f"{vocab} / {merges}: not a GPT-2 BPE vocabulary ({e})") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if EOS_TOKEN in json.loads(vocab.read_text()):
        tok.add_special_tokens([EOS_TOKEN])  # mark the existing id as special so it is never split
    eos_id(tok, vocab)
    return tok


def eos_id(tok: Tokenizer, source: str | Path = "tokenizer") -> int:
    """The end-of-text id: ``<|endoftext|>``, else ``</s>`` or ``<|end_of_text|>``. Raises ValueError."""
    for name in (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise ValueError(f"{source}: tokenizer has no end-of-text token ({EOS_TOKEN}, </s>, <|end_of_text|>)")


def iter_batches(texts: Iterator[str], n: int = 1000) -> Iterator[list[str]]:
    """Group an iterator of texts into lists of ``n`` (feeds ``train_from_iterator`` in batches)."""
    batch: list[str] = []
    for t in texts:
        batch.append(t)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
