"""The commands in README.md and docs/*.md work as written, so that a renamed flag breaks the build.

Every fenced ```bash block of README.md and docs/*.md is collected:

- a plain ```bash block runs, whole, in a scratch folder where ``runs/demo/`` holds a tiny stand-in
  for what ``bitnet demo`` leaves behind (a training run ``runs/demo/train``, its packed export
  ``runs/demo/export`` and ``runs/demo/heldout.txt``; a random test-tiny model, not a trained one)
  and ``configs/`` / ``benchmarks/`` point at the repository's. The blocks of one page run in order,
  as a reader would follow it, each with a deadline, after the parse check below (argparse would
  run an abbreviated flag that the docs should spell out);
- a ```bash no-run block (slow, or it needs data, the network, a GPU or a server) is not run: each
  ``bitnet ...`` command in it is parsed by that command's own argparse parser (the command stops
  right after parsing), ``bitnet train`` / ``bitnet demo`` overrides are checked against the
  training config's keys, ``python benchmarks/X.py`` flags against the script's ``--help``, and
  repository paths (``configs/...``, ``benchmarks/...``, ``docs/...``) must exist.

```python blocks are compiled, and their ``bitnet`` imports must resolve. Relative links between the
pages must point at files and headings that exist, and every ``--help`` names its docs page.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from bitnet.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK_TIMEOUT_S = 120  # one runnable block: a handful of CLI calls on a 0.1M-parameter model
HELP_TIMEOUT_S = 60
MARKERS = {"no-run"}  # the only info-string word a bash block may carry besides "bash"
REPO_PATH_PREFIXES = ("configs/", "benchmarks/", "docs/")
# Commands a no-run block may hold that this test does not parse (installers, HTTP clients, ...).
UNCHECKED = {"pip", "curl", "cd", "git", "export", "../shared/anchors/build.sh"}


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    lang: str
    markers: frozenset[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced code block of a Markdown file, with its language and info-string words."""
    blocks, open_at, info, body = [], None, "", []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if open_at is None:
            m = re.match(r"^```(.*)$", line)
            if m:
                open_at, info, body = i, m.group(1).strip(), []
        elif line.strip() == "```":
            words = info.split()
            blocks.append(Block(path, open_at, words[0] if words else "", frozenset(words[1:]), "\n".join(body) + "\n"))
            open_at = None
        else:
            body.append(line)
    assert open_at is None, f"{path.relative_to(REPO)}:{open_at}: code block never closed"
    return blocks


ALL_BLOCKS = [b for f in DOC_FILES for b in fenced_blocks(f)]
BASH = [b for b in ALL_BLOCKS if b.lang == "bash"]


def commands(text: str) -> list[list[str]]:
    """The simple commands of a bash snippet: continuation lines joined, comments dropped, split at
    ``&&``, ``||``, ``;`` and ``|``; leading ``VAR=value`` assignments removed."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split, lex.commenters = True, "#"
        cmd: list[str] = []
        for tok in lex:
            if tok in (";", "&&", "||", "|", "&"):
                out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
        out.append(cmd)
    cleaned = []
    for cmd in out:
        while cmd and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]):
            cmd = cmd[1:]
        if cmd:
            cleaned.append(cmd)
    return cleaned


# ---------------------------------------------------------------------- the collection itself

def test_blocks_are_collected_and_marked_with_known_words():
    assert len(DOC_FILES) >= 7, [f.name for f in DOC_FILES]
    assert len(BASH) >= 20, "fewer bash blocks than the pages hold: is the fence parser broken?"
    for b in BASH:
        assert b.markers <= MARKERS, f"{b.where}: unknown info-string word(s) {sorted(b.markers - MARKERS)}"
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    for cmd in ('pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q',
                "pip install torch==2.13.0 && pip install -e . && bitnet demo"):
        assert cmd in readme, f"README.md must show the set-up command alone on a line: {cmd}"  # .ci/run greps it


def test_commands_split_like_bash():
    assert commands("a b \\\n  c  # note\nBITNET_ISA=ref x --y 'p q' && z | w\n") == [
        ["a", "b", "c"], ["x", "--y", "p q"], ["z"], ["w"]]


# ---------------------------------------------------------------------- runnable blocks

def _stand_in_demo(ws: Path) -> None:
    """runs/demo/{train,export,heldout.txt} as `bitnet demo` lays them out, at test-tiny size."""
    import torch

    from bitnet.checkpoint import save_model_dir
    from bitnet.export import export_hf
    from bitnet.model import BitNetConfig, BitNetForCausalLM
    from bitnet.training import bundled_text
    from bitnet.training.tokenizer import train_bpe

    text = bundled_text("tinyshakespeare").read_text(encoding="utf-8")[:20_000]
    tok = train_bpe([text], vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = BitNetForCausalLM(BitNetConfig.from_preset("test-tiny", vocab_size=320)).eval()
    demo = ws / "runs" / "demo"
    save_model_dir(model, demo / "train" / "checkpoints" / "step_0000001" / "model", tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_hf(model, demo / "export", tok)
    (demo / "heldout.txt").write_text(text, encoding="utf-8")


def _workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("configs", "benchmarks"):
        (ws / name).symlink_to(REPO / name)
    _stand_in_demo(ws)
    env = dict(os.environ)
    env.update(BITNET_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # this interpreter's bitnet
    env.pop("BITNET_ISA", None)
    return ws, env


RUNNABLE_FILES = sorted({b.file for b in BASH if "no-run" not in b.markers})


@pytest.mark.parametrize("doc", RUNNABLE_FILES, ids=lambda p: p.name)
def test_runnable_blocks_run_as_written(doc, tmp_path, monkeypatch):
    ws, env = _workspace(tmp_path)
    monkeypatch.chdir(ws)
    for b in (b for b in BASH if b.file == doc and "no-run" not in b.markers):
        for cmd in commands(b.text):  # argparse would run an abbreviated flag: the parse check catches it
            check_command(cmd, b.where)
        try:
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", b.text], cwd=ws, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{b.where}: the block ran past {BLOCK_TIMEOUT_S} s; mark it no-run or make it quicker")
        assert r.returncode == 0, f"{b.where}: exit {r.returncode}\n{b.text}\nstdout:\n{r.stdout[-3000:]}\n" \
                                  f"stderr:\n{r.stderr[-3000:]}"


# ---------------------------------------------------------------------- no-run blocks: parse only

class _Parsed(BaseException):  # not an Exception: no handler in the CLI catches it
    pass


def parse_bitnet(argv: list[str]) -> argparse.Namespace | None:
    """Run ``bitnet ARGV`` up to the end of its argument parsing and stop there.

    Returns the parsed namespace (None for the top-level ``--help`` / ``--version``). Raises
    AssertionError with the parser's message when the arguments do not parse, or when a flag is
    an abbreviation that argparse would accept (the docs spell every flag out).
    """
    from bitnet import cli

    if argv and argv[0] in ("-h", "--help", "help", "-V", "--version"):
        return None

    def stopper(real):
        def stop_after_parse(self, args=None, namespace=None):
            raise _Parsed(real(self, args, namespace), self)
        return stop_after_parse

    err = io.StringIO()
    with contextlib.ExitStack() as stack:
        for method in ("parse_args", "parse_intermixed_args"):  # the entry points (both end in parse_known_args)
            stack.enter_context(mock.patch.object(argparse.ArgumentParser, method,
                                                  stopper(getattr(argparse.ArgumentParser, method))))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        try:
            rc = cli.main(list(argv))
        except _Parsed as p:
            ns, parser = p.args
            for tok in argv[1:]:
                flag = tok.split("=", 1)[0]
                if flag.startswith("--") and flag not in parser._option_string_actions:
                    raise AssertionError(f"bitnet {shlex.join(argv)}: no option {flag}")
            return ns
        except SystemExit as e:
            if e.code == 0 and ("--help" in argv or "-h" in argv):
                return None
            raise AssertionError(f"bitnet {shlex.join(argv)}: exit {e.code}: {err.getvalue().strip()}") from None
    raise AssertionError(f"bitnet {shlex.join(argv)}: returned {rc} without parsing its arguments: "
                         f"{err.getvalue().strip()}")


def _check_overrides(config: str | None, overrides: list[str], where: str) -> None:
    from bitnet.paths import configs_dir
    from bitnet.training.config import load_config

    path = Path(config) if config else configs_dir() / "train" / "shakespeare.yaml"
    path = path if path.is_absolute() else REPO / path
    try:
        load_config(path, overrides)
    except ValueError as e:
        raise AssertionError(f"{where}: {e}") from None


_SCRIPT_FLAGS: dict[str, set[str]] = {}


def script_flags(script: str) -> set[str]:
    """The ``--flags`` a ``python SCRIPT`` prints in its --help."""
    if script not in _SCRIPT_FLAGS:
        r = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True,
                           timeout=HELP_TIMEOUT_S, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{script} --help: exit {r.returncode}: {r.stderr[-2000:]}"
        _SCRIPT_FLAGS[script] = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", r.stdout))
    return _SCRIPT_FLAGS[script]


def check_command(cmd: list[str], where: str) -> None:
    for tok in cmd:
        if tok.startswith(REPO_PATH_PREFIXES):
            assert (REPO / tok.split("=", 1)[-1]).exists() or (REPO / tok).exists(), f"{where}: {tok} does not exist"
    if cmd[:2] == ["accelerate", "launch"]:
        assert "-m" in cmd and cmd[cmd.index("-m") + 1] == "bitnet", f"{where}: accelerate launch of what? {cmd}"
        cmd = cmd[cmd.index("-m") + 1:]
    if cmd[0] == "bitnet":
        ns = parse_bitnet(cmd[1:])
        if ns is not None and cmd[1] in ("train", "demo"):
            cfg = getattr(ns, "config", None)
            _check_overrides(cfg, list(ns.overrides), where)
    elif cmd[0] == "python" and len(cmd) > 1 and cmd[1].endswith(".py"):
        assert (REPO / cmd[1]).is_file(), f"{where}: {cmd[1]} does not exist"
        flags = {t.split("=", 1)[0] for t in cmd[2:] if t.startswith("--")}
        unknown = flags - script_flags(cmd[1])
        assert not unknown, f"{where}: {cmd[1]} has no option(s) {sorted(unknown)}"
    elif cmd[0] == "python":
        assert cmd[1:3] in (["-m", "pytest"], ["-m", "venv"]) or cmd[1] == "-c", f"{where}: unchecked command {cmd}"
    else:
        assert cmd[0] in UNCHECKED, f"{where}: a command this test does not know how to check: {cmd[0]}"


NO_RUN = [b for b in BASH if "no-run" in b.markers]


@pytest.mark.parametrize("block", NO_RUN, ids=lambda b: b.where)
def test_no_run_blocks_parse(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # should a command ever get past its parser, it writes nothing in the checkout
    for cmd in commands(block.text):
        check_command(cmd, block.where)


def test_parse_check_catches_a_renamed_flag_and_a_bad_override():
    with pytest.raises(AssertionError, match="unrecognized arguments: --max-tokens"):
        check_command(["bitnet", "generate", "runs/demo/export", "--prompt", "x", "--max-tokens", "3"], "t")
    with pytest.raises(AssertionError, match="no option --max-new-token$"):  # argparse accepts the abbreviation
        check_command(["bitnet", "generate", "runs/demo/export", "--prompt", "x", "--max-new-token", "3"], "t")
    with pytest.raises(AssertionError, match="invalid choice"):
        check_command(["bitnet", "serve", "runs/demo/export", "--kv-cache", "q8"], "t")
    with pytest.raises(AssertionError, match="unknown config key"):
        check_command(["bitnet", "train", "configs/train/shakespeare.yaml", "optim.learning_rate=1"], "t")
    with pytest.raises(AssertionError, match="has no option"):
        check_command(["python", "benchmarks/bench_serve.py", "--stream", "1"], "t")


# ---------------------------------------------------------------------- python blocks and links

@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"], ids=lambda b: b.where)
def test_python_blocks_compile_and_their_bitnet_imports_resolve(block):
    tree = ast.parse(block.text, filename=block.where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bitnet":
            mod = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name), f"{block.where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bitnet":
                    importlib.import_module(alias.name)


def _anchors(path: Path) -> set[str]:
    """GitHub-style heading anchors of a Markdown file."""
    out = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return out


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_relative_links_point_at_existing_files_and_headings(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        assert dest.exists(), f"{doc.relative_to(REPO)}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{doc.relative_to(REPO)}: no heading #{anchor} in {file or doc.name}"


def test_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


# ---------------------------------------------------------------------- the CLI names its docs

def _help(argv: list[str]) -> str:
    from bitnet import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main(argv)
        except SystemExit as e:
            assert e.code == 0, f"bitnet {' '.join(argv)}: exit {e.code}"
    return out.getvalue()


def _docs_named(text: str) -> list[str]:
    return re.findall(r"(?:README\.md|docs/[\w./-]*)", text)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["info"]]
                         + [[name, "--help"] for name in COMMANDS])
def test_help_version_and_info_name_an_existing_docs_page(argv):
    named = _docs_named(" ".join(_help(argv).split()))  # argparse wraps long epilogs
    assert named, f"bitnet {' '.join(argv)} names no docs page"
    for ref in named:
        assert (REPO / ref.rstrip(".")).exists(), f"bitnet {' '.join(argv)} names {ref}, which does not exist"
