"""Kernel paths side by side in ONE process at one model shape: prefill and batched steps.

    python benchmarks/bench_paths.py                                   # 2B4T, silu, 2 threads, every path
    python benchmarks/bench_paths.py --paths avx2:mac,avxvnni:mac,avx2:lut --rounds 5 --layers 30
    python benchmarks/bench_paths.py --json out/paths.json
    python benchmarks/bench_paths.py --breakdown --paths avx2:auto,avx512:auto,amx   # where a step's time goes
    python benchmarks/bench_paths.py --pp-breakdown --paths avx2:auto,avxvnni:auto   # ... and a prefill's

A path is ``ISA:FAMILY`` (``_C.set_isa`` and ``_C.set_kernel_family``; family ``auto`` is what
dispatch picks), or ``ISA:FAMILY:per-head`` for the x86 SIMD paths with each query head's attention
on its own (``_C.set_attention_mode``) instead of the blocked attention. One random model of the shape (random_model, int8 head) serves every path: the
weight tiles do not depend on the path, so the paths alternate inside each round (A/B/A/B...) and
drift of a shared machine hits them alike. Per round and path: prefill of ``--prompt-len`` tokens
from an empty cache (last token's logits), and one batched decode step of 1 and of 8 sequences
(``forward_batch``, one token each, on slots holding ``--depth`` positions). The report keeps each
figure's median over rounds and its ratio to the first path, and the step of `batch` against the
step of 1 in wall time and in CPU time (``time.process_time`` over all threads: on a shared machine
the wall-time ratio grows with whatever else runs, the CPU-time one does not). ``--breakdown``
adds, per path, where the steps of 1 and of `batch` spend their time (``Model.profile``: wall time
per phase on the calling thread, and the thread pool's fork/joins per step); ``--pp-breakdown`` the
same for the prefill. ``--serve N`` replays
what ``bench_serve.py`` asks of the engine at 1 and N streams, without the server: one request (a
``--serve-prompt``-token prefill, then ``--serve-tokens`` - 1 one-token steps) against a burst of N
(one step reading the N prompts, then steps of N), and prints each path's time per request and per
burst (the sum over steps of each step's best over rounds: what a quiet machine gives) and the
ratio N x request / burst, which is the server's N-stream tokens/s over its 1-stream tokens/s when
the engine's steps are all its time (bench_serve: 97-98%); ``--serve-clock cpu`` times those steps by
the CPU time of every thread divided by ``--threads`` instead, for before/after comparisons on a
shared machine. A measurement script, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def parse_paths(text: str, isas: list[str]) -> list[tuple[str, str, str]]:
    """``ISA[:FAMILY[:ATTENTION]]`` items -> (isa, family, attention mode); defaults auto, blocked."""
    if not text:
        out = [(i, "mac") for i in isas if i != "ref"] + [(i, "lut") for i in isas if i in ("avx2", "avx512")]
        return [(i, f, "blocked") for i, f in out]
    paths = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) > 3:
            raise SystemExit(f"--paths: {item!r} is not ISA[:FAMILY[:ATTENTION]]")
        isa, fam, attn = (parts + ["auto", "blocked"][len(parts) - 1:])[:3]
        paths.append((isa, fam, attn))
    return paths


def path_name(isa: str, fam: str, attn: str) -> str:
    return f"{isa}:{fam}" + ("" if attn == "blocked" else f":{attn}")


def step_s(m, slots: int, depth: int, vocab: int, rng: np.random.Generator, clock=time.perf_counter) -> float:
    """One batched step: `slots` sequences, one token each at position `depth` of its slot; seconds of
    `clock` (time.process_time: CPU seconds of every thread, which other jobs on the cores do not inflate)."""
    s = np.arange(slots, dtype=np.int32)
    out = np.empty((slots, vocab), np.float32)
    toks = rng.integers(0, vocab, size=slots, dtype=np.int32)
    t0 = clock()
    m.forward_batch(s, np.full(slots, depth, np.int32), np.ones(slots, np.int32), toks, out)
    return clock() - t0


PHASES = ("embed", "quantize", "product", "rope_cache", "attention", "norms", "activation", "head")


def step_profile(m, slots: int, depth: int, vocab: int, rng: np.random.Generator, reps: int = 3) -> dict[str, float]:
    """Mean ms per phase of `reps` batched steps of `slots` sequences (Model.profile), plus "total"
    (their sum) and "jobs" (thread-pool fork/joins per step)."""
    m.set_profile(True)
    for _ in range(reps):
        step_s(m, slots, depth, vocab, rng)
    p = m.profile()
    m.set_profile(False)
    out = {k: 1e3 * p[k] / reps for k in PHASES}
    out["total"] = sum(out.values())
    out["jobs"] = p["jobs"] / reps
    return out


def prefill_profile(m, ids: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """ms per phase of one prefill of `ids` from an empty cache (Model.profile), plus "total" and "jobs"."""
    m.reset()
    m.set_profile(True)
    m.forward(ids, 0, len(ids) - 1, out)
    p = m.profile()
    m.set_profile(False)
    res = {k: 1e3 * p[k] for k in PHASES}
    res["total"] = sum(res.values())
    res["jobs"] = p["jobs"]
    return res


def fill_slots(m, slots: int, depth: int, vocab: int, rng: np.random.Generator, room: int = 0) -> None:
    """Give `m` `slots` slots (room for max(depth + 8, room) positions) each holding `depth` random positions."""
    m.set_slots(slots, max(depth + 8, room))
    fill = np.empty((1, vocab), np.float32)
    for s in range(slots):  # the steps then write position `depth` only
        ids = rng.integers(0, vocab, size=depth, dtype=np.int32)
        m.forward_batch(np.array([s], np.int32), np.zeros(1, np.int32), np.array([depth], np.int32), ids, fill)


def serve_replay(m, streams: int, prompt: int, tokens: int, vocab: int, rng: np.random.Generator,
                 clock=time.perf_counter) -> np.ndarray:
    """Seconds of each step of `streams` requests read together (slots 0..streams-1, from position
    0): one step reading their `prompt`-token prompts, then `tokens` - 1 steps of one token each, as
    the server's scheduler runs a burst (its first token comes from the prompt step). (tokens,).
    `clock`: as step_s's."""
    s = np.arange(streams, dtype=np.int32)
    out = np.empty((streams, vocab), np.float32)
    ids = rng.integers(0, vocab, size=streams * prompt, dtype=np.int32)
    ts = []
    t0 = clock()
    m.forward_batch(s, np.zeros(streams, np.int32), np.full(streams, prompt, np.int32), ids, out)
    ts.append(clock() - t0)
    for k in range(tokens - 1):
        toks = rng.integers(0, vocab, size=streams, dtype=np.int32)
        t0 = clock()
        m.forward_batch(s, np.full(streams, prompt + k, np.int32), np.ones(streams, np.int32), toks, out)
        ts.append(clock() - t0)
    return np.array(ts)


def batched_steps_ms(m, vocab: int, batch: int = 8, depth: int = 64, reps: int = 3, seed: int = 0) -> dict[str, float]:
    """Best of `reps` batched decode steps of 1 and of `batch` sequences (one token each, at position
    `depth` of slots filled by fill_slots), in ms: {"step1_ms", "step<batch>_ms"}."""
    rng = np.random.default_rng(seed)
    fill_slots(m, batch, depth, vocab, rng)
    step_s(m, batch, depth, vocab, rng)  # warm-up
    return {"step1_ms": 1e3 * min(step_s(m, 1, depth, vocab, rng) for _ in range(reps)),
            f"step{batch}_ms": 1e3 * min(step_s(m, batch, depth, vocab, rng) for _ in range(reps))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="bitnet-2b4t")
    p.add_argument("--act", default="silu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=None, help="depth (default: the shape's)")
    p.add_argument("--paths", default="", help="comma-separated ISA:FAMILY (default: every path here)")
    p.add_argument("--weights", default="i2", help="ternary layout: i2 or t5")
    p.add_argument("--kv-cache", default="f32", choices=("f32", "f16"),
                   help="KV cache element type (bitnet serve defaults to f16: pass it with --serve to match the server)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--depth", type=int, default=64, help="positions each slot holds before the batched steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--breakdown", action="store_true", help="per path: ms per phase of the steps of 1 and of --batch")
    p.add_argument("--pp-breakdown", action="store_true", help="per path: ms per phase of the prefill")
    p.add_argument("--serve", type=int, default=0, metavar="N",
                   help="also replay bench_serve's engine work at 1 and N streams (0: off)")
    p.add_argument("--serve-prompt", type=int, default=32, help="--serve: prompt tokens per request")
    p.add_argument("--serve-tokens", type=int, default=48, help="--serve: tokens generated per request")
    p.add_argument("--serve-clock", choices=("wall", "cpu"), default="wall",
                   help="--serve: time each step by the wall clock, or by the CPU time of every thread divided by "
                        "--threads (other jobs on a shared machine do not inflate it)")
    a = p.parse_args(argv)
    serve_clock = time.perf_counter if a.serve_clock == "wall" else (lambda: time.process_time() / a.threads)

    from bitnet.config import BitNetConfig
    from bitnet.inference import _C, available_isas
    from bitnet.inference.bench import random_model

    cfg = BitNetConfig.from_preset(a.shape, hidden_act=a.act)
    paths = parse_paths(a.paths, available_isas())
    m = random_model(cfg, a.threads, head="int8", layers=a.layers, weights=a.weights, kv_cache=a.kv_cache)
    V = cfg.vocab_size
    rng = np.random.default_rng(0)
    if a.serve and a.serve_prompt + a.serve_tokens - 1 < a.depth:
        raise SystemExit("--serve: --serve-prompt + --serve-tokens - 1 must be >= --depth (the steps reuse the slots)")
    fill_slots(m, max(a.batch, a.serve), a.depth, V, rng, room=a.serve_prompt + a.serve_tokens if a.serve else 0)
    ids = rng.integers(0, V, size=a.prompt_len, dtype=np.int32)
    out = np.empty((1, V), np.float32)
    res: dict[str, dict[str, list[float]]] = {path_name(i, f, at): {"pp_s": [], "step1_s": [], f"step{a.batch}_s": [],
                                                          "cpu_ratio": [], "prof1": [], "profb": [],
                                                          "profpp": [], "serve1": [], "serveN": []}
                                               for i, f, at in paths}
    for rnd in range(a.rounds + 1):  # round 0 is a warm-up
        for isa, fam, attn in paths:
            name = path_name(isa, fam, attn)
            _C.set_isa(isa)
            _C.set_kernel_family(fam)
            _C.set_attention_mode(attn)
            m.reset()
            t0 = time.perf_counter()
            m.forward(ids, 0, a.prompt_len - 1, out)
            pp = time.perf_counter() - t0
            s1 = min(step_s(m, 1, a.depth, V, rng) for _ in range(2))
            sb = min(step_s(m, a.batch, a.depth, V, rng) for _ in range(2))
            c1 = min(step_s(m, 1, a.depth, V, rng, time.process_time) for _ in range(2))
            cb = min(step_s(m, a.batch, a.depth, V, rng, time.process_time) for _ in range(2))
            if rnd and a.pp_breakdown:
                res[name]["profpp"].append(prefill_profile(m, ids, out))
            if rnd and a.breakdown:
                res[name]["prof1"].append(step_profile(m, 1, a.depth, V, rng))
                res[name]["profb"].append(step_profile(m, a.batch, a.depth, V, rng))
            if rnd and a.serve:  # leaves every slot holding at least --depth positions
                res[name]["serve1"].append(serve_replay(m, 1, a.serve_prompt, a.serve_tokens, V, rng, serve_clock).tolist())
                res[name]["serveN"].append(
                    serve_replay(m, a.serve, a.serve_prompt, a.serve_tokens, V, rng, serve_clock).tolist())
            if rnd:
                r = res[name]
                r["pp_s"].append(pp)
                r["step1_s"].append(s1)
                r[f"step{a.batch}_s"].append(sb)
                r["cpu_ratio"].append(cb / c1)
    _C.set_kernel_family("auto")
    _C.set_attention_mode("blocked")
    layers = a.layers or cfg.num_hidden_layers
    print(f"{a.shape} ({layers} layers, {a.act}, {a.weights}), {a.threads} threads, {a.rounds} interleaved rounds, "
          f"medians; ratios against the first path")
    first = None
    rows = {}
    print(f"{'path':<20} {'pp' + str(a.prompt_len) + ' tok/s':>12} {'x':>6} {'step 1 ms':>10} "
          f"{'step ' + str(a.batch) + ' ms':>10} {'ratio':>6} {'CPU ratio':>9}")
    for name, r in res.items():
        pp = statistics.median(r["pp_s"])
        s1 = statistics.median(r["step1_s"])
        sb = statistics.median(r[f"step{a.batch}_s"])
        first = first or pp
        cr = statistics.median(r["cpu_ratio"])
        rows[name] = {"pp_tok_s": a.prompt_len / pp, "step1_ms": 1e3 * s1, f"step{a.batch}_ms": 1e3 * sb,
                      "pp_vs_first": first / pp, "cpu_ratio": cr, "raw": r}
        print(f"{name:<20} {a.prompt_len / pp:12.1f} {first / pp:6.2f} {1e3 * s1:10.1f} {1e3 * sb:10.1f} {sb / s1:6.2f} "
              f"{cr:9.2f}")
    if a.breakdown:
        print(f"\nms per phase of a step (median over rounds; wall time on the calling thread), "
              f"and thread-pool fork/joins per step")
        print(f"{'path':<20} {'T':>3} " + " ".join(f"{k[:10]:>10}" for k in PHASES) + f" {'total':>8} {'jobs':>6}")
        for name, r in res.items():
            for T, key in ((1, "prof1"), (a.batch, "profb")):
                med = {k: statistics.median(p[k] for p in r[key]) for k in (*PHASES, "total", "jobs")}
                rows[name][f"phases_{T}"] = med
                print(f"{name:<20} {T:>3} " + " ".join(f"{med[k]:10.2f}" for k in PHASES) +
                      f" {med['total']:8.1f} {med['jobs']:6.0f}")
    if a.pp_breakdown:
        print(f"\nms per phase of the prefill of {a.prompt_len} tokens (median over rounds; wall time on the "
              f"calling thread), and thread-pool fork/joins")
        print(f"{'path':<20} " + " ".join(f"{k[:10]:>10}" for k in PHASES) + f" {'total':>8} {'jobs':>6}")
        for name, r in res.items():
            med = {k: statistics.median(p[k] for p in r["profpp"]) for k in (*PHASES, "total", "jobs")}
            rows[name]["phases_pp"] = med
            print(f"{name:<20} " + " ".join(f"{med[k]:10.2f}" for k in PHASES) + f" {med['total']:8.1f} {med['jobs']:6.0f}")
    if a.serve:
        print(f"\nbench_serve's engine work replayed: a request = a {a.serve_prompt}-token prompt step + "
              f"{a.serve_tokens - 1} steps; a burst = {a.serve} of them in step; each step's best over rounds"
              + ("" if a.serve_clock == "wall" else f" (CPU time / {a.threads} threads)"))
        print(f"{'path':<20} {'request ms':>11} {'prompt':>8} {'step':>7} {'burst ms':>10} {'prompts':>8} "
              f"{'step':>7} {'ratio':>6}")
        for name, r in res.items():
            b1, bn = np.min(r["serve1"], axis=0), np.min(r["serveN"], axis=0)
            ratio = a.serve * b1.sum() / bn.sum()
            rows[name][f"serve_{a.serve}"] = {"request_ms": 1e3 * b1.sum(), "burst_ms": 1e3 * bn.sum(), "ratio": ratio}
            print(f"{name:<20} {1e3 * b1.sum():11.1f} {1e3 * b1[0]:8.1f} {1e3 * b1[1:].mean():7.2f} "
                  f"{1e3 * bn.sum():10.1f} {1e3 * bn[0]:8.1f} {1e3 * bn[1:].mean():7.2f} {ratio:6.2f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"shape": a.shape, "layers": layers, "threads": a.threads, "rows": rows}, indent=1))
        tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
