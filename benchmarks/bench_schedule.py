"""What `bitnet serve` can scale to at c streams, modelled from measured step costs (no HTTP, no clock noise).

    python benchmarks/bench_schedule.py                          # amx, avx512 (t5) and avx2 (i2) here
    python benchmarks/bench_schedule.py --paths avx2:i2 --streams 4,8,16

Per path (``ISA:WEIGHTS``), one random model of the 2B4T shape times one ``forward_batch`` of T tokens
for each T in TOKENS (T <= 8: T sequences of one token, as decoding; more: 8 sequences sharing the
tokens, as prompt chunks beside decodes) in CPU seconds of the process (``time.process_time``: steady
on a shared machine), relative to a one-token step. Then a model of bench_serve's closed loop: c
clients each send ``--requests`` requests one after another (prompt ``--prompt-len``, ``--max-tokens``
generated), the scheduler's batching rules (decodes + prompt tokens up to ``--prefill-chunk`` per step
while any sequence decodes, PREFILL_ALONE when none does), each step costing its measured T. It prints
the modelled tok/s at c streams over one stream's and the inter-token latency in one-token steps, for
arrivals staggered by one step after the first (a burst that misses the scheduler's batch window) and
for a burst gathered into the first step (the window). bench_serve's measured scaling on the Xeon of
docs/benchmarks.md (2026-12-06: 3.01x amx, 1.98x avx512, 1.88x avx2 at 8 streams) is what the
staggered model gives from that machine's costs (3.00x, 1.90x, 1.77x). A measurement script, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOKENS = (1, 2, 4, 8, 12, 16, 24, 32, 64, 256)


def step_costs(isa: str, weights: str, threads: int, rounds: int) -> dict[int, float]:
    """CPU seconds of one forward_batch per token count T (median of `rounds`), relative to T = 1."""
    from bitnet.config import BitNetConfig
    from bitnet.inference import _C
    from bitnet.inference.bench import random_model

    cfg = BitNetConfig.from_preset("bitnet-2b4t", hidden_act="silu")
    m = random_model(cfg, threads, head="int8", weights=weights, kv_cache="f16")
    _C.set_isa(isa)
    V, depth = cfg.vocab_size, 64
    rng = np.random.default_rng(0)
    m.set_slots(8, depth + max(TOKENS))
    fill = np.empty((1, V), np.float32)
    for s in range(8):
        m.forward_batch(np.int32([s]), np.int32([0]), np.int32([depth]), rng.integers(0, V, depth, dtype=np.int32), fill)
    out = np.empty((8, V), np.float32)
    cpu: dict[int, list[float]] = {T: [] for T in TOKENS}
    for rnd in range(rounds + 1):  # round 0 warms up
        for T in TOKENS:
            n = min(T, 8)
            lengths = np.full(n, T // n, np.int32)
            lengths[: T % n] += 1
            toks = rng.integers(0, V, size=T, dtype=np.int32)
            c0 = time.process_time()
            m.forward_batch(np.arange(n, dtype=np.int32), np.full(n, depth, np.int32), lengths, toks, out[:n])
            if rnd:
                cpu[T].append(time.process_time() - c0)
    one = statistics.median(cpu[1])
    return {T: statistics.median(c) / one for T, c in cpu.items()}


def simulate(cost: dict[int, float], streams: int, requests: int, prompt: int, gen: int, chunk: int,
             gathered: bool, alone: int = 256) -> tuple[float, float, float]:
    """The closed loop under the scheduler's rules: (tokens per one-token step, ITL p50, ITL p99 in
    one-token steps). Not gathered: the first request is admitted alone and the others one step
    later; a finished request's client sends its next at the next step."""
    xs = sorted(cost)

    def step_cost(T: int) -> float:
        return float(np.interp(T, xs, [cost[x] for x in xs]))

    left = {c: requests for c in range(streams)}
    arriving = list(range(streams)) if gathered else [0]
    later = [] if gathered else list(range(1, streams))
    active: list[dict] = []
    t, tokens, itl = 0.0, 0, []
    while active or arriving or later:
        for c in arriving:
            active.append({"client": c, "read": 0, "gen": 0, "last": None})
            left[c] -= 1
        arriving, later = later, []
        decoding = [a for a in active if a["read"] == prompt]
        budget = chunk if decoding else max(chunk, alone)
        T, sampled = len(decoding), list(decoding)
        for a in active:
            if a["read"] < prompt and budget > 0:
                n = min(prompt - a["read"], budget)
                budget, a["read"], T = budget - n, a["read"] + n, T + n
                if a["read"] == prompt:
                    sampled.append(a)
        t += step_cost(T)
        for a in sampled:
            a["gen"] += 1
            tokens += 1
            if a["last"] is not None:
                itl.append(t - a["last"])
            a["last"] = t
            if a["gen"] == gen:
                active.remove(a)
                if left[a["client"]]:
                    arriving.append(a["client"])
    return tokens / t, float(np.percentile(itl, 50)) if itl else 0.0, float(np.percentile(itl, 99)) if itl else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--paths", default="amx:t5,avx512:t5,avx2:i2", help="comma-separated ISA:WEIGHTS")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--streams", default="4,8,16")
    p.add_argument("--requests", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--prefill-chunk", type=int, default=8)
    a = p.parse_args(argv)
    from bitnet.inference import available_isas

    levels = [int(x) for x in a.streams.split(",")]
    for spec in a.paths.split(","):
        isa, weights = spec.split(":") if ":" in spec else (spec, "t5")
        if isa not in available_isas():
            print(f"{spec}: this CPU cannot run {isa}; skipped")
            continue
        cost = step_costs(isa, weights, a.threads, a.rounds)
        print(f"\n{spec}: CPU time of a step of T tokens / a one-token step: "
              + ", ".join(f"T={T} {c:.2f}" for T, c in cost.items()), flush=True)
        one = simulate(cost, 1, a.requests, a.prompt_len, a.max_tokens, a.prefill_chunk, True)[0]
        for c in levels:
            for gathered in (False, True):
                r, p50, p99 = simulate(cost, c, a.requests, a.prompt_len, a.max_tokens, a.prefill_chunk, gathered)
                print(f"  {c:>2} streams, {'burst gathered ' if gathered else 'staggered      '}: {r / one:5.2f}x one "
                      f"stream's tok/s, ITL p50 {p50:.2f} / p99 {p99:.2f} one-token steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
