"""Our BitNetForCausalLM against transformers' BitNetForCausalLM (and Llama + BitNet quantizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from bitnet import BitLinear, BitNetConfig, BitNetForCausalLM

# Both sides run the same float ops in the same order in eager mode (see conftest: dynamo off);
# only SDPA vs transformers' attention kernel may differ, by float32 rounding.
LOGITS_ATOL = 1e-4

CONFIGS = {
    "gqa-tied-relu2": dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "mha-untied-silu": dict(vocab_size=300, hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                            num_attention_heads=3, num_key_value_heads=3, tie_word_embeddings=False,
                            hidden_act="silu"),
    # 2B4T's attention layout: head_dim 128, 20 heads, 5 KV heads, hidden 2560, FFN 6912 (1 layer).
    "2b4t-layout": dict(vocab_size=512, hidden_size=2560, intermediate_size=6912, num_hidden_layers=1,
                        num_attention_heads=20, num_key_value_heads=5, tie_word_embeddings=True,
                        rope_theta=500000.0, max_position_embeddings=4096),
}


def write_online_checkpoint(model: BitNetForCausalLM, path: Path) -> Path:
    """Latent weights + config.json with quantization_mode 'online' (the 2B4T -bf16 layout, in fp32)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_hf_dict(dtype="float32")
    cfg["quantization_config"] = {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online",
        "use_rms_norm": model.config.use_rms_norm, "rms_norm_eps": model.config.rms_norm_eps,
        "modules_to_not_convert": ["lm_head"],
    }
    (path / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def load_hf(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_equal_transformers(name, tmp_path):
    torch.manual_seed(0)
    ours = BitNetForCausalLM(BitNetConfig(**CONFIGS[name])).eval()
    hf = load_hf(write_online_checkpoint(ours, tmp_path / name))
    assert type(hf).__name__ == "BitNetForCausalLM"
    assert any(type(m).__name__ == "AutoBitLinear" for m in hf.modules())
    ids = torch.randint(0, ours.config.vocab_size, (2, 13))
    with torch.no_grad():
        a = ours(ids)
        b = hf(ids).logits.float()
    assert a.shape == (2, 13, ours.config.vocab_size)
    torch.testing.assert_close(a, b, rtol=0, atol=LOGITS_ATOL)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_llama_layout_with_inner_rms_norm_equals_transformers(tmp_path):
    """use_sub_norms=False + use_rms_norm=True is the Llama-architecture ternary layout."""
    torch.manual_seed(0)
    cfg = BitNetConfig(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
                       use_sub_norms=False, use_rms_norm=True, tie_word_embeddings=False)
    ours = BitNetForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial inner norm weights
        for m in ours.modules():
            if isinstance(m, BitLinear):
                m.rms_norm.weight.uniform_(0.5, 1.5)
    hf = load_hf(write_online_checkpoint(ours, tmp_path / "llama"))
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, cfg.vocab_size, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits.float(), rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("tie", [True, False])
def test_state_dict_keys_equal_transformers(tie):
    cfg = BitNetConfig(**{**CONFIGS["gqa-tied-relu2"], "tie_word_embeddings": tie})
    ours = BitNetForCausalLM(cfg)
    hf_cfg = transformers.BitNetConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                          if k not in ("architectures", "model_type", "torch_dtype")})
    theirs = transformers.BitNetForCausalLM(hf_cfg)
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert sorted(ours_sd) == sorted(theirs_sd)
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in ours_sd)
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == tie


def test_config_json_round_trip_through_transformers(tmp_path):
    cfg = BitNetConfig.from_preset("bitnet-2b4t")
    cfg.save_json(tmp_path / "config.json")
    hf_cfg = transformers.AutoConfig.from_pretrained(tmp_path)
    assert hf_cfg.model_type == "bitnet"
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps",
              "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert getattr(hf_cfg, k) == getattr(cfg, k), k
    assert hf_cfg.rope_parameters["rope_theta"] == cfg.rope_theta
    # and back: transformers' own serialization reads into the same config
    hf_cfg.save_pretrained(tmp_path / "hf")
    back = BitNetConfig.from_json(tmp_path / "hf")
    assert back.to_dict() == cfg.to_dict()


def test_2b4t_preset_is_the_published_shape():
    cfg = BitNetConfig.from_preset("bitnet-2b4t")
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (2560, 6912, 30)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (20, 5, 128)
    assert (cfg.vocab_size, cfg.max_position_embeddings, cfg.rope_theta) == (128256, 4096, 500000.0)
    assert cfg.hidden_act == "relu2" and cfg.tie_word_embeddings
    assert (cfg.bos_token_id, cfg.eos_token_id) == (128000, 128001)
    # ~2.4B parameters in all, as published
    assert 2.3e9 < cfg.num_parameters() < 2.5e9


@pytest.mark.parametrize("name,lo,hi", [("10m", 8e6, 12e6), ("25m", 22e6, 28e6), ("125m", 80e6, 100e6)])
def test_presets_have_their_advertised_size(name, lo, hi):
    cfg = BitNetConfig.from_preset(name)
    assert lo < cfg.num_parameters(include_embeddings=False) < hi


def test_num_parameters_formula_matches_module():
    for kw in CONFIGS.values():
        cfg = BitNetConfig(**kw)
        if cfg.hidden_size > 1000:
            continue
        assert BitNetForCausalLM(cfg).num_parameters() == cfg.num_parameters()


def test_config_errors():
    with pytest.raises(ValueError, match="hidden_act"):
        BitNetConfig(hidden_act="gelu")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        BitNetConfig(num_attention_heads=8, num_key_value_heads=3)
    with pytest.raises(ValueError, match="unknown BitNetConfig keys"):
        BitNetConfig.from_dict({"hidden_size": 64, "n_embd": 64})
    with pytest.raises(FileNotFoundError, match="unknown model preset"):
        BitNetConfig.from_preset("no-such-size")
    with pytest.raises(ValueError, match="unsupported model_type"):
        BitNetConfig.from_hf_dict({"model_type": "gpt2"})


def test_fp_twin_has_plain_linears_and_same_keys():
    cfg = BitNetConfig.from_preset("test-tiny")
    fp = BitNetForCausalLM(BitNetConfig.from_preset("test-tiny", linear_type="fp"))
    tern = BitNetForCausalLM(cfg)
    assert not any(isinstance(m, BitLinear) for m in fp.modules())
    assert sum(isinstance(m, BitLinear) for m in tern.modules()) == 7 * cfg.num_hidden_layers
    assert sorted(fp.state_dict()) == sorted(tern.state_dict())


def test_generate_greedy_is_deterministic_and_extends():
    torch.manual_seed(0)
    m = BitNetForCausalLM(BitNetConfig.from_preset("test-tiny")).eval()
    ids = torch.tensor([[1, 2, 3]])
    a = m.generate(ids, 5)
    b = m.generate(ids, 5)
    assert a.shape == (1, 8) and torch.equal(a, b) and torch.equal(a[:, :3], ids)
    # greedy step == argmax of the full forward
    assert int(a[0, 3]) == int(m(ids)[0, -1].argmax())


def test_model_dir_round_trip_and_newest_checkpoint(tmp_path):
    from bitnet.checkpoint import find_model_dir, load_model_dir, save_model_dir

    torch.manual_seed(0)
    m = BitNetForCausalLM(BitNetConfig.from_preset("test-tiny")).eval()
    for step in (2, 10, 9):  # "step_10" sorts before "step_2" as text: the number must decide
        save_model_dir(m, tmp_path / "run" / "checkpoints" / f"step_{step}" / "model")
    assert find_model_dir(tmp_path / "run").parent.name == "step_10"
    back = load_model_dir(tmp_path / "run").eval()
    ids = torch.randint(0, 256, (1, 9))
    assert torch.equal(back(ids), m(ids))
    assert back.lm_head.weight is back.model.embed_tokens.weight
    with pytest.raises(FileNotFoundError, match="not a bitnet model directory"):
        find_model_dir(tmp_path)
