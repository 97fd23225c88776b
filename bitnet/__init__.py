"""bitnet: train, export, run and evaluate native 1.58-bit (ternary) BitNet b1.58 language models.

Subpackages: ``bitnet.training``, ``bitnet.export``, ``bitnet.inference`` (C++ engine), ``bitnet.eval``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use (PEP 562), so that `bitnet.inference` (numpy + the C++ engine) does not
# pull in torch: importing torch alone costs ~200 MB of resident memory.
_LAZY = {
    "BitLinear": ".layers", "RMSNorm": ".layers", "BitNetConfig": ".model", "BitNetForCausalLM": ".model",
    "weight_quant": ".quant", "act_quant": ".quant", "pack_ternary": ".quant", "unpack_ternary": ".quant",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'bitnet' has no attribute {name!r}")

__all__ = [
    "BitLinear",
    "RMSNorm",
    "BitNetConfig",
    "BitNetForCausalLM",
    "weight_quant",
    "act_quant",
    "pack_ternary",
    "unpack_ternary",
    "__version__",
]
