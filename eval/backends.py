"""Scoring backends for the lm-eval adapter: one tiny interface, a fast engine and a slow reference.

A backend turns token ids into next-token logits::

    backend.logits(token_ids, start=0, reuse_cache=False) -> np.ndarray float32 (T - start, vocab)

Row ``j`` holds the logits at position ``start + j`` (they predict token ``start + j + 1``).
``reuse_cache=True`` lets a backend keep the key/value entries of its previous call for the first
``min(LCP, start)`` positions (LCP = longest common prefix of the two token lists) and compute only
the rest; the returned rows must not depend on it.

- :class:`EngineBackend`: the C++ engine (``bitnet.inference.Engine``), the default.
- :class:`TorchBackend`: our PyTorch model, recomputing the whole sequence on every call. It is the
  readable twin the engine is tested against (STYLE.md: every fast path has a reference).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

__all__ = [
    "Backend",
    "TorchBackend",
    "EngineBackend",
    "BACKENDS",
    "load_backend",
    "load_tokenizer",
    "read_model_config",
    "common_prefix_len",
]

BACKENDS = ("engine", "torch")


class Backend(Protocol):
    """What the lm-eval adapter and the perplexity loop need from a model."""

    vocab_size: int
    max_length: int

    def logits(self, token_ids: Sequence[int], *, start: int = 0, reuse_cache: bool = False) -> np.ndarray:
        """token_ids (T,) -> float32 logits (T - start, vocab) for positions start..T-1."""
        ...

    def reset(self) -> None:
        """Forget any cached key/value entries."""
        ...


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """The model's config as a dict: transformers' ``config.json`` of an export, else our
    ``bitnet_config.json`` (a training model directory).

    Raises:
        FileNotFoundError: ``model_dir`` is not a directory or holds neither file.
        ValueError: the file is not valid JSON.
    """
    from bitnet.formats import read_model, resolve_model

    d = resolve_model(model_dir)  # a local path, or a hub id fetched into (or found in) the hub cache
    if d.is_file():  # a GGUF file: its config as transformers would write it
        return read_model(d).config.to_hf_dict()
    for name in ("config.json", "bitnet_config.json"):
        p = d / name
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: not valid JSON ({e})") from None
    raise FileNotFoundError(f"{d}: no config.json (an export) or bitnet_config.json (a model directory)")


def load_tokenizer(model_dir: str | Path):
    """The ``tokenizers.Tokenizer`` stored as ``MODEL_DIR/tokenizer.json``.

    Raises:
        FileNotFoundError: the model directory has no tokenizer.json.
        ValueError: the file cannot be parsed as a tokenizer.
    """
    from tokenizers import Tokenizer

    from bitnet.formats import read_model, resolve_model

    d = resolve_model(model_dir)
    if d.is_file():  # a GGUF file: the tokenizer built from its own vocabulary
        tok = read_model(d).tokenizer
        if tok is None:
            raise FileNotFoundError(f"{d}: the GGUF holds no tokenizer; evaluation needs one")
        return tok()
    p = d / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"{Path(model_dir)}: model directory has no tokenizer.json; evaluation needs the tokenizer "
            "the model was trained with (export with a tokenizer)"
        )
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"{p}: cannot read tokenizer ({e})") from None


class TorchBackend:
    """Reference backend: our PyTorch model in float32, full recompute on every call (no KV cache).

    ``reuse_cache`` is accepted and ignored: recomputing everything gives, by definition, the rows
    a correct cache must give.
    """

    def __init__(self, model: Any, max_length: int | None = None) -> None:
        import torch

        self.model = model.float().eval()
        self.vocab_size = int(model.config.vocab_size)
        self.max_length = int(max_length or model.config.max_position_embeddings)
        self._torch = torch

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "TorchBackend":
        """Load an export (``config.json``) or a training model directory (``bitnet_config.json``)."""
        from bitnet.formats import resolve_model

        d = resolve_model(model_dir)
        if d.is_file() or (d / "config.json").is_file():
            from bitnet.export import load_model  # the export's reader: packed ternary -> our model

            return cls(load_model(d))
        from bitnet.checkpoint import load_model_dir

        return cls(load_model_dir(d))

    def logits(self, token_ids: Sequence[int], *, start: int = 0, reuse_cache: bool = False) -> np.ndarray:
        torch = self._torch
        T = len(token_ids)
        if not 0 <= start < T:
            raise ValueError(f"start={start} must be in [0, {T}) for {T} tokens")
        ids = torch.tensor([list(token_ids)], dtype=torch.long)  # (1, T)
        with torch.no_grad():
            out = self.model(ids)[0, start:]  # (T - start, V)
        return out.float().numpy()

    def reset(self) -> None:
        pass


# Scoring wants the exact output head: the engine's int8 head changes logits slightly (its "auto"
# default, chosen for decode speed), which would blur agreement with transformers.
DEFAULT_ENGINE_HEAD = "f16"


class EngineBackend:
    """The C++ engine (``bitnet.inference.Engine``) behind the backend interface."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, head: str = DEFAULT_ENGINE_HEAD) -> None:
        try:
            from bitnet.inference import Engine
        except ImportError as e:
            raise ImportError(f"the C++ engine is not available ({e}); use backend=torch") from None
        self.engine = Engine(str(model_dir), threads=threads, head=head)
        self.vocab_size = int(self.engine.vocab_size)
        self.max_length = int(self.engine.max_positions)

    def logits(self, token_ids: Sequence[int], *, start: int = 0, reuse_cache: bool = False) -> np.ndarray:
        return self.engine.logits(list(token_ids), start=start, reuse_cache=reuse_cache)

    def reset(self) -> None:
        self.engine.reset()


def load_backend(
    model_dir: str | Path, backend: str = "engine", threads: int | None = None, head: str = DEFAULT_ENGINE_HEAD
) -> Backend:
    """Build a backend by name (``"engine"`` or ``"torch"``) for ``model_dir``; ``head`` is the
    engine's output-head precision (``f16`` exact, ``int8``, ``auto``).

    Raises:
        ValueError: unknown backend name.
        FileNotFoundError: the model directory or its files are missing.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    read_model_config(model_dir)  # one clear error for a wrong path before any heavy import
    if backend == "torch":
        return TorchBackend.from_dir(model_dir)
    return EngineBackend(model_dir, threads=threads, head=head)
