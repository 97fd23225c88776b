"""Bad input: one clear error naming the file and the tensor, and nothing written."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitnet.export import export_hf, load_model
from bitnet.export.cli import main as export_main

PACKED = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture
def export_dir(tmp_path, model, tokenizer):
    return export_hf(model, tmp_path / "exp", tokenizer)


def _header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_with_header(path, header, data):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _reexport_fails(src, tmp_path, match):
    """Both the API and the CLI refuse ``src`` with ``match`` and leave no output behind."""
    with pytest.raises(ValueError, match=match):
        load_model(src)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        export_main([str(src), str(out)])
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_truncated_safetensors(export_dir, tmp_path):
    f = export_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    _reexport_fails(export_dir, tmp_path, r"model\.safetensors.*truncated")


def test_header_that_lies_about_sizes(export_dir, tmp_path):
    f = export_dir / "model.safetensors"
    header, data = _header(f)
    header[PACKED]["shape"] = [header[PACKED]["shape"][0] * 2, header[PACKED]["shape"][1]]
    _write_with_header(f, header, data)
    _reexport_fails(export_dir, tmp_path, rf"model\.safetensors.*{PACKED}.*header says")


def test_wrong_shape(export_dir, tmp_path):
    f = export_dir / "model.safetensors"
    sd = load_file(str(f))
    sd[PACKED] = sd[PACKED][:-1].contiguous()  # a consistent file whose tensor does not fit the config
    save_file(sd, str(f), metadata={"format": "pt"})
    _reexport_fails(export_dir, tmp_path, rf"model\.safetensors.*{PACKED}.*shape")


def test_non_ternary_packed_weight(export_dir, tmp_path):
    f = export_dir / "model.safetensors"
    sd = load_file(str(f))
    sd[PACKED][0, 0] = 0xFF  # 2-bit code 3 is not in {0, 1, 2}
    save_file(sd, str(f), metadata={"format": "pt"})
    _reexport_fails(export_dir, tmp_path, rf"model\.safetensors.*{PACKED}.*code 3")


def test_non_finite_weight_at_export_writes_nothing(tmp_path, model):
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.o_proj\.weight.*non-finite"):
        export_hf(model, tmp_path / "exp")
    assert not list(tmp_path.iterdir())


def test_failed_export_keeps_the_previous_one(tmp_path, model):
    out = export_hf(model, tmp_path / "exp")
    before = (out / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.model.embed_tokens.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="embed_tokens"):
        export_hf(model, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_missing_tokenizer(tmp_path, model):
    src = export_hf(model, tmp_path / "src")  # weights only (warns)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        export_main([str(src), str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        export_main([str(src), str(tmp_path / "out"), "--tokenizer", str(tmp_path / "nope.json")])
    assert not (tmp_path / "out").exists()


def test_bad_quantization_config(export_dir, tmp_path):
    cfg = json.loads((export_dir / "config.json").read_text())
    cfg["quantization_config"]["linear_class"] = "fancylinear"
    (export_dir / "config.json").write_text(json.dumps(cfg))
    _reexport_fails(export_dir, tmp_path, r"config\.json.*linear_class")


def test_a_file_instead_of_a_directory_is_named(tmp_path, capsys):
    from bitnet.cli import main as bitnet_main

    for name, content, what in (("empty.bin", b"", "an empty file"), ("notes.txt", b"hello\n", "a file")):
        f = tmp_path / name
        f.write_bytes(content)
        assert bitnet_main(["export", str(f), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"bitnet export: error: {f}: {what}, not a checkpoint, model or export directory "
                       "(give the folder that holds config.json, or a .gguf file)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, match", [
    (b"this is a text file, not tensors\n", r"model\.safetensors: not a safetensors file \(it starts with b'this is "),
    (b"hi", r"model\.safetensors: not a safetensors file \(it starts with b'hi'"),
    (b"", r"model\.safetensors: empty file, not a safetensors file"),
])
def test_a_non_safetensors_weights_file_is_named_not_truncated(export_dir, tmp_path, content, match):
    (export_dir / "model.safetensors").write_bytes(content)
    _reexport_fails(export_dir, tmp_path, match)
    with pytest.raises(ValueError) as e:
        load_model(export_dir)
    assert "truncated" not in str(e.value)
