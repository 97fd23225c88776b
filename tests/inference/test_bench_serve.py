"""benchmarks/bench_serve.py refuses what it cannot measure, up front and in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_shape_whose_vocabulary_the_prompts_overrun_is_refused(tmp_path):
    # The prompts are token ids 10..999: with test-tiny's 256 ids every request failed with HTTP 400
    # and the summary divided by zero; now the script stops before any server starts.
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--no-llama", "--streams", "1",
                        "--shape", "test-tiny", "--work", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        "error: --shape test-tiny has 256 token ids; the prompts use ids up to 999: pick a larger shape")
    assert "Traceback" not in r.stderr and "streams:" not in r.stdout  # no level ran
