"""bitnet.inference: the C++ CPU engine and its Python front."""

from ._C import cpu_features

__all__ = ["cpu_features"]
