"""Where the YAML configs that ship with the package live, and loading of model presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["configs_dir", "load_model_preset", "list_model_presets"]


def configs_dir() -> Path:
    """The ``configs/`` folder: installed as ``bitnet/configs`` in a wheel, ``<repo>/configs`` in a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "configs", here.parent / "configs"):
        if (cand / "model").is_dir():
            return cand
    raise FileNotFoundError(f"cannot find the configs folder next to {here}")


def list_model_presets() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "model").glob("*.yaml"))


def load_model_preset(name: str) -> dict[str, Any]:
    """Read ``configs/model/NAME.yaml`` (or a path to a YAML file) into a dict.

    Raises:
        FileNotFoundError: naming the preset and the ones that exist.
        ValueError: the file is not a YAML mapping.
    """
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = configs_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"unknown model preset {name!r}; available: {', '.join(list_model_presets())}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of BitNetConfig fields")
    return data
