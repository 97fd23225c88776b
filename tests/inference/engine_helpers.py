"""Tiny models, exports and tokenizers for the engine tests (built here, never downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch
from torch_threads import one_torch_thread

from bitnet.export import export_hf, load_model
from bitnet.inference import available_isas, cpu_features
from bitnet.model import BitNetConfig, BitNetForCausalLM

# Every kernel path of the engine, by architecture, with the CPU features each needs (dispatch.cpp's
# can_run). Tests parametrize over every_isa(): the paths this CPU and build cannot run are reported
# as skipped, naming the path and what is missing (tests/inference/conftest.py), never left out silently.
ARCH_ISAS = {"x86_64": ("ref", "avx2", "avxvnni", "avx512", "amx"), "aarch64": ("ref", "neon")}
ISA_NEEDS = {
    "ref": (),
    "avx2": ("avx2", "fma", "f16c"),
    "avxvnni": ("avx2", "fma", "f16c", "avx_vnni"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
    "amx": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile", "amx_int8"),
    "neon": ("neon", "dotprod"),
}


def every_isa() -> list[str]:
    """Every kernel path of this architecture (and any other the engine offers), runnable here or not."""
    known = ARCH_ISAS.get(cpu_features()["arch"], ("ref",))
    return [*known, *(i for i in available_isas() if i not in known)]


def isa_skip_reason(isa: str, features: dict, available: list[str]) -> str | None:
    """None when ``isa`` runs here, else why not: the CPU features it lacks, or what the build lacks."""
    if isa in available:
        return None
    missing = [f for f in ISA_NEEDS.get(isa, ()) if not features.get(f)]
    if missing:
        return f"CPU lacks {isa} (no {', '.join(missing)})"
    if isa == "amx":
        return "amx not usable: built with BITNET_NO_AMX, or the OS refused the AMX tile state (arch_prctl)"
    has = ", ".join(ISA_NEEDS.get(isa, ())) or "what it needs"
    return f"this build of the engine has no {isa} kernels (the CPU has {has})"


CSRC = Path(__file__).resolve().parents[2] / "inference" / "csrc"
HAVE_AARCH64_EMULATION = bool(shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64"))
NO_AARCH64_EMULATION = "needs an aarch64 cross compiler and qemu-user (apt: g++-aarch64-linux-gnu qemu-user)"
CROSS_COMPILE_TIMEOUT_S = 300  # one translation unit at -O1 takes seconds; a minute on a loaded 2-core machine
QEMU_RUN_TIMEOUT_S = 300  # the self-tests run in well under a minute under emulation


def run_neon_selftest(tmp_path: Path, sources: list[str]) -> subprocess.CompletedProcess:
    """Cross-compile ``sources`` (paths under inference/csrc; kernels_neon.cpp with the NEON flags)
    for aarch64, link them statically and run the program under qemu; every step has a deadline."""
    return run_under_qemu(build_neon_selftest(tmp_path, sources))


def run_under_qemu(exe: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run an aarch64 program built by build_neon_selftest under qemu, with ``env`` added to the environment."""
    return subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=QEMU_RUN_TIMEOUT_S,
                          env={**os.environ, **(env or {})})


def build_neon_selftest(tmp_path: Path, sources: list[str]) -> Path:
    """Cross-compile ``sources`` for aarch64 (see run_neon_selftest) and link them; returns the program."""
    cxx = "aarch64-linux-gnu-g++"
    objs = []
    for src in sources:
        flags = ["-march=armv8.2-a+dotprod+fp16"] if src == "kernels_neon.cpp" else []
        obj = tmp_path / (Path(src).stem + ".o")
        subprocess.run([cxx, "-std=c++17", "-O1", f"-I{CSRC}", *flags, "-c", str(CSRC / src), "-o", str(obj)],
                       check=True, timeout=CROSS_COMPILE_TIMEOUT_S)
        objs.append(str(obj))
    exe = tmp_path / "selftest"
    subprocess.run([cxx, "-static", *objs, "-lpthread", "-o", str(exe)], check=True, timeout=CROSS_COMPILE_TIMEOUT_S)
    return exe


TOK_VOCAB = 300
TEXT = ["the quick brown fox jumps over the lazy dog; " * 20, "to be or not to be, that is the question. " * 20]


def tokenizer():
    from bitnet.training.tokenizer import train_bpe

    return train_bpe(TEXT, vocab_size=TOK_VOCAB, min_frequency=1)


def tiny(seed: int = 0, **overrides) -> BitNetForCausalLM:
    """test-tiny with random weights and non-trivial norms (so a misplaced norm shows in the logits)."""
    torch.manual_seed(seed)
    model = BitNetForCausalLM(BitNetConfig.from_preset("test-tiny", **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
    return model


REPEATED_TEXT = " ".join(["the quick brown fox jumps over the lazy dog;"] * 12)


def trained_tiny(tok, steps: int = 40, **overrides) -> tuple[BitNetForCausalLM, torch.Tensor]:
    """``tiny(seed=7, vocab_size=304, **overrides)`` after ``steps`` AdamW steps on repetitive text:
    weights no longer i.i.d. and peaked logits, as in real use (a random tiny model's logits are so
    flat that near-ties flip under any perturbation). Returns the model in eval mode and the text's ids."""
    model = tiny(seed=7, **{"vocab_size": 304, **overrides})
    data = torch.tensor(tok.encode(REPEATED_TEXT).ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    with one_torch_thread():
        for step in range(steps):
            s = step % (len(data) - 65)
            batch = data[s : s + 65][None]
            loss = model.loss(batch[:, :-1], batch[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), data


def export(model: BitNetForCausalLM, out: Path, tok=None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tokenizer given"
        return export_hf(model, out, tok)


def reference(path: Path) -> BitNetForCausalLM:
    """Our PyTorch model holding exactly the exported (bf16-rounded) weights, in fp32."""
    return load_model(path).float().eval()


def rewrite_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if k == "quantization_config":
            cfg[k].update(v)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))
