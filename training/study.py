"""``bitnet study``: ternary vs full-precision twins at small sizes, on the same tokens.

A study YAML (``configs/study/small.yaml``) holds one shared training config (``train``: data,
tokenizer, seed, batch and steps, i.e. the token budget), a list of ``sizes`` (model overrides), the
two ``kinds`` (``linear_type``, schedule and an LR sweep each) and an optional ``ablation`` (the
ternary best-LR run at one size re-trained with another schedule). The driver

1. trains every (size, kind, LR) run with :func:`bitnet.training.train` under ``<out>/<run name>``,
   skipping runs already completed (``study_run.json`` is written last) and resuming interrupted
   ones from their newest checkpoint, so re-running the same command continues a study;
2. picks each (size, kind)'s best LR by the final validation loss;
3. trains the ablation run at the ternary best LR of its size;
4. scores the best runs (and the ablation) on the held-out ``eval.file`` with sliding-window
   perplexity, context = ``max_position_embeddings``, stride = ``stride_fraction`` of it: ternary
   runs through ``export_hf`` and the C++ engine, full-precision runs (which the packed ternary
   export cannot hold) with the PyTorch reference backend on the training model directory;
5. writes ``results.json``, ``results.md`` (tables and the ternary-minus-FP gap in plain words) and
   ``loss_vs_tokens.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from bitnet.io import atomic_file

from .config import TrainConfig, apply_override, config_from_dict, config_to_dict
from .config import read_yaml_mapping, resolve_path

__all__ = ["RunSpec", "load_study", "plan_sweep", "run_study", "write_results", "gap_statement", "main"]

STUDY_KEYS = {"train", "sizes", "kinds", "ablation", "eval"}
KIND_KEYS = {"linear_type", "schedule", "lrs"}
EVAL_DEFAULTS = {"file": None, "stride_fraction": 0.5, "max_chars": None}
RUN_DONE = "study_run.json"  # written after a run's training finished: its presence marks it complete
PPL_FILE = "test_ppl.json"
# Config keys that may differ between a completed run and the plan without making it a different run.
IGNORED_KEYS = ("out_dir", "resume", "stop_after_steps", "threads", "log.progress")


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    size: str
    kind: str  # a key of the study's ``kinds`` ("ternary", "fp")
    lr: float
    schedule: str
    role: str = "sweep"  # "sweep" or "ablation"

    @property
    def name(self) -> str:
        return f"{self.size}-{self.kind}-{self.schedule}-lr{self.lr:g}"


# ---------------------------------------------------------------------------- the study config
def load_study(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a study YAML, apply ``key=value`` overrides (dotted keys, e.g. ``train.max_steps=100``),
    check its keys and resolve relative paths against the YAML's folder.

    Raises:
        FileNotFoundError: the YAML or the eval file does not exist.
        ValueError: bad YAML, unknown keys, an invalid training config (naming the file and key).
    """
    p = Path(path)
    d = read_yaml_mapping(p, "study config")
    for item in overrides or []:
        apply_override(d, item)
    unknown = sorted(set(d) - STUDY_KEYS)
    if unknown:
        raise ValueError(f"{p}: unknown study key(s) {', '.join(unknown)} (known: {', '.join(sorted(STUDY_KEYS))})")
    for k in ("train", "sizes", "kinds"):
        if not d.get(k):
            raise ValueError(f"{p}: missing or empty study key {k!r}")
    base = p.resolve().parent
    train = d["train"]
    data = train.setdefault("data", {})
    data["paths"] = [resolve_path(x, base) for x in data.get("paths", ["bundled:tinyshakespeare"])]
    if data.get("tokenizer", "train") != "train":
        data["tokenizer"] = resolve_path(data["tokenizer"], base)
    try:
        config_from_dict(TrainConfig, train).validate()  # fail now, not after an hour of runs
    except ValueError as e:
        raise ValueError(f"{p}: train: {e}") from None
    for s in d["sizes"]:
        bad = sorted(set(s) - {"name", "model_overrides", "lrs"}) + sorted(set(s.get("lrs") or {}) - set(d["kinds"]))
        if bad:
            raise ValueError(f"{p}: size {s.get('name')!r}: unknown key(s) {', '.join(bad)}")
    names = [s.get("name") for s in d["sizes"]]
    if len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{p}: every size needs a distinct string name, got {names}")
    for kind, kd in d["kinds"].items():
        bad = sorted(set(kd) - KIND_KEYS)
        if bad or not kd.get("lrs"):
            raise ValueError(f"{p}: kinds.{kind} needs keys {sorted(KIND_KEYS)} (unknown: {bad})")
    ab = d.get("ablation")
    if ab:
        if ab.get("size") not in names or ab.get("kind") not in d["kinds"]:
            raise ValueError(f"{p}: ablation size/kind must name one of sizes {names} and kinds {list(d['kinds'])}")
    ev = {**EVAL_DEFAULTS, **(d.get("eval") or {})}
    if ev["file"] is not None:
        ev["file"] = resolve_path(ev["file"], base)
        if not Path(ev["file"]).is_file():
            raise FileNotFoundError(f"{p}: eval.file {ev['file']} not found")
        held = Path(ev["file"]).resolve()
        if any(Path(x).resolve() == held for x in data["paths"] if not x.startswith("bundled:")):
            raise ValueError(f"{p}: eval.file {held} is also a training file; it must be held out")
    d["eval"] = ev
    return d


def plan_sweep(study: dict[str, Any]) -> list[RunSpec]:
    """The sweep runs in execution order: size by size (smallest first, so early timings tell how
    long the rest takes), every kind's LRs within a size."""
    return [RunSpec(s["name"], kind, float(lr), kd["schedule"])
            for s in study["sizes"] for kind, kd in study["kinds"].items() for lr in _lrs(study, s, kind)]


def _lrs(study: dict[str, Any], size: dict[str, Any], kind: str) -> list[float]:
    """A kind's LR sweep at one size: the size's own ``lrs.<kind>`` list if it has one (to trim a
    sweep where runs are expensive), else the kind's."""
    return [float(x) for x in (size.get("lrs") or {}).get(kind, study["kinds"][kind]["lrs"])]


def run_config(study: dict[str, Any], spec: RunSpec, out: Path) -> TrainConfig:
    """The ``TrainConfig`` of one run: the shared ``train`` section + the size's and kind's settings."""
    d = copy.deepcopy(study["train"])
    size = next(s for s in study["sizes"] if s["name"] == spec.size)
    d["model_overrides"] = {**d.get("model_overrides", {}), **size.get("model_overrides", {}),
                            "linear_type": study["kinds"][spec.kind]["linear_type"]}
    d.setdefault("optim", {}).update(lr=spec.lr, schedule=spec.schedule)
    d["out_dir"] = str(out / spec.name)
    d["resume"] = True  # continue an interrupted run; starts from step 0 when there is no checkpoint
    cfg = config_from_dict(TrainConfig, d)
    cfg.validate()
    return cfg


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    d = config_to_dict(cfg)
    for k in IGNORED_KEYS:
        *parents, leaf = k.split(".")
        node = d
        for q in parents:
            node = node[q]
        node.pop(leaf, None)
    return d


# ---------------------------------------------------------------------------- running
def _val_curve(run_dir: Path, tokens_per_step: int) -> list[tuple[int, float]]:
    from .loop import read_metrics

    return [(r["step"] * tokens_per_step, r["val_loss"]) for r in read_metrics(run_dir) if "val_loss" in r]


def train_run(study: dict[str, Any], spec: RunSpec, out: Path, log=print) -> dict[str, Any]:
    """Train ``spec`` unless ``<out>/<name>/study_run.json`` says it is done; return its record
    (name, size, kind, lr, schedule, role, params, tokens, wall_s, val_loss, curve).

    Raises:
        ValueError: a completed run in that folder was trained with a different config.
    """
    cfg = run_config(study, spec, out)
    run_dir = Path(cfg.out_dir)
    done = run_dir / RUN_DONE
    if done.is_file():
        rec = json.loads(done.read_text())
        if rec.get("config") != _comparable(cfg):
            raise ValueError(f"{run_dir}: completed with a different training config than {spec.name} plans now; "
                             "choose another --out or remove that folder")
        log(f"  {spec.name}: already done (val loss {rec['val_loss']:.4f}), skipped")
        return rec
    from bitnet.checkpoint import load_model_dir

    from .loop import latest_checkpoint, train

    log(f"  {spec.name}: training ({cfg.max_steps} steps, {cfg.max_steps * cfg.batch_size * cfg.data.seq_len:,} tokens)")
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    tps = cfg.batch_size * cfg.data.seq_len
    curve = _val_curve(run_dir, tps)
    if not curve or curve[-1][0] != cfg.max_steps * tps:
        raise ValueError(f"{run_dir}: no validation loss at the last step (data.val_fraction=0?)")
    model = load_model_dir(latest_checkpoint(run_dir) / "model")
    rec = {"name": spec.name, "size": spec.size, "kind": spec.kind, "lr": spec.lr, "schedule": spec.schedule,
           "role": spec.role, "params": model.num_parameters(exclude_embeddings=True),
           "tokens": cfg.max_steps * tps, "wall_s": wall, "val_loss": curve[-1][1], "curve": curve,
           "config": _comparable(cfg)}
    with atomic_file(done, "w") as f:
        json.dump(rec, f, indent=1)
    log(f"  {spec.name}: val loss {rec['val_loss']:.4f} in {wall:.0f} s")
    return rec


def score_perplexity(study: dict[str, Any], rec: dict[str, Any], out: Path, log=print) -> dict[str, Any]:
    """Sliding-window perplexity of ``eval.file`` under the run's final model (cached in the run
    folder with the eval settings; rescored when they change). Ternary: export_hf + the C++ engine;
    full precision: :func:`batched_torch_perplexity`."""
    run_dir = out / rec["name"]
    cache = run_dir / PPL_FILE
    ev = study["eval"]
    key = {"file": str(Path(ev["file"]).resolve()), "max_chars": ev["max_chars"], "stride_fraction": ev["stride_fraction"]}
    if cache.is_file():
        r = json.loads(cache.read_text())
        if r.get("eval") == key:  # scored the same text the same way: reuse
            return r
    from bitnet.checkpoint import load_model_dir
    from bitnet.eval import perplexity

    from .loop import latest_checkpoint

    text_file = Path(ev["file"])
    if ev["max_chars"]:  # a prefix of the file (quick tests)
        text_file = run_dir / "eval_text.txt"
        text_file.write_text(Path(ev["file"]).read_text(encoding="utf-8")[: int(ev["max_chars"])])
    src = latest_checkpoint(run_dir) / "model"
    model = load_model_dir(src)
    context = model.config.max_position_embeddings
    stride = max(1, int(context * ev["stride_fraction"]))
    if model.config.linear_type == "bitlinear":
        from bitnet.export import export_hf

        exp = export_hf(model, run_dir / "export", tokenizer=src / "tokenizer.json")
        log(f"  {rec['name']}: test perplexity (C++ engine, context {context}, stride {stride})")
        r = perplexity(exp, text_file, context=context, stride=stride, backend="engine", progress=True)
    else:  # the packed ternary export cannot hold FP weights: PyTorch, windows batched
        log(f"  {rec['name']}: test perplexity (PyTorch, batched, context {context}, stride {stride})")
        r = batched_torch_perplexity(model, src, text_file, context, stride)
    r = {k: r[k] for k in ("perplexity", "nll_per_token", "tokens", "seconds", "context", "stride", "backend")}
    r["eval"] = key
    with atomic_file(cache, "w") as f:
        json.dump(r, f, indent=1)
    return r


def batched_torch_perplexity(model, model_dir: str | Path, file: str | Path, context: int, stride: int,
                             batch: int = 32, progress: bool = True) -> dict[str, Any]:
    """``bitnet.eval.perplexity(model_dir, file, context, stride, backend="torch")`` with the model's
    forward passes batched (``batch`` windows at a time): the reference backend runs one window per
    call, which takes minutes for a WikiText-2-sized file. The windows are exactly the reference's:
    a dry pass of ``sliding_window_nll`` records them, and the real pass is served from batched
    forwards in the same order (tests/training/test_study.py checks both give the same perplexity).

    Returns the keys of ``perplexity``'s dict used by the study (``backend`` = "torch-batched").
    """
    from collections import deque

    import numpy as np
    import torch

    from bitnet.eval.backends import load_tokenizer
    from bitnet.eval.perplexity import read_text, sliding_window_nll

    tokens = load_tokenizer(model_dir).encode(read_text(file), add_special_tokens=False).ids
    vocab = model.config.vocab_size
    calls: list[tuple[list[int], int]] = []

    def record(ids, start: int) -> np.ndarray:
        calls.append((list(ids), start))
        return np.zeros((len(ids) - start, vocab), np.float32)  # (rows, V): any finite logits do

    sliding_window_nll(tokens, record, context, stride)
    model = model.float().eval()
    ready: deque[np.ndarray] = deque()
    pos, served = 0, 0

    def logits(ids, start: int) -> np.ndarray:
        nonlocal pos, served
        if calls[served] != (list(ids), start):
            raise RuntimeError("batched perplexity: window order differs from the dry pass")  # a bug, not bad input
        served += 1
        if not ready:  # the next run of same-length windows, at most `batch`
            end, n = pos, len(calls[pos][0])
            while end < len(calls) and end - pos < batch and len(calls[end][0]) == n:
                end += 1
            x = torch.tensor([calls[k][0] for k in range(pos, end)])  # (B, n)
            with torch.no_grad():
                out = model(x).float().numpy()  # (B, n, V)
            ready.extend(out[k - pos, calls[k][1]:] for k in range(pos, end))  # (n - start, V) each
            pos = end
        return ready.popleft()

    t0 = time.perf_counter()
    nll, scored, _ = sliding_window_nll(tokens, logits, context, stride, progress=progress)
    seconds = time.perf_counter() - t0
    return {"perplexity": math.exp(nll / scored), "nll_per_token": nll / scored, "tokens": scored,
            "seconds": seconds, "context": context, "stride": stride, "backend": "torch-batched"}


def run_study(study: dict[str, Any], out: str | Path, log=print, on_size_done=None) -> dict[str, Any]:
    """Run (or resume) the whole study under ``out``; return the results dict (see module doc).

    ``on_size_done(results)``, if given, is called with the results so far each time a size is
    finished (its sweep, its ablation and its test perplexities), so partial results are written
    even if the study is stopped later.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sweep = plan_sweep(study)
    ab = study.get("ablation")
    n_total = len(sweep) + (1 if ab else 0)
    runs: list[dict[str, Any]] = []
    best: dict[str, dict[str, dict[str, Any]]] = {}
    ablation: list[dict[str, Any]] = []

    def results() -> dict[str, Any]:
        sizes = [s["name"] for s in study["sizes"]]
        return {
            "runs": runs,
            "best": {s: {k: r["name"] for k, r in best[s].items()} for s in sizes if s in best},
            "ablation": [r["name"] for r in ablation],
            "sizes": sizes,
            "study": study,
            "invocation_wall_s": time.perf_counter() - t0,  # this call only (skipped runs cost ~0)
            "train_wall_s": sum(r["wall_s"] for r in runs) + sum(r["wall_s"] for r in ablation[1:]),
            "by_name": {r["name"]: r for r in runs + ablation},
        }

    for i, spec in enumerate(sweep, 1):
        log(f"[{i}/{n_total}] {spec.name}")
        rec = train_run(study, spec, out, log)
        runs.append(rec)
        cur = best.setdefault(spec.size, {}).get(spec.kind)
        if cur is None or rec["val_loss"] < cur["val_loss"]:
            best[spec.size][spec.kind] = rec
        if any(r.size == spec.size for r in sweep[i:]):
            continue  # this size's sweep is not finished yet
        to_score = list(best[spec.size].values())
        if ab and spec.size == ab["size"]:
            base = best[ab["size"]][ab["kind"]]
            other = RunSpec(ab["size"], ab["kind"], base["lr"], ab["schedule"], role="ablation")
            log(f"[{n_total}/{n_total}] ablation {other.name} (vs {base['name']})")
            ablation = [base, train_run(study, other, out, log)]
            to_score.append(ablation[1])
        if study["eval"]["file"]:
            for r in to_score:
                r["test"] = score_perplexity(study, r, out, log)
        if on_size_done is not None:
            on_size_done(results())
    return results()


# ---------------------------------------------------------------------------- reporting
def gap_statement(res: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """Plain words on the ternary-minus-FP final validation loss gap of the best runs: its value at
    the largest size and whether it narrows as the size grows. Returns (text, {size: gap})."""
    by = res["by_name"]
    gaps: dict[str, float] = {}
    params: dict[str, int] = {}
    for s in res["sizes"]:
        b = res["best"].get(s, {})
        if "ternary" in b and "fp" in b:
            gaps[s] = by[b["ternary"]]["val_loss"] - by[b["fp"]]["val_loss"]
            params[s] = by[b["fp"]]["params"]
    if not gaps:
        return "No size has both a ternary and a full-precision run, so there is no gap to report.", gaps
    order = sorted(gaps, key=lambda s: params[s])
    last = order[-1]
    g = gaps[last]
    text = (f"At the largest size ({params[last] / 1e6:.2f}M non-embedding parameters) the best ternary run's "
            f"final validation loss is {g:+.4f} nats/token relative to the best full-precision run "
            f"(ternary {'worse' if g > 0 else 'better or equal'}; a validation-perplexity ratio of {math.exp(g):.3f}).")
    if len(order) > 1:
        seq = [gaps[s] for s in order]
        listing = ", ".join(f"{params[s] / 1e6:.2f}M: {gaps[s]:+.4f}" for s in order)
        if all(b < a for a, b in zip(seq, seq[1:])):
            trend = "falls steadily as the models grow (ternary gains on full precision with size"
            trend += "; the gap narrows)" if seq[-1] >= 0 else ")"
        elif all(b > a for a, b in zip(seq, seq[1:])):
            trend = "rises as the models grow (ternary loses ground to full precision with size; it does not narrow)"
        elif seq[-1] < seq[0]:
            trend = "is lower at the largest size than at the smallest, but not steadily"
        else:
            trend = "does not fall with size here (it does not narrow)"
        text += f" The ternary-minus-FP gap {trend}; gap by size: {listing}."
    return text, gaps


def _fmt_ppl(r: dict[str, Any]) -> str:
    return f"{r['test']['perplexity']:.2f}" if "test" in r else "-"


def results_markdown(res: dict[str, Any]) -> str:
    """The results as markdown: best-run table, ablation, gap statement, every sweep run."""
    by = res["by_name"]
    st = res["study"]
    tr = st["train"]
    seq = tr.get("data", {}).get("seq_len", 128)
    lines = [
        "# Ternary (BitNet b1.58) vs full precision at small scale",
        "",
        "Scale: models of " + ", ".join(
            f"{by[next(iter(res['best'][s].values()))]['params'] / 1e6:.2f}M" for s in res["sizes"] if s in res["best"])
        + f" non-embedding parameters trained on {res['runs'][0]['tokens']:,} tokens each on 2 CPU cores: "
        "orders of magnitude below the paper's 700M-3B models trained on 100B tokens. Read it as a check "
        "of the toolkit and of the trend at tiny scale, not as a reproduction of the paper's numbers.",
        "",
        f"Every run uses the same data config, tokenizer, seed ({tr.get('seed')}) and token budget; only the "
        "linear layers (ternary BitLinear vs full-precision nn.Linear), the schedule and the peak LR differ. "
        "Validation loss: the tail of the training stream (WikiText-2 valid). Test perplexity: WikiText-2 "
        "test (held out), sliding window, context = max_position_embeddings, stride half of it "
        "(ternary: exported with export_hf and scored by the C++ engine; FP, which the packed ternary export "
        "cannot hold: PyTorch with batched windows)." + (
            f" Only the first {st['eval']['max_chars']:,} characters of the test file are scored."
            if st["eval"]["max_chars"] else ""),
        "",
        "## Best LR per size and kind",
        "",
        "| size (non-emb. params) | kind | schedule | best LR | final val loss | WikiText-2 test ppl | tokens | wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in res["sizes"]:
        for kind, name in res["best"].get(s, {}).items():
            r = by[name]
            swept = _lrs(st, next(x for x in st["sizes"] if x["name"] == s), kind)
            edge = "*" if len(swept) > 1 and r["lr"] in (min(swept), max(swept)) else ""
            lines.append(f"| {s} ({r['params'] / 1e6:.2f}M) | {kind} | {r['schedule']} | {r['lr']:g}{edge} | "
                         f"{r['val_loss']:.4f} | {_fmt_ppl(r)} | {r['tokens']:,} | {r['wall_s']:.0f} |")
    lines += ["", "Best LR = lowest final validation loss among the LRs swept (every run is listed at the end); "
              "`*` marks a best LR at the edge of its sweep, where a wider sweep might find a better one."]
    text, _ = gap_statement(res)
    lines += ["", "## The gap", "", text, ""]
    params = [r["params"] for r in res["runs"]]
    if params:
        tokens = res["runs"][0]["tokens"]
        lines += [f"Caveat: {tokens:,} training tokens are {tokens / max(params):.2f} tokens per non-embedding "
                  f"parameter at the largest size and {tokens / min(params):.1f} at the smallest (compute-optimal "
                  "training uses ~20), so no model here is near convergence; differences between sizes mostly "
                  "show how fast each learns in a short run, and a gap trend over sizes this small and this "
                  "briefly trained is weak evidence either way.", ""]
    if res["ablation"]:
        ab = st["ablation"]
        lines += [
            f"## Ablation: schedule at size {ab['size']} ({ab['kind']}, same peak LR)",
            "",
            "two_stage = the BitNet b1.58 recipe (LR drop at mid-training, weight decay 0.1 then 0); "
            "cosine = plain cosine decay with constant weight decay.",
            "",
            "| run | schedule | LR | final val loss | WikiText-2 test ppl | wall time (s) |",
            "|---|---|---|---|---|---|",
        ]
        for name in res["ablation"]:
            r = by[name]
            lines.append(f"| {name} | {r['schedule']} | {r['lr']:g} | {r['val_loss']:.4f} | {_fmt_ppl(r)} | {r['wall_s']:.0f} |")
        a, b = (by[n]["val_loss"] for n in res["ablation"])
        lines += ["", f"Two-stage minus cosine final validation loss: {a - b:+.4f} nats/token "
                  f"({'two-stage better' if a < b else 'cosine better or equal'}).", ""]
    lines += ["## Every sweep run", "", "| run | params | kind | LR | final val loss | wall time (s) |",
              "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['kind']} | {r['lr']:g} | {r['val_loss']:.4f} | "
                     f"{r['wall_s']:.0f} |")
    lines += ["", f"Tokens per run: {res['runs'][0]['tokens']:,} ({seq}-token sequences). Training wall time "
              f"of all runs: {res['train_wall_s'] / 60:.1f} min (timings on a shared 2-core machine are noisy).",
              "", "![validation loss vs tokens](loss_vs_tokens.png)", ""]
    return "\n".join(lines)


def plot_curves(res: dict[str, Any], path: Path) -> Path:
    """``loss_vs_tokens.png``: validation loss vs training tokens of every size's best runs;
    colour = size, solid = ternary, dashed = full precision, dotted = the ablation run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = res["by_name"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(res["sizes"]):
        for kind, name in res["best"].get(s, {}).items():
            r = by[name]
            x, y = zip(*r["curve"])
            ax.plot(x, y, "-" if kind == "ternary" else "--", marker=".", color=colors[i % len(colors)],
                    label=f"{s} {r['params'] / 1e6:.2f}M {kind} ({r['schedule']}, lr {r['lr']:g})")
    for name in res["ablation"][1:]:
        r = by[name]
        x, y = zip(*r["curve"])
        i = res["sizes"].index(r["size"])
        ax.plot(x, y, ":", color=colors[i % len(colors)], label=f"{r['size']} {r['kind']} ablation ({r['schedule']})")
    late = [y for line in ax.get_lines() for x, y in zip(*line.get_data()) if x >= 0.2 * max(line.get_xdata())]
    if late:  # the first validations (loss ~7) would squash the part worth reading
        lo, hi = min(late), max(late)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-3), hi + 0.15 * (hi - lo + 1e-3))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("ternary (solid) vs full precision (dashed), best LR per size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_results(res: dict[str, Any], results_dir: str | Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``loss_vs_tokens.png`` into ``results_dir``."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    text, gaps = gap_statement(res)
    doc = {k: v for k, v in res.items() if k != "by_name"}
    doc["ablation_runs"] = [res["by_name"][n] for n in res["ablation"]]
    doc["gap"] = {"val_loss_ternary_minus_fp": gaps, "statement": text}
    with atomic_file(d / "results.json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with atomic_file(d / "results.md", "w") as f:
        f.write(results_markdown(res))
    return [d / "results.json", d / "results.md", plot_curves(res, d / "loss_vs_tokens.png")]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="bitnet study",
        description="Train ternary and full-precision twins at several small sizes on the same tokens, each "
        "with an LR sweep, plus a schedule ablation; score the best runs' held-out perplexity; write "
        "results.json, results.md and loss_vs_tokens.png. Re-running continues an interrupted study "
        "(completed runs are skipped).",
        epilog="example: bitnet study configs/study/small.yaml --out runs/study --results docs/study "
        "train.max_steps=100   (more: docs/training.md in the bitnet source repository)",
    )
    ap.add_argument("config", help="study YAML (configs/study/*.yaml)")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="study overrides with dotted keys, e.g. train.max_steps=100 kinds.fp.lrs=[2e-3]")
    ap.add_argument("--out", default="runs/study", help="folder of the study's runs (default: runs/study)")
    ap.add_argument("--results", default=None, help="where to write the results files (default: --out)")
    args = ap.parse_intermixed_args(argv)  # options may follow the key=value overrides
    study = load_study(args.config, args.overrides)
    res = run_study(study, args.out, on_size_done=lambda r: write_results(r, args.results or args.out))
    paths = write_results(res, args.results or args.out)
    print(gap_statement(res)[0])
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
