"""`bitnet demo` end to end at tiny settings: the summary, reuse of a finished run, --retrain."""

from __future__ import annotations

import json
import re

from data_paths import DATA_DIR

from bitnet.cli import main
from bitnet.eval import perplexity
from bitnet.training import bundled_text, latest_checkpoint

MAX_STEPS = 4
# The bundled demo config (configs/train/shakespeare.yaml), shrunk to the test-tiny model, 4 steps and
# the first 40k characters of the text: the same code path as the full demo in seconds.
TINY = ["model=test-tiny", "model_overrides={}", f"max_steps={MAX_STEPS}", "batch_size=2", "micro_batch_size=2",
        "data.seq_len=32", "data.tokenizer_vocab_size=300", "optim.warmup_steps=1", "log.eval_every=4",
        "log.eval_batches=1", "log.save_every=0", "log.sample_tokens=8", "log.progress=false",
        "log.tensorboard=false", "compile=false", "threads=1"]
HELDOUT_FRACTION = 0.1  # bitnet/demo.py scores the last 10% of the text's lines


def _demo(capsys, out, corpus, *extra: str) -> str:
    argv = ["demo", "--out", str(out), "--threads", "1", "--max-new-tokens", "8", "--eval-limit", "2",
            "--data-dir", str(DATA_DIR), *extra, *TINY, f"data.paths=[{corpus}]",
            f"data.cache_dir={out.parent / 'cache'}"]
    assert main(argv) == 0
    return capsys.readouterr().out


def _figures(text: str) -> dict[str, str]:
    """The summary's figures, as printed."""
    ppl = re.search(r"^perplexity +([\d.]+) on ([\d,]+) held-out tokens", text, re.M)
    arc = re.search(r"^ARC-Easy +acc ([\d.]+), acc_norm ([\d.]+) on 2 questions", text, re.M)
    assert ppl and arc, text
    return {"ppl": ppl[1], "tokens": ppl[2], "acc": arc[1], "acc_norm": arc[2]}


def test_demo_summary_reuse_and_retrain(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside any git checkout: lm-eval's git lookup stays quiet
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # the demo sets them for local data; undone after the test
        monkeypatch.setenv(k, "1")
    corpus = tmp_path / "text.txt"
    corpus.write_text(bundled_text().read_text()[:40_000])
    out = tmp_path / "demo"
    run_dir, export_dir = out / "train", out / "export"

    first = _demo(capsys, out, corpus)
    assert f"[1/4] training: shakespeare.yaml -> {run_dir}\n" in first  # trained, nothing reused
    for line in ("bitnet demo: summary", f"training run    {run_dir}  (", f"packed export   {export_dir}  (",
                 f"next            bitnet generate {export_dir} "):
        assert re.search("^" + re.escape(line), first, re.M), line
    assert latest_checkpoint(run_dir).name == f"step_{MAX_STEPS:07d}"
    assert (export_dir / "model.safetensors").is_file() and (export_dir / "tokenizer.json").is_file()
    # the figures printed are the ones the scorers give: the held-out tail, and the lm-eval slice's JSON
    lines = corpus.read_text().splitlines(keepends=True)
    heldout = out / "heldout.txt"
    assert heldout.read_text() == "".join(lines[int(len(lines) * (1 - HELDOUT_FRACTION)):])
    figs = _figures(first)
    ppl = perplexity(export_dir, heldout, threads=1, progress=False)
    assert (figs["ppl"], figs["tokens"]) == (f"{ppl['perplexity']:.2f}", f"{ppl['tokens']:,}")
    arc = json.loads((out / "eval_arc_easy.json").read_text())["results"]["arc_easy"]
    assert (figs["acc"], figs["acc_norm"]) == (f"{arc['acc,none']:.3f}", f"{arc['acc_norm,none']:.3f}")

    ckpt = latest_checkpoint(run_dir)
    stamps = {p: p.stat().st_mtime_ns for p in [run_dir / "metrics.jsonl", *ckpt.rglob("*")]}
    second = _demo(capsys, out, corpus)
    assert f"[1/4] training: shakespeare.yaml -> {run_dir}  (finished run found: reused)\n" in second
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing of the run was written again
    assert _figures(second) == figs  # the same model, scored the same

    metrics = (run_dir / "metrics.jsonl").read_text()
    third = _demo(capsys, out, corpus, "--retrain")
    assert f"[1/4] training: shakespeare.yaml -> {run_dir}\n" in third  # trained again from step 0
    assert latest_checkpoint(run_dir).name == f"step_{MAX_STEPS:07d}"
    assert (latest_checkpoint(run_dir) / "trainer_state.json").stat().st_mtime_ns > stamps[ckpt / "trainer_state.json"]
    retrained = (run_dir / "metrics.jsonl").read_text()
    losses = [[r.get("loss") for r in map(json.loads, m.splitlines())] for m in (metrics, retrained)]
    assert losses[0] == losses[1] and len(losses[0]) > MAX_STEPS  # the same seed retrains the same run, step for step
    assert _figures(third) == figs
