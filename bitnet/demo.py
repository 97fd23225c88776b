"""``bitnet demo``: the whole pipeline on the text that ships with the package, in minutes on a CPU.

1. train a small ternary BitNet b1.58 on the bundled Tiny Shakespeare (configs/train/shakespeare.yaml);
2. export it to transformers' packed ``bitnet`` layout (what microsoft/bitnet-b1.58-2B-4T ships);
3. generate a sample with the C++ engine;
4. score it: perplexity of the held-out tail of the text, and a small lm-eval slice (ARC-Easy)
   when the evaluation data is available locally;
5. print a summary: where the files are and what the figures mean.

This module is a recipe: it wires ``bitnet.training``, ``bitnet.export``, ``bitnet.inference`` and
``bitnet.eval`` together and adds nothing of its own.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .paths import configs_dir

DEFAULT_CONFIG = "shakespeare.yaml"
HELDOUT_FRACTION = 0.1  # the training config holds out the last 10% of the tokens for validation


def _default_data_dir() -> Path | None:
    """../shared/data beside a source checkout, when present (the lm-eval slice needs local data)."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / ".." / "shared" / "data", Path.cwd() / ".." / "shared" / "data"):
        if (cand / "ai2_arc" / "ARC-Easy" / "test.jsonl").is_file():
            return cand.resolve()
    return None


def _heldout_text(src: Path, dst: Path) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(lines[int(len(lines) * (1 - HELDOUT_FRACTION)):]), encoding="utf-8")
    return dst


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bitnet demo",
        description="Train a tiny ternary model on the bundled Shakespeare, export it, generate text with "
        "the C++ engine and score it. Re-running reuses a finished training run in --out.",
        epilog="more: README.md in the bitnet source repository, and docs/ beside it",
    )
    ap.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    ap.add_argument("--config", default=None,
                    help=f"training YAML (default: the bundled configs/train/{DEFAULT_CONFIG})")
    ap.add_argument("--threads", type=int, default=None, help="threads for the C++ engine (default: all cores)")
    ap.add_argument("--prompt", default="ROMEO:\n", help="prompt of the generated sample (default: 'ROMEO:' and a new line)")
    ap.add_argument("--max-new-tokens", type=int, default=120, help="tokens in the generated sample (default: 120)")
    ap.add_argument("--data-dir", default=None,
                    help="local evaluation data in the layout of ../shared/data (default: ../shared/data "
                    "when it exists; without it the lm-eval slice is skipped)")
    ap.add_argument("--eval-limit", type=int, default=50, help="ARC-Easy questions to score (default: 50)")
    ap.add_argument("--retrain", action="store_true", help="train again even if --out holds a finished run")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the training config, e.g. max_steps=50")
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from .inference.engine import check_threads, engine_params

    # Every flag is checked before minutes of training, not after.
    check_threads(args.threads, "--threads")
    engine_params(args.max_new_tokens, cli=True)  # raises naming --max-new-tokens
    if args.eval_limit < 1:
        raise ValueError(f"--eval-limit must be a positive integer, got {args.eval_limit}")
    if args.data_dir:
        from .eval.tasks import local_task_dir

        with local_task_dir(args.data_dir):  # raises naming the folder when it is missing or holds no data set
            pass
    from .training import bundled_text, checkpoint_step, latest_checkpoint, load_config, train

    t_start = time.perf_counter()
    out = Path(args.out)
    cfg_path = Path(args.config) if args.config else configs_dir() / "train" / DEFAULT_CONFIG
    run_dir = out / "train"
    if args.retrain and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    # resume only what an earlier demo left behind: a first run starts from step 0 without a word about it
    ckpt = latest_checkpoint(run_dir)
    cfg = load_config(cfg_path, [*args.overrides, f"out_dir={run_dir}", f"resume={str(ckpt is not None).lower()}"])
    timings: dict[str, float] = {}

    # 1. train (or reuse a finished run)
    t0 = time.perf_counter()
    finished = ckpt is not None and checkpoint_step(ckpt) >= cfg.max_steps
    print(f"\n[1/4] training: {cfg_path.name} -> {run_dir}" + ("  (finished run found: reused)" if finished else ""))
    if not finished:
        train(cfg)
    timings["train"] = time.perf_counter() - t0

    # 2. export to transformers' packed bitnet layout
    from .checkpoint import TOKENIZER_FILE, find_model_dir
    from .export import export_hf, load_model

    t0 = time.perf_counter()
    model_dir = find_model_dir(run_dir)
    export_dir = out / "export"
    print(f"\n[2/4] export: {model_dir} -> {export_dir}")
    export_hf(load_model(model_dir), export_dir, tokenizer=model_dir / TOKENIZER_FILE)
    timings["export"] = time.perf_counter() - t0

    # 3. generate with the C++ engine
    from .inference import Engine

    t0 = time.perf_counter()
    engine = Engine(export_dir, threads=args.threads)
    print(f"\n[3/4] generate with the C++ engine ({engine.isa if hasattr(engine, 'isa') else 'native'}):")
    sample = engine.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=0.8, top_k=40, seed=0)
    print("-" * 60 + f"\n{args.prompt}{sample}\n" + "-" * 60)
    timings["generate"] = time.perf_counter() - t0
    del engine

    # 4. score: held-out perplexity and a small lm-eval slice
    from .eval import perplexity, run_eval

    t0 = time.perf_counter()
    src = Path(cfg.data.paths[0]) if not cfg.data.paths[0].startswith("bundled:") else bundled_text(
        cfg.data.paths[0].split(":", 1)[1])
    heldout = _heldout_text(src, out / "heldout.txt")
    print(f"\n[4/4] score: perplexity of {heldout} (the last {HELDOUT_FRACTION:.0%} of the text)")
    ppl = perplexity(export_dir, heldout, threads=args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else _default_data_dir()
    arc = None
    if data_dir is not None:
        print(f"      lm-eval arc_easy, {args.eval_limit} questions, data from {data_dir}")
        res = run_eval(export_dir, ["arc_easy"], limit=args.eval_limit, data_dir=data_dir, threads=args.threads,
                       output=out / "eval_arc_easy.json")
        arc = res["results"]["arc_easy"]
    else:
        print("      lm-eval slice skipped: no local evaluation data (pass --data-dir, layout of ../shared/data)")
    timings["score"] = time.perf_counter() - t0

    total = time.perf_counter() - t_start
    lines = [
        "",
        "=" * 72,
        "bitnet demo: summary",
        "=" * 72,
        f"training run    {run_dir}  (metrics.jsonl, loss_curve.png, tensorboard/, checkpoints/)",
        f"packed export   {export_dir}  (transformers' bitnet layout; loads with "
        "AutoModelForCausalLM.from_pretrained and `bitnet generate`)",
        f"perplexity      {ppl['perplexity']:.2f} on {ppl['tokens']:,} held-out tokens "
        f"({ppl['tokens_per_s']:.0f} tok/s): lower is better; the tokenizer has "
        f"{cfg.data.tokenizer_vocab_size} tokens, so a model that learned nothing scores about that",
    ]
    if arc is not None:
        acc = arc.get("acc,none")
        acc_norm = arc.get("acc_norm,none")
        lines.append(f"ARC-Easy        acc {acc:.3f}, acc_norm {acc_norm:.3f} on {args.eval_limit} questions "
                     "(chance is about 0.25: a Shakespeare-sized model is not expected to beat it)")
    lines.append("time            " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s")
    # every hint runs offline: bitnet eval reads the hub unless it is given the local data
    score_hint = (f"bitnet eval {export_dir} --tasks arc_easy --limit 100 --data-dir {data_dir}" if data_dir is not None
                  else f"bitnet perplexity {export_dir} {heldout}")
    lines.append(f"next            bitnet generate {export_dir} --prompt 'KING:'   |   bitnet chat {export_dir}"
                 f"   |   {score_hint}")
    print("\n".join(lines))
    return 0
