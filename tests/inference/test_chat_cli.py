"""`bitnet chat` driven through its stdin, and `bitnet generate`'s sampling flags checked by SamplingParams."""

from __future__ import annotations

import subprocess
import sys

import pytest
from engine_helpers import export, tiny, tokenizer

from bitnet.inference import Engine

# A hang fails the test (pytest-timeout, a dev dependency) instead of stalling the suite.
pytestmark = pytest.mark.timeout(300)

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export(tiny(seed=5, vocab_size=304), tmp_path_factory.mktemp("chat") / "m", tokenizer())


def _bitnet(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitnet", *args], input=stdin, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def test_chat_turns_through_stdin_equal_the_engine(model_dir):
    r = _bitnet("chat", str(model_dir), "--threads", "1", "--max-new-tokens", "6", "--system", "be brief",
                stdin="to be or not\n/reset\nthe quick fox\n\n")
    assert r.returncode == 0, r.stderr
    eng = Engine(model_dir, threads=1)
    first = "".join(eng.chat_stream([{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": "to be or not"}], max_new_tokens=6))
    second = "".join(eng.chat_stream([{"role": "system", "content": "be brief"},  # /reset dropped turn one
                                      {"role": "user", "content": "the quick fox"}], max_new_tokens=6))
    replies = [line.split("assistant> ", 1)[1] for line in r.stdout.split("\n") if "assistant> " in line]
    assert replies == [first, second]


@pytest.mark.parametrize("flags,message", [(["--temperature", "nan"], "--temperature must be a number >= 0"),
                                           (["--top-p", "0"], r"--top-p must be in (0, 1]"),
                                           (["--seed", "-1"], "--seed must be an integer in [0, 2**63 - 1]")])
def test_generate_refuses_bad_sampling_flags_naming_them(model_dir, flags, message):
    r = _bitnet("generate", str(model_dir), "--prompt", "to be", *flags)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
