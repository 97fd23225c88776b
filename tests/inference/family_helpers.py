"""Tiny random replicas of each published ternary checkpoint family, in its own file conventions
(config keys, tensor names, dtypes, packing, scale convention), and a numpy reference forward.

Facts: ../shared/FORMATS.md sections 2 and 3b. Built here, never downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers wraps its BitNet quantizers in torch.compile

import numpy as np
import torch

VOCAB = 304
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _absmean(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from bitnet.quant import weight_quant

    return weight_quant(w)


def _config_edit(path: Path, drop: tuple[str, ...] = (), **set_: Any) -> None:
    p = path / "config.json"
    d = json.loads(p.read_text())
    for k in drop:
        d.pop(k, None)
    d.update(set_)
    p.write_text(json.dumps(d, indent=2))


def transformers_family(path: Path, model_type: str, qc: dict[str, Any], seed: int = 0, *,
                        published: dict[str, Any] | None = None, dtype: torch.dtype = torch.bfloat16,
                        **config: Any) -> Path:
    """A transformers ``model_type`` checkpoint with quantization_config ``qc``, in the files'
    conventions: offline = each linear packed by transformers' own ``pack_weights`` with
    ``weight_scale`` = beta (autobitlinear) or 1/beta (bitlinear, the default) and, with
    ``use_rms_norm``, its ``rms_norm.weight``; online = the float master weights. Floats in
    ``dtype``; ``published`` sets config.json keys as the published file has them."""
    import transformers
    from safetensors.torch import load_file, save_file
    from transformers.integrations.bitnet import pack_weights

    torch.manual_seed(seed)
    tm = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **{**SHAPE, **config}))
    for m in tm.modules():  # non-trivial norms so that a misplaced norm shows in the logits
        if "RMSNorm" in type(m).__name__:
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
    tm.save_pretrained(path)
    f = path / "model.safetensors"
    sd = load_file(str(f))
    if qc.get("quantization_mode", "offline") == "offline" or qc.get("linear_class", "bitlinear") == "bitlinear":
        for key in [k for k in sd if k.endswith("_proj.weight")]:
            q, beta = _absmean(sd[key])
            sd[key] = pack_weights(q.clone())  # (out/4, in) uint8
            scale = beta if qc.get("linear_class") == "autobitlinear" else 1.0 / beta
            sd[key + "_scale"] = scale.reshape(1).to(dtype)
            if qc.get("use_rms_norm"):
                sd[key[: -len("weight")] + "rms_norm.weight"] = torch.empty(q.shape[1]).normal_(1.0, 0.2)
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    save_file(sd, str(f), metadata={"format": "pt"})
    _config_edit(path, quantization_config=qc, **(published or {}))
    return path


def hf_reference(path: Path):
    """transformers' model of ``path`` in float64: the reference rounds as little as possible, so an
    int8 activation code sitting on a .5 boundary goes the way exact arithmetic sends it (an fp32
    reference may send it the other way than the fp32 engine: both are right to fp32 precision)."""
    import transformers

    tm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for t in list(tm.parameters()) + list(tm.buffers()):
        if t.is_floating_point():
            t.data = t.data.double()
    return tm


def write_safetensors_family(path: Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    return path


def _random_llama_tensors(rng: np.random.Generator, sub: tuple[str, str] | None) -> dict[str, np.ndarray]:
    C, I, L = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["num_hidden_layers"]
    hd = C // SHAPE["num_attention_heads"]
    kv = SHAPE["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (C, C), "self_attn.k_proj": (kv, C), "self_attn.v_proj": (kv, C),
              "self_attn.o_proj": (C, C), "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I)}
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (VOCAB, C)), "lm_head.weight": rng.normal(0, 0.1, (VOCAB, C)),
         "model.norm.weight": rng.normal(1, 0.2, C)}
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = rng.normal(1, 0.2, C)
        t[p + "post_attention_layernorm.weight"] = rng.normal(1, 0.2, C)
        if sub:
            t[p + sub[0] + ".weight"] = rng.normal(1, 0.2, C)
            t[p + sub[1] + ".weight"] = rng.normal(1, 0.2, I)
        for n, s in shapes.items():
            t[p + n + ".weight"] = rng.normal(0, 0.05, s)
    return t


def onebitllm_replica(path: Path, seed: int = 0) -> Path:
    """1bitLLM/bitnet_b1_58-*: BitnetForCausalLM, model_type llama, fp16 latent weights, inner norms
    self_attn.inner_attn_ln and mlp.ffn_layernorm, no quantization_config, custom code on the hub."""
    rng = np.random.default_rng(seed)
    t = {k: v.astype(np.float16) for k, v in _random_llama_tensors(rng, ("self_attn.inner_attn_ln", "mlp.ffn_layernorm")).items()}
    cfg = {"architectures": ["BitnetForCausalLM"], "model_type": "llama", "auto_map": {
        "AutoConfig": "configuration_bitnet.BitnetConfig", "AutoModelForCausalLM": "modeling_bitnet.BitnetForCausalLM"},
        **SHAPE, "hidden_act": "silu", "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
        "torch_dtype": "float16", "weight_bits": 1, "input_bits": 8, "pad_token_id": 32000, "pretraining_tp": 1,
        "attention_bias": False, "use_cache": True, "initializer_range": 0.02, "transformers_version": "4.39.0.dev0"}
    return write_safetensors_family(path, cfg, t)


def trilm_replica(path: Path, seed: int = 0, blocks: int = 2, ternary: bool = True) -> Path:
    """SpectraSuite TriLM *_Unpacked: plain LlamaForCausalLM fp16 whose linear weights are ternary
    times one scale per model-parallel shard of rows (``blocks`` shards)."""
    rng = np.random.default_rng(seed)
    t = _random_llama_tensors(rng, None)
    if ternary:
        for k in [k for k in t if k.endswith("_proj.weight")]:
            w = t[k]
            q = np.clip(np.rint(w / np.abs(w).mean()), -1, 1)
            scales = rng.uniform(0.02, 0.08, blocks)
            t[k] = q * np.repeat(scales, w.shape[0] // blocks)[:, None]
    t = {k: v.astype(np.float16) for k, v in t.items()}
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **SHAPE, "hidden_act": "silu",
           "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16", "attention_bias": False,
           "mlp_bias": False, "pretraining_tp": 1, "initializer_range": 0.02, "transformers_version": "4.41.0"}
    return write_safetensors_family(path, cfg, t)


# ---------------------------------------------------------------------------------- numpy reference
def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def _act_quant(x: np.ndarray) -> np.ndarray:
    s = 127.0 / np.maximum(np.abs(x).max(-1, keepdims=True), 1e-5)
    return np.clip(np.rint(x * s), -128, 127) / s


def numpy_forward(cfg: dict[str, Any], t: dict[str, np.ndarray], ids: np.ndarray, *, quant_acts: bool,
                  weight: Any, sub: tuple[str, str] | None) -> np.ndarray:
    """A Llama/BitNet forward in float64 written from the papers, independent of the engine and
    of bitnet.model. ``weight(name, W)`` gives the weight a linear multiplies by (ternary times its
    scales); activations are 8-bit absmax-quantized per token when ``quant_acts``."""
    f = {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}
    C, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, T = C // H, cfg["rms_norm_eps"], len(ids)
    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def lin(name: str, x: np.ndarray) -> np.ndarray:
        return (_act_quant(x) if quant_acts else x) @ weight(name, f[name + ".weight"]).T

    def rope(x: np.ndarray) -> np.ndarray:  # (heads, T, hd), rotate-half
        return x * cos + np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin

    x = f["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, f[p + "input_layernorm.weight"], eps)
        q = rope(lin(p + "self_attn.q_proj", h).reshape(T, H, hd).transpose(1, 0, 2))
        k = rope(lin(p + "self_attn.k_proj", h).reshape(T, KV, hd).transpose(1, 0, 2)).repeat(H // KV, 0)
        v = lin(p + "self_attn.v_proj", h).reshape(T, KV, hd).transpose(1, 0, 2).repeat(H // KV, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
        a = np.exp(s - s.max(-1, keepdims=True))
        a = (a / a.sum(-1, keepdims=True)) @ v  # (H, T, hd)
        a = a.transpose(1, 0, 2).reshape(T, C)
        if sub:
            a = _rms(a, f[p + sub[0] + ".weight"], eps)
        x = x + lin(p + "self_attn.o_proj", a)
        h = _rms(x, f[p + "post_attention_layernorm.weight"], eps)
        g = lin(p + "mlp.gate_proj", h)
        m = g / (1 + np.exp(-g)) * lin(p + "mlp.up_proj", h)
        if sub:
            m = _rms(m, f[p + sub[1] + ".weight"], eps)
        x = x + lin(p + "mlp.down_proj", m)
    return _rms(x, f["model.norm.weight"], eps) @ f["lm_head.weight"].T


def absmean_weight(name: str, w: np.ndarray) -> np.ndarray:
    """1bitLLM's weight_quant: s = 1 / mean|W|, round(W * s) clamped to [-1, 1], divided by s."""
    s = 1.0 / max(np.abs(w).mean(), 1e-5)
    return np.clip(np.rint(w * s), -1, 1) / s


def stored_weight(name: str, w: np.ndarray) -> np.ndarray:
    return w
