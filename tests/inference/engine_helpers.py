"""Tiny models, exports and tokenizers for the engine tests (built here, never downloaded)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from bitnet.export import export_hf, load_model
from bitnet.model import BitNetConfig, BitNetForCausalLM

TOK_VOCAB = 300
TEXT = ["the quick brown fox jumps over the lazy dog; " * 20, "to be or not to be, that is the question. " * 20]


def tokenizer():
    from bitnet.training.tokenizer import train_bpe

    return train_bpe(TEXT, vocab_size=TOK_VOCAB, min_frequency=1)


def tiny(seed: int = 0, **overrides) -> BitNetForCausalLM:
    """test-tiny with random weights and non-trivial norms (so a misplaced norm shows in the logits)."""
    torch.manual_seed(seed)
    model = BitNetForCausalLM(BitNetConfig.from_preset("test-tiny", **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    return model


REPEATED_TEXT = " ".join(["the quick brown fox jumps over the lazy dog;"] * 12)


def trained_tiny(tok, steps: int = 40, **overrides) -> tuple[BitNetForCausalLM, torch.Tensor]:
    """``tiny(seed=7, vocab_size=304, **overrides)`` after ``steps`` AdamW steps on repetitive text:
    weights no longer i.i.d. and peaked logits, as in real use (a random tiny model's logits are so
    flat that near-ties flip under any perturbation). Returns the model in eval mode and the text's ids."""
    model = tiny(seed=7, **{"vocab_size": 304, **overrides})
    data = torch.tensor(tok.encode(REPEATED_TEXT).ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        s = step % (len(data) - 65)
        batch = data[s : s + 65][None]
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data


def export(model: BitNetForCausalLM, out: Path, tok=None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tokenizer given"
        return export_hf(model, out, tok)


def reference(path: Path) -> BitNetForCausalLM:
    """Our PyTorch model holding exactly the exported (bf16-rounded) weights, in fp32."""
    return load_model(path).float().eval()


def rewrite_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if k == "quantization_config":
            cfg[k].update(v)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))
