"""Forward+backward cost of BitLinear over nn.Linear, and of a whole ~25M model step over its FP twin.

Not a test: prints ratios measured side by side in one run (interleaved repeats, median), because
this machine is shared and noisy. Issue 2's target: the whole-model step at most 1.25x on CPU.

    python benchmarks/bench_bitlinear.py [--threads 2] [--repeats 7] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from bitnet import BitLinear, BitNetConfig, BitNetForCausalLM

# (tokens, in, out): attention and FFN projections of the 25M preset and of a 125M-class model.
LAYER_SHAPES = [(2048, 512, 512), (2048, 512, 1536), (2048, 1536, 512), (2048, 768, 2560)]


def fwd_bwd_layer(layer: nn.Module, x: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    layer(x).sum().backward()


def time_interleaved(fns: dict[str, callable], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, calling them in turn so noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def model_step_fn(model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor, labels: torch.Tensor):
    def step() -> None:
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"threads={args.threads} repeats={args.repeats} torch={torch.__version__}")
    print("\n== one layer, forward+backward (fp32) ==")
    print(f"{'tokens x in -> out':>24} {'nn.Linear ms':>13} {'BitLinear ms':>13} {'ratio':>7}")
    for t, i, o in LAYER_SHAPES:
        fp = nn.Linear(i, o, bias=False)
        bl = BitLinear(i, o)
        bl.weight.data.copy_(fp.weight.data)
        x = torch.randn(t, i, requires_grad=True)
        r = time_interleaved({"fp": lambda: fwd_bwd_layer(fp, x), "bl": lambda: fwd_bwd_layer(bl, x)}, args.repeats)
        print(f"{f'{t} x {i} -> {o}':>24} {r['fp'] * 1e3:13.2f} {r['bl'] * 1e3:13.2f} {r['bl'] / r['fp']:7.2f}")

    print(f"\n== whole 25M-preset model train step (AdamW), batch {args.batch} x {args.seq} tokens ==")
    fns = {}
    variants = [("eager", False)] + ([("compiled", True)] if args.compile else [])
    for tag, comp in variants:
        for kind in ("fp", "bitlinear"):
            cfg = BitNetConfig.from_preset("25m", linear_type=kind)
            model = BitNetForCausalLM(cfg)
            if comp:
                model = torch.compile(model)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
            labels = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
            fns[f"{tag}/{kind}"] = model_step_fn(model, opt, ids, labels)
    r = time_interleaved(fns, args.repeats, warmup=3)
    tokens = args.batch * args.seq
    for tag, _ in variants:
        fp, bl = r[f"{tag}/fp"], r[f"{tag}/bitlinear"]
        print(
            f"{tag:>9}: FP {fp * 1e3:8.1f} ms ({tokens / fp:7.0f} tok/s)   ternary {bl * 1e3:8.1f} ms "
            f"({tokens / bl:7.0f} tok/s)   ratio ternary/FP {bl / fp:.2f}  (target <= 1.25)"
        )


if __name__ == "__main__":
    main()
