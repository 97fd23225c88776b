"""Training throughput of the ternary model against its full-precision twin, measured side by side.

    python benchmarks/bench_train.py --model 10m --vocab 2048 --batch 16 --seq 128 --rounds 5

Both models (same architecture; ``linear_type`` bitlinear vs fp) run one AdamW training step
(forward, backward, optimizer) in alternation, ``--steps`` steps per round, so background load on
shared cores hits both alike; the ratio of medians is what to report, not absolute tokens/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bitnet import BitNetConfig, BitNetForCausalLM


def step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="10m", help="model preset")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--override", nargs="*", default=[], metavar="key=int", help="BitNetConfig int fields")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd twins of both models")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = {k: int(v) for k, v in (o.split("=") for o in args.override)}
    torch.manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1))  # (B, T+1)
    x, y = x[:, :-1], x[:, 1:]
    runs = {}
    for lt in ("bitlinear", "fp"):
        for compiled in (False, True) if args.compile else (False,):
            cfg = BitNetConfig.from_preset(args.model, vocab_size=args.vocab, linear_type=lt, **extra)
            m = BitNetForCausalLM(cfg)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95))
            fwd = torch.compile(m) if compiled else m
            t0 = time.perf_counter()
            step_fn(fwd, opt, x, y)  # warm-up (and compilation)
            runs[lt + ("+compile" if compiled else "")] = (fwd, opt, [], time.perf_counter() - t0)
    for _ in range(args.rounds):
        for lt, (fwd, opt, times, _) in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step_fn(fwd, opt, x, y)
            times.append((time.perf_counter() - t0) / args.steps)
    tok = args.batch * args.seq
    med = {lt: statistics.median(r[2]) for lt, r in runs.items()}
    n = BitNetForCausalLM(BitNetConfig.from_preset(args.model, vocab_size=args.vocab, **extra)).num_parameters(True)
    print(f"model {args.model} ({n / 1e6:.2f}M non-embedding), batch {args.batch}x{args.seq}, threads "
          f"{torch.get_num_threads()}")
    for lt in runs:
        print(f"  {lt:17s}: {tok / med[lt]:8.0f} tokens/s  (median step {med[lt] * 1e3:.0f} ms; first step "
              f"{runs[lt][3]:.1f} s)")
    print(f"  ternary / fp step time: {med['bitlinear'] / med['fp']:.2f}x")
    if args.compile:
        print(f"  compiled ternary / fp step time: {med['bitlinear+compile'] / med['fp+compile']:.2f}x; "
              f"eager / compiled ternary: {med['bitlinear'] / med['bitlinear+compile']:.2f}x")


if __name__ == "__main__":
    main()
