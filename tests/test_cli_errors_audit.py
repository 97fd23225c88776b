"""Bad input on the command line: one line naming the problem and the file or flag, exit status 2,
no traceback, and nothing written. Each case here failed an audit of the CLI (a traceback, a silent
success on nonsense, or an error only after minutes of work) before it was fixed."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import gguf  # a dev extra: if it is missing these tests must fail, not skip
import numpy as np
import pytest
import torch

from bitnet.cli import COMMANDS, main
from bitnet.export import export_hf
from bitnet.model import BitNetConfig, BitNetForCausalLM

SUBPROCESS_TIMEOUT_S = 120  # a CLI start is seconds; a loaded 2-core machine can take much longer


def run(capsys, *argv: str) -> tuple[int, str]:
    """``bitnet ARGV`` in this process: (exit status, stderr). argparse's own errors exit via SystemExit."""
    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, cmd: str, *needles: str) -> None:
    """Exit status 2 and a last stderr line ``bitnet CMD: error: ...`` holding every needle (no traceback)."""
    assert rc == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"bitnet {cmd}: error: "), err
    for n in needles:
        assert n in last, (n, last)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A test-tiny export without a tokenizer (the tests that need one pass --tokenizer)."""
    torch.manual_seed(0)
    model = BitNetForCausalLM(BitNetConfig.from_preset("test-tiny")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tokenizer given"
        return export_hf(model, tmp_path_factory.mktemp("cli") / "packed", None)


# ------------------------------------------------------------------ train-tokenizer
def test_tokenizer_on_an_empty_file_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "tok.json"
    rc, err = run(capsys, "train-tokenizer", str(tmp_path / "empty.txt"), "-o", str(out))
    assert_one_line_error(rc, err, "train-tokenizer", "empty.txt", "no text")
    assert not out.exists()


@pytest.mark.parametrize("flags, needle", [
    (["--min-frequency", "-1"], "--min-frequency must be >= 0, got -1"),  # was an OverflowError traceback
    (["--vocab-size", "0"], "--vocab-size must be >= 257"),
])
def test_tokenizer_numbers_checked_before_reading(tmp_path, capsys, flags, needle):
    (tmp_path / "a.txt").write_text("to be or not to be " * 50)
    rc, err = run(capsys, "train-tokenizer", str(tmp_path / "a.txt"), "-o", str(tmp_path / "tok.json"), *flags)
    assert_one_line_error(rc, err, "train-tokenizer", needle)
    assert "reading records" not in err  # refused before the corpus was read


def test_tokenizer_on_malformed_jsonl_names_the_file(tmp_path):
    data = tmp_path / "records.jsonl"
    data.write_text('{"text": "to be or not to be"}\n{oops\n')
    out = tmp_path / "tok.json"
    # In a subprocess: datasets' logger keeps the stderr it first saw, a closed capture in this process.
    p = subprocess.run([sys.executable, "-m", "bitnet", "train-tokenizer", str(data), "-o", str(out)],
                       capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    rc, err = p.returncode, p.stderr
    # was "JSON parse error: Missing a name for object member. in row 1", naming no file
    assert_one_line_error(rc, err, "train-tokenizer", f"cannot read {data}", "JSON parse error")
    assert not out.exists()


def test_tokenizer_output_is_a_directory(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("to be or not to be " * 50)
    rc, err = run(capsys, "train-tokenizer", str(tmp_path / "a.txt"), "-o", str(tmp_path))
    assert_one_line_error(rc, err, "train-tokenizer", str(tmp_path), "is a directory")
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ train
@pytest.mark.parametrize("text, needles", [
    ("", ["empty training config"]),  # was: a full default training run
    ("# only a comment\n", ["empty training config"]),
    ("model: [unclosed\n", ["not valid YAML (line 2, column 1:"]),  # was a 6-line PyYAML message
    ("model: test-tiny\noptim:\n  lr: -1\n", ["optim.lr must be a number > 0, got -1"]),  # was accepted
    ("model: test-tiny\noptim:\n  lr: .nan\n", ["optim.lr must be a number > 0, got nan"]),
    ("model: test-tiny\noptim:\n  weight_decay: -0.1\n", ["optim.weight_decay must be a number >= 0"]),
    ("model: test-tiny\nmax_steps: 0\n", ["max_steps must be > 0"]),
])
def test_train_config_errors_name_the_file(tmp_path, capsys, text, needles):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    rc, err = run(capsys, "train", str(cfg), f"out_dir={tmp_path / 'run'}", "--print-config")
    assert_one_line_error(rc, err, "train", str(cfg), *needles)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("fmt, out_name", [("gguf", "m.gguf"), ("hf", "hf")])
def test_export_bad_tokenizer_file_names_it(packed, tmp_path, capsys, fmt, out_name):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("")  # gguf: was a bare `Exception: EOF while parsing` traceback
    out = tmp_path / out_name
    rc, err = run(capsys, "export", str(packed), str(out), "--format", fmt, "--tokenizer", str(bad))
    assert_one_line_error(rc, err, "export", str(bad), "not a valid tokenizer.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]  # no output, no temp file


def test_a_truncated_gguf_says_so(tmp_path, capsys):
    """A GGUF cut short (an interrupted download) names the file and says it is truncated or damaged,
    not only numpy's reshape complaint."""
    path = tmp_path / "cut.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((64, 512), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rc, err = run(capsys, "generate", str(path), "--prompt", "a")
    assert_one_line_error(rc, err, "generate", str(path), "truncated or damaged")


def test_export_folder_without_a_model_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = run(capsys, "export", str(tmp_path / "empty"), str(tmp_path / "out"))
    # was "no tokenizer.json found; pass --tokenizer", which sends a newcomer the wrong way
    assert_one_line_error(rc, err, "export", str(tmp_path / "empty"), "not a bitnet model directory")
    assert not (tmp_path / "out").exists()


def test_export_zero_shard_size(packed, tmp_path, capsys):
    rc, err = run(capsys, "export", str(packed), str(tmp_path / "out"), "--max-shard-size", "0", "--no-tokenizer")
    assert_one_line_error(rc, err, "export", "--max-shard-size", "'0'")  # was one shard per tensor
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_export_onto_an_existing_file(packed, tmp_path, capsys, fmt):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    rc, err = run(capsys, "export", str(packed), str(target), "--format", fmt, "--no-tokenizer")
    assert_one_line_error(rc, err, "export", str(target), "a file is there")  # was "[Errno 17] File exists"
    assert target.read_text() == "keep me"


# ------------------------------------------------------------------ bench
@pytest.mark.parametrize("flags, needle", [
    (["--prompt-len", "0"], "--prompt-len must be an integer >= 1, got 0"),  # was "logits_from out of range"
    (["--prompt-len", "-1"], "--prompt-len must be an integer >= 1, got -1"),
    (["--decode-len", "0"], "--decode-len must be an integer >= 1, got 0"),  # was exit 0
    (["--decode-len", "-3"], "--decode-len must be an integer >= 1, got -3"),
])
def test_bench_lengths(packed, capsys, flags, needle):
    rc, err = run(capsys, "bench", str(packed), *flags)
    assert_one_line_error(rc, err, "bench", needle)


# ------------------------------------------------------------------ serve (all refused before the model loads)
@pytest.mark.parametrize("flags, needle", [
    (["--port", "65536"], "--port must be <= 65535, got 65536"),  # was an OverflowError traceback
    (["--shutdown-timeout", "-1"], "--shutdown-timeout must be >= 0 seconds, got -1.0"),
    (["--shutdown-timeout", "nan"], "--shutdown-timeout must be >= 0 seconds, got nan"),
])
def test_serve_flags(tmp_path, capsys, flags, needle):
    rc, err = run(capsys, "serve", str(tmp_path / "no-model"), *flags)
    assert_one_line_error(rc, err, "serve", needle)


@pytest.mark.parametrize("text", ["", "# keys go here\n\n"])
def test_serve_api_key_file_without_keys(tmp_path, capsys, monkeypatch, text):
    monkeypatch.delenv("BITNET_API_KEY", raising=False)
    keys = tmp_path / "keys.txt"
    keys.write_text(text)
    # was: the server started with no key at all, open to anyone, although a key file was asked for
    rc, err = run(capsys, "serve", str(tmp_path / "no-model"), "--api-key-file", str(keys))
    assert_one_line_error(rc, err, "serve", str(keys), "holds no API keys")


def test_serve_port_in_use_is_refused_before_the_model_loads(tmp_path, capsys):
    """A port another process listens on: one line naming it (was uvicorn's own log line, exit 3,
    after the model had loaded; the model path here does not even exist)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, err = run(capsys, "serve", str(tmp_path / "no-model"), "--port", str(port))
    assert_one_line_error(rc, err, "serve", f"--port {port}", "cannot listen there")


# ------------------------------------------------------------------ demo (all refused before training)
@pytest.mark.parametrize("flags, needles", [
    (["--max-new-tokens", "-1"], ["--max-new-tokens must be an integer >= 0, got -1"]),
    (["--eval-limit", "0"], ["--eval-limit must be a positive integer, got 0"]),
    (["--data-dir", "{tmp}/nope"], ["{tmp}/nope", "data dir not found"]),
])
def test_demo_flags_checked_before_training(tmp_path, capsys, flags, needles):
    out = tmp_path / "demo"
    flags = [f.format(tmp=tmp_path) for f in flags]
    rc, err = run(capsys, "demo", "--out", str(out), *flags)
    assert_one_line_error(rc, err, "demo", *(n.format(tmp=tmp_path) for n in needles))
    assert not out.exists()


# ------------------------------------------------------------------ --help
class _Parsed(Exception):
    """Raised in place of parsing: carries the subcommand's parser out of its main()."""


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_explains_every_option_and_names_its_page(monkeypatch, name):
    def grab(self, args=None, namespace=None):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", grab)
    with pytest.raises(_Parsed) as got:
        main([name])
    parser = got.value.args[0]
    assert parser.prog == f"bitnet {name}"
    unexplained = [a.option_strings or [a.dest] for a in parser._actions if not a.help]
    assert not unexplained, f"bitnet {name} --help: options without a description: {unexplained}"
    assert "docs/" in f"{parser.description} {parser.epilog}", f"bitnet {name} --help names no docs page"


# ------------------------------------------------------------------ resuming from a damaged checkpoint
@pytest.fixture
def damaged_run(tmp_path):
    """A run folder whose one checkpoint accelerate wrote for a small model and optimizer."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 4)
    model, opt = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    acc.save_state(str(ckpt))
    (ckpt / "trainer_state.json").write_text('{"step": 2}')
    return acc, tmp_path / "run", ckpt


def test_resume_from_a_good_checkpoint(damaged_run):
    from bitnet.training.loop import resume_point

    acc, run_dir, _ = damaged_run
    assert resume_point(acc, run_dir, True, lambda c: None) == 2


@pytest.mark.parametrize("file, keep, needles", [
    ("model.safetensors", 100, ["step_0000002: cannot load this checkpoint", "truncated"]),  # was SafetensorError
    ("optimizer.bin", 100, ["step_0000002: cannot load this checkpoint"]),  # was torch's RuntimeError
    ("trainer_state.json", 3, ["trainer_state.json: not a trainer state"]),  # was a JSON error naming no file
])
def test_resume_from_a_damaged_checkpoint_names_it(damaged_run, file, keep, needles):
    from bitnet.training.loop import resume_point

    acc, run_dir, ckpt = damaged_run
    f = ckpt / file
    f.write_bytes(f.read_bytes()[:keep])
    with pytest.raises(ValueError) as e:
        resume_point(acc, run_dir, True, lambda c: None)
    for n in needles:
        assert n in str(e.value)
    assert "\n" not in str(e.value)


def test_eval_output_directory_refused_before_scoring(tmp_path, capsys):
    # was: the whole evaluation ran, then "[Errno 21] Is a directory: '.../.out.xxxx.tmp' -> '.../out'"
    rc, err = run(capsys, "eval", str(tmp_path / "no-model"), "--tasks", "arc_easy", "--output", str(tmp_path),
                  "--data-dir", str(tmp_path))
    assert_one_line_error(rc, err, "eval", str(tmp_path), "is a directory")


def test_reader_that_leaves_early_is_no_error():
    # `bitnet info | head -1` printed "bitnet info: error: [Errno 32] Broken pipe"
    p = subprocess.Popen([sys.executable, "-m", "bitnet", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the command (seconds from its first line) writes anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=SUBPROCESS_TIMEOUT_S) == 141
    assert err == ""
