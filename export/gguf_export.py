"""GGUF export for upstream llama.cpp's ``bitnet`` architecture (TQ2_0 / TQ1_0 ternary blocks).

Layout (../shared/FORMATS.md section 3): ``general.architecture = "bitnet"``; tensors
``token_embd`` (F16, also the output head: llama.cpp's bitnet graph is tied), ``output_norm``,
``blk.{i}.{attn_norm, attn_q, attn_k, attn_v, attn_output, attn_sub_norm, ffn_norm, ffn_gate,
ffn_up, ffn_down, ffn_sub_norm}``; norms F32; ternary linears TQ2_0 or TQ1_0. In each 256-weight
block the stored ``d`` is the block's absmax, which for ``q * beta`` is beta (0 for an all-zero
block), so the file holds exactly our ternary codes and beta rounded to fp16.

Fallback types: a TQ block spans 256 inputs, so a linear whose in_features is not a multiple of 256
(every small preset has some) cannot be TQ. llama.cpp's own quantizer (llama-quantize,
``tensor_type_fallback`` in src/llama-quant.cpp) then falls back to a 32-block type, and to F16
when the row is not a multiple of 32 either. It picks Q4_0, whose codes run from -8 to 7 around one
signed block scale, so +beta and -beta cannot both be exact in one block (its own comment: "use a
symmetric type instead"). We take Q5_0 (``d`` fp16, 32 five-bit codes c, value ``d * (c - 16)``),
the smallest 32-block type that holds ternary codes exactly, and store ``c = q + 16`` with ``d`` =
beta: the same values as the TQ blocks (codes exact, beta rounded to fp16). F16 holds ``q * beta``
as +-beta rounded to fp16, again the same values. Each fallback is named in the log (``log``).

Why not Q8_0 (what this exporter wrote before): upstream llama.cpp (as vendored by
llama-cpp-python 0.3.36) repacks Q8_0 weights into its AMX buffer on CPUs with AMX, and its AMX
Q8_0 matrix product (``tinygemm_kernel_amx``, used whenever more than one token goes through a
linear: any prompt of two or more tokens) kills the process: SIGILL (``tilezero``) on a Xeon with
AMX (family 6 model 207), SIGSEGV on this KVM Xeon with AMX. Measured here in subprocesses: every
model with a Q8_0 linear died on a 2-token prompt whatever its shape (in_features 64 to 384, and
256 when Q8_0 was forced), and ran with one token (the VNNI path); the same models with F16 or Q5_0
fallbacks ran; Q8_0 models ran with weight repacking off (``use_extra_bufts = false``, llama.cpp's
``--no-repack``). It is llama.cpp's bug, not the file's: Q5_0 and F16 are not AMX types in ggml, so
the exports avoid it on every CPU.

RoPE order: llama.cpp runs ``bitnet`` with ``LLAMA_ROPE_TYPE_NEOX`` (rotate-half, pairs offset by
head_dim/2), which is the order transformers and our model use, so Q/K rows are written as they are.
(The Llama converter's permutation applies to ``LLAMA_ROPE_TYPE_NORM`` architectures only;
:func:`llama_rope_permute` is kept beside it as the reference for those, and the llama.cpp test
pins which one ``bitnet`` needs.)

We write the GGUF ourselves with the ``gguf`` package because llama.cpp's converter
(convert_hf_to_gguf.py) is not a package, divides every ``weight_scale`` (wrong for autobitlinear
checkpoints) and has no TQ1_0/TQ2_0 path for pre-packed weights.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bitnet.deps import require
from bitnet.io import atomic_path
from bitnet.model import BitNetForCausalLM
from bitnet.quant import weight_quant

from .hf import _check_exportable

__all__ = ["export_gguf", "RELU2_WARNING", "GGUF_TYPES", "gguf_tensor_names", "gguf_weight_type", "llama_rope_permute",
           "gguf_vocab"]

EMBED_DTYPE = np.float16  # token_embd as llama.cpp's converter writes it (also the output head)
BLOCK = 256  # weights per TQ1_0 / TQ2_0 block
FALLBACK_BLOCK = 32  # weights per Q5_0 block, the fallback for rows that are not whole TQ blocks
RELU2_WARNING = (
    "upstream llama.cpp's bitnet graph (src/models/bitnet.cpp) always computes a SiLU-gated FFN "
    "(silu(gate) * up), but this model's hidden_act is 'relu2' (relu(gate)^2 * up): llama.cpp will run "
    "this GGUF with the wrong activation and its outputs will not match the model"
)
GGUF_TYPES = ("tq2_0", "tq1_0")

# our (= transformers') module names inside a decoder layer -> llama.cpp bitnet tensor kinds
_LAYER_TENSORS = {
    "input_layernorm": "ATTN_NORM",
    "self_attn.q_proj": "ATTN_Q",
    "self_attn.k_proj": "ATTN_K",
    "self_attn.v_proj": "ATTN_V",
    "self_attn.o_proj": "ATTN_OUT",
    "self_attn.attn_sub_norm": "ATTN_SUB_NORM",
    "post_attention_layernorm": "FFN_NORM",
    "mlp.gate_proj": "FFN_GATE",
    "mlp.up_proj": "FFN_UP",
    "mlp.down_proj": "FFN_DOWN",
    "mlp.ffn_sub_norm": "FFN_SUB_NORM",
}


def gguf_tensor_names(n_layers: int) -> dict[str, str]:
    """Our parameter name (``...weight``) -> llama.cpp bitnet GGUF tensor name (``...weight``)."""
    gguf = require("gguf", "GGUF export")

    names = {
        "model.embed_tokens.weight": gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight",
        "model.norm.weight": gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT_NORM] + ".weight",
    }
    for i in range(n_layers):
        for ours, kind in _LAYER_TENSORS.items():
            names[f"model.layers.{i}.{ours}.weight"] = (
                gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[kind]].format(bid=i) + ".weight"
            )
    return names


def gguf_weight_type(in_features: int, qtype: str) -> str:
    """The GGUF type of a ternary linear with ``in_features`` inputs: ``qtype`` (a TQ type) when the
    rows are whole 256-weight blocks, else ``"q5_0"`` when they are whole 32-weight blocks, else
    ``"f16"`` (llama-quantize's rule, with Q5_0 for its Q4_0: see the module docstring)."""
    if in_features % BLOCK == 0:
        return qtype
    return "q5_0" if in_features % FALLBACK_BLOCK == 0 else "f16"


def _ternary_q5_0(q: np.ndarray, beta: float) -> np.ndarray:
    """Q5_0 blocks holding ``q * beta`` exactly as TQ does: ``d`` = beta in fp16 (0 for an all-zero
    block, as TQ's absmax), five-bit codes ``c = q + 16`` in {15, 16, 17} (value ``d * (c - 16)``).

    q (out, in) int8, in a multiple of 32 -> (out, in / 32 * 22) uint8; each block is ggml's
    ``block_q5_0``: ``d`` (fp16, little-endian), ``qh`` (uint32, bit j = bit 4 of code j), ``qs``
    (16 bytes: the low nibble of byte j is code j's low 4 bits, the high nibble code j + 16's).
    """
    out_f, in_f = q.shape
    c = (q.astype(np.int16) + 16).astype(np.uint8).reshape(out_f, in_f // FALLBACK_BLOCK, FALLBACK_BLOCK)  # (out, nb, 32)
    nonzero = np.any(c != 16, axis=-1, keepdims=True)
    d = np.where(nonzero, np.float16(beta), np.float16(0)).astype("<f2")  # (out, nb, 1)
    qh = ((c >> 4).astype(np.uint32) << np.arange(32, dtype=np.uint32)).sum(-1, dtype=np.uint32)  # (out, nb)
    qs = (c[..., :16] & 15) | ((c[..., 16:] & 15) << 4)  # (out, nb, 16)
    blocks = np.concatenate([d.view(np.uint8), qh.astype("<u4")[..., None].view(np.uint8), qs], axis=-1)  # (out, nb, 22)
    return np.ascontiguousarray(blocks.reshape(out_f, -1))


def _fallback_lines(fallbacks: list[tuple[str, int, str]], qtype: str) -> list[str]:
    """One log line per (in_features, type) group: which tensors left ``qtype`` for a fallback type."""
    groups: dict[tuple[int, str], list[str]] = {}
    for name, in_f, t in fallbacks:
        groups.setdefault((in_f, t), []).append(name)
    lines = []
    for (in_f, t), names in groups.items():
        kinds = list(dict.fromkeys(re.sub(r"^blk\.\d+\.", "blk.*.", n) for n in names))
        why = ("ternary codes exact, beta in fp16 as in " + qtype) if t == "q5_0" else "+-beta in fp16, exact as in " + qtype
        lines.append(f"gguf: {len(names)} tensor(s) with in_features={in_f} (not a multiple of the {BLOCK}-weight "
                     f"{qtype} block) written as {t} ({why}): {', '.join(kinds)}")
    return lines


def llama_rope_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a Q/K weight from rotate-half (NEOX) order to interleaved-pair (NORM) order.

    w (n_heads * hd, in) -> same shape; within each head, row ``j`` and ``j + hd/2`` become rows
    ``2j`` and ``2j + 1``. This is what llama.cpp's Llama converter does for NORM-rope architectures.
    """
    out_f, in_f = w.shape
    hd = out_f // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_f).transpose(1, 2).reshape(out_f, in_f)


def _pre_tokenizer_kind(tok_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE ``tokenizer.json``.

    Raises:
        ValueError: a pre-tokenizer llama.cpp has no equivalent for.
    """
    pre = tok_json.get("pre_tokenizer") or {}
    if pre.get("add_prefix_space"):
        raise ValueError("tokenizer adds a prefix space; llama.cpp's BPE pre-tokenizers do not, so token ids would differ")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # ByteLevel's built-in regex is GPT-2's
    if pre.get("type") == "Sequence":
        regexes = [p.get("pattern", {}).get("Regex", "") for p in pre.get("pretokenizers", []) if p.get("type") == "Split"]
        if any("\\p{N}{1,3}" in r for r in regexes):
            return "llama-bpe"  # Llama-3's split (digits in groups of up to three)
    raise ValueError(
        f"tokenizer pre-tokenizer {json.dumps(pre)[:200]} has no llama.cpp equivalent "
        "(supported: ByteLevel with its GPT-2 regex, Llama-3's Split + ByteLevel)"
    )


def gguf_vocab(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Tokens, types, merges and ``pre`` for a byte-level BPE tokenizer, padded to ``vocab_size``.

    Returns:
        dict with ``tokens`` (list[str], length vocab_size), ``types`` (list[int], gguf.TokenType),
        ``merges`` (list[str] "a b"), ``pre`` (str).

    Raises:
        ValueError: not a BPE tokenizer, more tokens than ``vocab_size``, or unknown pre-tokenizer.
    """
    gguf = require("gguf", "GGUF export")
    from tokenizers import Tokenizer

    if isinstance(tokenizer, (str, Path)):
        path = Path(tokenizer)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file missing")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
    elif hasattr(tokenizer, "backend_tokenizer"):  # transformers fast tokenizer
        tokenizer = tokenizer.backend_tokenizer
    tok_json = json.loads(tokenizer.to_str())
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF export supports byte-level BPE tokenizers, got model type {model.get('type')!r}")
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ValueError(f"tokenizer has {len(vocab)} tokens (max id {max(vocab.values())}) but the model's vocab_size is {vocab_size}")
    special = {t["id"] for t in tok_json.get("added_tokens", []) if t.get("special")}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": _pre_tokenizer_kind(tok_json)}


def export_gguf(
    model: BitNetForCausalLM,
    path: str | Path,
    tokenizer: Any,
    qtype: str = "tq2_0",
    *,
    allow_relu2: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Atomically write ``model`` as a GGUF for upstream llama.cpp's ``bitnet`` architecture.

    Args:
        model: a fully ternary, tied, sub-norm ``BitNetForCausalLM``; ``hidden_act`` ``silu`` runs
            exactly in llama.cpp. Linears whose in_features is not a multiple of 256 (the TQ block)
            are written in a fallback type (:func:`gguf_weight_type`) holding the same values.
        path: the ``.gguf`` file; replaced on success, untouched on failure.
        tokenizer: a byte-level BPE ``tokenizers.Tokenizer``, transformers fast tokenizer, or a
            ``tokenizer.json`` path (llama.cpp needs the vocabulary in the file).
        qtype: ``"tq2_0"`` (2.0625 bits/weight) or ``"tq1_0"`` (1.6875 bits/weight).
        allow_relu2: write a ``relu2`` model anyway, with :data:`RELU2_WARNING` as a warning.
        progress: show a tqdm bar while quantizing.
        log: called with one line per group of tensors written in a fallback type (the CLI prints them).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: unknown qtype; relu2 without ``allow_relu2``; untied head or no sub-norms;
        non-finite weights; missing or unsupported tokenizer.
        bitnet.deps.MissingDependencyError: the ``gguf`` package is not installed (one line naming it).
    """
    gguf = require("gguf", "GGUF export")

    path = Path(path)
    if qtype not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {qtype!r}; choose one of {GGUF_TYPES}")
    if tokenizer is None:
        raise ValueError(f"{path}: a GGUF needs the tokenizer (llama.cpp reads the vocabulary from the file); none given")
    _check_exportable(model)
    cfg = model.config
    if cfg.hidden_act == "relu2":
        if not allow_relu2:
            raise ValueError(RELU2_WARNING + "; pass allow_relu2=True (CLI: --allow-relu2) to write it anyway")
        warnings.warn(RELU2_WARNING, stacklevel=2)
    if not cfg.tie_word_embeddings:
        raise ValueError("llama.cpp's bitnet graph uses token_embd as the output head: only tied models can be exported")
    if not cfg.use_sub_norms or cfg.use_rms_norm:
        raise ValueError("llama.cpp's bitnet graph needs the BitNet sub-norm layout (use_sub_norms=True, use_rms_norm=False)")
    vocab = gguf_vocab(tokenizer, cfg.vocab_size)
    ftype = gguf.LlamaFileType.MOSTLY_TQ2_0 if qtype == "tq2_0" else gguf.LlamaFileType.MOSTLY_TQ1_0
    names = gguf_tensor_names(cfg.num_hidden_layers)
    linears = {n + ".weight" for n, m in model.named_modules() if type(m).__name__ == "BitLinear"}

    tensors: list[tuple[str, np.ndarray, Any]] = []  # (gguf name, data, raw dtype or None)
    fallbacks: list[tuple[str, int, str]] = []  # (gguf name, in_features, type) of non-TQ ternary linears
    for key, value in tqdm(model.state_dict().items(), desc=qtype, unit="tensor", disable=not progress):
        if key == "lm_head.weight":
            continue  # tied: token_embd is the head
        if key not in names:
            raise ValueError(f"tensor {key!r} has no llama.cpp bitnet equivalent")
        w = value.detach().float().cpu()
        if not torch.isfinite(w).all():
            raise ValueError(f"tensor {key!r} has non-finite values (NaN or inf): cannot export it")
        if key in linears:
            q, beta = weight_quant(w)  # (out, in) int8, () fp32
            wtype = gguf_weight_type(w.shape[1], qtype)
            if wtype == qtype:
                qt = gguf.GGMLQuantizationType[qtype.upper()]
                ternary = (q.float() * beta).numpy()  # (out, in): every block's absmax is beta (or 0)
                tensors.append((names[key], gguf.quants.quantize(ternary, qt), qt))
                continue
            fallbacks.append((names[key], w.shape[1], wtype))
            if wtype == "q5_0":
                tensors.append((names[key], _ternary_q5_0(q.numpy(), beta.item()), gguf.GGMLQuantizationType.Q5_0))
            else:  # q in {-1, 0, 1}: the product is +-fp16(beta) or 0, exact
                tensors.append((names[key], q.numpy().astype(np.float16) * np.float16(beta.item()), None))
        elif key == "model.embed_tokens.weight":
            tensors.append((names[key], w.numpy().astype(EMBED_DTYPE), None))
        else:
            tensors.append((names[key], w.numpy().astype(np.float32), None))

    if log is not None:
        for line in _fallback_lines(fallbacks, qtype):
            log(line)
    # Write next to the target and rename: a reader never sees a half-written GGUF.
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BITNET])
        w.add_name("bitnet")
        w.add_file_type(int(ftype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads)
        w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_string("bitnet.export.scale_convention",
                     "TQ block d = beta (absmax of q * beta); Q5_0 fallback d = beta with codes q + 16; multiply")
        w.add_string("bitnet.export.hidden_act", cfg.hidden_act)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab["pre"])
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        if cfg.bos_token_id is not None:
            w.add_bos_token_id(cfg.bos_token_id)
        if cfg.eos_token_id is not None:
            w.add_eos_token_id(cfg.eos_token_id)
        if cfg.pad_token_id is not None:
            w.add_pad_token_id(cfg.pad_token_id)
        w.add_add_bos_token(False)  # callers pass token ids; do not prepend silently
        for name, data, raw in tensors:
            w.add_tensor(name, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
        w.close()
    return path
