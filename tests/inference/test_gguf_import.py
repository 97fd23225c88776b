"""GGUF files (bitnet.cpp's I2_S, llama.cpp's TQ2_0 / TQ1_0) load into the engine with the logits
of the safetensors form of the same weights; the FFN follows the architecture; the tokenizer comes
from the file's own vocabulary."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import gguf  # a dev extra (the GGUF writer of these tests): if it is missing the tests must fail, not skip
import numpy as np
import pytest
import torch
from engine_helpers import export, tokenizer

from bitnet.export.gguf_export import gguf_vocab
from bitnet.formats import read_model
from bitnet.formats.gguf import I2_S, _reader, i2s_decode, i2s_decode_reference, i2s_encode
from bitnet.formats.ternary import unpack
from bitnet.inference import Engine
from bitnet.model import BitNetConfig, BitNetForCausalLM

# Same values in both files (the safetensors' bf16 scales and embeddings are exact in fp16 / f32):
# only fp32 summation order may differ.
EXACT_ATOL = 1e-5
IDS = np.random.default_rng(5).integers(0, 304, 20)
ANCHORS_ENV = Path.home() / ".cache" / "bitnet-anchors" / "env.sh"


def _model(act: str, seed: int = 0) -> BitNetForCausalLM:
    """The smallest shape whose rows fill whole 256-weight TQ blocks, non-trivial norms."""
    torch.manual_seed(seed)
    cfg = BitNetConfig(vocab_size=304, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, hidden_act=act, max_position_embeddings=128,
                       rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    m = BitNetForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    return m


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module", params=["silu", "relu2"])
def safetensors_form(request, tmp_path_factory, tok):
    return request.param, export(_model(request.param), tmp_path_factory.mktemp("st") / "m", tok)


def write_gguf(src: Path, path: Path, arch: str, qtype: str, tok, embed: str = "F32",
               embed_values: np.ndarray | None = None) -> Path:
    """The safetensors model ``src`` as a GGUF of architecture ``arch``: ternary linears in ``qtype``
    (TQ2_0 / TQ1_0 through gguf.quants.quantize, I2_S through bitnet.cpp's byte layout), the tied
    embedding (``embed_values`` if given) in ``embed`` (F32, F16, Q8_0, Q6_K), norms in F32."""
    desc = read_model(src)
    cfg = desc.config
    w = gguf.GGUFWriter(str(path), arch=arch)
    for k, v in (("block_count", cfg.num_hidden_layers), ("context_length", cfg.max_position_embeddings),
                 ("embedding_length", cfg.hidden_size), ("feed_forward_length", cfg.intermediate_size),
                 ("attention.head_count", cfg.num_attention_heads), ("attention.head_count_kv", cfg.num_key_value_heads)):
        w.add_uint32(f"{arch}.{k}", v)
    w.add_float32(f"{arch}.rope.freq_base", cfg.rope_theta)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    vocab = gguf_vocab(tok, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    emb = desc.embed.to_f32() if embed_values is None else embed_values
    kind = gguf.GGMLQuantizationType[embed]
    if embed == "Q6_K":  # the gguf package decodes Q6_K but has no quantizer: random valid blocks
        blocks = np.random.default_rng(0).integers(0, 256, (emb.shape[0], emb.shape[1] // 256, 210), dtype=np.uint8)
        blocks[..., 208:] = np.frombuffer(np.float16(1e-3).tobytes(), np.uint8)  # d, the block's fp16 scale
        data = blocks.reshape(emb.shape[0], -1)
    else:
        data = emb if embed == "F32" else emb.astype(np.float16) if embed == "F16" else gguf.quants.quantize(emb, kind)
    w.add_tensor("token_embd.weight", data, raw_dtype=None if embed in ("F32", "F16") else kind)
    w.add_tensor("output_norm.weight", desc.final_norm)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"}
    lins = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{theirs}.weight", desc.layer_norms[i][ours])
        for ours, theirs in lins.items():
            t = desc.linear(i, ours)
            q = unpack(np.asarray(t.packed))
            name = f"blk.{i}.{theirs}.weight"
            if qtype == "I2_S":
                data = i2s_encode(q, t.beta)
                w.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.I8)
                w.tensors[-1][name] = gguf.gguf_writer.TensorInfo(shape=q.shape, dtype=I2_S, nbytes=data.size, tensor=data)
            else:
                kind = gguf.GGMLQuantizationType[qtype]
                w.add_tensor(name, gguf.quants.quantize(q.astype(np.float32) * np.float32(t.beta), kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0", "I2_S"])
def test_gguf_round_trips_to_the_safetensors_logits(safetensors_form, qtype, tmp_path, tok):
    act, src = safetensors_form
    arch = "bitnet" if act == "silu" else "bitnet-b1.58"  # the arch whose graph computes this FFN
    path = write_gguf(src, tmp_path / "m.gguf", arch, qtype, tok)
    want = Engine(src, threads=1, head="f16").logits(IDS)
    eng = Engine(path, threads=1, head="f16")
    np.testing.assert_allclose(eng.logits(IDS), want, atol=EXACT_ATOL, rtol=0)
    assert eng.family == f"gguf-{arch}" and f"FFN {act}" in eng.load_log[0] and qtype in eng.load_log[0]
    assert eng.tokenizer.encode("to be or not").ids == tok.encode("to be or not").ids
    assert eng.generate("the quick", max_new_tokens=3) == Engine(src, threads=1, head="f16").generate("the quick", max_new_tokens=3)


def test_i2s_tq2_tq1_agree_with_each_other(tmp_path, tok):
    src = export(_model("relu2", seed=3), tmp_path / "st", tok)
    logits = {q: Engine(write_gguf(src, tmp_path / f"{q}.gguf", "bitnet-25", q, tok), threads=1, head="f16").logits(IDS)
              for q in ("I2_S", "TQ2_0", "TQ1_0")}
    np.testing.assert_allclose(logits["I2_S"], logits["TQ2_0"], atol=EXACT_ATOL, rtol=0)
    np.testing.assert_allclose(logits["TQ1_0"], logits["TQ2_0"], atol=EXACT_ATOL, rtol=0)


def test_arch_decides_the_ffn(tmp_path, tok):
    """The same weights under 'bitnet' (SiLU in llama.cpp) and 'bitnet-b1.58' (ReLU²) give two models."""
    src = export(_model("relu2", seed=4), tmp_path / "st", tok)
    relu2 = Engine(write_gguf(src, tmp_path / "a.gguf", "bitnet-b1.58", "TQ2_0", tok), threads=1, head="f16")
    silu = Engine(write_gguf(src, tmp_path / "b.gguf", "bitnet", "TQ2_0", tok), threads=1, head="f16")
    assert "FFN relu2" in relu2.load_log[0] and "build_bitnet_158" in relu2.load_log[0]
    assert "FFN silu" in silu.load_log[0] and "llama.cpp" in silu.load_log[0]
    assert relu2.model_config.hidden_act == "relu2" and silu.model_config.hidden_act == "silu"
    assert not np.allclose(relu2.logits(IDS), silu.logits(IDS), atol=1e-2)


@pytest.mark.parametrize("embed", ["F16", "Q8_0", "Q6_K"])
def test_quantized_embeddings_are_decoded(tmp_path, tok, embed):
    """A GGUF whose embedding is F16 / Q8_0 / Q6_K gives the logits of one whose F32 embedding holds
    the gguf package's own decoding of those blocks; and stays near the unrounded model."""
    src = export(_model("silu", seed=6), tmp_path / "st", tok)
    path = write_gguf(src, tmp_path / "m.gguf", "bitnet", "TQ2_0", tok, embed=embed)
    got = Engine(path, threads=1, head="f16").logits(IDS)
    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "token_embd.weight")
    decoded = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    ref = write_gguf(src, tmp_path / "f32.gguf", "bitnet", "TQ2_0", tok, embed="F32", embed_values=decoded)
    np.testing.assert_allclose(got, Engine(ref, threads=1, head="f16").logits(IDS), atol=EXACT_ATOL, rtol=0)
    want = Engine(src, threads=1, head="f16").logits(IDS)
    if embed != "Q6_K":  # (Q6_K's blocks are random, not the model's embedding)
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9  # measured 1.0 (F16), 0.95 (Q8_0) here


def test_our_gguf_export_loads_and_agrees_with_the_model(tmp_path, tok):
    from bitnet.export import export_gguf

    model = _model("silu", seed=7)
    path = export_gguf(model, tmp_path / "ours.gguf", tok, qtype="tq2_0")
    with torch.no_grad():
        want = model(torch.from_numpy(IDS)[None])[0].numpy()
    got = Engine(path, threads=1, head="f16").logits(IDS)
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9  # f16 embedding / scales vs the fp32 latent
    assert np.abs(got - want).max() < 5e-2 * np.abs(want).max()


def test_i2s_layout_is_bitnet_cpps():
    """Element j of a 128-block sits in byte j % 32 at bits 6 - 2 * (j // 32); code = q + 1; the
    float32 scale follows the n / 4 code bytes (bitnet.cpp's quantize_i2_s, x86)."""
    raw = np.zeros(32 + 32, np.uint8)
    raw[0] = 0b10_01_00_01  # j=0 -> +1 (code 2), j=32 -> 0, j=64 -> -1, j=96 -> 0
    raw[1] = 0b01_01_01_10  # j=1 -> 0, j=33 -> 0, j=65 -> 0, j=97 -> +1
    raw[2:32] = 0b01_01_01_01
    raw[32:36] = np.frombuffer(np.float32(0.25).tobytes(), np.uint8)
    q, scale = i2s_decode(raw, 1, 128)
    assert scale == 0.25
    assert (q[0, 0], q[0, 32], q[0, 64], q[0, 96], q[0, 97]) == (1, 0, -1, 0, 1)
    assert np.count_nonzero(q) == 3
    np.testing.assert_array_equal(i2s_encode(q, 0.25), raw)


def test_i2s_decode_agrees_with_its_reference():
    q = np.random.default_rng(12).integers(-1, 2, (6, 256)).astype(np.int8)
    raw = i2s_encode(q, 0.5)
    for decode in (i2s_decode, i2s_decode_reference):
        got, scale = decode(raw, 6, 256)
        np.testing.assert_array_equal(got, q)
        assert scale == 0.5


@pytest.mark.parametrize("bad, match", [(0, r"code 3 \(at weight 2, 200\)"), (1, r"scale nan"), (2, r"scale -1\.0")])
def test_broken_i2s_bytes_name_the_cause(bad, match):
    raw = i2s_encode(np.zeros((4, 256), np.int8), 1.0)
    if bad == 0:
        raw[(2 * 256 + 200) // 128 * 32 + 200 % 32] |= 3 << (6 - 2 * (200 % 128 // 32))
    raw[256: 260] = np.frombuffer(np.float32([1.0, np.nan, -1.0][bad]).tobytes(), np.uint8)
    with pytest.raises(ValueError, match=match + r".*I2_S 1\)$"):
        i2s_decode(raw, 4, 256)


def test_bad_gguf_files_are_one_line(tmp_path, tok):
    src = export(_model("silu", seed=8), tmp_path / "st", tok)
    good = write_gguf(src, tmp_path / "m.gguf", "bitnet", "TQ2_0", tok)
    (tmp_path / "trunc.gguf").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"trunc\.gguf"):
        Engine(tmp_path / "trunc.gguf")
    other = write_gguf(src, tmp_path / "llama.gguf", "llama", "TQ2_0", tok)
    with pytest.raises(ValueError, match=r"general\.architecture 'llama' is not supported \(supported: bitnet, "):
        Engine(other)


def _i2s_tensors(path: Path) -> dict[str, np.ndarray]:
    """Each I2_S tensor's code bytes and float32 scale (the padding after it is not data)."""
    return {t.name: np.asarray(t.data)[: int(t.n_elements) // 4 + 4] for t in _reader(path).tensors
            if t.tensor_type == I2_S}


@pytest.mark.slow
@pytest.mark.skipif(not ANCHORS_ENV.is_file(), reason="native anchors not built (../shared/anchors/build.sh)")
def test_files_made_by_llama_quantize(tmp_path, tok):
    """llama-quantize of upstream llama.cpp (TQ2_0 / TQ1_0) and of bitnet.cpp (I2_S) on an F32
    GGUF of the same weights: the engine reads each to the safetensors form's logits; bitnet.cpp's
    I2_S bytes are the ones our test writer writes; its multi-threaded (broken) I2_S is refused."""
    env = dict(line.removeprefix("export ").split("=", 1) for line in ANCHORS_ENV.read_text().split("\n")
               if line.startswith("export ") and "=" in line)
    env = {k: v.strip("\"'") for k, v in env.items()}
    src = export(_model("silu", seed=9), tmp_path / "st", tok)
    f32 = write_gguf(src, tmp_path / "f32.gguf", "bitnet", "F32", tok)
    want = Engine(src, threads=1, head="f16").logits(IDS)
    missing = []
    for var, qtype in (("LLAMA_BENCH_UPSTREAM", "TQ2_0"), ("LLAMA_BENCH_UPSTREAM", "TQ1_0"), ("LLAMA_BENCH_BITNETCPP", "I2_S")):
        quantize = Path(env.get(var, "")).with_name("llama-quantize")
        if not quantize.is_file():  # reported below: the other files are still checked
            missing.append(f"{qtype} ({var}: {quantize})")
            continue
        out = tmp_path / f"{qtype}.gguf"
        # one thread (the trailing 1), as bitnet.cpp's setup_env.py runs it: see test below for more
        subprocess.run([str(quantize), str(f32), str(out), qtype, "1"], check=True, capture_output=True, timeout=120)
        got = Engine(out, threads=1, head="f16").logits(IDS)
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9, qtype  # (TQ: llama.cpp requantizes the embedding)
        if qtype != "I2_S":
            continue
        # bitnet.cpp keeps the embedding F16 and its I2_S scale of beta * q is beta: the same logits
        np.testing.assert_allclose(got, want, atol=EXACT_ATOL, rtol=0)
        theirs, ours = _i2s_tensors(out), _i2s_tensors(write_gguf(src, tmp_path / "ours.gguf", "bitnet", "I2_S", tok))
        assert sorted(theirs) == sorted(ours) and len(ours) == 14
        for name in ours:
            np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
        # with 2 threads every tensor over 16384 weights is written in misplaced chunks: one clear error
        subprocess.run([str(quantize), str(f32), str(tmp_path / "mt.gguf"), qtype, "2"], check=True,
                       capture_output=True, timeout=120)
        with pytest.raises(ValueError, match=r"mt\.gguf: tensor blk\.0\.attn_q\.weight: .*I2_S 1\)$"):
            Engine(tmp_path / "mt.gguf", threads=1)
    assert not missing, f"no llama-quantize beside the llama-bench {ANCHORS_ENV} names for: {', '.join(missing)}"


def test_load_model_reads_a_gguf_into_the_pytorch_model(tmp_path, tok):
    from bitnet.export import load_model

    src = export(_model("relu2", seed=10), tmp_path / "st", tok)
    path = write_gguf(src, tmp_path / "m.gguf", "bitnet-b1.58", "I2_S", tok)
    with torch.no_grad():
        got = load_model(path).double()(torch.from_numpy(IDS)[None])[0].numpy()
        want = load_model(src).double()(torch.from_numpy(IDS)[None])[0].numpy()
    np.testing.assert_allclose(got, want, atol=EXACT_ATOL, rtol=0)


def test_export_cli_turns_a_gguf_into_the_transformers_layout(tmp_path, tok):
    from bitnet.export.cli import main as export_main

    src = export(_model("silu", seed=11), tmp_path / "st", tok)
    path = write_gguf(src, tmp_path / "m.gguf", "bitnet", "TQ1_0", tok)
    assert export_main([str(path), str(tmp_path / "hf")]) == 0
    eng = Engine(tmp_path / "hf", threads=1, head="f16")
    np.testing.assert_allclose(eng.logits(IDS), Engine(src, threads=1, head="f16").logits(IDS), atol=EXACT_ATOL, rtol=0)
    assert eng.tokenizer.encode("to be or not").ids == tok.encode("to be or not").ids
