"""The installed package: the C++ extension, the CLI, the namespace layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bitnet


def cpuinfo_flags() -> set[str]:
    p = Path("/proc/cpuinfo")
    if not p.exists():
        return set()
    for line in p.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_extension_reports_cpu_features_consistent_with_the_kernel():
    from bitnet.inference import cpu_features

    f = cpu_features()
    assert f["arch"] in ("x86_64", "aarch64", "unknown")
    assert all(isinstance(v, bool) for k, v in f.items() if k != "arch")
    flags = cpuinfo_flags()
    if f["arch"] == "x86_64" and flags:
        assert f["avx2"] == ("avx2" in flags)
        assert f["avx512_vnni"] == ("avx512_vnni" in flags)
        assert f["avx_vnni"] == ("avx_vnni" in flags)
        assert not f["neon"]


def test_subpackages_live_under_one_namespace():
    import bitnet.eval
    import bitnet.export
    import bitnet.inference
    import bitnet.training

    for mod in (bitnet.training, bitnet.export, bitnet.inference, bitnet.eval):
        assert mod.__name__.startswith("bitnet.")


def test_cli_help_and_info():
    r = subprocess.run([sys.executable, "-m", "bitnet", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for cmd in ("train", "export", "generate", "eval", "bench", "demo"):
        assert cmd in r.stdout
    r = subprocess.run([sys.executable, "-m", "bitnet", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"bitnet {bitnet.__version__}" in r.stdout and "bitnet-2b4t" in r.stdout


def test_cli_unknown_command_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "bitnet", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr


def test_engine_and_config_import_without_torch():
    """The inference path needs only numpy: importing the engine (and the config it reads) must not load torch."""
    code = ("import sys; import bitnet.inference, bitnet.config; from bitnet.inference import Engine; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_config_rejects_wrong_types_naming_the_field():
    import pytest

    from bitnet.config import BitNetConfig

    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        BitNetConfig.from_hf_dict({"vocab_size": "32000", "hidden_size": 64, "intermediate_size": 128,
                                   "num_hidden_layers": 1, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="rope_theta must be a positive number"):
        BitNetConfig(rope_theta=-1.0)
    with pytest.raises(ValueError, match="num_hidden_layers must be a positive integer"):
        BitNetConfig(num_hidden_layers=True)


def test_config_json_that_is_not_an_object_is_one_clear_error(tmp_path):
    import pytest

    from bitnet.config import read_config_json
    from bitnet.export import load_model

    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json: not a JSON object"):
        read_config_json(tmp_path)
    with pytest.raises(ValueError, match=r"config\.json: not a JSON object"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_config_json(tmp_path / "missing")
