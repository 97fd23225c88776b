"""Readers of every ternary model format this project runs, each yielding one :class:`TernaryModel`.

- :func:`read_model` (a local path): a transformers-style directory of any published family
  (:mod:`bitnet.formats.hf`, the per-family table) or a GGUF file (:mod:`bitnet.formats.gguf`);
- :func:`resolve_model` (:mod:`bitnet.formats.hub`): a local path, or a hub id
  ``owner/name[@revision]`` fetched into (or found offline in) huggingface_hub's cache.

The C++ engine (``bitnet.inference.loader``) and the PyTorch model (``bitnet.export.load_model``) both
build from the description. Numpy only.
"""

from __future__ import annotations

from pathlib import Path

from .description import LAYER_NORM_NAMES, LINEAR_NAMES, Table, TernaryLinear, TernaryModel
from .hub import resolve_model

__all__ = ["LINEAR_NAMES", "LAYER_NORM_NAMES", "Table", "TernaryLinear", "TernaryModel", "read_model", "resolve_model"]


def read_model(path: str | Path) -> TernaryModel:
    """Describe the model at a local ``path``: a directory with config.json, or a ``.gguf`` file
    (a directory holding exactly one ``.gguf`` and no config.json is read as that file).

    Raises:
        FileNotFoundError: nothing readable at ``path``. ValueError: one line naming the file and
        the field or tensor that is unsupported or wrong.
    """
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".gguf" or _is_gguf(p):
            from .gguf import read_gguf

            return read_gguf(p)
        raise ValueError(f"{p}: not a model (expected a directory with config.json, or a .gguf file)")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: model directory not found (no directory or .gguf file there)")
    if not (p / "config.json").is_file():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return read_model(ggufs[0])
        if ggufs:
            raise ValueError(f"{p}: holds {len(ggufs)} .gguf files and no config.json; name one of them: "
                             f"{', '.join(g.name for g in ggufs[:4])}")
    from .hf import read_hf_dir

    return read_hf_dir(p)


def _is_gguf(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"
