"""``bitnet export`` end to end: run dirs and checkpoints in, packed / sharded / GGUF out."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import TINY_VOCAB, silu_model, tiny_model

from bitnet import BitNetConfig, BitNetForCausalLM
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


def test_cli_relu2_gguf_refused_without_flag(tmp_path, tokenizer, capsys):
    src = export_hf(tiny_model(vocab_size=TINY_VOCAB, hidden_act="relu2"), tmp_path / "src", tokenizer)
    assert bitnet_main(["export", str(src), str(tmp_path / "m.gguf"), "--format", "gguf"]) == 2
    assert "--allow-relu2" in capsys.readouterr().err
    assert not (tmp_path / "m.gguf").exists()


def test_cli_gguf_of_the_demo_shape_uses_named_fallbacks(tmp_path, tokenizer, capsys):
    """The README's command as written (no --type, no --allow-relu2) on the demo config's model layout."""
    import gguf

    from bitnet.paths import configs_dir
    from bitnet.training.config import load_config

    train_cfg = load_config(configs_dir() / "train" / "shakespeare.yaml")
    torch.manual_seed(0)
    model = BitNetForCausalLM(BitNetConfig.from_preset(train_cfg.model, **{**train_cfg.model_overrides,
                                                                          "vocab_size": TINY_VOCAB})).eval()
    assert model.config.hidden_act == "silu" and model.config.hidden_size % 256
    src = export_hf(model, tmp_path / "export", tokenizer)
    assert bitnet_main(["export", str(src), str(tmp_path / "out" / "model.gguf"), "--format", "gguf"]) == 0
    out = capsys.readouterr().out
    assert "in_features=192" in out and "written as q5_0" in out and "blk.*.attn_q.weight" in out
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "out" / "model.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q5_0
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.TQ2_0  # 512 inputs: the default type


def test_missing_checkpoint_is_named(tmp_path):
    from bitnet.export.cli import main as export_main

    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        export_main([str(tmp_path / "nope"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
