"""A missing optional package is one line naming what to install, and the CLI prints it as one line."""

from __future__ import annotations

import importlib
import json
import sys
import types

import pytest

from bitnet import cli
from bitnet.deps import EXTRAS, MissingDependencyError, require

GGUF_MISSING = "GGUF export needs the package gguf, which is not installed: pip install gguf (bitnet's 'gguf' extra)"


def test_installed_module_is_returned(monkeypatch):
    monkeypatch.setitem(EXTRAS, "json", ("json", None))
    assert require("json", "reading JSON") is json


def test_missing_extra_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ModuleNotFoundError
    with pytest.raises(MissingDependencyError) as e:
        require("gguf", "GGUF export")
    assert str(e.value) == GGUF_MISSING
    assert isinstance(e.value, ValueError) and isinstance(e.value, ImportError) and e.value.name == "gguf"


def test_missing_core_dependency_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(MissingDependencyError, match=r"pip install lm-eval \(bitnet's main install includes it\)"):
        require("lm_eval", "bitnet.eval")


def test_a_broken_install_is_not_reported_as_missing(monkeypatch):
    """The package is there but one of its own imports fails: that error, unchanged, says what is wrong."""
    real = importlib.import_module

    def broken(name, *args):
        if name == "llama_cpp":
            raise ModuleNotFoundError("No module named 'libllama_helper'", name="libllama_helper")
        return real(name, *args)

    monkeypatch.setattr("bitnet.deps.importlib", types.SimpleNamespace(import_module=broken))
    with pytest.raises(ModuleNotFoundError) as e:
        require("llama_cpp", "llama.cpp")
    assert not isinstance(e.value, MissingDependencyError) and e.value.name == "libllama_helper"


def test_cli_prints_one_line(monkeypatch, capsys):
    """bitnet/cli.py prints a ValueError as `bitnet <cmd>: error: ...`: no traceback."""
    monkeypatch.setitem(sys.modules, "gguf", None)
    fake = types.ModuleType("bitnet_test_needs_gguf")
    fake.main = lambda argv: require("gguf", "GGUF export")
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(cli.COMMANDS, "needs-gguf", (fake.__name__, "main", "test command"))
    assert cli.main(["needs-gguf"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"bitnet needs-gguf: error: {GGUF_MISSING}"]
