"""`bitnet generate` and `bitnet bench` end to end on tiny models."""

from __future__ import annotations

import re

from engine_helpers import export, tiny, tokenizer

from bitnet.cli import main


def test_generate_cli(tmp_path, capsys):
    out = export(tiny(vocab_size=304), tmp_path / "exp", tokenizer())
    assert main(["generate", str(out), "--prompt", "to be", "--max-new-tokens", "5", "--threads", "1"]) == 0
    assert capsys.readouterr().out.startswith("to be")


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
