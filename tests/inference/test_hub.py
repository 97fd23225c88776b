"""Hub ids against a prepared local cache (HF_HUB_OFFLINE=1; no test reaches the network)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from engine_helpers import export, tiny, tokenizer

from bitnet.formats import resolve_model
from bitnet.formats.hub import parse_hub_id
from bitnet.inference import Engine

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _cache_snapshot(cache, repo, commit, src, ref="main"):
    """Lay ``src``'s files out as huggingface_hub's cache does: models--owner--name/snapshots/<commit>/..., refs/<ref>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    shutil.copytree(src, snap)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    d = tmp_path_factory.mktemp("exports")
    tok = tokenizer()
    return export(tiny(seed=1, vocab_size=304), d / "a", tok), export(tiny(seed=2, vocab_size=304), d / "b", tok)


def test_hub_id_offline_from_the_cache(hub, exports):
    snap = _cache_snapshot(hub, "someone/tiny-bitnet", COMMIT_A, exports[0])
    eng = Engine("someone/tiny-bitnet", threads=1)
    assert eng.path == snap
    ref = Engine(exports[0], threads=1)
    ids = np.arange(12)
    assert np.array_equal(eng.logits(ids), ref.logits(ids))


def test_revision_picks_that_snapshot(hub, exports):
    _cache_snapshot(hub, "someone/tiny-bitnet", COMMIT_A, exports[0])
    snap_b = _cache_snapshot(hub, "someone/tiny-bitnet", COMMIT_B, exports[1], ref="v2")
    assert resolve_model(f"someone/tiny-bitnet@{COMMIT_B}") == snap_b
    assert resolve_model("someone/tiny-bitnet@v2") == snap_b
    assert resolve_model("someone/tiny-bitnet").name == COMMIT_A


def test_missing_model_offline_is_one_line_naming_id_and_cache(hub):
    with pytest.raises(FileNotFoundError) as e:
        Engine("microsoft/bitnet-b1.58-2B-4T")
    msg = str(e.value)
    assert "\n" not in msg and "microsoft/bitnet-b1.58-2B-4T" in msg and str(hub) in msg and "HF_HUB_OFFLINE" in msg


def test_local_directory_wins_over_a_hub_id_of_the_same_name(hub, exports, tmp_path, monkeypatch):
    _cache_snapshot(hub, "someone/tiny-bitnet", COMMIT_A, exports[0])
    work = tmp_path / "work"
    shutil.copytree(exports[1], work / "someone" / "tiny-bitnet")
    monkeypatch.chdir(work)
    assert resolve_model("someone/tiny-bitnet").resolve() == (work / "someone" / "tiny-bitnet").resolve()


def test_load_model_and_the_cli_take_hub_ids(hub, exports, capsys):
    import torch

    from bitnet.export import load_model
    from bitnet.inference.cli import generate_main

    _cache_snapshot(hub, "someone/tiny-bitnet", COMMIT_A, exports[0])
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(load_model("someone/tiny-bitnet")(ids), load_model(exports[0])(ids))
    assert generate_main(["someone/tiny-bitnet", "--prompt", "the quick", "--max-new-tokens", "4", "--threads", "1",
                          "--no-stream"]) == 0
    want = Engine(exports[0], threads=1).generate("the quick", max_new_tokens=4)  # greedy, the CLI's default
    assert want and capsys.readouterr().out == want + "\n"


@pytest.mark.parametrize("ref, parsed", [
    ("microsoft/bitnet-b1.58-2B-4T", ("microsoft/bitnet-b1.58-2B-4T", None, None)),
    ("tiiuae/Falcon3-3B-Instruct-1.58bit@main", ("tiiuae/Falcon3-3B-Instruct-1.58bit", None, "main")),
    ("microsoft/bitnet-b1.58-2B-4T-gguf/ggml-model-i2_s.gguf", ("microsoft/bitnet-b1.58-2B-4T-gguf", "ggml-model-i2_s.gguf", None)),
    ("./out/model", None), ("/abs/path", None), ("single", None), ("a/b/c", None),
])
def test_parse_hub_id(ref, parsed):
    h = parse_hub_id(ref)
    assert (h if h is None else (h.repo, h.filename, h.revision)) == parsed


def test_not_a_path_nor_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing: model directory not found"):
        resolve_model(tmp_path / "missing")
