"""transformers' packed ``bitnet`` layout: export our model to it, and import every official layout.

Written layout (what microsoft/bitnet-b1.58-2B-4T ships; ../shared/FORMATS.md section 2):

- ``config.json``: every ``BitNetConfig`` field plus ``quantization_config`` with
  ``linear_class: autobitlinear`` and ``quantization_mode: offline``;
- ``model.safetensors`` (or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``
  above ``max_shard_size``): each ternary linear ``<m>.weight`` as uint8 ``(out/4, in)`` packed by
  :func:`bitnet.quant.pack_ternary`, ``<m>.weight_scale`` = beta (shape ``(1,)``, bf16, outputs are
  *multiplied* by it); embeddings, norms and an untied ``lm_head`` in bf16;
- ``tokenizer.json``, ``tokenizer_config.json``, ``generation_config.json``.

Read layouts (:func:`load_hf_dir`): the packed ``autobitlinear`` layout above, transformers' packed
``bitlinear`` layout (stored scale = 1/beta, outputs divided; Llama architecture with
``use_rms_norm`` as in Falcon3-*-1.58bit), and ``online`` bf16 master weights (2B4T ``-bf16``).

Inside the codebase scales are multiplied; the inverse convention is converted here, at the file
boundary, and nowhere else.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from bitnet.checkpoint import CONFIG_FILE as LATENT_CONFIG_FILE
from bitnet.checkpoint import load_model_dir, save_tokenizer
import numpy as np

from bitnet.formats import LINEAR_NAMES
from bitnet.io import atomic_dir
from bitnet.layers import BitLinear
from bitnet.model import BitNetConfig, BitNetForCausalLM
from bitnet.quant import pack_ternary, unpack_ternary, weight_quant
from bitnet.safetensors_header import read_header

__all__ = [
    "FORMAT_NAME",
    "DEFAULT_MAX_SHARD_SIZE",
    "export_hf",
    "packed_state_dict",
    "load_hf_dir",
    "load_model",
    "read_safetensors",
    "ternary_linear_names",
    "model_from_description",
]

FORMAT_NAME = "bitnet-b1.58-packed"  # safetensors metadata "bitnet_format"
PACKING = "transformers-bitnet-offline: uint8 (out/4, in); bits 2i..2i+1 of [r, c] = q[i*out/4 + r, c] + 1"
SCALE_CONVENTION_MULTIPLY = "multiply: y = (x_q . q) * weight_scale / s_x; weight_scale = beta = mean|W|"
DEFAULT_MAX_SHARD_SIZE = 5 * 1000**3  # bytes per safetensors shard: transformers' historical "5GB"
EXPORT_DTYPE = torch.bfloat16  # embeddings, norms, scales: the dtype 2B4T ships
CONFIG_JSON = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_JSON = "tokenizer.json"


# --------------------------------------------------------------------------------------------- export
def ternary_linear_names(model: BitNetForCausalLM) -> list[str]:
    """Module names of the ternary linears (those exported packed), e.g. ``model.layers.0.mlp.up_proj``."""
    return [name for name, m in model.named_modules() if isinstance(m, BitLinear)]


def _check_exportable(model: BitNetForCausalLM) -> None:
    if not isinstance(model, BitNetForCausalLM):
        raise ValueError(f"expected a bitnet.BitNetForCausalLM, got {type(model).__name__}")
    if model.config.linear_type != "bitlinear":
        raise ValueError(
            f"model has linear_type={model.config.linear_type!r}: only ternary ('bitlinear') models "
            "can be exported to a packed ternary layout"
        )
    for name, m in model.named_modules():
        if isinstance(m, BitLinear) and m.lambda_ != 1.0:
            raise ValueError(
                f"{name}: lambda_={m.lambda_} (partially quantized); a packed export holds the fully "
                "ternary model, so finish the lambda schedule (set_lambda(model, 1.0)) first"
            )


def packed_state_dict(model: BitNetForCausalLM, progress: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of the packed export, by transformers' names (CPU, contiguous).

    Every ternary linear ``<m>.weight`` (out, in) float becomes uint8 ``(out/4, in)`` and
    ``<m>.weight_scale`` ``(1,)`` bf16 = beta; every other tensor is cast to bf16. A tied
    ``lm_head.weight`` is left out (transformers re-ties it).

    Raises:
        ValueError: naming the tensor, if a weight is not finite (it has no ternary quantization) or
        cannot be packed (out not a multiple of 4); or if the model is not fully ternary.
    """
    _check_exportable(model)
    linears = set(ternary_linear_names(model))
    out: dict[str, torch.Tensor] = {}
    for key, value in tqdm(model.state_dict().items(), desc="packing", unit="tensor", disable=not progress):
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        w = value.detach().cpu()
        if not torch.isfinite(w).all():
            raise ValueError(f"tensor {key!r} has non-finite values (NaN or inf): cannot export it")
        module, _, leaf = key.rpartition(".")
        if module in linears and leaf == "weight":
            q, beta = weight_quant(w)  # (out, in) int8 in {-1,0,1}, () float32
            try:
                out[key] = pack_ternary(q)  # (out/4, in) uint8
            except ValueError as e:
                raise ValueError(f"tensor {key!r}: {e}") from None
            out[f"{module}.weight_scale"] = beta.reshape(1).to(EXPORT_DTYPE)  # (1,)
        else:
            out[key] = w.to(EXPORT_DTYPE).contiguous()
    return out


def _quantization_config(model: BitNetForCausalLM) -> dict[str, Any]:
    cfg = model.config
    # the in-linear norms' eps (an imported checkpoint may carry one that differs from the model's)
    eps = next((m.rms_norm.variance_epsilon for m in model.modules() if isinstance(m, BitLinear) and m.rms_norm is not None),
               cfg.rms_norm_eps)
    return {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "offline",
        "use_rms_norm": cfg.use_rms_norm,
        "rms_norm_eps": eps,
        "modules_to_not_convert": ["lm_head"],
    }


def _tokenizer_files(tokenizer: Any, tmp: Path, cfg: BitNetConfig) -> None:
    """tokenizer.json + a tokenizer_config.json that lets transformers' AutoTokenizer load it."""
    save_tokenizer(tokenizer, tmp / TOKENIZER_JSON)
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tmp / TOKENIZER_JSON))
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
        source = tokenizer if isinstance(tokenizer, (str, Path)) else "tokenizer"
        raise ValueError(f"{source}: not a valid tokenizer.json ({e})") from None
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    if n_tok > cfg.vocab_size:
        raise ValueError(f"tokenizer has {n_tok} tokens but the model's vocab_size is {cfg.vocab_size}")

    def token(i: int | None) -> str | None:
        return None if i is None else tok.id_to_token(i)

    tc: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
    }
    for field, i in (("bos_token", cfg.bos_token_id), ("eos_token", cfg.eos_token_id), ("pad_token", cfg.pad_token_id)):
        if token(i) is not None:
            tc[field] = token(i)
    (tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")


def export_hf(
    model: BitNetForCausalLM,
    out_dir: str | Path,
    tokenizer: Any = None,
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    progress: bool = False,
) -> Path:
    """Atomically write ``model`` in transformers' packed ``autobitlinear`` layout (see module doc).

    Args:
        model: a fully ternary ``BitNetForCausalLM`` (any device; weights are read, not changed).
        out_dir: the export directory; replaced whole on success, untouched on failure.
        tokenizer: a ``tokenizers.Tokenizer``, a transformers fast tokenizer or a ``tokenizer.json``
            path; ``None`` writes a weights-only export (with a warning: transformers' pipelines and
            ``bitnet generate`` need a tokenizer).
        max_shard_size: bytes per safetensors file; above it the export is sharded with
            ``model.safetensors.index.json``, as transformers does.
        progress: show a tqdm bar while packing.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: non-ternary / non-finite weights, a partially quantized model, a tokenizer larger
        than the vocabulary; nothing is written.
    """
    from huggingface_hub import split_torch_state_dict_into_shards

    out_dir = Path(out_dir)
    cfg = model.config
    tensors = packed_state_dict(model, progress)
    hf_config = cfg.to_hf_dict(dtype="bfloat16")
    hf_config["quantization_config"] = _quantization_config(model)
    metadata = {
        "format": "pt",  # transformers refuses safetensors files without it
        "bitnet_format": FORMAT_NAME,
        "packing": PACKING,
        "weight_scale": SCALE_CONVENTION_MULTIPLY,
        "linear_class": "autobitlinear",
    }
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    if tokenizer is None:
        warnings.warn(f"export_hf: no tokenizer given; {out_dir} holds weights and config only", stacklevel=2)
    with atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_JSON).write_text(json.dumps(hf_config, indent=2) + "\n")
        for filename, names in split.filename_to_tensors.items():
            save_file({n: tensors[n] for n in names}, str(tmp / filename), metadata=metadata)
        if split.is_sharded:
            index = {"metadata": {**split.metadata, **metadata}, "weight_map": split.tensor_to_filename}
            (tmp / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        gen = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(cfg, k) is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer is not None:
            _tokenizer_files(tokenizer, tmp, cfg)
    return out_dir


# --------------------------------------------------------------------------------------------- import
def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor of one safetensors file after validating its header.

    Returns:
        ``(tensors, metadata)``.

    Raises:
        FileNotFoundError: the file is missing. ValueError: truncated or corrupt, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    read_header(path)  # one clear line naming the file and tensor for truncated / lying headers
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"{path}: cannot read safetensors ({e})") from None


def _latent_from_packed(packed: torch.Tensor, scale: float, out_features: int) -> torch.Tensor:
    """A latent float weight whose absmean quantization gives back exactly ``(q, beta = scale)``.

    ``q * beta`` alone would not do: its absmean is ``beta * mean|q|``, not ``beta``. Scaling by
    ``1 / mean|q|`` restores beta, and ``round(q / mean|q|)`` clamps back to q because mean|q| <= 1.
    """
    q = unpack_ternary(packed, out_features).float()  # (out, in)
    frac = q.abs().mean()
    if frac == 0:
        return torch.zeros_like(q)
    return q * (scale / frac)  # (out, in)


def model_from_description(desc: Any) -> BitNetForCausalLM:
    """Our (trainable) PyTorch model from a :class:`bitnet.formats.TernaryModel`: packed linears
    become latent weights that re-quantize to exactly the described ternary values and scales.

    Raises:
        ValueError: a linear with per-row-block scales (TriLM): BitLinear holds one scale per tensor;
        a model with ``bitnet_extensions`` (bitnet distill's Qwen2 / Qwen3 students), which the
        engine runs but this model does not express.
    """
    import copy

    if desc.extensions:
        raise ValueError(f"{desc.source}: bitnet_extensions {desc.extensions} (a bitnet distill student of a "
                         "Qwen2/Qwen3 teacher) run in the C++ engine only; load_model and the GGUF export do not "
                         "express them")
    cfg = copy.deepcopy(desc.config)
    cfg.linear_type = "bitlinear"
    with torch.device("meta"):  # no random init: every tensor comes from the description
        model = BitNetForCausalLM(cfg)
    if cfg.use_rms_norm and desc.inner_eps != cfg.rms_norm_eps:
        # transformers' in-linear RMSNorm uses the quantization_config's eps, not the model's.
        for name in ternary_linear_names(model):
            model.get_submodule(name).rms_norm.variance_epsilon = float(desc.inner_eps)
        cfg.extra["linear_rms_norm_eps"] = float(desc.inner_eps)

    def t(a: Any) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32))

    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": t(desc.embed.to_f32()), "model.norm.weight": t(desc.final_norm)}
    if desc.lm_head is not None:
        sd["lm_head.weight"] = t(desc.lm_head.to_f32())
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for name, w in desc.layer_norms[i].items():
            sd[p + name + ".weight"] = t(w)
        for lin in LINEAR_NAMES:
            tl = desc.linear(i, lin)
            if tl.row_scale is not None:
                raise ValueError(f"{desc.source}: {p}{lin} has one scale per row block ({desc.family}); the PyTorch "
                                 "model holds one scale per tensor: run this model with the engine (bitnet generate, Engine)")
            packed = torch.from_numpy(np.array(tl.packed))
            try:
                sd[p + lin + ".weight"] = _latent_from_packed(packed, tl.beta, packed.shape[0] * 4)
            except ValueError as e:
                raise ValueError(f"{tl.where or p + lin}: {e}") from None
            if tl.norm is not None:
                sd[p + lin + ".rms_norm.weight"] = t(tl.norm)
    for k, v in sd.items():
        if not torch.isfinite(v).all():
            raise ValueError(f"{desc.source}: tensor {k!r} has non-finite values")
    model.load_state_dict(sd, strict=False, assign=True)  # the tied lm_head is the only key left out
    model.tie_weights()
    still_meta = [n for n, v in model.state_dict().items() if v.is_meta]
    if still_meta:  # cannot happen for a complete description; guards the meta-device construction above
        raise ValueError(f"{desc.source}: tensors not loaded: {still_meta[:5]}")
    return model


def load_hf_dir(path: str | Path, device: str | torch.device = "cpu") -> BitNetForCausalLM:
    """Load a transformers-layout ternary checkpoint directory (any family
    :mod:`bitnet.formats.hf` reads) or a GGUF file into our (trainable) model, in eval mode.

    Raises:
        FileNotFoundError: no config.json / weights. ValueError: naming the file and the tensor
        that is missing, unexpected, of the wrong shape or dtype, or not ternary.
    """
    from bitnet.formats import read_model

    return model_from_description(read_model(path)).to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> BitNetForCausalLM:
    """Load any model this project reads, in eval mode.

    ``path`` may be a transformers-layout directory (our packed export, transformers-written
    ``bitlinear`` / ``autobitlinear`` packed checkpoints, ``online`` bf16 checkpoints) or anything
    :func:`bitnet.checkpoint.find_model_dir` accepts (a model directory, a training checkpoint, a
    run directory).

    Raises:
        FileNotFoundError / ValueError: naming the file and tensor at fault.
    """
    from bitnet.formats import resolve_model

    p = resolve_model(path)
    if p.is_file() or ((p / CONFIG_JSON).is_file() and not (p / LATENT_CONFIG_FILE).is_file()):
        return load_hf_dir(p, device)
    return load_model_dir(p, device).eval()
