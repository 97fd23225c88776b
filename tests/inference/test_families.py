"""Every published ternary family, as a tiny replica in its own file conventions, runs as published:
the engine's logits (and load_model's) against an independent reference — transformers where it
loads the family, else a numpy forward written in family_helpers.py — plus generate and chat."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_helpers import tokenizer
from family_helpers import (
    SHAPE, VOCAB, absmean_weight, hf_reference, numpy_forward, onebitllm_replica, stored_weight, transformers_family,
    trilm_replica,
)
from safetensors.numpy import load_file

from bitnet.export import load_model
from bitnet.formats import read_model
from bitnet.inference import Engine

# The engine (fp32) and the float64 references run the same int8 x ternary products; they differ by
# fp32 rounding, which is enough to put x * s on the other side of a .5 boundary in a rare value:
# one int8 activation code then differs by 1 and every later position moves. Measured on these
# random 2-layer replicas: 4e-7 of the largest logit without such a flip, 0.4-2% of it with one
# (the float64 reference then also differs from transformers in fp32 by as much). A convention
# error (scale divided instead of multiplied, a missing norm, wrong RoPE) moves logits by far more;
# RoPE scaling is also pinned directly against transformers' inverse frequencies.
FLIP_REL_TOL = 2.5e-2
# the numpy reference runs in float64 too: the same bound for the same reason
NUMPY_REL_TOL = FLIP_REL_TOL
QC = {"quant_method": "bitnet"}
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}

# family -> (model_type, quantization_config, config overrides, config.json keys as published)
TRANSFORMERS_FAMILIES = {
    "bitnet-b1.58-2B-4T": ("bitnet", {**QC, "linear_class": "autobitlinear", "quantization_mode": "offline",
                                      "modules_to_not_convert": ["lm_head"]},
                           dict(hidden_act="relu2", tie_word_embeddings=True, rope_theta=500000.0), {}),
    "bitnet-b1.58-2B-4T-bf16": ("bitnet", {**QC, "linear_class": "autobitlinear", "quantization_mode": "online"},
                                dict(hidden_act="relu2", tie_word_embeddings=True, rope_theta=500000.0), {}),
    "Falcon3-1.58bit": ("llama", {**QC, "modules_to_not_convert": ["lm_head"]},
                        dict(hidden_act="silu", tie_word_embeddings=False, head_dim=32),
                        dict(drop=("rope_parameters",), rope_theta=1000042.0, rope_scaling=None, head_dim=32)),
    "Llama3-8B-1.58": ("llama", {**QC, "modules_to_not_convert": None},
                       dict(hidden_act="silu", tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE),
                       dict(drop=("rope_parameters",), rope_theta=500000.0, rope_scaling=LLAMA3_ROPE,
                            is_bitnet_config=True, pretraining_tp=1)),
    "Falcon-E": ("llama", {**QC, "modules_to_not_convert": ["lm_head"]},
                 dict(hidden_act="silu", tie_word_embeddings=False), {}),
    "llama-bitnet use_rms_norm": ("llama", {**QC, "modules_to_not_convert": ["lm_head"], "use_rms_norm": True,
                                            "rms_norm_eps": 1e-6},
                                  dict(hidden_act="silu", tie_word_embeddings=False), {}),
}
IDS = np.random.default_rng(3).integers(0, VOCAB, 24)


def _agreement(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max |diff| / max |want|, top-1 agreement) over the rows."""
    return float(np.abs(got - want).max() / np.abs(want).max()), float((got.argmax(-1) == want.argmax(-1)).mean())


def _add_tokenizer(path, chat_template=None):
    tok = tokenizer()
    (path / "tokenizer.json").write_text(tok.to_str())
    tc = {"bos_token": "<|bos|>", "eos_token": "<|eos|>"}
    if chat_template:
        tc["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(tc))
    return tok


@pytest.fixture(scope="module", params=list(TRANSFORMERS_FAMILIES))
def hf_family(request, tmp_path_factory):
    model_type, qc, cfg, published = TRANSFORMERS_FAMILIES[request.param]
    path = transformers_family(tmp_path_factory.mktemp("fam") / "m", model_type, qc, published=published, **cfg)
    _add_tokenizer(path)
    return request.param, path


def test_transformers_families_engine_and_load_model_agree_with_transformers(hf_family):
    name, path = hf_family
    with torch.no_grad():
        want = hf_reference(path)(torch.from_numpy(IDS)[None]).logits[0].numpy()
        ours = load_model(path).double()(torch.from_numpy(IDS)[None])[0].numpy()
    got = Engine(path, threads=1, head="f16").logits(IDS)
    for logits in (got, ours):
        rel, top1 = _agreement(logits, want)
        assert rel <= FLIP_REL_TOL and top1 == 1.0, (name, rel, top1)


def test_transformers_families_generate_text(hf_family):
    name, path = hf_family
    eng = Engine(path, threads=1, head="f16")
    ref = hf_reference(path)
    ids = eng.tokenizer.encode("the quick brown").ids
    new = eng.generate(ids, max_new_tokens=6)
    with torch.no_grad():  # greedy continuation of transformers' model
        seq = torch.tensor([ids])
        for _ in range(6):
            seq = torch.cat([seq, ref(seq).logits[:, -1:].argmax(-1)], 1)
    assert new == seq[0, len(ids):].tolist()[: len(new)] and len(new) > 0
    assert eng.generate("the quick brown", max_new_tokens=4) == eng.tokenizer.decode(new[:4])  # text in, text out


def test_family_detection_and_log(hf_family):
    name, path = hf_family
    desc = read_model(path)
    want = {"bitnet-b1.58-2B-4T": "bitnet-packed", "bitnet-b1.58-2B-4T-bf16": "bitnet-online"}.get(name, "llama-bitnet")
    assert desc.family == want and want in desc.notes[0]
    if name == "Llama3-8B-1.58":
        assert desc.config.rope_scaling["rope_type"] == "llama3" and "rope_scaling llama3" in desc.notes[0]
        theirs = hf_reference(path).model.rotary_emb.inv_freq.numpy()
        np.testing.assert_allclose(desc.rope_inv_freq, theirs, rtol=1e-6)
        assert not np.allclose(theirs, 1.0 / 500000.0 ** (np.arange(0, 16, 2) / 16), rtol=1e-3)  # scaling matters
    if name == "Falcon3-1.58bit":
        assert desc.config.head_dim == 32 != SHAPE["hidden_size"] // SHAPE["num_attention_heads"]
        assert desc.config.rope_theta == 1000042.0 and desc.lm_head is not None and desc.lm_head.dtype == "bf16"


def test_onebitllm_matches_a_numpy_forward(tmp_path):
    path = onebitllm_replica(tmp_path / "1bitllm")
    desc = read_model(path)
    assert desc.family == "1bitllm" and desc.config.use_sub_norms
    cfg, t = json.loads((path / "config.json").read_text()), load_file(str(path / "model.safetensors"))
    want = numpy_forward(cfg, t, IDS, quant_acts=True, weight=absmean_weight,
                         sub=("self_attn.inner_attn_ln", "mlp.ffn_layernorm"))
    got = Engine(path, threads=1, head="f16").logits(IDS)
    with torch.no_grad():
        ours = load_model(path)(torch.from_numpy(IDS)[None])[0].numpy()
    for logits in (got, ours):
        rel, top1 = _agreement(logits, want)
        assert rel <= NUMPY_REL_TOL and top1 == 1.0, (rel, top1)


def test_trilm_row_block_scales_match_a_numpy_forward(tmp_path):
    path = trilm_replica(tmp_path / "trilm", blocks=2)
    desc = read_model(path)
    assert desc.family == "trilm"
    lin = desc.linear(0, "mlp.gate_proj")
    assert lin.row_scale is not None and len(np.unique(lin.row_scale)) == 2
    cfg, t = json.loads((path / "config.json").read_text()), load_file(str(path / "model.safetensors"))
    got = Engine(path, threads=1, head="f16").logits(IDS)
    # the engine quantizes activations to int8, as every ternary model here: tight against that...
    rel, top1 = _agreement(got, numpy_forward(cfg, t, IDS, quant_acts=True, weight=stored_weight, sub=None))
    assert rel <= NUMPY_REL_TOL and top1 == 1.0, (rel, top1)
    # ...and close to TriLM's 16-bit activations (whether its training quantized them is not known)
    rel16, _ = _agreement(got, numpy_forward(cfg, t, IDS, quant_acts=False, weight=stored_weight, sub=None))
    assert rel16 < 0.05
    with pytest.raises(ValueError, match="one scale per row block"):
        load_model(path)


def test_trilm_agrees_with_transformers_16bit_llama(tmp_path):
    path = trilm_replica(tmp_path / "trilm", blocks=4)
    with torch.no_grad():
        want = hf_reference(path)(torch.from_numpy(IDS)[None]).logits[0].numpy()
    rel, top1 = _agreement(Engine(path, threads=1, head="f16").logits(IDS), want)
    assert rel < 0.05 and top1 >= 0.9


def test_a_plain_llama_is_refused_in_one_line(tmp_path):
    path = trilm_replica(tmp_path / "plain", ternary=False)
    with pytest.raises(ValueError) as e:
        Engine(path)
    msg = str(e.value)
    assert "\n" not in msg and "model.safetensors" in msg and "not ternary" in msg and "plain LlamaForCausalLM" in msg


def test_unsupported_quant_method_is_one_line_naming_the_field(tmp_path):
    path = trilm_replica(tmp_path / "gptq")
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: quantization_config\.quant_method 'gptq' .*supported: 'bitnet'"):
        read_model(path)


# ---------------------------------------------------------------------------------------- chat
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
FALCON3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{% if not loop.last %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}{% else %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}")
BITNET_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] + '<|eot_id|>' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '<|eot_id|>' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}\n")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hi there  "},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Count to three."}]


@pytest.mark.parametrize("template", [LLAMA3_TEMPLATE, FALCON3_TEMPLATE, BITNET_TEMPLATE], ids=["llama3", "falcon3", "2b4t"])
def test_chat_template_renders_as_transformers_does(tmp_path, template):
    import transformers

    path = trilm_replica(tmp_path / "m")
    tok = _add_tokenizer(path, template)
    eng = Engine(path, threads=1, head="f16")
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>")
    for gen in (True, False):
        want = hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen, chat_template=template)
        assert eng.apply_chat_template(MESSAGES, add_generation_prompt=gen) == want
    # the reply continues transformers' rendering of the conversation (this tokenizer has no
    # end-of-turn token, so only eos could end it early, in both)
    rendered = hf_tok.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True,
                                          chat_template=template)
    continuation = eng.generate(eng.encode(rendered, add_special_tokens=False), max_new_tokens=3)
    assert continuation and "".join(eng.chat_stream(MESSAGES[:2], max_new_tokens=3)) == tok.decode(continuation)


def test_a_broken_chat_template_is_one_line(tmp_path):
    path = trilm_replica(tmp_path / "m")
    _add_tokenizer(path, "{% for m in messages %}{{ m['content'] }")
    with pytest.raises(ValueError, match=r"chat_template does not compile"):
        Engine(path, threads=1).apply_chat_template(MESSAGES)


# ---------------------------------------------------------------------------------- real shapes
@pytest.mark.parametrize("name, dims", [
    ("falcon3-1b", (2048, 8192, 18, 8, 4, 256, 131072)), ("falcon3-3b", (3072, 9216, 22, 12, 4, 256, 131072)),
    ("falcon3-7b", (3072, 23040, 28, 12, 4, 256, 131072)), ("falcon3-10b", (3072, 23040, 40, 12, 4, 256, 131072)),
    ("llama3-8b", (4096, 14336, 32, 32, 8, 128, 128256)), ("bitnet-2b4t", (2560, 6912, 30, 20, 5, 128, 128256)),
])
def test_bench_shapes_are_the_published_dimensions(name, dims):
    """FORMATS.md section 3b's sizes (bitnet bench --shape NAME builds random weights of these)."""
    from bitnet.inference.bench import shape_config

    c = shape_config(name)
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.vocab_size) == dims
    assert c.hidden_act == ("relu2" if name == "bitnet-2b4t" else "silu")
    assert c.tie_word_embeddings == (name == "bitnet-2b4t") and c.use_sub_norms == (name == "bitnet-2b4t")


def test_unknown_bench_shape_is_one_line():
    from bitnet.inference.bench import shape_config

    with pytest.raises(ValueError, match=r"--shape 'falcon9': unknown \(real shapes: falcon3-1b"):
        shape_config("falcon9")


def test_pickle_only_checkpoint_is_named(tmp_path):
    path = onebitllm_replica(tmp_path / "bin")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"only pytorch_model\*\.bin \(pickles"):
        read_model(path)


def test_column_block_scales_are_named(tmp_path):
    """One scale per block of input columns (a row-parallel shard) is not per-row: one clear line."""
    from safetensors.numpy import save_file

    path = trilm_replica(tmp_path / "cols")
    t = load_file(str(path / "model.safetensors"))
    name = "model.layers.0.self_attn.o_proj.weight"
    w = t[name].astype(np.float32)
    q = np.sign(w)
    t[name] = (q * np.repeat([0.03, 0.05], w.shape[1] // 2)[None, :]).astype(np.float16)
    save_file(t, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{name} is ternary with one scale per block of input columns"):
        Engine(path, threads=1)


def test_unsupported_rope_scaling_is_one_line_naming_file_and_field(tmp_path):
    path = trilm_replica(tmp_path / "yarn")
    cfg = json.loads((path / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: rope_scaling\.rope_type 'yarn' is not supported "
                                         r"\(supported: default, linear, llama3\)"):
        read_model(path)


def test_chat_stops_at_the_models_end_of_turn_token(tmp_path):
    """end_of_turn(): Llama-3's <|eot_id|> and the template's eos_token, where the vocabulary has them."""
    from tokenizers import AddedToken

    path = trilm_replica(tmp_path / "m")
    tok = _add_tokenizer(path, LLAMA3_TEMPLATE)
    tok.add_special_tokens([AddedToken("<|eot_id|>", special=True), AddedToken("<|eos|>", special=True)])
    (path / "tokenizer.json").write_text(tok.to_str())
    eng = Engine(path, threads=1)
    stops, ids = eng.end_of_turn()
    assert stops == ["<|eot_id|>", "<|eos|>"] and set(ids) == {tok.token_to_id("<|eot_id|>"), tok.token_to_id("<|eos|>"), 1}
