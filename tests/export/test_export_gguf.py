"""GGUF export: exact read-back with the gguf package, and upstream llama.cpp (llama-cpp-python) runs it."""

from __future__ import annotations

import copy
from pathlib import Path

import gguf  # a dev extra: if it is missing the tests must fail, not skip
import numpy as np
import pytest
import torch
from export_helpers import byte_tokenizer, silu_model

from bitnet import BitNetForCausalLM
from bitnet.export import export_gguf
from bitnet.export.gguf_export import RELU2_WARNING, gguf_tensor_names, llama_rope_permute
from bitnet.quant import weight_quant

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.mark.parametrize("qtype", ["tq2_0", "tq1_0"])
def test_gguf_reads_back_to_our_ternary_weights_and_scales(tmp_path, qtype):
    model = silu_model()
    path = export_gguf(model, tmp_path / "m.gguf", byte_tokenizer(), qtype=qtype)
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "bitnet"
    tensors = {t.name: t for t in reader.tensors}
    names = gguf_tensor_names(model.config.num_hidden_layers)
    assert set(tensors) == set(names.values())
    want_type = gguf.GGMLQuantizationType[qtype.upper()]
    for ours, theirs in names.items():
        t = tensors[theirs]
        w = model.state_dict()[ours].float()
        got = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type))).reshape(w.shape)
        if ours.endswith("_proj.weight"):
            assert t.tensor_type == want_type, theirs
            q, beta = weight_quant(w)
            # every block's d is beta rounded to fp16: exact ternary codes times that one scale
            beta16 = float(np.float16(beta.item()))
            assert torch.equal(got, q.float() * beta16), theirs
        elif ours == "model.embed_tokens.weight":
            assert torch.equal(got, w.half().float())
        else:
            assert torch.equal(got, w), theirs
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == model.config.vocab_size


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


def _train_tiny(tok, text: str, steps: int) -> BitNetForCausalLM:
    """A plain PyTorch loop on tinyshakespeare: a model with real structure, not random logits."""
    model = silu_model(seed=0, vocab_size=320).train()
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
    text = (DATA / "text" / "tinyshakespeare" / "input.txt").read_text()[:200_000]
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


def test_tq2_0_block_bytes_follow_the_documented_layout():
    """Golden layout (FORMATS.md section 3): byte c*32 + m, bits 2l..2l+1 hold element
    c*128 + l*32 + m as q + 1; then d as fp16. Checked on one block built by hand."""
    q = np.array([(i * 7) % 3 - 1 for i in range(256)], dtype=np.int8)  # every value, no pattern at 4
    beta = 0.3
    block = gguf.quants.quantize((q * np.float32(beta))[None, :], gguf.GGMLQuantizationType.TQ2_0)
    raw = np.asarray(block).reshape(-1).view(np.uint8)
    assert raw.size == 66
    expect = np.zeros(64, dtype=np.uint8)
    for c in range(2):
        for l in range(4):
            for m in range(32):
                expect[c * 32 + m] |= (q[c * 128 + l * 32 + m] + 1) << (2 * l)
    assert np.array_equal(raw[:64], expect)
    assert raw[64:66].view(np.float16)[0] == np.float16(beta)


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
