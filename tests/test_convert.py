"""to_bitnet: ternarize any transformers causal LM for fine-tuning."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from bitnet import BitLinear
from bitnet.convert import set_lambda, to_bitnet
from bitnet.quant import fake_act_quant, fake_weight_quant


def tiny(arch: str, tie: bool = False):
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    cfg = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[arch](**common)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_replaces_linears_but_not_embeddings_or_head(arch):
    model = tiny(arch)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    old_q = model.model.layers[0].self_attn.q_proj.weight
    to_bitnet(model)
    bit = [n for n, m in model.named_modules() if isinstance(m, BitLinear)]
    assert len(bit) == n_linear - 1  # everything but lm_head
    assert type(model.lm_head) is nn.Linear and isinstance(model.model.embed_tokens, nn.Embedding)
    assert model.model.layers[0].self_attn.q_proj.weight is old_q  # weights kept, not copied
    # Qwen2 has q/k/v biases: they are kept too
    if arch == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None


def test_converted_layer_computes_bitnet():
    model = tiny("llama")
    x = torch.randn(2, 5, 32)
    q = model.model.layers[0].self_attn.q_proj
    w = q.weight.detach().clone()
    to_bitnet(model)
    out = model.model.layers[0].self_attn.q_proj(x)
    assert torch.equal(out, nn.functional.linear(fake_act_quant(x), fake_weight_quant(w)))


def test_lambda_zero_keeps_the_original_outputs_and_set_lambda():
    model = tiny("llama")
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        ref = model(ids).logits
        to_bitnet(model, lambda_=0.0)
        same = model(ids).logits
        assert torch.equal(ref, same)
        assert set_lambda(model, 1.0) == 14
        assert not torch.allclose(model(ids).logits, ref)
    with pytest.raises(ValueError):
        set_lambda(model, -0.1)


def test_tied_head_is_never_converted():
    model = tiny("llama", tie=True)
    to_bitnet(model, modules_to_not_convert=())
    assert type(model.lm_head) is nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_inner_rms_norm_and_training_step():
    model = tiny("llama")
    to_bitnet(model, use_rms_norm=True)
    model.train()
    layer = model.model.layers[0].mlp.down_proj
    assert layer.rms_norm is not None and layer.rms_norm.weight.shape == (64,)
    ids = torch.randint(0, 97, (2, 9))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and layer.weight.grad is not None and layer.rms_norm.weight.grad is not None


def test_no_linear_is_an_error():
    with pytest.raises(ValueError, match="no nn.Linear"):
        to_bitnet(nn.Sequential(nn.Embedding(3, 4)))
