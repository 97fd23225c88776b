"""Our packed export against transformers, and transformers-written checkpoints against us."""

from __future__ import annotations

import json

import torch
import transformers
from conftest import tiny_model
from safetensors import safe_open

from bitnet.export import export_hf, load_model
from bitnet.quant import unpack_ternary, weight_quant

# transformers multiplies (x_q . q) by beta; we fold beta into the weight first: fp32 rounding only.
HF_VS_OURS_ATOL = 1e-5
# the export rounds beta, embeddings and norms to bf16 (8-bit mantissa): relative error up to 2^-8.
EXPORT_VS_LATENT_RTOL = 2e-2


def _hf_fp32(path):
    """transformers' model in fp32 (from_pretrained(dtype=fp32) keeps non-quantized tensors in bf16)."""
    tm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for t in list(tm.parameters()) + list(tm.buffers()):
        if t.is_floating_point():
            t.data = t.data.float()
    return tm


def test_transformers_loads_our_export_and_agrees(tmp_path, model, tokenizer):
    out = export_hf(model, tmp_path / "exp", tokenizer)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["linear_class"] == "autobitlinear"
    assert cfg["quantization_config"]["quantization_mode"] == "offline"
    assert cfg["tie_word_embeddings"] is True and cfg["max_position_embeddings"] == 256
    tm = _hf_fp32(out)
    ours = load_model(out)
    ids = torch.randint(0, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine, latent = tm(ids).logits, ours(ids), model(ids)
    torch.testing.assert_close(theirs, mine, atol=HF_VS_OURS_ATOL, rtol=0)
    scale = latent.abs().max()
    assert (mine - latent).abs().max() <= EXPORT_VS_LATENT_RTOL * scale
    assert (out / "tokenizer.json").is_file()
    assert transformers.AutoTokenizer.from_pretrained(out)("to be").input_ids


def test_packed_tensors_are_the_oracle_quantization(tmp_path, model):
    out = export_hf(model, tmp_path / "exp")
    w = model.model.layers[1].self_attn.k_proj.weight
    q, beta = weight_quant(w)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        packed = f.get_tensor("model.layers.1.self_attn.k_proj.weight")
        scale = f.get_tensor("model.layers.1.self_attn.k_proj.weight_scale")
        emb = f.get_tensor("model.embed_tokens.weight")
        assert "lm_head.weight" not in f.keys()  # tied
    assert packed.dtype == torch.uint8 and packed.shape == (w.shape[0] // 4, w.shape[1])
    assert torch.equal(unpack_ternary(packed), q)
    assert scale.dtype == torch.bfloat16 and scale.shape == (1,)
    assert scale.item() == beta.to(torch.bfloat16).item()
    assert emb.dtype == torch.bfloat16
    assert meta["format"] == "pt" and "multiply" in meta["weight_scale"]
