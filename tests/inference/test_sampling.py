"""The sampler: SamplingParams' checks, the fast path against its float64 reference and against
transformers' logits processors, draw frequencies against the distribution, seeds, and the
incremental detokenizer against a full decode."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from engine_helpers import tokenizer
from scipy import stats
from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from bitnet.inference.sampling import (MIN_TEMPERATURE, SamplingError, SamplingParams, kept_probs,
                                       kept_probs_reference, sample, sample_reference, sample_rows)
from bitnet.inference.textstream import TextStream

# A hang fails the test (pytest-timeout, a dev dependency) instead of stalling the suite.
pytestmark = pytest.mark.timeout(300)

# The fast path exponentiates in float32 and normalises in float64: probabilities agree with the
# float64 reference (and transformers in float64) to float32's relative precision, a little widened.
PROB_RTOL = 1e-5
PROB_ATOL = 1e-9
# Chi-square goodness of fit of draw counts: refuse only below this p-value (a correct sampler fails
# once in 10^4 fixed seeds; a sampler that drew from a different distribution fails surely at N=20,000).
CHI2_P = 1e-4

_tok = functools.cache(tokenizer)


def _logits(vocab: int, seed: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(vocab) * scale).astype(np.float32)


def _hf_probs(logits: np.ndarray, p: SamplingParams, context: list[int]) -> np.ndarray:
    """transformers' processors in generate()'s order, in float64, then the softmax."""
    scores = torch.from_numpy(logits.astype(np.float64))[None]  # (1, V)
    ids = torch.tensor([context or [0]], dtype=torch.long)
    if p.repetition_penalty != 1.0 and context:
        scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
    scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
    if p.top_k is not None:
        scores = TopKLogitsWarper(p.top_k)(ids, scores)
    if p.top_p is not None:
        scores = TopPLogitsWarper(p.top_p)(ids, scores)
    return torch.softmax(scores, -1)[0].numpy()


CASES = [  # (name, params, context)
    ("temperature", SamplingParams(temperature=0.7), []),
    ("top_k", SamplingParams(temperature=1.0, top_k=10), []),
    ("top_p", SamplingParams(temperature=1.0, top_p=0.9), []),
    ("top_p hot", SamplingParams(temperature=1.8, top_p=0.5), []),
    ("top_k then top_p", SamplingParams(temperature=0.8, top_k=40, top_p=0.8), []),
    ("repetition penalty", SamplingParams(temperature=1.0, repetition_penalty=1.3), [3, 7, 7, 100, 250]),
    ("everything", SamplingParams(temperature=0.6, top_k=50, top_p=0.95, repetition_penalty=1.2), [1, 2, 3, 9]),
]


@pytest.mark.parametrize("vocab", [300, 128_256])
@pytest.mark.parametrize("name,params,context", CASES, ids=[c[0] for c in CASES])
def test_kept_set_and_probabilities_equal_transformers(name, params, context, vocab):
    logits = _logits(vocab, seed=vocab + len(name))
    want = _hf_probs(logits, params, context)
    ref = kept_probs_reference(logits, params, context)
    ids, p = kept_probs(logits, params, context)
    assert np.array_equal(np.flatnonzero(want), np.flatnonzero(ref))
    assert np.array_equal(ids, np.flatnonzero(want))  # the fast path keeps the same set ...
    np.testing.assert_allclose(p, want[ids], rtol=PROB_RTOL, atol=PROB_ATOL)  # ... with the same probabilities
    np.testing.assert_allclose(ref, want, rtol=PROB_RTOL, atol=PROB_ATOL)
    if params.top_k is not None or params.top_p is not None:
        assert ids.size < vocab  # something was cut


@pytest.mark.parametrize("vocab,seeds", [(300, 200), (128_256, 30)])
@pytest.mark.parametrize("name,params,context", CASES, ids=[c[0] for c in CASES])
def test_fast_and_reference_draw_the_same_token_for_the_same_seed(name, params, context, vocab, seeds):
    logits = _logits(vocab, seed=1, scale=1.0)  # flat: at 128k the draws cross many of the fast path's blocks
    fast = [sample(logits, params, np.random.default_rng(s), context) for s in range(seeds)]
    ref = [sample_reference(logits, params, np.random.default_rng(s), context) for s in range(seeds)]
    assert fast == ref
    if params.top_k is None and vocab > 1000:
        assert len(set(fast)) > seeds // 2


@pytest.mark.parametrize("name,params,context", CASES, ids=[c[0] for c in CASES])
def test_draw_frequencies_follow_the_distribution(name, params, context):
    logits = _logits(40, seed=2, scale=1.0)  # a small vocabulary: every kept token is drawn often
    context = [c % 40 for c in context]
    want = _hf_probs(logits, params, context)
    rng = np.random.default_rng(1234)
    n = 20_000
    counts = np.bincount([sample(logits, params, rng, context) for _ in range(n)], minlength=logits.size)
    kept = np.flatnonzero(want)
    assert counts[want == 0].sum() == 0  # never a token outside the kept set
    if kept.size > 1:
        assert stats.chisquare(counts[kept], want[kept] * n).pvalue > CHI2_P


def test_a_greedy_fallback_would_fail_the_frequency_test():
    """The frequency test has teeth: argmax draws are far from the distribution."""
    logits = _logits(40, seed=2, scale=1.0)
    want = _hf_probs(logits, SamplingParams(temperature=1.0), [])
    counts = np.bincount([int(np.argmax(logits))] * 20_000, minlength=40)
    assert stats.chisquare(counts, want * 20_000).pvalue < CHI2_P


def test_seeds():
    logits = _logits(300, seed=3, scale=0.5)  # flat: many likely tokens
    params = SamplingParams(temperature=1.0)

    def draws(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [sample(logits, params, rng) for _ in range(20)]

    runs = [tuple(draws(s)) for s in range(10)]
    assert len(set(runs)) == 10  # different seeds, different samples
    assert draws(4) == list(runs[4])  # the same seed, the same samples


def test_greedy_and_tiny_temperatures():
    logits = _logits(128_256, seed=4)
    assert sample(logits, SamplingParams(temperature=0.0)) == int(np.argmax(logits))
    p = SamplingParams(temperature=1e-308)
    assert p.temperature == MIN_TEMPERATURE
    assert sample(logits, p, np.random.default_rng(0)) == int(np.argmax(logits))  # a gap of ~0.1 at T=0.01
    with pytest.raises(ValueError, match="not finite"):
        sample(np.full(10, np.nan, dtype=np.float32), SamplingParams(temperature=1.0), np.random.default_rng(0))


BAD = [
    ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"temperature": -0.1}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": float("nan")}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"), ({"repetition_penalty": float("nan")}, "repetition_penalty"),
    ({"seed": -1}, "seed"), ({"seed": 2**70}, "seed"), ({"seed": True}, "seed"),
    ({"max_tokens": -1}, "max_tokens"), ({"stop": [1]}, "stop"),
]


@pytest.mark.parametrize("kw,field", BAD, ids=[str(b[0]) for b in BAD])
def test_out_of_range_values_are_refused_naming_the_field(kw, field):
    with pytest.raises(SamplingError) as e:
        SamplingParams(**kw)
    assert e.value.field == field and str(e.value).startswith(field)
    with pytest.raises(SamplingError, match=f"^--{field.replace('_', '-')}"):
        SamplingParams.named(lambda n: "--" + n.replace("_", "-"), **kw)


def test_edges_are_allowed_and_normalised():
    p = SamplingParams(temperature=2, top_k=0, top_p=1.0, seed=2**63 - 1, stop="x")
    assert (p.temperature, p.top_k, p.top_p, p.seed, p.stop) == (2.0, None, None, 2**63 - 1, ("x",))


def test_text_stream_pieces_join_to_the_full_decode():
    tok = _tok()
    rng = np.random.default_rng(0)
    for trial in range(20):  # random ids: partial UTF-8, odd merges
        ids = rng.integers(0, tok.get_vocab_size(), 40).tolist()
        ts = TextStream(tok)
        pieces = [ts.push(t) for t in ids] + [ts.flush()]
        assert "".join(pieces) == tok.decode(ids)
    ids = tok.encode("to be or not to be é, that is the question").ids
    ts = TextStream(tok, ["not t", "zz"])
    pieces = [ts.push(t) for t in ids]
    assert "".join(pieces) == "to be or " and ts.stopped and ts.flush() == ""


@pytest.mark.parametrize("size", [10, 1000, 128_256])
def test_blocked_inverse_cdf_equals_a_plain_running_sum(size):
    from bitnet.inference.sampling import _draw

    rng = np.random.default_rng(size)
    w = rng.random(size).astype(np.float32) * (rng.random(size) < 0.3)  # zeros: tokens cut out
    cum = np.cumsum(w, dtype=np.float64)
    for u in list(rng.random(200)) + [0.0, np.nextafter(1.0, 0.0)]:
        i = _draw(w, u)
        assert w[i] > 0
        x = u * cum[-1]
        assert i == (np.flatnonzero(w)[-1] if x >= cum[-1] else np.searchsorted(cum, x, side="right"))


def test_sample_rows_equals_sample_row_by_row_with_the_same_seeds():
    """The batch sampler the scheduler uses: every row gets the token sample() gives it alone with the
    same generator state (greedy, penalised greedy, each case above), rows not to sample get None,
    and a row whose logits are not finite gets sample()'s exception while the others go on."""
    vocab = 128_256
    rows = [(SamplingParams(temperature=0), [])] + [(p, c) for _, p, c in CASES] + \
           [(SamplingParams(temperature=0, repetition_penalty=1.5), [5, 6]), (None, [])]
    logits = np.stack([_logits(vocab, 100 + i) for i in range(len(rows) + 1)])  # (n, V)
    logits[-1, 17] = np.nan  # the last row: a temperature row that cannot be sampled
    rows.append((SamplingParams(temperature=0.9), []))
    for seed in range(3):
        gens = [np.random.default_rng([seed, i]) for i in range(len(rows))]
        got = sample_rows(logits, [p for p, _ in rows], gens, [c for _, c in rows])
        alone = [np.random.default_rng([seed, i]) for i in range(len(rows))]
        for i, ((p, c), g) in enumerate(zip(rows, got)):
            if p is None:
                assert g is None
            elif i == len(rows) - 1:
                assert isinstance(g, ValueError) and "not finite" in str(g)
                with pytest.raises(ValueError, match="not finite"):
                    sample(logits[i], p, alone[i], c)
            else:
                assert g == sample(logits[i], p, alone[i], c), f"row {i}"
                assert gens[i].random() == alone[i].random()  # the same draws were taken
    with pytest.raises(ValueError, match="2 rows, 1 params"):
        sample_rows(logits[:2], [SamplingParams()], [None, None], [(), ()])


def test_sample_batch_then_advance_equals_step():
    """Generation.step(row) and sample_batch + Generation.advance give the same tokens, text and ends,
    step after step, for a batch of generations with different settings (fixed seeds)."""
    from bitnet.inference.generation import Generation, sample_batch

    tok = _tok()
    vocab = tok.get_vocab_size()
    settings = [SamplingParams(temperature=0, max_tokens=6), SamplingParams(temperature=0.8, seed=3, max_tokens=9),
                SamplingParams(temperature=1.0, top_p=0.9, seed=4, repetition_penalty=1.3, max_tokens=9),
                SamplingParams(temperature=0.7, top_k=5, seed=5, stop=("e",), max_tokens=9)]
    prompt = tok.encode("to be or not").ids
    one = [Generation(p, prompt, tok, 64) for p in settings]
    many = [Generation(p, prompt, tok, 64) for p in settings]
    rng = np.random.default_rng(0)
    live = list(range(len(settings)))
    for _ in range(12):
        logits = (rng.standard_normal((len(settings), vocab)) * 2).astype(np.float32)
        tokens = sample_batch([many[i] if i in live else None for i in range(len(settings))], logits)
        assert all(tokens[i] is None for i in range(len(settings)) if i not in live)
        for i in list(live):
            want, got = one[i].step(logits[i]), many[i].advance(tokens[i])
            assert got == want
            if want.finish_reason is not None:
                live.remove(i)
    assert not live  # every setting reached an end
