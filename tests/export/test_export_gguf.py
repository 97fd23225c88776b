"""GGUF export: exact read-back with the gguf package, and upstream llama.cpp (llama-cpp-python) runs it."""

from __future__ import annotations

import copy
import warnings

import gguf  # a dev extra: if it is missing the tests must fail, not skip
import numpy as np
import pytest
import torch
from export_helpers import byte_tokenizer, silu_model

from bitnet import BitNetConfig, BitNetForCausalLM
from bitnet.export import export_gguf, export_hf
from bitnet.export.gguf_export import RELU2_WARNING, gguf_tensor_names, gguf_weight_type, llama_rope_permute
from bitnet.paths import list_model_presets
from bitnet.quant import weight_quant
from bitnet.training import bundled_text


def _fallback_model(seed: int = 0, vocab_size: int = 320) -> BitNetForCausalLM:
    """A SiLU model whose linear widths are not whole TQ blocks: q/k/v/o/gate/up read 80 inputs
    (not a multiple of 32 either: F16), down reads 224 (7 x 32: Q5_0)."""
    torch.manual_seed(seed)
    cfg = BitNetConfig(
        vocab_size=vocab_size, hidden_size=80, intermediate_size=224, num_hidden_layers=2,
        num_attention_heads=5, num_key_value_heads=1, hidden_act="silu", max_position_embeddings=128,
        rope_theta=10000.0, tie_word_embeddings=True,
    )
    return BitNetForCausalLM(cfg).eval()


def _assert_same_ternary_values(reader, model) -> None:
    """Every tensor of the GGUF dequantizes to our values: ternary linears to q * fp16(beta) exactly,
    whatever their GGUF type; the embedding to fp16; norms exactly."""
    tensors = {t.name: t for t in reader.tensors}
    names = gguf_tensor_names(model.config.num_hidden_layers)
    assert set(tensors) == set(names.values())
    for ours, theirs in names.items():
        t = tensors[theirs]
        w = model.state_dict()[ours].float()
        got = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))).reshape(w.shape)
        if ours.endswith("_proj.weight"):
            q, beta = weight_quant(w)
            beta16 = float(np.float16(beta.item()))
            assert torch.equal(got, q.float() * beta16), theirs
        elif ours == "model.embed_tokens.weight":
            assert torch.equal(got, w.half().float())
        else:
            assert torch.equal(got, w), theirs


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
def test_gguf_reads_back_to_our_ternary_weights_and_scales(tmp_path, qtype):
    model = silu_model()
    path = export_gguf(model, tmp_path / "m.gguf", byte_tokenizer(), qtype=qtype)
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "bitnet"
    want_type = gguf.GGMLQuantizationType[qtype.upper()]
    assert {t.tensor_type for t in reader.tensors if t.name.endswith(("attn_q.weight", "ffn_down.weight"))} == {want_type}
    # every block's d is beta rounded to fp16: exact ternary codes times that one scale
    _assert_same_ternary_values(reader, model)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == model.config.vocab_size


def test_weight_type_follows_llama_quantize_fallback_rule():
    assert [gguf_weight_type(n, "tq2_0") for n in (256, 6912, 192, 224, 32, 80, 100)] == [
        "tq2_0", "tq2_0", "q5_0", "q5_0", "q5_0", "f16", "f16"]
    assert gguf_weight_type(512, "tq1_0") == "tq1_0" and gguf_weight_type(64, "tq1_0") == "q5_0"


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
def test_fallback_types_hold_the_same_ternary_values_and_are_logged(tmp_path, qtype):
    model = _fallback_model()
    log: list[str] = []
    path = export_gguf(model, tmp_path / "m.gguf", byte_tokenizer(), qtype=qtype, log=log.append)
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    Q = gguf.GGMLQuantizationType
    for i in range(2):
        for kind in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"):
            assert types[f"blk.{i}.{kind}.weight"] == Q.F16
        assert types[f"blk.{i}.ffn_down.weight"] == Q.Q5_0
    _assert_same_ternary_values(reader, model)
    # Q5_0 blocks hold the codes q + 16 with d = beta (what TQ holds): low nibbles 15, 0, 1
    raw = np.asarray(next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight").data).reshape(-1, 22)
    nibbles = np.concatenate([raw[:, 6:] & 15, raw[:, 6:] >> 4], axis=1)
    assert set(np.unique(nibbles).tolist()) <= {15, 0, 1}
    # one line per (width, type) group, naming the tensors, the width and the type; nothing else
    assert len(log) == 2
    f16_line = next(line for line in log if "written as f16" in line)
    q8_line = next(line for line in log if "written as q5_0" in line)
    assert "12 tensor(s) with in_features=80" in f16_line and qtype in f16_line and "blk.*.attn_q.weight" in f16_line
    assert "2 tensor(s) with in_features=224" in q8_line and "blk.*.ffn_down.weight" in q8_line
    export_gguf(silu_model(), tmp_path / "whole.gguf", byte_tokenizer(), log=log.append)
    assert len(log) == 2  # whole TQ blocks: nothing to log


@pytest.mark.parametrize("preset", list_model_presets())
def test_every_bundled_preset_exports_to_gguf(tmp_path, preset):
    """The export runs on each preset's layout with a 320-token vocabulary (the test tokenizer's);
    presets above 30M parameters keep one layer (random init alone would take minutes), which
    exercises every check and every tensor type the full model gets."""
    small = BitNetConfig.from_preset(preset).num_parameters() < 30e6
    cfg = BitNetConfig.from_preset(preset, vocab_size=320, **({} if small else {"num_hidden_layers": 1}))
    torch.manual_seed(0)
    model = BitNetForCausalLM(cfg).eval()
    relu2 = cfg.hidden_act == "relu2"
    assert relu2 == (preset == "bitnet-2b4t")  # the small presets use the SiLU-gated FFN llama.cpp computes
    log: list[str] = []
    tok = byte_tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if relu2 else "error")
        path = export_gguf(model, tmp_path / f"{preset}.gguf", tok, allow_relu2=relu2, log=log.append)
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    ins = {"attn_q": cfg.hidden_size, "attn_output": cfg.num_attention_heads * cfg.head_dim,
           "ffn_up": cfg.hidden_size, "ffn_down": cfg.intermediate_size}
    for kind, n in ins.items():
        want = gguf.GGMLQuantizationType[gguf_weight_type(n, "tq2_0").upper()]
        assert types[f"blk.0.{kind}.weight"] == want, (kind, n)
    assert bool(log) == any(n % 256 for n in ins.values())


def test_relu2_needs_the_flag_and_warns(tmp_path):
    model = silu_model()
    model.config.hidden_act = "relu2"
    for m in model.modules():
        if hasattr(m, "act"):
            m.act = "relu2"
    with pytest.raises(ValueError, match="SiLU-gated FFN"):
        export_gguf(model, tmp_path / "r.gguf", byte_tokenizer())
    assert not (tmp_path / "r.gguf").exists() and not list(tmp_path.iterdir())
    with pytest.warns(UserWarning) as rec:
        export_gguf(model, tmp_path / "r.gguf", byte_tokenizer(), allow_relu2=True)
    assert str(rec[0].message) == RELU2_WARNING
    assert (tmp_path / "r.gguf").is_file()


def test_gguf_without_tokenizer_fails_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        export_gguf(silu_model(), tmp_path / "m.gguf", None)
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        export_gguf(silu_model(), tmp_path / "m.gguf", tmp_path / "missing-tokenizer.json")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ upstream llama.cpp
# llama.cpp quantizes activations per 256-value block (Q8_K; per token here only where the row is
# 256 long), keeps K/V in fp16, the embedding in fp16 and beta in fp16: the logits move by a few
# hundredths of their range; measured max |diff| / max |logit| 0.004 on this model.
LLAMA_CPP_REL_TOL = 0.05
TRAIN_STEPS = 40  # enough for a clearly peaked next-token distribution (greedy ties would flake)


def _train_tiny(tok, text: str, steps: int, model: BitNetForCausalLM | None = None) -> BitNetForCausalLM:
    """A plain PyTorch loop on tinyshakespeare: a model with real structure, not random logits."""
    model = (model or silu_model(seed=0, vocab_size=320)).train()
    ids = torch.tensor(tok.encode(text).ids)  # (N,)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    block, batch = 64, 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only contend with the rest of the suite
    try:
        _steps(model, opt, ids, g, block, batch, steps)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _steps(model, opt, ids, g, block: int, batch: int, steps: int) -> None:
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - block - 1, (batch,), generator=g)
        x = torch.stack([ids[s : s + block] for s in starts])  # (B, T)
        y = torch.stack([ids[s + 1 : s + block + 1] for s in starts])  # (B, T)
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.slow
def test_llama_cpp_runs_our_gguf_like_our_model(tmp_path):
    import llama_cpp  # dev extra (llama-cpp-python builds upstream llama.cpp): missing must fail, not skip
    text = bundled_text("tinyshakespeare").read_text()[:200_000]
    tok = byte_tokenizer(vocab_size=320, corpus=[text])
    model = _train_tiny(tok, text, TRAIN_STEPS)
    path = export_gguf(model, tmp_path / "shakespeare.gguf", tok, qtype="tq2_0")

    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    try:
        prompt = "ROMEO:\nWhat say you"
        ids = tok.encode(prompt).ids
        assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids  # same tokenizer
        n_new = 24
        ours = model.generate(torch.tensor([ids]), max_new_tokens=n_new)[0].tolist()
        theirs = list(ids)
        llm.reset()
        llm.eval(ids)
        for _ in range(n_new):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            theirs.append(nxt)
            llm.eval([nxt])
        assert theirs == ours
        full = np.array(llm.scores[: len(ours) - 1])  # (T, V): llama.cpp's logits for every position
    finally:
        llm.close()
    with torch.no_grad():
        ref = model(torch.tensor([ours[:-1]]))[0].numpy()  # (T, V)
    assert np.abs(full - ref).max() <= LLAMA_CPP_REL_TOL * np.abs(ref).max()

    # The Q/K row order is pinned: llama.cpp runs `bitnet` with NEOX (rotate-half) RoPE, so the
    # Llama converter's interleaving permutation, applied here on purpose, must break agreement.
    permuted = copy.deepcopy(model)
    with torch.no_grad():
        for layer in permuted.model.layers:
            attn = layer.self_attn
            attn.q_proj.weight.copy_(llama_rope_permute(attn.q_proj.weight, attn.n_head))
            attn.k_proj.weight.copy_(llama_rope_permute(attn.k_proj.weight, attn.n_kv))
    bad_path = export_gguf(permuted, tmp_path / "permuted.gguf", tok)
    llm = llama_cpp.Llama(str(bad_path), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    try:
        llm.eval(ours[:-1])
        bad = np.array(llm.scores[: len(ours) - 1])
    finally:
        llm.close()
    assert np.abs(bad - ref).max() > 2 * LLAMA_CPP_REL_TOL * np.abs(ref).max()


FALLBACK_NEW_TOKENS = 16


@pytest.mark.slow
def test_llama_cpp_runs_a_fallback_export_like_our_engine(tmp_path):
    """A trained model whose widths are not whole TQ blocks (F16 and Q5_0 tensors): llama.cpp's
    greedy continuation equals our C++ engine's on the packed export of the same model."""
    import llama_cpp  # dev extra: missing must fail, not skip

    from bitnet.inference import Engine

    text = bundled_text("tinyshakespeare").read_text()[:200_000]
    tok = byte_tokenizer(vocab_size=320, corpus=[text])
    model = _train_tiny(tok, text, TRAIN_STEPS, model=_fallback_model(seed=0, vocab_size=320))
    log: list[str] = []
    path = export_gguf(model, tmp_path / "fallback.gguf", tok, log=log.append)
    assert any("f16" in line for line in log) and any("q5_0" in line for line in log)
    eng = Engine(export_hf(model, tmp_path / "packed", tok), threads=2, head="f16")
    ids = tok.encode("ROMEO:\nWhat say you").ids
    ours = eng.generate(ids, max_new_tokens=FALLBACK_NEW_TOKENS)
    assert len(ours) == FALLBACK_NEW_TOKENS  # no eos in this config: the engine never stops early

    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    try:
        assert llm.tokenize("ROMEO:\nWhat say you".encode(), add_bos=False, special=False) == ids
        theirs: list[int] = []
        llm.eval(ids)
        for _ in range(FALLBACK_NEW_TOKENS):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            theirs.append(nxt)
            llm.eval([nxt])
    finally:
        llm.close()
    assert theirs == ours


def test_tq2_0_block_bytes_follow_the_documented_layout(tmp_path):
    """Golden layout (FORMATS.md section 3) of the bytes our export writes: in each 66-byte block of
    256 weights, byte c*32 + m, bits 2l..2l+1 hold element c*128 + l*32 + m as q + 1; then d = fp16(beta).
    Checked on every row of one exported tensor (attn_v: no RoPE permutation), built here from our codes."""
    model = silu_model()
    path = export_gguf(model, tmp_path / "m.gguf", byte_tokenizer(), qtype="tq2_0")
    (t,) = [t for t in gguf.GGUFReader(path).tensors if t.name == "blk.0.attn_v.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.TQ2_0
    q, beta = weight_quant(model.model.layers[0].self_attn.v_proj.weight.detach())  # (128, 256) int8, ()
    q = q.numpy().astype(np.int64)
    assert set(np.unique(q)) == {-1, 0, 1}
    raw = np.asarray(t.data).reshape(-1).view(np.uint8).reshape(q.shape[0], 66)  # one block per row
    expect = np.zeros((q.shape[0], 64), dtype=np.uint8)
    for c in range(2):
        for l in range(4):
            for m in range(32):
                expect[:, c * 32 + m] |= ((q[:, c * 128 + l * 32 + m] + 1) << (2 * l)).astype(np.uint8)
    np.testing.assert_array_equal(raw[:, :64], expect)
    assert (raw[:, 64:66].copy().view(np.float16)[:, 0] == np.float16(beta.item())).all()


def test_pre_tokenizer_maps_to_llama_cpp_names():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from bitnet.export.gguf_export import gguf_vocab

    llama3_split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = byte_tokenizer()
    assert gguf_vocab(tok, 320)["pre"] == "gpt-2"
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(llama3_split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    assert gguf_vocab(tok, 320)["pre"] == "llama-bpe"
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    with pytest.raises(ValueError, match="prefix space"):
        gguf_vocab(tok, 320)
    with pytest.raises(ValueError, match="BPE"):
        gguf_vocab(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")), 320)
    with pytest.raises(ValueError, match="vocab_size is 256"):
        gguf_vocab(byte_tokenizer(), 256)


_LLAMA_CPP_PROMPT = """
import sys, llama_cpp, numpy as np
llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=2, logits_all=True, verbose=False)
llm.eval(list(range(2, 18)))
assert np.isfinite(np.array(llm.scores[:16])).all()
"""


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["test-tiny", "10m"])
def test_llama_cpp_runs_narrow_preset_exports_on_multi_token_prompts(tmp_path, preset):
    """The exports whose narrow linears are fallbacks run in llama.cpp on a 16-token prompt (in a
    subprocess: with Q8_0 fallbacks, llama.cpp's AMX Q8_0 kernel killed the process on AMX CPUs)."""
    import subprocess
    import sys

    import llama_cpp  # noqa: F401  dev extra: missing must fail here, not in the child (and never skip)
    torch.manual_seed(0)
    cfg = BitNetConfig.from_preset(preset, vocab_size=320, hidden_act="silu", tie_word_embeddings=True)
    log: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_gguf(BitNetForCausalLM(cfg).eval(), tmp_path / "m.gguf", byte_tokenizer(), log=log.append)
    assert log and all("written as q5_0" in line or "written as f16" in line for line in log)
    r = subprocess.run([sys.executable, "-c", _LLAMA_CPP_PROMPT, str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])
