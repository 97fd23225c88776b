"""Wall time of 5-shot MMLU on a slice: ``bitnet`` with prefix reuse vs without vs lm-eval's ``hf``.

    python benchmarks/bench_eval.py                       # random-weight 10m model, 4 subjects x 3 questions
    python benchmarks/bench_eval.py --model out/export    # an existing export
    python benchmarks/bench_eval.py --preset 25m --subjects 6 --limit 4 --threads 2

Without ``--model`` a model of ``--preset`` with random weights and a byte-level BPE tokenizer
trained on local WikiText-2 is exported to a temporary folder (speed does not depend on training).
All three runs score the same requests on the same export in one process, one after the other, and
the ratios are what to read: wall times on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet quantizers use torch.compile
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bitnet import BitNetConfig, BitNetForCausalLM
from bitnet.eval import BitNetLM
from bitnet.eval.hf_reference import hf_lm
from bitnet.eval.tasks import local_task_dir, task_manager

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SUBJECTS = ["anatomy", "astronomy", "virology", "marketing", "econometrics", "philosophy", "nutrition", "sociology"]


def random_export(preset: str, out: Path, seed: int = 0) -> Path:
    """Export a random-weight model of ``preset`` with the project's BPE trained on local WikiText-2."""
    from bitnet.export import export_hf
    from bitnet.training.tokenizer import train_bpe

    cfg = BitNetConfig.from_preset(preset)
    text = (DATA_DIR / "text" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    tok = train_bpe((text[i:i + 10_000] for i in range(0, len(text), 10_000)), vocab_size=cfg.vocab_size)
    torch.manual_seed(seed)
    cfg.eos_token_id = tok.token_to_id("<|endoftext|>")
    return export_hf(BitNetForCausalLM(cfg).eval(), out, tokenizer=tok)


def timed_eval(lm, tasks: list[str], limit: int, manager) -> tuple[float, dict]:
    from lm_eval import simple_evaluate

    t0 = time.perf_counter()
    r = simple_evaluate(model=lm, tasks=tasks, num_fewshot=5, limit=limit, task_manager=manager,
                        log_samples=False, bootstrap_iters=0)
    return time.perf_counter() - t0, r["results"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="an export directory (default: a random-weight --preset model)")
    p.add_argument("--preset", default="10m", help="model preset when --model is not given (default: %(default)s)")
    p.add_argument("--subjects", type=int, default=4, help=f"MMLU subjects, from {SUBJECTS[:3]}... (default: 4)")
    p.add_argument("--limit", type=int, default=3, help="questions per subject (default: 3)")
    p.add_argument("--threads", type=int, default=2, help="engine threads and torch threads (default: 2)")
    p.add_argument("--skip-hf", action="store_true", help="leave out lm-eval's hf model")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    tasks = [f"mmlu_{s}" for s in SUBJECTS[: a.subjects]]
    with tempfile.TemporaryDirectory() as tmp, local_task_dir(DATA_DIR) as task_dir:
        model_dir = Path(a.model) if a.model else random_export(a.preset, Path(tmp) / "export")
        manager = task_manager(task_dir)
        print(f"model {model_dir if a.model else a.preset + ' (random weights)'}; 5-shot MMLU, "
              f"{len(tasks)} subjects x {a.limit} questions; {a.threads} threads")
        reuse = BitNetLM(model_dir, threads=a.threads)
        no_reuse = BitNetLM(model_dir, threads=a.threads, prefix_reuse=False)
        t_reuse, r1 = timed_eval(reuse, tasks, a.limit, manager)
        t_plain, r2 = timed_eval(no_reuse, tasks, a.limit, manager)
        assert all(r1[t]["acc,none"] == r2[t]["acc,none"] for t in tasks), "prefix reuse changed the scores"
        st = reuse.stats
        print(f"bitnet engine, prefix reuse : {t_reuse:8.2f} s  ({st['computed']} of {st['positions']} positions computed)")
        print(f"bitnet engine, no reuse     : {t_plain:8.2f} s  -> reuse is {t_plain / t_reuse:.2f}x faster (target >= 2.5x)")
        if not a.skip_hf:
            t_hf, r3 = timed_eval(hf_lm(model_dir), tasks, a.limit, manager)
            same = sum(r1[t]["acc,none"] == r3[t]["acc,none"] for t in tasks)
            print(f"lm-eval hf (transformers)   : {t_hf:8.2f} s  -> bitnet with reuse is {t_hf / t_reuse:.2f}x faster"
                  f" (same accuracy on {same}/{len(tasks)} subjects)")


if __name__ == "__main__":
    main()
