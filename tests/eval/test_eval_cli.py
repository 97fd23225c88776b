"""``bitnet eval`` and ``bitnet perplexity`` through the real command dispatch."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
from eval_helpers import DATA_DIR

from bitnet.cli import main


def test_eval_writes_json_and_prints_table(trained_export, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside any git checkout: lm-eval's git lookup must stay quiet
    out = tmp_path / "results.json"
    rc = main(["eval", str(trained_export), "--tasks", "arc_easy,mmlu_astronomy", "--limit", "5",
               "--data-dir", str(DATA_DIR), "--output", str(out)])
    assert rc == 0
    printed, err = capfd.readouterr()
    assert "arc_easy" in printed and "acc_norm" in printed and "astronomy" in printed
    assert "not a git repository" not in err
    res = json.loads(out.read_text())
    assert res["n-samples"]["arc_easy"]["effective"] == 5
    correct = res["results"]["arc_easy"]["acc,none"] * 5  # a count of right answers out of the 5 questions
    assert correct == pytest.approx(round(correct), abs=1e-9)
    assert res["config"]["model"] == "bitnet"


def test_perplexity_prints_ppl_and_speed(trained_export, tmp_path, capsys):
    """The figures printed are the scorer's (bitnet.eval.perplexity on the same file and windows)."""
    from bitnet.eval import perplexity

    f = tmp_path / "t.txt"
    f.write_text((DATA_DIR / "text" / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:5000])
    assert main(["perplexity", str(trained_export), str(f), "--context", "128", "--stride", "64"]) == 0
    out = capsys.readouterr().out
    want = perplexity(trained_export, f, context=128, stride=64, progress=False)
    assert want["tokens"] > 128  # several windows
    assert out.startswith(f"perplexity {want['perplexity']:.4f}  ({want['nll_per_token']:.4f} nats/token over "
                          f"{want['tokens']} tokens, context 128, stride 64)\n"), out
    assert "tokens/s scored" in out.splitlines()[1]


def _one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_bad_input_gives_one_line_each(trained_export, tmp_path, capsys):
    _one_line_error(capsys, ["eval", str(trained_export), "--tasks", "arc_easy,nosuchtask",
                             "--data-dir", str(DATA_DIR)], "unknown task name(s): nosuchtask")
    _one_line_error(capsys, ["eval", str(trained_export), "--tasks", "arc_easy",
                             "--data-dir", str(tmp_path / "nodata")], "data dir not found")
    no_tok = tmp_path / "no_tok"
    shutil.copytree(trained_export, no_tok)
    (no_tok / "tokenizer.json").unlink()
    _one_line_error(capsys, ["eval", str(no_tok), "--tasks", "arc_easy", "--data-dir", str(DATA_DIR)],
                    "no tokenizer.json")
    _one_line_error(capsys, ["perplexity", str(no_tok), str(DATA_DIR / "text" / "wikitext-2" / "valid.txt")],
                    "no tokenizer.json")


def test_eval_without_data_dir_fails_fast_when_the_hub_is_unreachable(trained_export, capsys, monkeypatch):
    """Before the check, datasets retried an unreachable hub for about 40 s. Now one connection
    attempt, bounded by HUB_CONNECT_TIMEOUT_S, and nothing of lm-eval's task loading runs."""
    from bitnet.eval import api, tasks

    with socket.socket() as s:  # a local port with nothing listening: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    attempts, real_connect = [], socket.create_connection

    def connect(address, timeout, *args, **kwargs):
        attempts.append((address, timeout))
        return real_connect(address, timeout, *args, **kwargs)

    def no_task_loading(*args, **kwargs):
        raise AssertionError("lm-eval's tasks were loaded although the hub is unreachable")

    monkeypatch.setattr(api.socket, "create_connection", connect)
    monkeypatch.setattr(tasks, "task_manager", no_task_loading)
    _one_line_error(capsys, ["eval", str(trained_export), "--tasks", "arc_easy", "--limit", "2"],
                    f"127.0.0.1:{port} is not reachable and without --data-dir")
    assert attempts == [(("127.0.0.1", port), api.HUB_CONNECT_TIMEOUT_S)]
