"""Hostile or inconsistent exports: one clear Python exception each, never a crash."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from engine_helpers import export, rewrite_config, tiny
from safetensors.torch import load_file, save_file

from bitnet.inference import Engine


@pytest.fixture
def exp(tmp_path):
    return export(tiny(), tmp_path / "exp")


def _header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path, header, data):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_threads_zero_and_bad_head(exp):
    with pytest.raises(ValueError, match="threads"):
        Engine(exp, threads=0)
    with pytest.raises(ValueError, match="head"):
        Engine(exp, head="fp8")


def test_missing_directory_and_weights(tmp_path, exp):
    with pytest.raises(FileNotFoundError):
        Engine(tmp_path / "nope")
    (exp / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Engine(exp)


@pytest.mark.parametrize("keep", [0, 5, 100, -1000])
def test_truncated_safetensors(exp, keep):
    f = exp / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(ValueError, match="model.safetensors"):
        Engine(exp)


def test_header_lies_about_offsets(exp):
    f = exp / "model.safetensors"
    header, data = _header(f)
    name = "model.layers.0.mlp.down_proj.weight"
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b + 10**9, e + 10**9]
    _write(f, header, data)
    with pytest.raises(ValueError, match="down_proj"):
        Engine(exp)


def test_header_lies_about_shape(exp):
    f = exp / "model.safetensors"
    header, data = _header(f)
    header["model.norm.weight"]["shape"] = [2, 64]  # twice the bytes its offsets span
    _write(f, header, data)
    with pytest.raises(ValueError, match="model.norm.weight"):
        Engine(exp)


def test_header_not_json(exp):
    f = exp / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    f.write_bytes(raw[:8] + b"\xff" * n + raw[8 + n :])
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        Engine(exp)


def test_config_disagrees_with_tensors(exp):
    rewrite_config(exp, hidden_size=128, head_dim=32)
    with pytest.raises(ValueError, match="config"):
        Engine(exp)


def test_fewer_layers_in_config_than_in_file(exp):
    rewrite_config(exp, num_hidden_layers=1)
    with pytest.raises(ValueError, match="model.layers.1"):
        Engine(exp)


def test_unsupported_architecture(exp):
    rewrite_config(exp, model_type="gpt2")
    with pytest.raises(ValueError, match="unsupported architecture"):
        Engine(exp)


def test_online_config_over_packed_weights_is_named(exp):
    """quantization_mode online means float master weights: a packed file under it is one clear line."""
    rewrite_config(exp, quantization_config={"quantization_mode": "online"})
    with pytest.raises(ValueError, match=r"weight_scale.*bitnet-online layout"):
        Engine(exp)


def test_invalid_ternary_code_and_wrong_dtype(exp):
    f = exp / "model.safetensors"
    t = load_file(str(f))
    bad = dict(t)
    bad["model.layers.0.self_attn.q_proj.weight"] = bad["model.layers.0.self_attn.q_proj.weight"] | 0xFF
    save_file(bad, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="code 3"):
        Engine(exp)
    bad = dict(t)
    bad["model.layers.0.mlp.up_proj.weight"] = bad["model.layers.0.mlp.up_proj.weight"].float()
    save_file(bad, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="up_proj"):
        Engine(exp)
    bad = dict(t)
    del bad["model.layers.1.mlp.ffn_sub_norm.weight"]
    save_file(bad, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="ffn_sub_norm"):
        Engine(exp)


def test_bad_token_ids_and_context(exp):
    eng = Engine(exp, threads=1)
    with pytest.raises(ValueError, match="token ids"):
        eng.logits([0, 256])
    with pytest.raises(ValueError):
        eng.logits([])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        eng.logits(np.zeros(257, np.int64))
    with pytest.raises(ValueError, match="start"):
        eng.logits([1, 2], start=3)
    with pytest.raises(ValueError, match="tokenizer"):
        eng.generate("text without a tokenizer")


@pytest.mark.parametrize("field", ["vocab_size", "max_position_embeddings"])
def test_sizes_beyond_the_engine_int_are_a_config_error(exp, field):
    rewrite_config(exp, **{field: 2**31})
    with pytest.raises(ValueError, match=rf"config\.json: {field}=2147483648 is out of range for the engine"):
        Engine(exp)


def test_sampling_arguments_and_empty_prompt(tmp_path):
    from engine_helpers import tokenizer

    eng = Engine(export(tiny(vocab_size=304), tmp_path / "tok", tokenizer()), threads=1)
    bad = [({"temperature": -1.0}, r"temperature must be a number >= 0"),
           ({"temperature": float("nan")}, r"temperature must be a number >= 0"),
           ({"top_p": 2.0}, r"top_p must be in \(0, 1\], got 2.0"),
           ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
           ({"top_k": -1}, r"top_k must be an integer >= 0"),
           ({"repetition_penalty": 0.0}, r"repetition_penalty must be a number > 0"),
           ({"max_new_tokens": -1}, r"max_new_tokens must be an integer >= 0")]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            eng.generate("to be", **kw)
        with pytest.raises(ValueError, match=match):
            eng.generate([5, 6], **kw)
        with pytest.raises(ValueError, match=match):
            next(eng.stream("to be", **kw))
    for call in (lambda: eng.generate(""), lambda: next(eng.stream(""))):
        with pytest.raises(ValueError, match="the prompt is empty"):
            call()
    assert len(eng.generate([5, 6], max_new_tokens=3, temperature=0.0, top_k=0, top_p=1.0)) == 3  # edges allowed


def test_threads_message_has_no_python_none(exp):
    with pytest.raises(ValueError) as e:
        Engine(exp, threads=0)
    assert str(e.value) == "threads must be a positive integer, got 0"
