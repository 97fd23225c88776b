"""Helpers shared by the eval tests: run lm-eval on a model object over the local data, pair samples."""

from __future__ import annotations

from typing import Any

import numpy as np
from eval_helpers import DATA_DIR

from bitnet.eval.tasks import local_task_dir, task_manager


def evaluate(lm: Any, tasks: list[str], limit: int, num_fewshot: int | None = None) -> dict[str, list[dict]]:
    """lm-eval's simple_evaluate on local data -> {task: samples sorted by doc_id}."""
    from lm_eval import simple_evaluate

    with local_task_dir(DATA_DIR) as d:
        r = simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot,
                            task_manager=task_manager(d), log_samples=True, bootstrap_iters=0)
    return {t: sorted(s, key=lambda x: x["doc_id"]) for t, s in r["samples"].items()}


def logliks(sample: dict) -> np.ndarray:
    """The per-choice loglikelihoods lm-eval recorded for one multiple-choice document."""
    return np.array([r[0][0] for r in sample["resps"]], dtype=np.float64)


def questions(samples: dict[str, list[dict]], family: str) -> list[dict]:
    """All samples of a task or of a group's subtasks (mmlu -> mmlu_*)."""
    return [s for t, ss in samples.items() if t == family or t.startswith(family + "_") for s in ss]
