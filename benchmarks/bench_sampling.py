"""Per-token cost of sampling and detokenizing on the engine thread, before and after issue 26.

    python benchmarks/bench_sampling.py [--vocab 128256] [--reply 1024] [--repeat 200]

"before" is the code this replaced, copied here as the baseline: the row copied to float64 and the
whole vocabulary sorted for top-p, and the whole reply decoded again at every token. "after" is
``bitnet.inference.sampling.sample`` and ``TextStream`` (``DecodeStream``). Logits are synthetic:
"peaked" (a few tokens far above the rest, as a trained model's usually are) and "flat" (N(0, 3)
over the whole vocabulary: the nucleus is thousands of tokens, the worst case for top-p). Timings
are medians of interleaved A/B rounds; on a shared machine compare the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "inference"))

from bitnet.inference.sampling import SamplingParams, sample  # noqa: E402
from bitnet.inference.textstream import TextStream  # noqa: E402


def before_sample(logits, temperature=0.0, top_k=None, top_p=None, rng=None) -> int:
    """The sampler before issue 26 (inference/engine.py sample_next), without repetition penalty."""
    if temperature <= 0.0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64).copy()
    z = z / temperature
    if top_k is not None and 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and 0.0 < top_p < 1.0:
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p)) + 1]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(p.size, p=p))


class BeforeTextStream:
    """The detokenizer before issue 26: the whole reply decoded again at every token."""

    def __init__(self, tokenizer) -> None:
        self.tok, self.ids, self.emitted = tokenizer, [], 0

    def push(self, t: int) -> str:
        self.ids.append(t)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece


def _median_us(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def sampling_table(vocab: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    flat = (rng.standard_normal(vocab) * 3).astype(np.float32)
    peaked = (rng.standard_normal(vocab) * 2).astype(np.float32)
    peaked[rng.choice(vocab, 20, replace=False)] += np.linspace(20, 12, 20).astype(np.float32)
    configs = [("greedy", dict(temperature=0.0)), ("temperature 0.8", dict(temperature=0.8)),
               ("top_p 0.9", dict(temperature=0.8, top_p=0.9)), ("top_k 40 + top_p 0.95",
                                                                  dict(temperature=0.8, top_k=40, top_p=0.95))]
    print(f"## sampling one token, vocabulary {vocab} (median us per token)")
    print(f"{'logits':>7} {'settings':>22} {'before':>9} {'after':>9} {'speedup':>8}")
    for lname, logits in (("peaked", peaked), ("flat", flat)):
        for cname, kw in configs:
            params = SamplingParams(**kw)
            g = np.random.default_rng(1)
            b, a = [], []
            for _ in range(5):  # interleaved rounds
                b.append(_median_us(lambda: before_sample(logits, rng=g, **kw), repeat // 5))
                a.append(_median_us(lambda: sample(logits, params, g), repeat // 5))
            tb, ta = float(np.median(b)), float(np.median(a))
            print(f"{lname:>7} {cname:>22} {tb:>9.1f} {ta:>9.1f} {tb / ta:>7.1f}x")


def detok_table(reply: int) -> None:
    from engine_helpers import REPEATED_TEXT, tokenizer

    tok = tokenizer()
    ids = (tok.encode(REPEATED_TEXT).ids * (reply // 50 + 2))[:reply]
    print(f"\n## detokenizing a {reply}-token reply (us per token, the mean over the reply)")
    b, a = [], []
    for _ in range(3):
        ts = BeforeTextStream(tok)
        t0 = time.perf_counter()
        for t in ids:
            ts.push(t)
        b.append((time.perf_counter() - t0) / reply * 1e6)
        ts2 = TextStream(tok, ["</s>"])
        t0 = time.perf_counter()
        for t in ids:
            ts2.push(t)
        a.append((time.perf_counter() - t0) / reply * 1e6)
    tb, ta = float(np.median(b)), float(np.median(a))
    print(f"before (decode all): {tb:.1f} us   after (DecodeStream + tail stop search): {ta:.1f} us   "
          f"speedup {tb / ta:.1f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=128_256, help="Llama 3 / BitNet 2B4T's vocabulary")
    p.add_argument("--reply", type=int, default=1024, help="tokens in the detokenized reply")
    p.add_argument("--repeat", type=int, default=200, help="samples per setting")
    a = p.parse_args()
    sampling_table(a.vocab, a.repeat)
    for n in (256, a.reply, 4 * a.reply):
        detok_table(n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
