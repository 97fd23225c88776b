"""``bitnet eval`` and ``bitnet perplexity``."""

from __future__ import annotations

import argparse
import json

__all__ = ["eval_main", "perplexity_main"]


def _positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s}")
    return v


def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bitnet eval",
        description="Score a model with lm-eval's task definitions on the C++ engine. "
        "With --data-dir the tasks read local files (the layout of ../shared/data) instead of the hub.",
        epilog="example: bitnet eval out/export --tasks arc_easy,mmlu --limit 20 --data-dir ../shared/data   "
        "(more: docs/evaluation.md in the bitnet source repository)",
    )
    p.add_argument("model_dir", help="model directory (config.json + safetensors, any published ternary family), a .gguf "
                                     "file, or a hub id owner/name[@revision]")
    p.add_argument("--tasks", default="mmlu,gsm8k,arc_challenge,arc_easy",
                   help="comma-separated lm-eval task or group names (default: %(default)s)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    p.add_argument("--limit", type=_positive_int, default=None, help="at most N documents per (sub)task")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="accepted for compatibility with lm-eval's hf model; requests run one at a time")
    p.add_argument("--output", default=None, help="write lm-eval's results JSON here")
    p.add_argument("--data-dir", default=None, help="local data sets in ../shared/data's layout (no hub access)")
    p.add_argument("--backend", choices=("engine", "torch"), default="engine",
                   help="engine: the C++ engine (default); torch: the slow PyTorch reference")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    p.add_argument("--no-prefix-reuse", action="store_true", help="recompute every request from scratch")
    p.add_argument("--log-samples", action="store_true", help="keep per-document records in the JSON")
    p.add_argument("--seed", type=int, default=1234, help="lm-eval's random seeds: few-shot order, sampling (default: 1234)")
    a = p.parse_args(argv)
    from bitnet.inference.engine import check_threads

    check_threads(a.threads, "--threads")  # one wording across commands
    from .api import results_table, run_eval

    res = run_eval(a.model_dir, a.tasks, limit=a.limit, data_dir=a.data_dir, num_fewshot=a.num_fewshot,
                   batch_size=a.batch_size, backend=a.backend, threads=a.threads,
                   prefix_reuse=not a.no_prefix_reuse, log_samples=a.log_samples, output=a.output, seed=a.seed)
    print(results_table(res))
    st = res["bitnet_stats"]
    if st["positions"]:
        print(f"model calls: {st['requests']}, positions computed {st['computed']} of {st['positions']} "
              f"({st['positions'] / max(st['computed'], 1):.1f}x saved by prefix reuse), {st['seconds']:.1f} s in the model")
    if a.output:
        print(f"results written to {a.output}")
    return 0


def perplexity_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bitnet perplexity",
        description="Sliding-window perplexity of a UTF-8 text file (each token scored once, "
        "with up to CONTEXT - STRIDE tokens of history).",
        epilog="example: bitnet perplexity out/export ../shared/data/text/wikitext-2/test.txt --context 512 --stride 256   "
        "(more: docs/evaluation.md in the bitnet source repository)",
    )
    p.add_argument("model_dir", help="model directory (config.json + safetensors, any published ternary family), a .gguf "
                                     "file, or a hub id owner/name[@revision]")
    p.add_argument("file", help="text file to score")
    p.add_argument("--context", type=_positive_int, default=None, help="window length in tokens (default: the model's)")
    p.add_argument("--stride", type=_positive_int, default=None, help="window step in tokens (default: context / 2)")
    p.add_argument("--backend", choices=("engine", "torch"), default="engine",
                   help="engine: the C++ engine (default); torch: the slow PyTorch reference")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    from bitnet.inference.engine import check_threads

    check_threads(a.threads, "--threads")  # one wording across commands
    from .perplexity import perplexity

    r = perplexity(a.model_dir, a.file, context=a.context, stride=a.stride, backend=a.backend, threads=a.threads)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"perplexity {r['perplexity']:.4f}  ({r['nll_per_token']:.4f} nats/token over {r['tokens']} tokens, "
              f"context {r['context']}, stride {r['stride']})")
        print(f"{r['tokens_per_s']:.0f} tokens/s scored ({r['positions_per_s']:.0f} positions/s computed), {r['seconds']:.1f} s")
    return 0
