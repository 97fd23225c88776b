"""Optional dependencies: import one, or fail with one line that names what to install.

The main install (``pip install -e .``) covers training, export to transformers' layout, the C++
engine, ``bitnet serve`` and ``bitnet eval``. A few features need an extra of ``pyproject.toml``:

    gguf       ``bitnet export --format gguf``            (the ``gguf`` package)
    llamacpp   running a GGUF file in llama.cpp (tests, benchmarks; the ``llama-cpp-python`` package)

``require`` is called where such a feature starts, not at module import, so everything else keeps
working without the extra; its error is a ``ValueError`` as well as an ``ImportError``, so the
``bitnet`` command line prints it as one line instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependencyError", "require"]

# import name -> (distribution on PyPI, extra of pyproject.toml that installs it, or None for a core dependency)
EXTRAS: dict[str, tuple[str, str | None]] = {
    "gguf": ("gguf", "gguf"),
    "llama_cpp": ("llama-cpp-python", "llamacpp"),
    "lm_eval": ("lm-eval", None),
}


class MissingDependencyError(ImportError, ValueError):
    """A package a feature needs is not installed; the message says which ``pip install`` fixes it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a key of :data:`EXTRAS`) for ``purpose`` (e.g. ``"GGUF export"``) and return it.

    Raises:
        MissingDependencyError: ``module`` itself is not installed; one line naming the pip command,
            e.g. ``GGUF export needs the package gguf, which is not installed: pip install gguf
            (bitnet's 'gguf' extra)`` (the extra's name, not ``bitnet[gguf]``: bitnet installs from a checkout).
        KeyError: ``module`` is not in :data:`EXTRAS` (a programming error).
        ImportError: ``module`` is installed but one of its own imports fails (raised unchanged:
            the extra is there, and the original error says what is wrong with it).
    """
    dist, extra = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        where = f"bitnet's {extra!r} extra" if extra else "bitnet's main install includes it"
        raise MissingDependencyError(f"{purpose} needs the package {dist}, which is not installed: "
                                     f"pip install {dist} ({where})", name=module) from None
