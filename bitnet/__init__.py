"""bitnet: train, export, run and evaluate native 1.58-bit (ternary) BitNet b1.58 language models.

Subpackages: ``bitnet.training``, ``bitnet.export``, ``bitnet.inference`` (C++ engine), ``bitnet.eval``.
"""

from .layers import BitLinear, RMSNorm
from .model import BitNetConfig, BitNetForCausalLM
from .quant import act_quant, pack_ternary, unpack_ternary, weight_quant

__version__ = "0.1.0"

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
