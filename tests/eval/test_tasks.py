"""Local-data tasks are lm-eval's own definitions with only the data source replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from eval_helpers import DATA_DIR, FULL_DATA
from lm_eval.tasks._yaml_loader import load_yaml

from bitnet.eval.tasks import check_task_names, lm_eval_tasks_dir, local_task_dir, parse_tasks, task_manager

DATA_KEYS = {"dataset_path", "dataset_name", "dataset_kwargs"}
ARC_CHALLENGE_TEST = 1172  # questions in the full set (../shared/data/README.md)
ARC_CHALLENGE_FIXTURE = 100  # the first 100 of them in tests/fixtures/data (tests/fixtures/README.md)


@pytest.mark.parametrize(
    "task, original, extra",
    [
        ("arc_easy", "arc/arc_easy.yaml", {"training_split", "validation_split"}),
        ("arc_challenge", "arc/arc_challenge.yaml", {"training_split", "validation_split"}),
        ("gsm8k", "gsm8k/gsm8k.yaml", set()),
        ("mmlu/mmlu_anatomy", "mmlu/default/mmlu_anatomy.yaml", set()),
        ("mmlu/_mmlu", "mmlu/default/_mmlu.yaml", set()),
    ],
)
def test_override_changes_only_the_data_source(task, original, extra):
    with local_task_dir(DATA_DIR) as d:
        ours = load_yaml(d / f"{task}.yaml", resolve_func=False, recursive=True)
    theirs = load_yaml(lm_eval_tasks_dir() / original, resolve_func=False, recursive=True)
    changed = {k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)}
    allowed = (DATA_KEYS | extra) if "dataset_path" in theirs else set()  # group files: nothing changes
    assert changed <= allowed, changed
    if allowed:
        assert ours["dataset_path"] == "json"
        for f in ours["dataset_kwargs"]["data_files"].values():
            assert Path(f).is_file()


def test_local_tasks_load_every_document():
    with local_task_dir(DATA_DIR) as d:
        tm = task_manager(d)
        arc = tm.load(["arc_challenge", "mmlu_anatomy"])["tasks"]["arc_challenge"]
        lines = (DATA_DIR / "ai2_arc" / "ARC-Challenge" / "test.jsonl").read_text().splitlines()
        assert len(lines) == (ARC_CHALLENGE_TEST if FULL_DATA else ARC_CHALLENGE_FIXTURE)
        assert [d["id"] for d in arc.test_docs()] == [json.loads(x)["id"] for x in lines]  # every record, in order
        assert set(tm.all_tasks) >= {"mmlu", "mmlu_stem", "gsm8k", "arc_easy", "arc_challenge"}


def test_unknown_task_is_one_clear_error():
    with local_task_dir(DATA_DIR) as d:
        with pytest.raises(ValueError, match="unknown task name.*hellaswag"):
            check_task_names(["arc_easy", "hellaswag"], task_manager(d), offline=True)
    with pytest.raises(ValueError, match="no task names"):
        parse_tasks(" , ")


def test_missing_data_dir_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data dir not found"):
        with local_task_dir(tmp_path / "nope"):
            pass
    with pytest.raises(FileNotFoundError, match="has none of"):
        with local_task_dir(tmp_path):
            pass
    shutil.copytree(DATA_DIR / "gsm8k", tmp_path / "gsm8k")
    (tmp_path / "gsm8k" / "train.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        with local_task_dir(tmp_path):
            pass


def test_written_files_are_plain_yaml():
    with local_task_dir(DATA_DIR) as d:
        raw = yaml.safe_load((d / "gsm8k.yaml").read_text())
    assert set(raw) == {"include"} | DATA_KEYS and Path(raw["include"]).is_file()
