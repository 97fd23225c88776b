"""benchmarks/calibrate_kernels.py --write replaces the rows of the paths it measured and keeps the
others: calibrating NEON on an ARM machine must not wipe the x86 choices, nor the other way round."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROW = re.compile(r'\{"(\w+)", (0x[0-9a-f]+), (0x[0-9a-f]+)\}')


def _calibrate():
    spec = importlib.util.spec_from_file_location("calibrate_kernels", REPO / "benchmarks" / "calibrate_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(text: str) -> dict[str, tuple[int, int]]:
    return {m.group(1): (int(m.group(2), 16), int(m.group(3), 16)) for m in ROW.finditer(text.split("#pragma once")[1])}


def _run(mod, isas, bits, label):
    lines = [f"{'path':<8} {'layout':<6} head"] + [f"{isa:<8} i2     {label}" for isa in isas]
    mod.write_header(bits, isas, lines, threads=2, rounds=1)


def test_write_keeps_the_rows_of_paths_it_did_not_measure(tmp_path, monkeypatch):
    mod = _calibrate()
    header = tmp_path / "kernel_choice.h"
    header.write_text((REPO / "inference" / "csrc" / "kernel_choice.h").read_text())
    before = _rows(header.read_text())
    assert {"avx2", "avxvnni", "avx512", "amx"} <= before.keys()
    monkeypatch.setattr(mod, "CHOICE_H", header)

    # An ARM machine measures neon only: the x86 rows and their measured lines stay.
    _run(mod, ["neon"], {("neon", "i2"): 0xc, ("neon", "t5"): 0x8}, "arm-run")
    after = _rows(header.read_text())
    assert after == {**before, "neon": (0xc, 0x8)}
    assert list(after) == ["avx2", "avxvnni", "avx512", "amx", "neon"]
    text = header.read_text()
    assert "//   neon     i2     arm-run" in text
    assert "// Kept from earlier runs (paths not measured in this one):" in text
    assert re.search(r"^//   avx2 +i2 +1 ", text, re.M), "the x86 measurements behind the kept rows"

    # An x86 machine then measures avx2 only: neon's row and line survive, avx2's are replaced.
    _run(mod, ["avx2"], {("avx2", "i2"): 0x1, ("avx2", "t5"): 0x3}, "x86-run")
    again = _rows(header.read_text())
    assert again == {**after, "avx2": (0x1, 0x3)}
    text = header.read_text()
    assert "//   neon     i2     arm-run" in text and "//   avx2     i2     x86-run" in text
    assert not re.search(r"^//   avx2 +i2 +1 ", text, re.M), "avx2's old measurement is gone with its row"
    assert text.count("#pragma once") == 1


def test_isas_names_what_it_cannot_measure():
    import subprocess
    import sys

    from bitnet.inference import available_isas

    missing = next(i for i in ("neon", "avx2") if i not in available_isas())  # neon on x86, avx2 on ARM
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "calibrate_kernels.py"), "--isas", missing],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"calibrate_kernels.py: error: --isas: {missing} not measurable here")
    assert "Traceback" not in r.stderr and "round 1/" not in r.stderr  # nothing was measured
