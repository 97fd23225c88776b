"""Atomic writes give files and folders the modes the umask gives (not tempfile's 0600 / 0700)."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest
import torch

from bitnet import BitNetConfig, BitNetForCausalLM
from bitnet.checkpoint import save_model_dir
from bitnet.export import export_hf
from bitnet.io import atomic_dir, atomic_file, atomic_path, current_umask


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(base: Path) -> dict[str, int]:
    """Permission bits of everything under ``base``, by relative path."""
    return {str(p.relative_to(base)): stat.S_IMODE(p.stat().st_mode) for p in base.rglob("*")}


def _tiny() -> BitNetForCausalLM:
    torch.manual_seed(0)
    return BitNetForCausalLM(BitNetConfig.from_preset("test-tiny")).eval()


def test_current_umask_reads_without_changing():
    with umask(0o027):
        assert current_umask() == 0o027
        assert current_umask() == 0o027


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_export_and_checkpoint_get_the_umask_modes(tmp_path, mask, file_mode, dir_mode):
    with umask(mask):
        export = export_hf(_tiny(), tmp_path / "export")
        ckpt = save_model_dir(_tiny(), tmp_path / "checkpoints" / "step_0000001" / "model",
                              extra_files={"train_config.yaml": "seed: 1\n"})
        with atomic_file(tmp_path / "metrics.jsonl", "w") as f:
            f.write("{}\n")
        with atomic_dir(tmp_path / "step_0000002") as d:
            (d / "trainer_state.json").write_text("{}\n")
        with atomic_path(tmp_path / "m.gguf") as tmp:
            tmp.write_bytes(b"GGUF")
    modes = _modes(tmp_path)
    assert {"export", "export/model.safetensors", "checkpoints/step_0000001/model/model.safetensors",
            "checkpoints/step_0000001/model/train_config.yaml", "metrics.jsonl", "step_0000002", "m.gguf"} <= set(modes)
    assert ckpt == tmp_path / "checkpoints" / "step_0000001" / "model"
    want = {k: dir_mode if (tmp_path / k).is_dir() else file_mode for k in modes}
    assert modes == want
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]  # no temporary left behind
