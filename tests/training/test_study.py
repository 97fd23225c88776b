"""bitnet study: a micro study (two 3-step runs) writes its table, plot and JSON and resumes."""

from __future__ import annotations

import json
import math

import yaml

from bitnet.checkpoint import load_model_dir
from bitnet.eval import perplexity
from bitnet.training import bundled_text, latest_checkpoint
from bitnet.training.study import batched_torch_perplexity, load_study, run_study, write_results

PPL_RTOL = 1e-4  # batched vs one-window-at-a-time float32 forwards: summation order only


def _study_yaml(tmp_path, corpus, token_cache) -> tuple:
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(bundled_text().read_text()[50_000:53_000])  # not in the 40k-char training slice
    d = {
        "train": {
            "model": "test-tiny", "seed": 7, "compile": False, "max_steps": 3, "batch_size": 2, "micro_batch_size": 2,
            "threads": 1,  # tiny matmuls: a second torch thread only spin-waits on a busy machine
            "model_overrides": {"max_position_embeddings": 32},
            "data": {"paths": [str(corpus)], "tokenizer_vocab_size": 300, "seq_len": 32, "cache_dir": str(token_cache)},
            "optim": {"warmup_steps": 1},
            "log": {"eval_every": 1, "eval_batches": 1, "tensorboard": False, "plot": False, "sample_tokens": 0,
                    "progress": False},
        },
        "sizes": [{"name": "tiny", "model_overrides": {}}],
        "kinds": {"ternary": {"linear_type": "bitlinear", "schedule": "two_stage", "lrs": [4e-3]},
                  "fp": {"linear_type": "fp", "schedule": "cosine", "lrs": [2e-3]}},
        "ablation": None,
        "eval": {"file": str(held_out)},
    }
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(d))
    return p, held_out


def test_micro_study_writes_table_plot_and_resumes(tmp_path, corpus, token_cache):
    cfg, held_out = _study_yaml(tmp_path, corpus, token_cache)
    study = load_study(cfg)
    out = tmp_path / "runs"
    res = run_study(study, out, log=lambda m: None)
    files = write_results(res, tmp_path / "results")
    assert [f.name for f in files] == ["results.json", "results.md", "loss_vs_tokens.png"]
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(files[0].read_text())
    assert {r["kind"] for r in doc["runs"]} == {"ternary", "fp"}
    for r in doc["runs"]:
        assert r["tokens"] == 3 * 2 * 32 and len(r["curve"]) == 3 and math.isfinite(r["val_loss"])
        assert r["test"]["perplexity"] > 1 and r["test"]["tokens"] > 100
    md = files[1].read_text()
    assert "| size (non-emb. params) | kind |" in md and "ternary-minus-FP" not in md  # one size: no trend
    assert doc["gap"]["statement"] in md and "largest size" in doc["gap"]["statement"]

    # A second invocation trains nothing: every run is already complete.
    logs: list[str] = []
    again = run_study(load_study(cfg), out, log=logs.append)
    assert sum("already done" in m for m in logs) == 2 and not any("training (" in m for m in logs)
    assert [r["val_loss"] for r in again["runs"]] == [r["val_loss"] for r in doc["runs"]]

    # The batched FP scorer is the reference backend's perplexity, computed faster.
    src = latest_checkpoint(out / doc["best"]["tiny"]["fp"]) / "model"
    ref = perplexity(src, held_out, context=32, stride=16, backend="torch", progress=False)
    fast = batched_torch_perplexity(load_model_dir(src), src, held_out, 32, 16, batch=5, progress=False)
    assert fast["tokens"] == ref["tokens"]
    assert math.isclose(fast["perplexity"], ref["perplexity"], rel_tol=PPL_RTOL)
