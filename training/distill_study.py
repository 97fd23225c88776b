"""The BitDistill study: teacher vs naive ternarization vs CE fine-tuning vs BitDistill (+ ablations)
vs ternary from scratch, at one student token budget. Writes the table, results.json and a plot.

    python -m bitnet.training.distill_study teacher-to-hf RUN_DIR OUT_DIR
    python -m bitnet.training.distill_study run --teacher T --out runs/distill-study --results docs/distill

Every student variant is a ``bitnet distill`` (or, for the scratch model, ``bitnet train``) run
with the same data, tokenizer, seed, sequence length, batch and number of steps; only the recipe
differs. Held-out perplexity is measured in PyTorch on the exported ternary model
(``bitnet.export.load_model`` of ``<run>/export``; for the teacher, its transformers model), on
non-overlapping windows of ``seq_len`` tokens of a text no run trained on.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["teacher_to_hf", "heldout_perplexity", "VARIANTS"]

# name -> (what it is, extra `bitnet distill` overrides); None marks a no-training variant
VARIANTS: dict[str, tuple[str, list[str] | None]] = {
    "naive": ("naive ternarization of the teacher (to_bitnet, no SubLN, no training)", None),
    "naive+subln": ("naive ternarization with calibrated SubLN (stage 1 only, no training)", None),
    "ce-warmup": ("ternarize + CE fine-tuning with lambda warm-up over the first half (Falcon3 / Llama3-8B-1.58 "
                  "recipe; no SubLN)", ["subln=false", "pretrain.share=1", "distill.share=0",
                                        "pretrain.lambda_warmup=0.5"]),
    "bitdistill": ("BitDistill: SubLN + CE continued pre-training + CE/KL/AD distillation", []),
    "-kl": ("BitDistill without the logits KL", ["distill.kl_weight=0"]),
    "-ad": ("BitDistill without the attention-relation loss", ["distill.ad_weight=0"]),
    "-ce": ("BitDistill without CE in stage 3", ["distill.ce_weight=0"]),
    "scratch": ("ternary BitNet b1.58 trained from scratch (bitnet train, same arch, same tokens)", []),
    "-subln": ("BitDistill without SubLN", ["subln=false"]),
    "-stage2": ("BitDistill without continued pre-training (all steps in stage 3)", ["pretrain.share=0"]),
    # run-to-run noise: the two main recipes again with another data order
    "bitdistill-seed2": ("BitDistill, another seed (data order)", ["seed=2"]),
    "ce-warmup-seed2": ("ternarize + CE with lambda warm-up, another seed (data order)",
                        ["subln=false", "pretrain.share=1", "distill.share=0", "pretrain.lambda_warmup=0.5", "seed=2"]),
}


def teacher_to_hf(run: str | Path, out: str | Path) -> Path:
    """Save a full-precision ``bitnet train`` model (fp linears, no sub-norms, SiLU) as a transformers
    ``LlamaForCausalLM`` with its tokenizer; checks that both compute the same logits.

    Raises ValueError if the model is not a plain Llama (ternary, sub-norms or relu2).
    """
    import transformers

    from bitnet.checkpoint import find_model_dir, load_model_dir

    src = find_model_dir(run)
    ours = load_model_dir(src).eval()
    c = ours.config
    if c.linear_type != "fp" or c.use_sub_norms or c.hidden_act != "silu":
        raise ValueError(f"{src}: not a full-precision Llama (linear_type={c.linear_type}, "
                         f"use_sub_norms={c.use_sub_norms}, hidden_act={c.hidden_act})")
    lc = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=c.tie_word_embeddings, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id, attention_bias=False, mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(lc).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ValueError(f"{src}: state dict does not map onto Llama: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    ids = torch.arange(min(32, c.vocab_size))[None] % c.vocab_size
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)).abs().max().item()
    if diff > 1e-4:
        raise ValueError(f"{src}: the transformers copy differs from the model by {diff}")
    out = Path(out)
    hf.save_pretrained(out)
    from bitnet.training.tokenizer import EOS_TOKEN

    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(src / "tokenizer.json"), eos_token=EOS_TOKEN)
    tok.save_pretrained(out)
    return out


@torch.no_grad()
def heldout_perplexity(logits_fn: Callable[[torch.Tensor], torch.Tensor], ids: np.ndarray, ctx: int,
                       batch: int = 16) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``ctx`` + 1 tokens of ``ids``."""
    n = (len(ids) - 1) // ctx
    tot, cnt = 0.0, 0
    for b0 in range(0, n, batch):
        rows = [ids[i * ctx:(i * ctx) + ctx + 1] for i in range(b0, min(n, b0 + batch))]
        w = torch.tensor(np.stack(rows).astype(np.int64))  # (B, ctx + 1)
        logits = logits_fn(w[:, :-1])  # (B, ctx, V)
        tot += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), w[:, 1:].reshape(-1), reduction="sum").item()
        cnt += w[:, 1:].numel()
    return math.exp(tot / cnt)


def _val_windows(args: argparse.Namespace, teacher_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation windows every run's final ``val_loss`` averages over (eval_batches x micro_batch)."""
    import dataclasses

    from .dataset import PackedTokens, prepare_data
    from .distill import load_distill_config

    cfg = load_distill_config(args.config, [f"teacher={teacher_dir}", "data.paths=" + json.dumps(args.data)])
    dcfg = dataclasses.replace(cfg.data, tokenizer=str(teacher_dir / "tokenizer.json"))
    _, cache = prepare_data(dcfg, progress=False)
    data = PackedTokens.open(cache, dcfg.seq_len, dcfg.val_fraction)
    n = min(data.n_val, cfg.log.eval_batches * cfg.micro_batch_size)
    return data.batch(np.arange(n), split="val")


@torch.no_grad()
def _val_loss_of(logits_fn: Callable[[torch.Tensor], torch.Tensor], windows: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = windows  # (N, T) each
    tot = sum(F.cross_entropy(logits_fn(x[i:i + 8]).float().flatten(0, 1), y[i:i + 8].reshape(-1), reduction="sum").item()
              for i in range(0, len(x), 8))
    return tot / y.numel()


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def _val_loss(run: Path) -> float | None:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    return vals[-1] if vals else None


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    from bitnet.convert import insert_subln, set_lambda, subln_input_rms, to_bitnet
    from bitnet.export import load_model

    from .distill import load_distill_config

    out, results_dir = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    teacher_dir = Path(args.teacher)
    base = ["--data", *sum([["--data", d] for d in args.data[1:]], [args.data[0]]), "--max-steps", str(args.steps),
            "--config", args.config]
    tok = transformers.AutoTokenizer.from_pretrained(teacher_dir)
    held = np.asarray(tok(Path(args.heldout).read_text()[: args.heldout_chars], add_special_tokens=False)["input_ids"])
    ctx = load_distill_config(args.config, [f"teacher={teacher_dir}", "data.paths=[x]"]).data.seq_len
    rows: dict[str, dict[str, Any]] = {}
    res_file = results_dir / "results.json"
    if res_file.is_file():
        rows = json.loads(res_file.read_text())["rows"]

    def save() -> None:
        res_file.write_text(json.dumps({"steps": args.steps, "heldout": args.heldout, "heldout_tokens": int(len(held)),
                                        "ctx": ctx, "rows": rows}, indent=1) + "\n")

    teacher = transformers.AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    if "teacher" not in rows:
        rows["teacher"] = {"what": "the full-precision teacher (transformers LlamaForCausalLM)",
                           "ppl": heldout_perplexity(lambda x: teacher(x).logits, held, ctx)}
        save()
    calib = torch.tensor(held[: 8 * ctx].reshape(8, ctx).astype(np.int64))
    val_windows = _val_windows(args, teacher_dir)
    if rows["teacher"].get("val_loss") is None:
        rows["teacher"]["val_loss"] = _val_loss_of(lambda x: teacher(x).logits, val_windows)
        save()
    for name, (what, extra) in VARIANTS.items():
        if name in rows or (args.only and name not in args.only):
            continue
        if name == "scratch":
            rows[name] = _scratch(args, teacher, teacher_dir, ctx, out, held, what)
            save()
            continue
        print(f"== {name}: {what}", flush=True)
        if extra is None:
            import copy

            m = to_bitnet(copy.deepcopy(teacher))
            if name == "naive+subln":
                insert_subln(m, eps=teacher.config.rms_norm_eps, scales=subln_input_rms(teacher, calib))
            set_lambda(m, 1.0)
            rows[name] = {"what": what, "ppl": heldout_perplexity(lambda x: m(x).logits, held, ctx), "tokens": 0,
                          "val_loss": _val_loss_of(lambda x: m(x).logits, val_windows)}
        else:
            run = out / name
            cmd = [sys.executable, "-m", "bitnet", "distill", str(teacher_dir), "--out", str(run), *base, *extra,
                   "log.progress=false", "resume=true"]
            wall = _run(cmd, out / f"{name}.log")
            model = load_model(run / "export").float().eval()
            cfg = load_distill_config(run / "distill_config.yaml")
            from .distill import _tokens_of_step

            rows[name] = {"what": what, "overrides": extra, "ppl": heldout_perplexity(model, held, ctx),
                          "val_loss": _val_loss(run), "wall_s": round(wall), "command": " ".join(cmd[1:]),
                          "tokens": sum(_tokens_of_step(s, cfg) for s in range(cfg.max_steps))}
        save()
        print(f"   ppl {rows[name]['ppl']:.2f}", flush=True)
    write_report(results_dir, json.loads(res_file.read_text()), out)
    return rows


def _scratch(args, teacher, teacher_dir: Path, ctx: int, out: Path, held: np.ndarray, what: str) -> dict[str, Any]:
    """The from-scratch ternary baseline: ``bitnet train`` with the student's shape and token budget."""
    from bitnet.checkpoint import load_model_dir

    from .distill import load_distill_config

    run = out / "scratch"
    cfg = load_distill_config(args.config, [f"teacher={teacher_dir}", "data.paths=[x]"])
    tc = teacher.config
    bs = cfg.pretrain.batch_size
    cmd = [sys.executable, "-m", "bitnet", "train", args.scratch_config,
           f"out_dir={run}", f"max_steps={args.steps}", f"batch_size={bs}", f"micro_batch_size={cfg.micro_batch_size}",
           f"data.seq_len={ctx}", f"data.tokenizer={teacher_dir / 'tokenizer.json'}",
           "data.paths=" + json.dumps([str(Path(d).resolve()) for d in args.data]),
           f"model_overrides.hidden_size={tc.hidden_size}", f"model_overrides.intermediate_size={tc.intermediate_size}",
           f"model_overrides.num_hidden_layers={tc.num_hidden_layers}",
           f"model_overrides.num_attention_heads={tc.num_attention_heads}",
           f"model_overrides.num_key_value_heads={tc.num_key_value_heads}",
           f"model_overrides.max_position_embeddings={tc.max_position_embeddings}",
           f"log.eval_every={cfg.log.eval_every}", f"log.eval_batches={cfg.log.eval_batches}",
           "resume=true", "log.progress=false"]
    wall = _run(cmd, out / "scratch.log")
    model = load_model_dir(run).float().eval()
    return {"what": what, "ppl": heldout_perplexity(model, held, ctx), "val_loss": _val_loss(run),
            "wall_s": round(wall), "command": " ".join(cmd[1:]), "tokens": args.steps * bs * ctx}


def write_report(results_dir: Path, res: dict[str, Any], runs: Path) -> None:
    """results.md (the table) and distill_study.png (training CE of every distilled variant; held-out ppl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["teacher", "naive", "naive+subln", "ce-warmup", "ce-warmup-seed2", "bitdistill", "bitdistill-seed2",
             "-kl", "-ad", "-ce", "-subln", "-stage2", "scratch"]
    rows = {k: res["rows"][k] for k in sorted(res["rows"], key=lambda k: order.index(k) if k in order else len(order))}
    t = rows["teacher"]["ppl"]
    lines = ["| variant | what | student tokens | held-out ppl | vs teacher | final val loss | wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        vl = f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else "-"
        tokens = "-" if name == "teacher" else f"{r.get('tokens', 0):,}"
        lines.append(f"| {name} | {r['what']} | {tokens} | {r['ppl']:.2f} | {r['ppl'] / t - 1:+.1%} | "
                     f"{vl} | {r.get('wall_s', '-')} |")
    (results_dir / "results.md").write_text("\n".join(lines) + "\n")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for name in rows:
        m = runs / name / "metrics.jsonl"
        if name in ("teacher", "scratch") or not m.is_file():  # scratch starts ~2 nats higher
            continue
        pts = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
        ce = np.array([p["ce"] for p in pts if "ce" in p])
        k = 15
        if len(ce) > k:
            ax.plot(np.arange(k, len(ce) + 1), np.convolve(ce, np.ones(k) / k, mode="valid"), label=name,
                    ls="--" if "seed2" in name else "-")
    ax.set_xlabel("student optimizer step (150 x 8 x 128 tokens)")
    ax.set_ylabel(f"training cross-entropy, running mean of {k} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    names = [n for n in rows if n != "scratch"]
    ppl = [rows[n]["ppl"] for n in names]
    bx.barh(names[::-1], ppl[::-1], color=["tab:gray" if n == "teacher" else "tab:blue" for n in names[::-1]])
    bx.axvline(t, color="k", ls="--", lw=0.8)
    bx.set_xlabel("held-out perplexity (WikiText-2 test slice; scratch: see table)")
    bx.set_xlim(80, max(ppl) * 1.05)
    bx.tick_params(axis="y", labelsize=8)
    fig.savefig(results_dir / "distill_study.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet.training.distill_study")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("teacher-to-hf")
    a.add_argument("run")
    a.add_argument("out")
    b = sub.add_parser("run")
    b.add_argument("--teacher", required=True)
    b.add_argument("--data", action="append", required=True)
    b.add_argument("--config", required=True, help="the distill YAML every variant shares")
    b.add_argument("--scratch-config", required=True, help="the bitnet train YAML of the from-scratch model")
    b.add_argument("--steps", type=int, required=True)
    b.add_argument("--heldout", required=True)
    b.add_argument("--heldout-chars", type=int, default=200_000)
    b.add_argument("--out", required=True)
    b.add_argument("--results", required=True)
    b.add_argument("--only", type=lambda v: v.split(","), default=None,
                   help="comma-separated variants to run (default: all), e.g. --only=bitdistill,-kl")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: the runs it starts use one thread each too
    if args.cmd == "teacher-to-hf":
        print(f"wrote {teacher_to_hf(args.run, args.out)}")
    else:
        run_study(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
