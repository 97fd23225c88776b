"""Tiny transformers teachers (Llama, Mistral, Qwen2, Qwen3) built and saved by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from bitnet.training.tokenizer import EOS_TOKEN, train_bpe

TEXT = ("the quick brown fox jumps over the lazy dog. to be or not to be, that is the question. "
        "all the world's a stage, and all the men and women merely players. ") * 40
TOK_VOCAB = 300
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def write_text(path: Path, n_repeat: int = 6) -> Path:
    path.write_text((TEXT + "\n\n") * n_repeat)
    return path


def tiny_teacher(path: Path, arch: str = "llama", *, tie: bool = False, seed: int = 0, **overrides) -> Path:
    """A random tiny causal LM of family ``arch`` with a byte-level BPE tokenizer, saved by transformers."""
    torch.manual_seed(seed)
    tok = train_bpe([TEXT], vocab_size=TOK_VOCAB, min_frequency=1)
    common = dict(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=tie, eos_token_id=tok.token_to_id(EOS_TOKEN), bos_token_id=None,
                  rope_theta=10000.0)
    if arch == "qwen3":
        common["head_dim"] = 8
    common.update(overrides)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
           "mistral": transformers.MistralConfig}[arch]
    model = transformers.AutoModelForCausalLM.from_config(cls(**common))
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
    model.save_pretrained(path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN)
    fast.save_pretrained(path)
    return path
