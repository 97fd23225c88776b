"""Training config: overrides, presets, and errors for unknown keys and wrong types."""

from __future__ import annotations

import pytest

from bitnet.training.config import config_to_yaml, load_config


def test_overrides_and_roundtrip(tmp_path):
    cfg = load_config(None, ["optim.lr=2e-3", "model=10m", "optim.betas=[0.8, 0.9]", "model_overrides.linear_type=fp"])
    assert cfg.optim.lr == 2e-3 and cfg.model == "10m" and cfg.optim.betas == (0.8, 0.9)
    assert cfg.model_overrides == {"linear_type": "fp"}
    p = tmp_path / "resolved.yaml"
    p.write_text(config_to_yaml(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize("override, match", [
    ("optim.lrr=1", "optim.lrr"),  # unknown key, named with its section
    ("max_steps=ten", "max_steps"),  # wrong type
    ("data.seq_len=1.5", "data.seq_len"),
    ("optim.schedule=linear", "schedule"),  # well typed, bad value
    ("threads=0", "threads must be a positive integer, got 0"),
    ("threads=-2", "threads must be a positive integer, got -2"),
])
def test_bad_keys_and_types(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_shipped_configs_load():
    from bitnet.paths import configs_dir

    files = sorted((configs_dir() / "train").glob("*.yaml"))
    assert files
    for f in files:
        assert f.read_text().startswith("#")  # each file starts with the command that runs it
        load_config(f)
