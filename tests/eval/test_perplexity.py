"""Sliding-window perplexity: the window arithmetic against a brute-force reference, the engine
against transformers on WikiText-2, and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from eval_helpers import DATA_DIR, FULL_DATA, one_torch_thread

from bitnet.eval import perplexity, sliding_window_nll
from bitnet.eval.hf_reference import load_transformers_fp32
from bitnet.export import load_model

# float64 sums of float32 log-probs: only float32 rounding of the logits remains.
NLL_RTOL = 1e-6
# The bar for the engine against transformers on the same model and windows.
PPL_VS_TRANSFORMERS_RTOL = 5e-3
# Tokens the tiny model's tokenizer makes of the WikiText-2 test file: the full file (~1.26 MB) gives
# well over 100k; the fixture's 40k-character head, over 5k (about 20 windows of 512).
WIKITEXT2_TEST_MIN_TOKENS = 100_000
FIXTURE_TEST_MIN_TOKENS = 5_000


def _torch_logits_fn(model):
    def fn(ids, start):
        with torch.no_grad():
            return model(torch.tensor([list(ids)]))[0, start:].numpy()  # (T - start, V)
    return fn


@pytest.mark.parametrize("context, stride", [(8, 3), (8, 8), (5, 1), (64, 16)])
def test_windows_score_each_token_once_with_its_window_history(trained_export, context, stride):
    """Brute force, one forward per token: token i (in the chunk s <= i < e) is predicted from
    tokens[max(0, e - 1 - context):i]."""
    model = load_model(trained_export).float()
    tokens = np.random.default_rng(1).integers(2, 1024, 41).tolist()
    n = len(tokens)
    with one_torch_thread():
        nll, scored, _ = sliding_window_nll(tokens, _torch_logits_fn(model), context, stride)
        want = 0.0
        for i in range(1, n):
            e = min(1 + ((i - 1) // stride + 1) * stride, n)  # end of the chunk holding token i
            history = tokens[max(0, e - 1 - context):i]
            assert len(history) >= min(i, context - stride + 1)
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([history]))[0, -1].double(), -1)
            want -= float(lp[tokens[i]])
    assert scored == n - 1
    assert nll == pytest.approx(want, rel=NLL_RTOL)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the suite's slowest test: 96 s measured under load 11 on 2 cores
def test_wikitext2_perplexity_matches_transformers(trained_export):
    """Engine vs transformers' fp32 model on the whole WikiText-2 test file (the fixture: its first
    40k characters), 512-token windows."""
    file = DATA_DIR / "text" / "wikitext-2" / "test.txt"
    ours = perplexity(trained_export, file, context=512, stride=512, progress=False)
    from tokenizers import Tokenizer

    tokens = Tokenizer.from_file(str(trained_export / "tokenizer.json")).encode(
        file.read_text(encoding="utf-8"), add_special_tokens=False).ids
    with one_torch_thread():
        tm = load_transformers_fp32(trained_export)
        nll, scored, _ = sliding_window_nll(
            tokens, lambda ids, s: _torch_logits_fn(lambda x: tm(x).logits)(ids, s), 512, 512)
    theirs = math.exp(nll / scored)
    assert ours["tokens"] == scored > (WIKITEXT2_TEST_MIN_TOKENS if FULL_DATA else FIXTURE_TEST_MIN_TOKENS)
    assert ours["perplexity"] == pytest.approx(theirs, rel=PPL_VS_TRANSFORMERS_RTOL)
    assert 1 < ours["perplexity"] < 1024  # better than uniform over the vocabulary: the model learned
    assert ours["tokens_per_s"] == pytest.approx(ours["tokens"] / ours["seconds"])  # the speed of what was scored


def test_torch_backend_and_defaults(trained_export, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("To be, or not to be, that is the question. " * 20, encoding="utf-8")
    with one_torch_thread():
        r = perplexity(trained_export, f, context=32, backend="torch", progress=False)
    assert r["stride"] == 16 and r["context"] == 32 and r["tokens"] > 100
    assert math.isclose(r["perplexity"], math.exp(r["nll_per_token"]))


def test_bad_input(trained_export, tmp_path):
    with pytest.raises(FileNotFoundError, match="text file not found"):
        perplexity(trained_export, tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 10)
    with pytest.raises(ValueError, match="not UTF-8"):
        perplexity(trained_export, bad)
    ok = tmp_path / "ok.txt"
    ok.write_text("hello world " * 10)
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        perplexity(trained_export, ok, context=4096)
    with pytest.raises(ValueError, match="stride must be"):
        perplexity(trained_export, ok, context=16, stride=17)
