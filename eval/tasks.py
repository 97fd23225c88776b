"""lm-eval tasks that read local files instead of the model hub.

Each local task is a two-line YAML *override* of lm-eval's own task file: it ``include``s the
installed definition (prompt, choices, metrics, filters, few-shot split, group and tag wiring all
come from lm-eval) and replaces only where the data comes from (``dataset_path: json`` plus
``dataset_kwargs.data_files`` pointing into the local folder). The overrides are written to a
temporary folder and handed to lm-eval's ``TaskManager`` as its only ``include_path``.

The local folder has the layout of ``../shared/data`` (see its README): ``mmlu/{test,dev}/<subject>.jsonl``,
``gsm8k/{train,test}.jsonl``, ``ai2_arc/{ARC-Challenge,ARC-Easy}/test.jsonl``.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import lm_eval
import yaml

__all__ = ["SUPPORTED_TASKS", "lm_eval_tasks_dir", "local_task_dir", "parse_tasks", "task_manager"]

# The task families this module knows how to point at local files (groups expand to subtasks).
SUPPORTED_TASKS = ("mmlu", "gsm8k", "arc_challenge", "arc_easy")


def lm_eval_tasks_dir() -> Path:
    """The ``tasks/`` folder of the installed lm-eval (the definitions we reuse)."""
    return Path(lm_eval.__file__).resolve().parent / "tasks"


def parse_tasks(tasks: str | list[str]) -> list[str]:
    """``"mmlu,gsm8k"`` or a list -> a list of non-empty names. Raises ValueError when empty."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ValueError("no task names given (e.g. --tasks mmlu,gsm8k,arc_challenge,arc_easy)")
    return names


def _override(include: Path, data_files: dict[str, str], **extra: object) -> dict:
    return {
        "include": str(include),
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data_files},
        **extra,
    }


def _require(path: Path, what: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing ({what}); the data dir must follow ../shared/data's layout")
    return str(path)


def _local_configs(data_dir: Path) -> dict[str, dict]:
    """File name -> YAML override for every task of :data:`SUPPORTED_TASKS` found in ``data_dir``."""
    src = lm_eval_tasks_dir()
    out: dict[str, dict] = {}
    mmlu_src = src / "mmlu" / "default"
    if (data_dir / "mmlu").is_dir():
        for f in sorted(mmlu_src.glob("mmlu_*.yaml")):
            subject = f.stem[len("mmlu_"):]
            files = {
                "test": _require(data_dir / "mmlu" / "test" / f"{subject}.jsonl", f"MMLU {subject} test split"),
                "dev": _require(data_dir / "mmlu" / "dev" / f"{subject}.jsonl", f"MMLU {subject} dev split"),
            }
            out[f"mmlu/{f.name}"] = _override(f, files)
        for g in sorted(mmlu_src.glob("_mmlu*.yaml")):  # the group files: mmlu and its four categories
            out[f"mmlu/{g.name}"] = {"include": str(g)}
    if (data_dir / "gsm8k").is_dir():
        files = {
            "train": _require(data_dir / "gsm8k" / "train.jsonl", "GSM8K train split (few-shot examples)"),
            "test": _require(data_dir / "gsm8k" / "test.jsonl", "GSM8K test split"),
        }
        out["gsm8k.yaml"] = _override(src / "gsm8k" / "gsm8k.yaml", files)
    for task, folder in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        if (data_dir / "ai2_arc" / folder).is_dir():
            files = {"test": _require(data_dir / "ai2_arc" / folder / "test.jsonl", f"{folder} test split")}
            # Only the test split exists offline: drop train/validation so lm-eval does not look for them.
            out[f"{task}.yaml"] = _override(src / "arc" / f"{task}.yaml", files,
                                            training_split=None, validation_split=None)
    return out


@contextlib.contextmanager
def local_task_dir(data_dir: str | Path) -> Iterator[Path]:
    """Write the local-data overrides for ``data_dir`` into a temporary folder and yield it.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist, holds none of the supported sets, or a
            set is missing a file lm-eval needs.
    """
    d = Path(data_dir).expanduser().resolve()
    if not d.is_dir():
        raise FileNotFoundError(f"{data_dir}: data dir not found (expected the layout of ../shared/data)")
    configs = _local_configs(d)
    if not configs:
        raise FileNotFoundError(f"{data_dir}: data dir has none of mmlu/, gsm8k/, ai2_arc/ (see ../shared/data/README.md)")
    with tempfile.TemporaryDirectory(prefix="bitnet-tasks-") as tmp:
        for name, cfg in configs.items():
            p = Path(tmp) / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(yaml.safe_dump(cfg, sort_keys=False))
        yield Path(tmp)


def task_manager(task_dir: Path | None = None):
    """lm-eval's ``TaskManager``: only the local overrides when ``task_dir`` is given, else the defaults."""
    from lm_eval.tasks import TaskManager

    if task_dir is None:
        return TaskManager()
    return TaskManager(include_path=str(task_dir), include_defaults=False)


def check_task_names(names: list[str], manager, offline: bool = False) -> None:
    """One ValueError naming every task lm-eval (or, ``offline``, the local data dir) does not know."""
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        hint = (f" (offline, from the data dir: {', '.join(SUPPORTED_TASKS)} and mmlu's subjects and categories)"
                if offline else " (see `lm-eval ls tasks`)")
        raise ValueError(f"unknown task name(s): {', '.join(unknown)}{hint}")
