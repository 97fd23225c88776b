"""Our own model directory: the latent (full-precision) weights plus everything needed to rebuild.

A *model directory* holds
  - ``bitnet_config.json``: ``BitNetConfig.to_dict()``;
  - ``model.safetensors``: the state dict (float, our = transformers' key names; a tied
    ``lm_head.weight`` is not stored) with metadata ``{"format": "bitnet-latent"}``;
  - ``tokenizer.json`` when a tokenizer is known;
  - any extra files the caller adds (resolved training YAML, git revision).
Training checkpoints contain one (``<checkpoint>/model``); exporters read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_dir
from .model import BitNetConfig, BitNetForCausalLM

__all__ = ["CONFIG_FILE", "MODEL_FILE", "TOKENIZER_FILE", "save_model_dir", "load_model_dir", "find_model_dir"]

CONFIG_FILE = "bitnet_config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def save_model_dir(
    model: BitNetForCausalLM,
    out_dir: str | Path,
    tokenizer: Any = None,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Atomically write ``model`` (and optional tokenizer / extra files) as a model directory.

    ``tokenizer``: a ``tokenizers.Tokenizer``, a transformers fast tokenizer, or a path to a
    ``tokenizer.json``.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        save_file(sd, str(tmp / MODEL_FILE), metadata={"format": "bitnet-latent"})
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp / TOKENIZER_FILE)
        for name, content in (extra_files or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (target.write_bytes if isinstance(content, bytes) else target.write_text)(content)
    return out_dir


def save_tokenizer(tokenizer: Any, path: Path) -> None:
    """Write a tokenizer's ``tokenizer.json`` to ``path`` (Tokenizer, HF fast tokenizer or a file path)."""
    if isinstance(tokenizer, (str, Path)):
        shutil.copyfile(tokenizer, path)
    elif hasattr(tokenizer, "backend_tokenizer"):  # transformers PreTrainedTokenizerFast
        tokenizer.backend_tokenizer.save(str(path))
    elif hasattr(tokenizer, "to_str"):  # tokenizers.Tokenizer
        path.write_text(tokenizer.to_str())
    else:
        raise ValueError(f"cannot save tokenizer of type {type(tokenizer).__name__}; "
                         "pass a tokenizers.Tokenizer, a transformers fast tokenizer or a tokenizer.json path")


def find_model_dir(path: str | Path) -> Path:
    """Resolve a model directory from itself, a checkpoint (``<ckpt>/model``) or a run directory
    (its newest ``checkpoints/*/model``).

    Raises:
        FileNotFoundError: naming ``path`` when none is found.
    """
    p = Path(path)
    if (p / CONFIG_FILE).is_file():
        return p
    if (p / "model" / CONFIG_FILE).is_file():
        return p / "model"
    ckpts = list((p / "checkpoints").glob("*/model/" + CONFIG_FILE)) if (p / "checkpoints").is_dir() else []
    # Hidden folders are atomic_dir's unfinished writes (e.g. a save killed before its rename).
    ckpts = [c for c in ckpts if not c.parent.parent.name.startswith(".")]
    if ckpts:
        return max(ckpts, key=lambda c: _step_of(c.parent.parent.name)).parent
    raise FileNotFoundError(f"{p}: not a bitnet model directory, checkpoint or run (no {CONFIG_FILE} found)")


def _step_of(name: str) -> tuple[int, str]:
    """Sort key of a checkpoint folder: its trailing step number (``step_10`` after ``step_9``)."""
    digits = "".join(ch for ch in name.rsplit("_", 1)[-1] if ch.isdigit())
    return (int(digits) if digits else -1, name)


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> BitNetForCausalLM:
    """Load a model directory (see :func:`find_model_dir` for what ``path`` may be).

    Raises:
        FileNotFoundError / ValueError: naming the file and the tensor that is missing or wrong.
    """
    d = find_model_dir(path)
    cfg_path = d / CONFIG_FILE
    try:
        cfg = BitNetConfig.from_dict(json.loads(cfg_path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    model = BitNetForCausalLM(cfg)
    weights = d / MODEL_FILE
    try:
        sd = load_file(str(weights), device=str(device))
    except FileNotFoundError:
        raise FileNotFoundError(f"{weights}: missing") from None
    except Exception as e:  # safetensors raises its own error type for corrupt files
        raise ValueError(f"{weights}: cannot read safetensors ({e})") from None
    expected = model.state_dict()
    for k, v in sd.items():
        if k not in expected:
            raise ValueError(f"{weights}: unexpected tensor {k!r}")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{weights}: tensor {k!r} has shape {tuple(v.shape)}, config expects {tuple(expected[k].shape)}")
    missing = [k for k in expected if k not in sd and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing:
        raise ValueError(f"{weights}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(sd, strict=False)
    model.tie_weights()
    return model.to(device)
