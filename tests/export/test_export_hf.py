"""Our packed export against transformers, and transformers-written checkpoints against us."""

from __future__ import annotations

import json

import torch
import transformers
from export_helpers import tiny_model
from safetensors import safe_open

from bitnet.export import export_hf, load_model
from bitnet.quant import unpack_ternary, weight_quant

# transformers multiplies (x_q . q) by beta; we fold beta into the weight first: fp32 rounding only.
HF_VS_OURS_ATOL = 1e-5
# the export rounds beta, embeddings and norms to bf16 (8-bit mantissa): relative error up to 2^-8
# per value, and a rounded norm can move an int8 activation code by one, which two layers carry to
# the logits: measured 0.032 of the logit range on test-tiny (SiLU FFN), so 5e-2.
EXPORT_VS_LATENT_RTOL = 5e-2
# transformers' default load computes in bf16 (the export's dtype): 8 mantissa bits through every
# layer and activation re-quantization; measured 0.02-0.035 of the logit range on test-tiny.
BF16_RUN_REL_TOL = 6e-2


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
    text = "to be or not to be, the lazy dog"
    assert transformers.AutoTokenizer.from_pretrained(out)(text).input_ids == tokenizer.encode(text).ids


def test_transformers_default_bf16_load_of_our_export(tmp_path, model, tokenizer):
    out = export_hf(model, tmp_path / "exp", tokenizer)
    tm = transformers.AutoModelForCausalLM.from_pretrained(out).eval()  # as a user would: no dtype
    assert tm.dtype == torch.bfloat16
    ids = torch.randint(0, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, mine = tm(ids).logits.float(), load_model(out)(ids)
    assert (theirs - mine).abs().max() <= BF16_RUN_REL_TOL * mine.abs().max()


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


def _transformers_checkpoint(path, cfg, qc: dict, seed: int = 0):
    """Have transformers itself write a checkpoint of ``cfg`` with quantization_config ``qc``.

    Offline ``bitlinear``: transformers' own BitLinear modules hold packed weights from its own
    ``pack_weights`` and a stored scale of 1/beta, as onebitllms / Falcon3-1.58bit ship them.
    ``online``: the float master weights, as the 2B4T ``-bf16`` variant ships them.
    """
    from transformers.integrations.bitnet import BitLinear as HFBitLinear
    from transformers.integrations.bitnet import pack_weights, replace_with_bitnet_linear
    from transformers.utils.quantization_config import BitNetQuantConfig

    torch.manual_seed(seed)
    d = cfg.to_hf_dict("float32")
    tm = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(d.pop("model_type"), **d))
    for m in tm.modules():  # non-trivial norms so that a misplaced norm shows in the logits
        if "RMSNorm" in type(m).__name__:
            torch.nn.init.normal_(m.weight, 1.0, 0.2)
    if qc["quantization_mode"] == "offline":
        latent = {n: m.weight.detach().clone() for n, m in tm.named_modules() if isinstance(m, torch.nn.Linear)}
        replace_with_bitnet_linear(tm, ["lm_head"], BitNetQuantConfig(**{k: v for k, v in qc.items() if k != "quant_method"}))
        for n, m in tm.named_modules():
            if isinstance(m, HFBitLinear):
                q, beta = weight_quant(latent[n])
                m.weight = torch.nn.Buffer(pack_weights(q.clone()))  # (out/4, in) uint8
                m.weight_scale = torch.nn.Buffer((1.0 / beta).reshape(1))  # bitlinear divides by it
                if m.rms_norm is not None:
                    m.rms_norm.to_empty(device="cpu")
                    torch.nn.init.normal_(m.rms_norm.weight, 1.0, 0.2)
    tm.config.quantization_config = qc
    tm.save_pretrained(path)
    return path


def _agree_with_transformers(path):
    tm = _hf_fp32(path)
    ours = load_model(path)
    ids = torch.randint(0, ours.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(tm(ids).logits, ours(ids), atol=HF_VS_OURS_ATOL, rtol=0)
    return ours


QC = {"quant_method": "bitnet", "modules_to_not_convert": ["lm_head"]}


def test_loads_transformers_bitlinear_inverse_scale_bitnet_arch(tmp_path):
    cfg = tiny_model().config
    qc = {**QC, "linear_class": "bitlinear", "quantization_mode": "offline"}
    ours = _agree_with_transformers(_transformers_checkpoint(tmp_path / "bl", cfg, qc))
    # the stored 1/beta became beta: our latent re-quantizes to the stored scale
    with safe_open(str(tmp_path / "bl" / "model.safetensors"), "pt") as f:
        stored = f.get_tensor("model.layers.0.mlp.down_proj.weight_scale").item()
    _, beta = weight_quant(ours.model.layers[0].mlp.down_proj.weight)
    assert abs(beta.item() * stored - 1.0) < 1e-6


def test_loads_transformers_llama_use_rms_norm_falcon3_style(tmp_path):
    cfg = tiny_model(use_sub_norms=False, use_rms_norm=True, hidden_act="silu", tie_word_embeddings=False).config
    qc = {**QC, "linear_class": "bitlinear", "quantization_mode": "offline", "use_rms_norm": True, "rms_norm_eps": 1e-6}
    ours = _agree_with_transformers(_transformers_checkpoint(tmp_path / "llama", cfg, qc))
    assert ours.model.layers[0].self_attn.q_proj.rms_norm.variance_epsilon == 1e-6 != cfg.rms_norm_eps
    # and our re-export keeps that eps, so transformers still agrees on it
    again = export_hf(ours, tmp_path / "again")
    assert json.loads((again / "config.json").read_text())["quantization_config"]["rms_norm_eps"] == 1e-6
    _agree_with_transformers(again)


def test_loads_online_bf16_master_weights(tmp_path):
    cfg = tiny_model().config
    qc = {**QC, "linear_class": "autobitlinear", "quantization_mode": "online"}
    _agree_with_transformers(_transformers_checkpoint(tmp_path / "online", cfg, qc))


def test_reexport_of_an_export_is_identical(tmp_path, model):
    a = export_hf(model, tmp_path / "a")
    b = export_hf(load_model(a), tmp_path / "b")
    with safe_open(str(a / "model.safetensors"), "pt") as fa, safe_open(str(b / "model.safetensors"), "pt") as fb:
        assert set(fa.keys()) == set(fb.keys())
        for k in fa.keys():
            assert torch.equal(fa.get_tensor(k), fb.get_tensor(k)), k


def test_unpacked_ternary_autobitlinear_weights_load_like_packed(tmp_path, model):
    """transformers' AutoBitLinear also reads unpacked ternary values; so do we, and we check them."""
    import pytest
    from safetensors.torch import load_file, save_file

    out = export_hf(model, tmp_path / "exp")
    packed = load_model(out)
    f = out / "model.safetensors"
    sd = load_file(str(f))
    key = "model.layers.0.self_attn.v_proj.weight"
    sd[key] = unpack_ternary(sd[key]).to(torch.bfloat16)  # (out, in) values in {-1, 0, 1}
    save_file(sd, str(f), metadata={"format": "pt"})
    ids = torch.arange(30).reshape(1, 30)
    with torch.no_grad():
        assert torch.equal(load_model(out)(ids), packed(ids))
    sd[key][0, 0] = 0.5
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"model\.safetensors.*{key}.*not ternary"):
        load_model(out)


def test_llama_layout_export_loads_in_transformers(tmp_path):
    """Our export of a Llama-architecture ternary model (RMSNorm inside every linear, untied head)."""
    model = tiny_model(use_sub_norms=False, use_rms_norm=True, hidden_act="silu", tie_word_embeddings=False)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "RMSNorm":
                m.weight.normal_(1.0, 0.2)
    out = export_hf(model, tmp_path / "llama")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["quantization_config"]["use_rms_norm"] is True
    ours = _agree_with_transformers(out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
        assert "model.layers.0.mlp.up_proj.rms_norm.weight" in f.keys()
    assert ours.config.use_rms_norm and not ours.config.use_sub_norms
