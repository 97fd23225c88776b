"""``bitnet export`` end to end: run dirs and checkpoints in, packed / sharded / GGUF out."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import silu_model, tiny_model

from bitnet.checkpoint import save_model_dir
from bitnet.cli import main as bitnet_main
from bitnet.export import export_hf, load_model

IDS = torch.arange(0, 40).reshape(2, 20)


def _same_function(a, b):
    with torch.no_grad():
        assert torch.equal(a(IDS), b(IDS))


def test_export_newest_checkpoint_of_a_run(tmp_path, model, tokenizer):
    run = tmp_path / "run"
    save_model_dir(tiny_model(seed=1, vocab_size=320), run / "checkpoints" / "step_1" / "model", tokenizer)
    save_model_dir(model, run / "checkpoints" / "step_2" / "model", tokenizer)
    assert bitnet_main(["export", str(run), str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= {p.name for p in out.iterdir()}
    # the packed export reloads to the same ternary function as a packed round trip of step_2
    _same_function(load_model(out), load_model(export_hf(model, tmp_path / "direct", tokenizer)))


def test_sharded_export_has_an_index_and_loads(tmp_path, model, tokenizer):
    import transformers

    out = export_hf(model, tmp_path / "sharded", tokenizer, max_shard_size=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    single = export_hf(model, tmp_path / "single", tokenizer)
    _same_function(load_model(out), load_model(single))
    tm = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert tm.model.layers[1].mlp.down_proj.weight.shape == model.model.layers[1].mlp.down_proj.weight.shape


def test_cli_gguf_from_a_packed_export(tmp_path, tokenizer):
    src = export_hf(silu_model(), tmp_path / "src", tokenizer)
    assert bitnet_main(["export", str(src), str(tmp_path / "m.gguf"), "--format", "gguf", "--type", "tq1_0"]) == 0
    import gguf
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert {t.tensor_type for t in reader.tensors if t.name.endswith("ffn_up.weight")} == {gguf.GGMLQuantizationType.TQ1_0}


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert bitnet_main(["export", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bitnet export: error:") and "nowhere" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_cli_relu2_gguf_refused_without_flag(tmp_path, model, tokenizer, capsys):
    src = export_hf(model, tmp_path / "src", tokenizer)  # test-tiny is relu2 (and 64-wide)
    assert bitnet_main(["export", str(src), str(tmp_path / "m.gguf"), "--format", "gguf"]) == 2
    assert "--allow-relu2" in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists()


def test_missing_checkpoint_is_named(tmp_path):
    from bitnet.export.cli import main as export_main

    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        export_main([str(tmp_path / "nope"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
