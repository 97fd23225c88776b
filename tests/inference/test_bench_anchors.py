"""The anchors benchmark's pieces: llama-bench-style timing, llama-bench output parsing, machine facts."""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

import pytest

from bitnet.config import BitNetConfig

REPO = Path(__file__).resolve().parents[2]


def _bench_anchors():
    spec = importlib.util.spec_from_file_location("bench_anchors", REPO / "benchmarks" / "bench_anchors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_bin(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_time_pp_tg_starts_each_test_at_the_given_depth():
    from bitnet.inference.bench import random_model, time_pp_tg

    cfg = BitNetConfig.from_preset("test-tiny")
    m = random_model(cfg, threads=1)
    r = time_pp_tg(m, cfg.vocab_size, n_prompt=8, n_gen=3, reps=2)
    assert set(r) == {"pp_tok_s", "pp_std", "tg_tok_s", "tg_std"} and r["pp_tok_s"] > 0 and r["tg_tok_s"] > 0
    assert m.cache_len == 3  # tg ran last, from an empty cache (llama-bench's tg), not after the prompt
    r = time_pp_tg(m, cfg.vocab_size, n_prompt=0, n_gen=4, reps=1, depth=20)
    assert set(r) == {"tg_tok_s", "tg_std"} and m.cache_len == 24
    with pytest.raises(ValueError, match="reps"):
        time_pp_tg(m, cfg.vocab_size, reps=0)


def test_llama_bench_parses_json_and_reports_its_own_rss(tmp_path):
    ba = _bench_anchors()
    rows = [{"n_prompt": 128, "n_gen": 0, "avg_ts": 91.5, "stddev_ts": 1.0, "build_commit": "abc"},
            {"n_prompt": 0, "n_gen": 64, "avg_ts": 29.25, "stddev_ts": 0.5, "build_commit": "abc"}]
    # Allocates ~64 MB before printing, so its peak RSS is visibly its own.
    fake = _fake_bin(tmp_path / "llama-bench",
                     "exec python3 -c 'import time; b = bytearray(64 << 20); b[::4096] = b\"x\" * len(b[::4096]); "
                     f"time.sleep(0.5); print(\"log line\"); print({json.dumps(json.dumps(rows))})'\n")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"\0" * 1000)
    r = ba.llama_bench(fake, gguf, 2, 128, 64, 3, ("-fa", "1"), tmp_path / "log")
    assert (r["pp_tok_s"], r["tg_tok_s"], r["build"], r["file_bytes"]) == (91.5, 29.25, "abc", 1000)
    assert 60 << 20 < r["peak_rss"] < 200 << 20  # its own peak, not this (pytest) process's
    with pytest.raises(RuntimeError, match="no tg64"):
        ba.llama_bench(_fake_bin(tmp_path / "pp-only", f"echo '{json.dumps(rows[:1])}'\n"), gguf, 2, 128, 64, 3, (),
                       tmp_path / "log")
    with pytest.raises(RuntimeError, match="exited with 3"):
        ba.llama_bench(_fake_bin(tmp_path / "fails", "exit 3\n"), gguf, 2, 128, 64, 3, (), tmp_path / "log")


def test_depth_option_is_read_from_help(tmp_path):
    ba = _bench_anchors()
    up = _fake_bin(tmp_path / "up", "echo '  -d, --n-depth <n>   (default: 0)'\necho '  -n, --n-gen <n>'\n")
    ik = _fake_bin(tmp_path / "ik", "echo '  -gp <pp,tg>   (default: )'\n")
    old = _fake_bin(tmp_path / "old", "echo '  -pg <pp,tg>   (default: )'\n")
    assert [ba.depth_option(b) for b in (up, ik, old)] == ["-d", "-gp", None]


def test_cpu_description_and_anchor_env(tmp_path):
    ba = _bench_anchors()
    info = tmp_path / "cpuinfo"
    cpu = "cpu family\t: 25\nmodel\t\t: 1\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
    info.write_text(f"processor\t: 0\n{cpu}\nprocessor\t: 1\n{cpu}")
    d = ba.cpu_description(info)
    assert d["model"] == "Some CPU (family 25, model 1)" and d["logical_cpus"] == 2
    assert d["flags"]["avx512_vnni"] and not d["flags"]["amx_int8"]
    (tmp_path / "env.sh").write_text("export LLAMA_BENCH_IK=/a/b/llama-bench\nexport ANCHOR_MODELS=/a/models\n")
    assert ba.read_anchor_env(tmp_path) == {"LLAMA_BENCH_IK": "/a/b/llama-bench", "ANCHOR_MODELS": "/a/models"}
    with pytest.raises(FileNotFoundError, match="build.sh"):
        ba.read_anchor_env(tmp_path / "nowhere")


def test_bytes_per_token_adds_the_16_bit_head_copy():
    ba = _bench_anchors()
    base = {"vocab": 1000, "hidden": 64, "weight_bytes": 50_000}
    assert ba.bytes_per_token({**base, "head_mode": "f16"}) == (50_000 + 2 * 1000 * 64, 2 * 1000 * 64)
    assert ba.bytes_per_token({**base, "head_mode": "int8"}) == (50_000, None)
    assert ba.bytes_per_token({**base, "head_mode": "int4", "decode_bytes": 7, "head_bytes": 3}) == (7, 3)


def test_ternary_macs_per_token_counts_the_2b4t_linears():
    """q and o (h x h), k and v (h x 640: 5 of 20 heads), gate / up / down (h x 6912), 30 layers."""
    ba = _bench_anchors()
    cfg = BitNetConfig.from_preset("bitnet-2b4t")
    assert ba.ternary_macs_per_token(cfg) == 30 * (2 * 2560 * 2560 + 2 * 2560 * 640 + 3 * 2560 * 6912)


def test_mac_bound_report_names_the_bound_and_the_share(capsys):
    ba = _bench_anchors()
    rows = [{"threads": 2, "isa": "avx512", "weights": "t5", "pp_tok_s": 100.0, "linear_macs": 2e9,
             "macs_per_s": 2e11, "bound": 4e11},
            {"threads": 2, "isa": "amx", "weights": "t5", "pp_tok_s": 500.0, "linear_macs": 2e9, "macs_per_s": 1e12},
            {"threads": 2, "isa": "avx2", "weights": "i2", "pp_tok_s": 90.0, "linear_macs": 2e9, "macs_per_s": 1.8e11,
             "bound": 4e11, "acc_ceiling": 3.2e11}]
    ba.print_mac_bound(rows, 128)
    out = capsys.readouterr().out
    assert "vpdpbusd zmm, 64 MACs each" in out and "2.000 G MAC per token" in out
    avx512 = next(line for line in out.splitlines() if " avx512 " in line).split()
    assert avx512[5:] == ["400", "50%", "-", "-"]
    amx = next(line for line in out.splitlines() if " amx " in line).split()
    assert amx[5:] == ["-"] * 4
    avx2 = next(line for line in out.splitlines() if " avx2 " in line).split()
    assert avx2[4:] == ["180", "400", "45%", "320", "80%"]
    assert "no VNNI" in out


def test_bound_report_names_each_family_and_the_batched_steps(capsys):
    """lut rows are reported against the lookup bound, and the batched steps of 1 and 8 per path with their ratio."""
    ba = _bench_anchors()
    rows = [{"threads": 2, "isa": "avx2", "family": "mac", "weights": "i2", "pp_tok_s": 90.0, "linear_macs": 2e9,
             "macs_per_s": 1.8e11, "bound": 4e11, "step1_ms": 40.0, "step8_ms": 100.0},
            {"threads": 2, "isa": "avx2", "family": "lut", "weights": "i2", "pp_tok_s": 80.0, "linear_macs": 2e9,
             "macs_per_s": 1.6e11, "bound": 3.2e11, "lookups_per_s": 5e9, "step1_ms": 40.0, "step8_ms": 120.0}]
    ba.print_mac_bound(rows, 128)
    out = capsys.readouterr().out
    assert "lut bound" in out and "_C.lut_peak" in out
    lut = next(line for line in out.splitlines() if line.split()[1:2] == ["avx2:lut"] and "%" in line).split()
    assert lut[5:7] == ["320", "50%"]
    steps = [line.split() for line in out.splitlines() if "batched" in out and line.split()[1:2] == ["avx2:lut"]]
    assert ["2", "avx2:lut", "40.0", "120.0", "3.00"] in steps
