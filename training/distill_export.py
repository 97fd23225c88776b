"""Export a distilled student (a transformers model with BitLinears and SubLNs) as a packed checkpoint.

Llama and Mistral students are exactly ``BitNetForCausalLM`` (the 2B4T layout with the teacher's
SiLU activation): the SubLN of ``o_proj`` becomes ``self_attn.attn_sub_norm``, that of
``down_proj`` ``mlp.ffn_sub_norm``, and :func:`bitnet.export.export_hf` writes them; the engine,
transformers and the GGUF exporter read that directory.

Qwen2 and Qwen3 students need more than ``BitNetForCausalLM`` expresses; the export is the same
layout plus these documented extensions (``config.json`` lists them under ``bitnet_extensions``):

- ``"attention_bias"`` (Qwen2): ``attention_bias: true`` and float32 tensors
  ``self_attn.{q,k,v,o}_proj.bias`` (``o_proj.bias`` is zeros: Qwen2 has none, transformers'
  BitNet attention has all four). Stored as transformers' ``AutoBitLinear`` applies a bias,
  ``y = (x_q . q + bias) * weight_scale``: the file holds ``b / beta`` for the student's bias ``b``.
  transformers' ``BitNetForCausalLM`` reads this as it is.
- ``"qk_norm"`` (Qwen3): ``qk_norm: true`` and ``self_attn.q_norm.weight`` / ``k_norm.weight``
  (head_dim), an RMSNorm over each head of Q and K before RoPE (eps ``rms_norm_eps``). Neither
  transformers' BitNet model nor upstream llama.cpp's bitnet graph has it.

The C++ engine runs both (``inference/loader.py`` reads ``bitnet_extensions``); the GGUF exporter
and ``bitnet.export.load_model`` do not (they refuse the extra tensors with one line).

Without a student whose SubLNs were inserted (``subln: false``), the export is the
Llama-architecture ternary layout instead (``model_type: llama``, no sub-norms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bitnet.convert import SubLN
from bitnet.io import atomic_dir
from bitnet.layers import BitLinear
from bitnet.model import BitNetConfig, BitNetForCausalLM
from bitnet.quant import weight_quant

__all__ = ["student_config", "to_bitnet_model", "extension_tensors", "export_student"]

EXTENSION_DTYPE = torch.bfloat16  # q/k norms: as the export's other norms
SCALE_DTYPE = torch.bfloat16  # the dtype of weight_scale in the export (bitnet.export.hf)


def _has_subln(student: nn.Module) -> bool:
    return any(isinstance(m, SubLN) for m in student.modules())


def student_config(tcfg: Any, subln: bool) -> BitNetConfig:
    """The ``BitNetConfig`` of a student distilled from a teacher with transformers config ``tcfg``."""
    rope = getattr(tcfg, "rope_parameters", None) or {}
    theta = getattr(tcfg, "rope_theta", None) or rope.get("rope_theta", 10000.0)
    eos = tcfg.eos_token_id[0] if isinstance(tcfg.eos_token_id, list) else tcfg.eos_token_id
    return BitNetConfig(
        vocab_size=tcfg.vocab_size, hidden_size=tcfg.hidden_size, intermediate_size=tcfg.intermediate_size,
        num_hidden_layers=tcfg.num_hidden_layers, num_attention_heads=tcfg.num_attention_heads,
        num_key_value_heads=tcfg.num_key_value_heads or tcfg.num_attention_heads,
        head_dim=getattr(tcfg, "head_dim", None) or tcfg.hidden_size // tcfg.num_attention_heads,
        hidden_act=tcfg.hidden_act, max_position_embeddings=tcfg.max_position_embeddings,
        rms_norm_eps=tcfg.rms_norm_eps, rope_theta=float(theta),
        tie_word_embeddings=bool(getattr(tcfg, "tie_word_embeddings", False)),
        bos_token_id=tcfg.bos_token_id, eos_token_id=eos, pad_token_id=getattr(tcfg, "pad_token_id", None),
        linear_type="bitlinear", use_sub_norms=subln, use_rms_norm=False,
    )


def _rename(key: str) -> str | None:
    """Student (transformers) state-dict key -> BitNetForCausalLM key; None for extension tensors."""
    if key.endswith("self_attn.o_proj.rms_norm.weight"):
        return key.replace("self_attn.o_proj.rms_norm.weight", "self_attn.attn_sub_norm.weight")
    if key.endswith("mlp.down_proj.rms_norm.weight"):
        return key.replace("mlp.down_proj.rms_norm.weight", "mlp.ffn_sub_norm.weight")
    if key.endswith("_proj.bias") or key.endswith("q_norm.weight") or key.endswith("k_norm.weight"):
        return None
    return key


def to_bitnet_model(student: nn.Module, tcfg: Any) -> BitNetForCausalLM:
    """Our ``BitNetForCausalLM`` holding the student's weights (extension tensors left out).

    Raises ValueError if the student is not fully ternary (lambda < 1) or a tensor has no place.
    """
    for name, m in student.named_modules():
        if isinstance(m, (BitLinear, SubLN)) and m.lambda_ != 1.0:
            raise ValueError(f"{name}: lambda_={m.lambda_}; the export holds the fully ternary student")
    cfg = student_config(tcfg, _has_subln(student))
    with torch.device("meta"):
        model = BitNetForCausalLM(cfg)
    sd = {}
    for k, v in student.state_dict().items():
        new = _rename(k)
        if new is not None:
            sd[new] = v.detach().float().cpu()
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"student -> BitNetForCausalLM: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model.eval()


def extension_tensors(student: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors ``BitNetForCausalLM`` cannot hold, by their export names, and the extension names."""
    sd = student.state_dict()
    out: dict[str, torch.Tensor] = {}
    ext: list[str] = []
    if any(k.endswith("q_proj.bias") for k in sd):
        ext.append("attention_bias")
        for k, v in sd.items():
            if k.endswith("q_proj.bias"):
                prefix = k[: -len("q_proj.bias")]
                for n in "qkvo":
                    w = sd[f"{prefix}{n}_proj.weight"].detach().float().cpu()
                    b = sd.get(f"{prefix}{n}_proj.bias")
                    # o_proj has none in Qwen2: zeros, as transformers' BitNet attention has all four
                    b = torch.zeros(w.shape[0]) if b is None else b.detach().float().cpu()
                    # transformers' AutoBitLinear computes (x_q . q + bias) * weight_scale: store b / beta,
                    # with the bf16 beta the file holds, in float32 so that b_stored * beta gives back b
                    beta = weight_quant(w)[1].to(SCALE_DTYPE).float()
                    out[f"{prefix}{n}_proj.bias"] = (b / beta).contiguous()
    if any(k.endswith("q_norm.weight") for k in sd):
        ext.append("qk_norm")
        for k, v in sd.items():
            if k.endswith("q_norm.weight") or k.endswith("k_norm.weight"):
                out[k] = v.detach().float().cpu().to(EXTENSION_DTYPE).contiguous()
    return out, ext


def export_student(student: nn.Module, tcfg: Any, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write the packed export of ``student`` (fully ternary) to ``out_dir`` atomically.

    Returns ``out_dir``. Raises ValueError (see :func:`to_bitnet_model` and ``export_hf``).
    """
    from bitnet.export import export_hf

    out_dir = Path(out_dir)
    model = to_bitnet_model(student, tcfg)
    extra, ext = extension_tensors(student)
    with atomic_dir(out_dir) as tmp:
        export_hf(model, tmp / "packed", tokenizer)
        for f in (tmp / "packed").iterdir():
            f.rename(tmp / f.name)
        (tmp / "packed").rmdir()
        if ext:
            weights = tmp / "model.safetensors"
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as fh:
                meta = fh.metadata()
            tensors = load_file(str(weights))
            tensors.update(extra)
            save_file(tensors, str(weights), metadata={**meta, "bitnet_extensions": ",".join(ext)})
            cfg = json.loads((tmp / "config.json").read_text())
            cfg["bitnet_extensions"] = ext
            cfg["attention_bias"] = "attention_bias" in ext
            cfg["qk_norm"] = "qk_norm" in ext
            cfg["teacher_model_type"] = tcfg.model_type
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir
