"""Read a transformers-style directory (config.json + safetensors) of any published ternary family.

The families differ in a handful of ways, listed once in :data:`FAMILIES` (facts:
../shared/FORMATS.md sections 2 and 3b); :func:`read_hf_dir` picks the row that matches config.json
and yields a :class:`~bitnet.formats.description.TernaryModel`.

======================  ============================================  ==========  ================
family                  detected by                                   weights     sub-norms
======================  ============================================  ==========  ================
bitnet-packed           quant_method bitnet, model_type bitnet        packed      attn/ffn_sub_norm
bitnet-online           ... and quantization_mode online (2B4T-bf16)  latent      attn/ffn_sub_norm
llama-bitnet            quant_method bitnet, model_type llama         packed      none
                        (Falcon3-1.58bit, Llama3-8B-1.58, Falcon-E)
llama-bitnet-online     ... and quantization_mode online              latent      none
1bitllm                 BitnetForCausalLM, model_type llama, no qc    latent      inner_attn_ln /
                                                                                  ffn_layernorm
trilm                   LlamaForCausalLM, no qc, ternary values       scaled      none
======================  ============================================  ==========  ================

packed: uint8 ``(out/4, in)`` + ``weight_scale`` (``linear_class`` autobitlinear multiplies it,
bitlinear, transformers' default, divides by it). latent: float master weights quantized here per
tensor (absmean, fp32, as transformers' ``WeightQuant`` and 1bitLLM's ``weight_quant``). scaled:
float weights that already are ternary times one scale per row block; the scales are read from the
values (and a model whose values are not ternary is refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitnet.config import BitNetConfig, read_config_json

from .description import EXTENSIONS, LINEAR_NAMES, Table, TernaryLinear, TernaryModel
from .rope import rope_inv_freq
from .safetensors import FLOAT_DTYPES, WeightSet, to_f32
from .ternary import absmean_quantize, pack, row_scales_of_ternary

__all__ = ["Family", "FAMILIES", "detect_family", "read_hf_dir", "TRANSFORMERS_QC_RMS_EPS"]

TRANSFORMERS_QC_RMS_EPS = 1e-6  # BitNetQuantConfig's default eps of the in-linear RMSNorm
_INT32_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings")  # C++ int in the engine
_IGNORED_TENSOR_SUFFIXES = (".rotary_emb.inv_freq",)  # buffers some writers save; recomputed here
# TriLM's fp16 values: one magnitude per row exactly; allow bf16-level spread should a copy be re-cast.
SCALED_RTOL = 2.0**-8


@dataclass(frozen=True)
class Family:
    """One row of the per-family table (see the module docstring)."""

    name: str
    model_type: str           # config.json model_type
    quantized: bool           # has quantization_config.quant_method == "bitnet"
    mode: str                 # "offline" / "online" for quantized families, "" otherwise
    architecture: str | None  # config.json architectures[0] that must match (None: any)
    weights: str              # "packed" | "latent" | "scaled"
    sub_norms: tuple[str, str] | None  # file names of the attention / FFN sub-norms, None if absent
    hidden_act: str           # default when config.json has no hidden_act


_BITNET_SUB = ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
FAMILIES: tuple[Family, ...] = (
    Family("bitnet-packed", "bitnet", True, "offline", None, "packed", _BITNET_SUB, "relu2"),
    Family("bitnet-online", "bitnet", True, "online", None, "latent", _BITNET_SUB, "relu2"),
    Family("llama-bitnet", "llama", True, "offline", None, "packed", None, "silu"),
    Family("llama-bitnet-online", "llama", True, "online", None, "latent", None, "silu"),
    Family("1bitllm", "llama", False, "", "BitnetForCausalLM", "latent", ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"), "silu"),
    Family("trilm", "llama", False, "", None, "scaled", None, "silu"),
)


def _quant_settings(path: Path, qc: dict[str, Any]) -> tuple[str, str, float | None]:
    """(linear_class, quantization_mode, in-linear norm eps or None) of a bitnet quantization_config."""
    linear_class = qc.get("linear_class") or "bitlinear"  # transformers' default
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise ValueError(f"{path}: quantization_config.linear_class {linear_class!r} is not supported "
                         "(supported: 'bitlinear', 'autobitlinear')")
    mode = qc.get("quantization_mode") or "offline"
    if mode not in ("offline", "online"):
        raise ValueError(f"{path}: quantization_config.quantization_mode {mode!r} is not supported "
                         "(supported: 'offline', 'online')")
    if linear_class == "bitlinear":
        mode = "offline"  # transformers' BitLinear always holds packed weights
    eps = qc.get("rms_norm_eps")
    if eps is not None and not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0):
        raise ValueError(f"{path}: quantization_config.rms_norm_eps must be a positive number, got {eps!r}")
    return linear_class, mode, None if eps is None else float(eps)


def detect_family(path: Path, raw: dict[str, Any]) -> tuple[Family, str]:
    """The :data:`FAMILIES` row for config.json ``raw`` and its linear_class ("" when unquantized).

    Raises:
        ValueError: one line naming config.json, the field and what is supported.
    """
    mt = raw.get("model_type")
    if mt not in ("bitnet", "llama"):
        raise ValueError(f"{path}: unsupported architecture model_type={mt!r} (supported: 'bitnet' and 'llama' "
                         "ternary models)")
    qc = raw.get("quantization_config")
    arch = (raw.get("architectures") or [None])[0]
    if qc is not None:
        if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
            method = qc.get("quant_method") if isinstance(qc, dict) else qc
            raise ValueError(f"{path}: quantization_config.quant_method {method!r} is not a ternary method "
                             "(supported: 'bitnet')")
        linear_class, mode, _ = _quant_settings(path, qc)
        fam = next(f for f in FAMILIES if f.quantized and f.model_type == mt and f.mode == mode)
        return fam, linear_class
    if mt == "bitnet":
        raise ValueError(f"{path}: model_type 'bitnet' without quantization_config (needs quant_method 'bitnet')")
    for f in FAMILIES:
        if not f.quantized and (f.architecture is None or f.architecture == arch):
            return f, ""
    raise AssertionError("unreachable: the trilm row matches every unquantized llama config")


def _config(path: Path, raw: dict[str, Any], fam: Family) -> BitNetConfig:
    d = dict(raw)
    d.setdefault("hidden_act", fam.hidden_act)
    try:
        cfg = BitNetConfig.from_hf_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    cfg.use_sub_norms = fam.sub_norms is not None
    cfg.linear_type = "bitlinear"
    if not fam.quantized:
        cfg.use_rms_norm = False
    for name in _INT32_FIELDS:  # the C++ model holds these as int
        value = getattr(cfg, name)
        if not 0 < value < 2**31:
            raise ValueError(f"{path}: {name}={value} is out of range for the engine (1 to 2^31 - 1)")
    if cfg.use_sub_norms and cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
        raise ValueError(f"{path}: the attention sub-norm needs num_attention_heads * head_dim == hidden_size")
    return cfg


def read_hf_dir(directory: str | Path) -> TernaryModel:
    """Describe the ternary model in a transformers-style directory (any family in :data:`FAMILIES`).

    Tensors are memory-mapped; ternary linears are produced one at a time by ``linear(i, name)``.

    Raises:
        FileNotFoundError: no config.json or weights. ValueError: one line naming the file and the
        field or tensor at fault (unsupported family, wrong shape or dtype, non-ternary values, ...).
    """
    d = Path(directory)
    cpath = d / "config.json"
    raw = read_config_json(cpath)
    fam, linear_class = detect_family(cpath, raw)
    cfg = _config(cpath, raw, fam)
    qc = raw.get("quantization_config") or {}
    _, _, qc_eps = _quant_settings(cpath, qc) if fam.quantized else ("", "", None)
    inner_eps = qc_eps if qc_eps is not None else (TRANSFORMERS_QC_RMS_EPS if cfg.use_rms_norm else cfg.rms_norm_eps)
    not_converted = [m for m in (qc.get("modules_to_not_convert") or []) if m != "lm_head"]
    if any(m.split(".")[-1] in {n.split(".")[-1] for n in LINEAR_NAMES} for m in not_converted):
        raise ValueError(f"{cpath}: quantization_config.modules_to_not_convert keeps {not_converted[:3]} in 16 bits; "
                         "only lm_head may stay unquantized")
    ext = _extensions(cpath, raw, fam)
    ws = WeightSet(d)
    used: set[str] = set()
    C, hd = cfg.hidden_size, cfg.head_dim

    def need(name: str) -> str:
        if name not in ws:
            raise ValueError(f"{d}: missing tensor {name!r} ({fam.name} layout)")
        used.add(name)
        return name

    def vector(name: str, n: int) -> np.ndarray:
        t = ws.info(need(name))
        if t.dtype not in FLOAT_DTYPES or t.shape != (n,):
            raise ValueError(f"{ws.path(name)}: {name} is {t.dtype}{list(t.shape)}, expected a float tensor of shape [{n}]")
        return to_f32(ws.array(name), t.dtype)

    def table(name: str) -> Table:
        t = ws.info(need(name))
        if t.dtype not in FLOAT_DTYPES or t.shape != (cfg.vocab_size, C):
            raise ValueError(f"{ws.path(name)}: {name} is {t.dtype}{list(t.shape)}; the config says a float tensor "
                             f"of shape [{cfg.vocab_size}, {C}]")
        row_bytes = (t.end - t.begin) // cfg.vocab_size
        return Table(ws.array(name), FLOAT_DTYPES[t.dtype], lambda r0, r1: ws.release(name, r0 * row_bytes, r1 * row_bytes))

    embed = table("model.embed_tokens.weight")
    lm_head = None if cfg.tie_word_embeddings else table("lm_head.weight")
    if cfg.tie_word_embeddings and "lm_head.weight" in ws:
        used.add("lm_head.weight")  # some writers store the tied copy; the embedding wins
    final_norm = vector("model.norm.weight", C)
    norm_files = dict(zip(("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"), fam.sub_norms or ()))
    layer_norms = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        norms = {"input_layernorm": vector(p + "input_layernorm.weight", C),
                 "post_attention_layernorm": vector(p + "post_attention_layernorm.weight", C)}
        for ours, theirs in norm_files.items():
            norms[ours] = vector(p + theirs + ".weight", cfg.intermediate_size if ours == "mlp.ffn_sub_norm" else C)
        if "qk_norm" in ext:
            for name in ("self_attn.q_norm", "self_attn.k_norm"):
                norms[name] = vector(p + name + ".weight", hd)
        layer_norms.append(norms)
    q_out, kv_out = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = {"self_attn.q_proj": (q_out, C), "self_attn.k_proj": (kv_out, C), "self_attn.v_proj": (kv_out, C),
              "self_attn.o_proj": (C, q_out), "mlp.gate_proj": (cfg.intermediate_size, C),
              "mlp.up_proj": (cfg.intermediate_size, C), "mlp.down_proj": (C, cfg.intermediate_size)}
    # every name the linears will read, so that unexpected tensors are caught before any work
    for i in range(cfg.num_hidden_layers):
        for lin in LINEAR_NAMES:
            base = f"model.layers.{i}.{lin}."
            need(base + "weight")
            if fam.weights == "packed":
                need(base + "weight_scale")
            if cfg.use_rms_norm:
                need(base + "rms_norm.weight")
            if "attention_bias" in ext and lin.startswith("self_attn."):
                need(base + "bias")

    def linear(i: int, lin: str) -> TernaryLinear:
        base = f"model.layers.{i}.{lin}."
        wname = base + "weight"
        out_f, in_f = shapes[lin]
        t = ws.info(wname)
        where = ws.path(wname)
        norm = vector(base + "rms_norm.weight", in_f) if cfg.use_rms_norm else None
        if fam.weights == "packed":
            tl = _packed_linear(ws, wname, base + "weight_scale", out_f, in_f, linear_class, norm)
            if "attention_bias" in ext and lin.startswith("self_attn."):
                # stored as transformers' AutoBitLinear applies it, y = (x_q . q + b_stored) * weight_scale:
                # the bias added after the scaling is b_stored * beta
                tl.bias = vector(base + "bias", out_f) * np.float32(tl.beta)
            return tl
        if t.dtype not in FLOAT_DTYPES or t.shape != (out_f, in_f):
            raise ValueError(f"{where}: {wname} is {t.dtype}{list(t.shape)}; the config says a float tensor of shape "
                             f"[{out_f}, {in_f}] ({fam.name} stores float weights)")
        w = to_f32(ws.array(wname), t.dtype)  # (out, in)
        if not np.isfinite(w).all():
            raise ValueError(f"{where}: {wname} has non-finite values")
        if fam.weights == "latent":
            q, beta = absmean_quantize(w)
            row_scale = None
        else:
            scales = row_scales_of_ternary(w, SCALED_RTOL)
            if scales is None and row_scales_of_ternary(w.T, SCALED_RTOL) is not None:
                raise ValueError(f"{where}: {wname} is ternary with one scale per block of input columns; the engine "
                                 "holds one scale per output row (block), not per input column")
            if scales is None:
                raise ValueError(
                    f"{where}: {wname} is not ternary (a row holds more than one nonzero magnitude): {d} is a plain "
                    f"LlamaForCausalLM, not a ternary checkpoint (the engine runs ternary models: BitNet, Falcon3-1.58bit, "
                    f"TriLM, 1bitLLM, ...)")
            q = np.sign(w).astype(np.int8)
            beta, row_scale = 1.0, scales
            if np.all(scales == scales[0]):
                beta, row_scale = float(scales[0]), None
        return TernaryLinear(_pack(where, wname, q), float(beta), row_scale, norm, lambda: ws.release(wname),
                             f"{where}: {wname}")

    def check_unused() -> None:
        unexpected = sorted(n for n in set(ws.where) - used if not n.endswith(_IGNORED_TENSOR_SUFFIXES))
        if unexpected:
            raise ValueError(f"{ws.path(unexpected[0])}: tensors the config does not account for: {unexpected[:5]}"
                             f"{' ...' if len(unexpected) > 5 else ''} ({fam.name} layout; does num_hidden_layers / "
                             "use_rms_norm match the file?)")

    check_unused()
    scaling = cfg.rope_scaling
    notes = [f"{d}: {fam.name} family ({raw.get('architectures', ['?'])[0]}, model_type {raw.get('model_type')}"
             + (f", linear_class {linear_class}" if linear_class else "") + f"), {cfg.hidden_act} FFN"
             + (", sub-norms" if cfg.use_sub_norms else "") + (", RMSNorm inside each linear" if cfg.use_rms_norm else "")
             + (f", rope_scaling {scaling.get('rope_type', scaling.get('type'))}" if scaling else "")]
    return TernaryModel(
        config=cfg, family=fam.name, source=d, embed=embed, lm_head=lm_head, final_norm=final_norm,
        layer_norms=layer_norms, linear=linear, inner_eps=float(inner_eps),
        rope_inv_freq=rope_inv_freq(hd, cfg.rope_theta, scaling) if scaling else None,
        tokenizer=_tokenizer_loader(d / "tokenizer.json"), tokenizer_config=_tokenizer_config(d),
        notes=notes, keep=[ws], check_unused=check_unused, extensions=ext,
    )


def _extensions(path: Path, raw: dict[str, Any], fam: Family) -> list[str]:
    """config.json's ``bitnet_extensions`` (what bitnet distill adds for Qwen2 / Qwen3 students), checked."""
    ext = raw.get("bitnet_extensions") or []
    if not isinstance(ext, list) or any(e not in EXTENSIONS for e in ext):
        raise ValueError(f"{path}: unsupported bitnet_extensions {ext!r} (supported: {list(EXTENSIONS)})")
    if ext and fam.weights != "packed":
        raise ValueError(f"{path}: bitnet_extensions {ext} are read only in the packed 2B4T layout, not the "
                         f"{fam.name} family")
    return list(ext)


def _pack(where: Path, name: str, q: np.ndarray) -> np.ndarray:
    try:
        return pack(q)
    except ValueError as e:
        raise ValueError(f"{where}: {name}: {e}") from None


def _packed_linear(ws: WeightSet, wname: str, sname: str, out_f: int, in_f: int, linear_class: str,
                   norm: np.ndarray | None) -> TernaryLinear:
    t = ws.info(wname)
    where = ws.path(wname)
    if t.dtype == "U8":
        if out_f % 4 or t.shape != (out_f // 4, in_f):
            raise ValueError(f"{where}: {wname} is {t.dtype} of shape {list(t.shape)}; the config says packed U8 of shape "
                             f"[{out_f // 4}, {in_f}]")
        packed = ws.array(wname)
    elif t.dtype in FLOAT_DTYPES and t.shape == (out_f, in_f):
        # transformers' AutoBitLinear also accepts unpacked ternary values in the model dtype
        w = to_f32(ws.array(wname), t.dtype)
        if not np.isin(w, (-1.0, 0.0, 1.0)).all():
            raise ValueError(f"{where}: {wname} is unpacked but not ternary (values outside {{-1, 0, 1}})")
        packed = _pack(where, wname, w.astype(np.int8))
    else:
        raise ValueError(f"{where}: {wname} is {t.dtype} of shape {list(t.shape)}; the config says packed U8 of shape "
                         f"[{out_f // 4}, {in_f}]")
    st = ws.info(sname)
    if st.dtype not in FLOAT_DTYPES or math.prod(st.shape) != 1:
        raise ValueError(f"{ws.path(sname)}: {sname} must be one float, got {st.dtype}{list(st.shape)}")
    stored = float(to_f32(ws.array(sname).reshape(1), st.dtype)[0])
    if not (math.isfinite(stored) and stored > 0):
        raise ValueError(f"{ws.path(sname)}: {sname} = {stored} is not a positive finite scale")
    # One convention inside: multiply. "bitlinear" files store 1/beta and divide by it.
    beta = stored if linear_class == "autobitlinear" else 1.0 / stored
    return TernaryLinear(packed, beta, None, norm, lambda: ws.release(wname), f"{where}: {wname}")


def _tokenizer_loader(path: Path):
    if not path.is_file():
        return None

    def load():
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception type
            raise ValueError(f"{path}: cannot load tokenizer ({e})") from None

    return load


def _tokenizer_config(d: Path) -> dict[str, Any]:
    p, jinja = d / "tokenizer_config.json", d / "chat_template.jinja"
    tc = read_config_json(p) if p.is_file() else {}  # the same checks as config.json: JSON object
    if "chat_template" not in tc and jinja.is_file():  # transformers >= 4.43 may save the template beside it
        tc["chat_template"] = jinja.read_text()
    return tc
