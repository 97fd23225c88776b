"""The ``bitnet`` lm-eval model: registration, tokenization, prefix reuse, rolling windows, stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _compare import evaluate, logliks
from eval_helpers import one_torch_thread
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from bitnet.eval import BitNetLM
from bitnet.export import load_model

# Prefix reuse changes only which K/V entries are recomputed; per-position float sums are the same
# work in a different call, so results agree to float32 rounding of the attention softmax.
REUSE_ATOL = 1e-4
# Rolling loglikelihood sums ~100 float32 log-probs computed two ways (windows vs one pass).
ROLLING_ATOL = 1e-3
MIN_REUSE_SAVING = 2.5  # the speed target, here as positions computed (5-shot MMLU)


def test_registered_as_bitnet():
    assert get_model("bitnet") is BitNetLM


def test_tokenization_matches_hf_model(trained_export):
    """Same ids as lm-eval's hf model (transformers' tokenizer), including its no-double-BOS rule."""
    from bitnet.eval.hf_reference import hf_lm

    ours = BitNetLM(trained_export, backend="torch")
    with one_torch_thread():
        theirs = hf_lm(trained_export)
    for s in ["Question: What is 2+2?\nAnswer:", " B", "<|bos|>already prefixed", "ünïcödé  spaces "]:
        assert ours.tok_encode(s) == theirs.tok_encode(s), s
        assert ours.tok_encode(s, add_special_tokens=False) == theirs.tok_encode(s, add_special_tokens=False)
    assert ours.tok_encode("x")[0] == ours.prefix_token_id  # the tokenizer adds BOS, as Llama-3's does
    assert (ours.eot_token_id, ours.prefix_token_id) == (theirs.eot_token_id, theirs.prefix_token_id)


def test_prefix_reuse_same_results_fewer_positions(trained_export):
    """5-shot MMLU: with reuse the engine computes each subject's few-shot prefix about once."""
    on = BitNetLM(trained_export, backend="engine")
    off = BitNetLM(trained_export, backend="engine", prefix_reuse=False)
    a = evaluate(on, ["mmlu_anatomy", "mmlu_virology"], limit=4, num_fewshot=5)
    b = evaluate(off, ["mmlu_anatomy", "mmlu_virology"], limit=4, num_fewshot=5)
    for task in a:
        for sa, sb in zip(a[task], b[task]):
            np.testing.assert_allclose(logliks(sa), logliks(sb), atol=REUSE_ATOL, rtol=0)
    assert off.stats["computed"] == off.stats["positions"]
    assert off.stats["computed"] >= MIN_REUSE_SAVING * on.stats["computed"]


def test_engine_cache_reuse_in_any_order(trained_export):
    """Requests in an order that shares, drops and re-grows prefixes: reuse never changes rows."""
    lm = BitNetLM(trained_export, backend="engine")
    rng = np.random.default_rng(0)
    base = rng.integers(2, 1024, 60).tolist()
    seqs = [base, base[:40] + [7, 8, 9], base[:10], base + [5], base[:40] + [7, 8, 9, 10]]
    for s in seqs:
        got = lm._logits(s, start=len(s) // 2)
        fresh = lm.model.engine.logits(s, start=len(s) // 2)  # reuse_cache=False: from scratch
        np.testing.assert_allclose(got, fresh, atol=REUSE_ATOL, rtol=0)
        lm._last_tokens = list(s)


def _instance(kind: str, args: tuple) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.mark.parametrize("backend", ["engine", "torch"])
def test_loglikelihood_rolling_matches_window_by_window_pytorch(trained_export, backend):
    """Windows of max_length=32 over ~100 tokens: the sum equals each window scored by the PyTorch model."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = "The quick brown fox jumps over the lazy dog. " * 6
    lm = BitNetLM(trained_export, backend=backend, max_length=32)
    (got,) = lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))], disable_tqdm=True)
    ids = lm.tok_encode(text)
    windows = list(map(make_disjoint_window, get_rolling_token_windows(ids, lm.prefix_token_id, 32, 1)))
    assert len(windows) >= 3
    model, ref = load_model(trained_export).float(), 0.0
    with one_torch_thread(), torch.no_grad():
        for ctx, cont in windows:
            full = ctx + cont
            lp = torch.log_softmax(model(torch.tensor([full[:-1]]))[0].double(), -1)  # (T-1, V)
            ref += float(lp[torch.arange(len(ctx) - 1, len(full) - 1), torch.tensor(cont)].sum())
    assert got == pytest.approx(ref, abs=ROLLING_ATOL)


@pytest.mark.parametrize("backend", ["engine", "torch"])
def test_generate_until_stops_at_stop_string_and_max_tokens(trained_export, backend):
    lm = BitNetLM(trained_export, backend=backend)
    ctx = "Question: Natalia sold clips to 48 of her friends. How many clips did she sell?\nAnswer:"
    (free,) = lm.generate_until([_instance("generate_until", (ctx, {"until": ["@@never@@"], "max_gen_toks": 24}))],
                                disable_tqdm=True)
    assert 0 < len(lm.tok_encode(free, add_special_tokens=False)) <= 24 + 1  # +1: re-encoding may merge differently
    stop = free.strip()[3:6]
    assert stop and stop in free
    (cut,) = lm.generate_until([_instance("generate_until", (ctx, {"until": [stop], "max_gen_toks": 24}))],
                               disable_tqdm=True)
    assert cut == free.split(stop)[0]


def test_bad_input_is_one_clear_error(trained_export, tmp_path):
    import shutil

    no_tok = tmp_path / "no_tok"
    shutil.copytree(trained_export, no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        BitNetLM(no_tok, backend="torch")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        BitNetLM(tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown backend"):
        BitNetLM(trained_export, backend="gpu")


def test_tokenizer_without_bos_uses_eos_as_prefix(tmp_path):
    """The project's own tokenizer (no BOS): like hf, empty contexts are conditioned on EOS."""
    from eval_helpers import tiny_random_export

    from bitnet.eval.hf_reference import hf_lm

    export = tiny_random_export(tmp_path / "nobos")
    ours = BitNetLM(export, backend="engine")
    with one_torch_thread():
        theirs = hf_lm(export)
    assert ours.prefix_token_id == ours.eot_token_id == theirs.prefix_token_id
    reqs = [_instance("loglikelihood", ("", " the end")), _instance("loglikelihood", ("Once upon", " a time"))]
    with one_torch_thread():
        want = theirs.loglikelihood(reqs, disable_tqdm=True)
    got = ours.loglikelihood(reqs, disable_tqdm=True)
    for (g, _), (w, _) in zip(got, want):
        assert g == pytest.approx(w, abs=ROLLING_ATOL)
