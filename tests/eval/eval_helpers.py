"""Helpers of the eval tests, in a uniquely named module: every test folder has a conftest.py, so
`from conftest import ...` would get whichever folder's conftest was imported first.

What they build: a tiny BitNet trained briefly here on local text, exported with its
own byte-level BPE tokenizer. Nothing is downloaded; the whole fixture takes a few seconds.
``DATA_DIR`` is ../shared/data when present, else the subset committed in tests/fixtures/data."""

from __future__ import annotations

import os

# transformers wraps its BitNet quantizers in torch.compile; compare against it in eager mode.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import torch
from data_paths import DATA_DIR, FULL_DATA  # noqa: F401  ../shared/data, or tests/fixtures/data
from torch_threads import one_torch_thread  # noqa: F401  used by the eval tests

from bitnet import BitNetConfig, BitNetForCausalLM

VOCAB = 1024
TRAIN_STEPS = 150  # enough to move well away from uniform predictions (loss ~7 -> ~4)
SEQ, BATCH = 128, 8


def training_text() -> str:
    """Text close to what the tasks ask about: WikiText-2 valid and GSM8K's train answers."""
    wiki = (DATA_DIR / "text" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    gsm = (DATA_DIR / "gsm8k" / "train.jsonl").read_text(encoding="utf-8")[:300_000]
    return wiki[:400_000] + "\n" + gsm


def build_tokenizer(text: str):
    """The project's byte-level BPE (``<|endoftext|>`` = EOS, id 0) plus a ``<|bos|>`` (id 1023) that
    the post-processor prepends, as Llama-3's tokenizer does, so the BOS paths of lm-eval are exercised."""
    from tokenizers import processors

    from bitnet.training.tokenizer import train_bpe

    tok = train_bpe((text[i:i + 10_000] for i in range(0, len(text), 10_000)), vocab_size=VOCAB - 1)
    tok.add_special_tokens(["<|bos|>"])
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    return tok


def train_tiny(tok, text: str, seed: int = 0) -> BitNetForCausalLM:
    torch.manual_seed(seed)
    cfg = BitNetConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       rope_theta=10000.0, bos_token_id=tok.token_to_id("<|bos|>"), eos_token_id=0)
    model = BitNetForCausalLM(cfg)
    ids = torch.tensor(tok.encode(text, add_special_tokens=False).ids)  # (N,)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(ids) - SEQ - 1, (BATCH,), generator=g)
        x = torch.stack([ids[s:s + SEQ] for s in starts])  # (B, T)
        y = torch.stack([ids[s + 1:s + SEQ + 1] for s in starts])  # (B, T)
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.final_loss = float(loss.detach())
    return model.eval()


def tiny_random_export(out: Path) -> Path:
    """An untrained test-tiny model with the project's plain BPE (EOS only, no BOS)."""
    from bitnet.export import export_hf
    from bitnet.training.tokenizer import train_bpe

    tok = train_bpe(["the end of a time once upon a time " * 50], vocab_size=300)
    torch.manual_seed(0)
    cfg = BitNetConfig.from_preset("test-tiny", vocab_size=320, eos_token_id=tok.token_to_id("<|endoftext|>"))
    return export_hf(BitNetForCausalLM(cfg).eval(), out, tokenizer=tok)
