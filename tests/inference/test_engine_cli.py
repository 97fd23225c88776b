"""`bitnet generate` and `bitnet bench` end to end on tiny models."""

from __future__ import annotations

import copy
import io
import re

import pytest
from engine_helpers import export, tiny, tokenizer, trained_tiny

from bitnet.cli import main
from bitnet.inference import Engine


def test_generate_cli(tmp_path, capsys):
    """Streamed to stdout: the prompt, then the engine's greedy continuation (the default), then a newline."""
    out = export(tiny(vocab_size=304), tmp_path / "exp", tokenizer())
    assert main(["generate", str(out), "--prompt", "to be", "--max-new-tokens", "5", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    want = Engine(out, threads=1).generate("to be", max_new_tokens=5)
    assert want and printed == f"to be{want}\n"


def test_generate_cli_bad_dir_is_one_line_error(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]


def test_bench_cli_shape_and_dir(tmp_path, capsys):
    assert main(["bench", "--shape", "test-tiny", "--threads", "2", "--prompt-len", "16", "--decode-len", "4"]) == 0
    text = capsys.readouterr().out
    assert float(re.search(r"prefill: ([\d.]+) tok/s", text).group(1)) > 0
    assert float(re.search(r"decode:\s+([\d.]+) tok/s", text).group(1)) > 0
    out = export(tiny(), tmp_path / "exp")
    assert main(["bench", str(out), "--threads", "1", "--prompt-len", "8", "--decode-len", "2", "--head", "f16"]) == 0
    assert "weight files" in capsys.readouterr().out


def test_transparent_hugepage_mode_reads_the_bracketed_word(tmp_path):
    from bitnet.inference.bench import transparent_hugepage_mode

    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert transparent_hugepage_mode(f) == "madvise"
    f.write_text("[never] madvise always\n")
    assert transparent_hugepage_mode(f) == "never"
    assert transparent_hugepage_mode(tmp_path / "missing") is None


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and captured.out == "", captured
    return err[0]


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    return export(tiny(vocab_size=304), tmp_path_factory.mktemp("exp") / "exp", tokenizer())


@pytest.mark.parametrize("cmd", ["generate", "chat", "bench", "eval", "perplexity"])
def test_threads_zero_is_worded_the_same_by_every_command(cmd, text_export, tmp_path, capsys):
    args = {"generate": ["--prompt", "x"], "perplexity": [str(tmp_path / "t.txt")]}.get(cmd, [])
    line = _one_line_error(capsys, [cmd, str(text_export), *args, "--threads", "0"])
    assert line == f"bitnet {cmd}: error: --threads must be a positive integer, got 0"


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], "--temperature must be a number >= 0 (0 = greedy), got -1.0"),
    (["--top-p", "2"], "--top-p must be in (0, 1], got 2.0"),
    (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--max-new-tokens", "-3"], "--max-new-tokens must be an integer >= 0, got -3"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be a number > 0 (1 = off), got 0.0"),
])
@pytest.mark.parametrize("cmd", ["generate", "chat"])
def test_sampling_values_out_of_range_are_one_line(cmd, flags, message, text_export, capsys):
    prompt = ["--prompt", "to be"] if cmd == "generate" else []
    line = _one_line_error(capsys, [cmd, str(text_export), *prompt, *flags])
    assert line == f"bitnet {cmd}: error: {message}"


def test_empty_prompt_is_one_line(text_export, capsys):
    line = _one_line_error(capsys, ["generate", str(text_export), "--prompt", ""])
    assert line == "bitnet generate: error: --prompt is empty: give some text to continue"


def test_train_threads_zero_and_help_hint(capsys):
    from bitnet.paths import configs_dir

    line = _one_line_error(capsys, ["train", str(configs_dir() / "train" / "test-tiny.yaml"), "threads=0"])
    assert line.startswith("bitnet train: error: ") and line.endswith("threads must be a positive integer, got 0")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "accelerate launch --config_file configs/train/accelerate/cpu2.yaml -m bitnet train" in help_text
    assert "--num_processes 2 --cpu" not in help_text


@pytest.fixture(scope="module")
def chat_export(tmp_path_factory):
    """A tiny model trained on repetitive text (peaked, stable greedy replies), with its tokenizer."""
    tok = tokenizer()
    model, _ = trained_tiny(tok)
    return export(model, tmp_path_factory.mktemp("chat") / "exp", tok)


def test_chat_through_stdin_keeps_and_resets_the_history(chat_export, capsys, monkeypatch):
    """`bitnet chat` read from stdin: each reply continues the whole conversation so far, /reset
    keeps only the system prompt, an empty line quits."""
    turns = ["to be or not", "the quick brown", "/reset", "to be or not", ""]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(turns) + "\n"))
    histories, real_chat_stream = [], Engine.chat_stream

    def recording_chat_stream(self, messages, **gen):
        histories.append(copy.deepcopy(list(messages)))
        return real_chat_stream(self, messages, **gen)

    monkeypatch.setattr(Engine, "chat_stream", recording_chat_stream)
    args = ["--threads", "1", "--max-new-tokens", "8", "--system", "be brief"]
    assert main(["chat", str(chat_export), *args]) == 0
    out = capsys.readouterr().out

    eng = Engine(chat_export, threads=1)
    system = {"role": "system", "content": "be brief"}
    u1, u2 = ({"role": "user", "content": t} for t in turns[:2])
    r1 = "".join(real_chat_stream(eng, [system, u1], max_new_tokens=8))
    r2 = "".join(real_chat_stream(eng, [system, u1, {"role": "assistant", "content": r1}, u2], max_new_tokens=8))
    assert r1.strip() and r2.strip()
    assert histories == [[system, u1], [system, u1, {"role": "assistant", "content": r1}, u2], [system, u1]]
    want = (f"you> assistant> {r1}\n" f"you> assistant> {r2}\n" "you> "  # /reset prints nothing
            f"you> assistant> {r1}\n" "you> ")  # after /reset the first turn again; the empty line quits
    assert out == want


def test_chat_ends_at_end_of_input(chat_export, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("to be or not\n"))  # no empty line: stdin just ends
    assert main(["chat", str(chat_export), "--threads", "1", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("you> assistant> ") and out.endswith("\nyou> \n")
