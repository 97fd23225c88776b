"""bitnet distill (BitDistill): stage-1 refinement, the losses, the CLI on each family, engine
agreement, resume after kill -9, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from bitnet.cli import main as cli
from bitnet.convert import SubLN, insert_subln, set_lambda, subln_input_rms, to_bitnet
from bitnet.layers import RMSNorm
from bitnet.training.distill import (
    DistillConfig,
    attention_relation_loss,
    attention_relation_reference,
    build_student,
    check_accelerate_env,
    lambda_at,
    load_distill_config,
    logits_kl,
    stage_steps,
)

from distill_helpers import FAMILIES, tiny_teacher, write_text

REPO = Path(__file__).resolve().parents[2]
LOSS_RTOL = 1e-5  # the vectorized relation loss against the float64 loop: float32 summation order
# Engine vs the student (transformers modules, export's bf16 rounding applied): most logits differ by
# summation order only; an 8-bit activation code that sits on a rounding boundary may flip (as in
# tests/inference/test_engine.py), which moves a few logits by more.
ENGINE_ATOL = 1e-4
FLIP_RTOL = 5e-3
SMALL = ["micro_batch_size=4", "pretrain.batch_size=4", "distill.batch_size=4", "data.seq_len=32", "threads=1",
         "log.eval_every=4", "log.progress=false"]


def run_cli(tmp_path: Path, teacher: Path, out: Path, steps: int, *extra: str) -> int:
    data = tmp_path / "data.txt"
    if not data.is_file():
        write_text(data)
    return cli(["distill", str(teacher), "--out", str(out), "--data", str(data), "--max-steps", str(steps),
                *SMALL, f"data.cache_dir={tmp_path / 'cache'}", *extra])


# ---------------------------------------------------------------------------------------- stage 1
@pytest.mark.parametrize("arch", FAMILIES)
def test_subln_identity_init_keeps_the_teacher_at_lambda_zero(tmp_path, arch):
    path = tiny_teacher(tmp_path / arch, arch)
    teacher = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    scales = subln_input_rms(teacher, ids)
    with torch.no_grad():
        ref = teacher(ids).logits
        student = build_student(teacher, subln=True, scales=scales, lambda_=0.0).eval()
        assert sum(isinstance(m, SubLN) for m in student.modules()) == 2 * teacher.config.num_hidden_layers
        assert torch.equal(student(ids).logits, ref)
        set_lambda(student, 1.0)
        assert not torch.allclose(student(ids).logits, ref, atol=1e-3)
    assert teacher.model.layers[0].self_attn.o_proj.__class__ is torch.nn.Linear  # the teacher is untouched


def test_subln_at_full_strength_is_an_rmsnorm_with_the_calibrated_weight():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * 0.3
    norm = SubLN(16, 1e-6, lambda_=1.0)
    ref = RMSNorm(16, 1e-6)
    with torch.no_grad():
        norm.weight.fill_(0.7)
        ref.weight.fill_(0.7)
    assert torch.equal(norm(x), ref(x))
    norm.lambda_ = 0.25
    assert torch.allclose(norm(x), x + 0.25 * (ref(x) - x))


def test_insert_subln_needs_bitlinears(tmp_path):
    teacher = transformers.AutoModelForCausalLM.from_pretrained(tiny_teacher(tmp_path / "t"), dtype=torch.float32)
    with pytest.raises(ValueError, match="not a BitLinear"):
        insert_subln(teacher)
    to_bitnet(teacher)
    names = insert_subln(teacher, scales={"model.layers.1.mlp.down_proj": 0.5})
    assert names[-1] == "model.layers.1.mlp.down_proj"
    assert torch.all(teacher.model.layers[1].mlp.down_proj.rms_norm.weight == 0.5)
    assert torch.all(teacher.model.layers[0].mlp.down_proj.rms_norm.weight == 1.0)


# ---------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("causal", [True, False])
def test_attention_relation_loss_matches_the_loop_reference(causal):
    g = torch.Generator().manual_seed(3)
    # GQA widths: Q 4 heads x 4, K/V 2 heads x 4; split into 2 relation heads
    s = tuple(torch.randn(2, 5, w, generator=g) for w in (16, 8, 8))
    t = tuple(torch.randn(2, 5, w, generator=g) for w in (16, 8, 8))
    got = float(attention_relation_loss(s, t, heads=2, causal=causal))
    want = attention_relation_reference(s, t, heads=2, causal=causal)
    assert got == pytest.approx(want, rel=LOSS_RTOL)
    assert want > 0
    assert float(attention_relation_loss(t, t, heads=2, causal=causal)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="not divisible"):
        attention_relation_loss(s, t, heads=3)


def test_logits_kl_is_temperature_scaled_kl():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 11, generator=g), torch.randn(2, 3, 11, generator=g)
    T = 2.0
    want = F.kl_div(F.log_softmax(s / T, -1).view(-1, 11), F.log_softmax(t / T, -1).view(-1, 11),
                    log_target=True, reduction="batchmean") * T * T
    assert float(logits_kl(s, t, T)) == pytest.approx(float(want), rel=1e-5)
    assert float(logits_kl(t, t, T)) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------- config
def test_config_shares_lambda_and_errors():
    cfg = DistillConfig(teacher="t", max_steps=10, data=DistillConfig().data)
    cfg.data.paths = ["x"]
    cfg.pretrain.share, cfg.distill.share = 0.3, 0.7
    assert stage_steps(cfg) == (3, 7)
    cfg.pretrain.lambda_warmup = 1.0
    assert [lambda_at(s, cfg) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cfg.pretrain.lambda_warmup = 0.0
    assert lambda_at(0, cfg) == 1.0
    with pytest.raises(ValueError, match="unknown config key.*distill.kl_wieght"):
        load_distill_config(None, ["teacher=t", "data.paths=[x]", "distill.kl_wieght=1"])
    with pytest.raises(ValueError, match="distill.temperature: expected float"):
        load_distill_config(None, ["teacher=t", "data.paths=[x]", "distill.temperature=hot"])
    with pytest.raises(ValueError, match="data.tokenizer is always the teacher's"):
        load_distill_config(None, ["teacher=t", "data.paths=[x]", "data.tokenizer=train"])


# ---------------------------------------------------------------------------------------- end to end
def _student_from_run(run: Path, teacher_dir: Path) -> torch.nn.Module:
    """The student skeleton (what an FSDP run exports through), then the final checkpoint's weights."""
    from bitnet.training.distill import _student_skeleton

    cfg = load_distill_config(run / "distill_config.yaml")
    assert cfg.teacher == str(teacher_dir)
    student = _student_skeleton(cfg)
    ckpt = max((run / "checkpoints").iterdir())
    missing, unexpected = student.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    student.tie_weights()
    return student.eval()


@torch.no_grad()
def _round_like_the_export(student: torch.nn.Module) -> None:
    """bf16-round what the export stores in bf16; scale each ternary weight so its beta is bf16 too
    (the biases, stored as b / bf16(beta) in float32, come back as b)."""
    from bitnet.layers import BitLinear

    for m in student.modules():
        if isinstance(m, BitLinear):
            beta = m.weight.abs().mean()
            m.weight.mul_(beta.to(torch.bfloat16).float() / beta)
    for name, p in student.named_parameters():
        if name.endswith("_proj.bias"):
            continue  # stored in float32 (as b / beta, which the engine multiplies back)
        if not any(name.endswith(f"{n}_proj.weight") for n in ("q", "k", "v", "o", "gate", "up", "down")):
            p.copy_(p.to(torch.bfloat16).float())


@pytest.mark.slow
@pytest.mark.parametrize("arch", FAMILIES)
def test_cli_end_to_end_and_engine_agreement(tmp_path, arch):
    teacher = tiny_teacher(tmp_path / "teacher", arch, tie=arch in ("qwen3", "mistral"))
    out = tmp_path / "run"
    assert run_cli(tmp_path, teacher, out, 8, "pretrain.lambda_warmup=0.5") == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert [r["stage"] for r in steps] == [2] * 4 + [3] * 4
    assert steps[0]["lambda"] < 1.0 and steps[-1]["lambda"] == 1.0
    assert all(r["kl"] > 0 and r["ad"] > 0 for r in steps if r["stage"] == 3)
    assert any("val_loss" in r for r in rows) and (out / "loss_curve.png").is_file()
    export = out / "export"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["architectures"] == ["BitNetForCausalLM"] and cfg["hidden_act"] == "silu"
    assert (export / "tokenizer.json").is_file()
    from bitnet.inference import Engine

    if arch in ("qwen2", "qwen3"):
        ext = {"qwen2": "attention_bias", "qwen3": "qk_norm"}[arch]
        assert cfg["bitnet_extensions"] == [ext] and cfg[ext] is True
        names = load_file(str(export / "model.safetensors")).keys()
        assert ("model.layers.0.self_attn.o_proj.bias" in names) == (arch == "qwen2")
        assert ("model.layers.1.self_attn.k_norm.weight" in names) == (arch == "qwen3")
    student = _student_from_run(out, teacher)
    _round_like_the_export(student)
    ids = torch.arange(3, 40)  # past max_position_embeddings / 2: RoPE at larger angles too
    with torch.no_grad():
        want = student(ids[None]).logits[0].numpy()
    got = Engine(export, threads=1, head="f16").logits(ids.tolist())
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(got - want).max() < FLIP_RTOL * scale
    assert np.quantile(np.abs(got - want), 0.9) < ENGINE_ATOL * scale
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(max((run / "checkpoints").iterdir()) / "model.safetensors"))


CHILD_TIMEOUT_S = 240  # the killed run: a few seconds of training; under the suite's 300 s per-test timeout
KILL_AFTER_STEP_4 = textwrap.dedent("""
    import os, signal, sys
    from bitnet.training import distill
    real = distill._save_checkpoint
    def save_then_die(acc, model, cfg, step, broadcast):
        path = real(acc, model, cfg, step, broadcast)
        if step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    distill._save_checkpoint = save_then_die
    sys.exit(distill.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_resume_after_kill_equals_the_uninterrupted_run(tmp_path):
    teacher = tiny_teacher(tmp_path / "teacher", "llama")
    data = write_text(tmp_path / "data.txt")
    common = ["--data", str(data), "--max-steps", "10", *SMALL, f"data.cache_dir={tmp_path / 'cache'}",
              "log.save_every=2", "log.keep_last=1", "pretrain.lambda_warmup=0.6", "export=false"]
    full = tmp_path / "full"
    assert cli(["distill", str(teacher), "--out", str(full), *common]) == 0

    killed = tmp_path / "killed"
    # The child kills itself (SIGKILL: no cleanup, no handlers) right after the step-4 checkpoint is
    # in place: arranged at that point, not raced against a poll of the folder.
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_STEP_4, str(teacher), "--out", str(killed), *common],
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed / "checkpoints" / "step_0000004" / "trainer_state.json").is_file()
    assert not (killed / "checkpoints" / "step_0000010").exists()
    assert cli(["distill", str(teacher), "--out", str(killed), *common, "resume=true"]) == 0
    a, b = _final_weights(full), _final_weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 11))


# ---------------------------------------------------------------------------------------- bad input
def _one_line_error(capsys, run) -> str:
    capsys.readouterr()  # drop what building the teacher printed
    rc = run()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


def test_teacher_that_is_not_a_causal_lm(tmp_path, capsys):
    path = tiny_teacher(tmp_path / "t")
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    (path / "config.json").write_text(json.dumps(cfg))
    err = _one_line_error(capsys, lambda: run_cli(tmp_path, path, tmp_path / "o", 2))
    assert "is not a causal LM" in err
    assert not (tmp_path / "o").exists()


def test_architecture_not_covered(tmp_path, capsys):
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300,
                                                              bos_token_id=0, eos_token_id=0))
    model.save_pretrained(tmp_path / "gpt2")
    err = _one_line_error(capsys, lambda: run_cli(tmp_path, tmp_path / "gpt2", tmp_path / "o", 2))
    assert "model_type='gpt2' is not covered" in err


def test_tokenizer_that_does_not_match(tmp_path, capsys):
    path = tiny_teacher(tmp_path / "t", vocab_size=200)  # the tokenizer has 300 tokens
    err = _one_line_error(capsys, lambda: run_cli(tmp_path, path, tmp_path / "o", 2))
    assert "tokenizer has 300 tokens but the model only 200 embeddings" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_accelerate_config_without_a_gpu(tmp_path, capsys, monkeypatch):
    path = tiny_teacher(tmp_path / "t")
    for name in ("ddp.yaml", "fsdp.yaml"):
        err = _one_line_error(capsys, lambda: run_cli(tmp_path, path, tmp_path / "o", 2, "--accelerate-config",
                                              str(REPO / "configs/train/accelerate" / name)))
        assert "GPU accelerate config" in err and "has no GPU" in err
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="asks for GPUs \\(FSDP\\)"):
        check_accelerate_env()
    assert not (tmp_path / "o").exists()


DDP_TOL = 1e-4  # two gloo processes vs one: the same batches, summed in another order


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    import socket

    teacher = tiny_teacher(tmp_path / "teacher", "qwen2")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(tmp_path, teacher, one, 6, "export=false") == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "cpu2.yaml"
    conf.write_text((REPO / "configs/train/accelerate/cpu2.yaml").read_text() + f"main_process_port: {port}\n")
    data = tmp_path / "data.txt"
    cmd = [sys.executable, "-m", "bitnet", "distill", str(teacher), "--out", str(two), "--data", str(data),
           "--max-steps", "6", *SMALL, "micro_batch_size=2", f"data.cache_dir={tmp_path / 'cache'}", "export=false",
           "--accelerate-config", str(conf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout

    def losses(run: Path) -> list[tuple[int, float, float, float]]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["ce"], r["kl"], r["ad"]) for r in rows if "loss" in r]

    got, want = losses(two), losses(one)
    assert [r[0] for r in got] == [r[0] for r in want] == list(range(1, 7))
    assert np.allclose(np.array(got)[:, 1:], np.array(want)[:, 1:], atol=DDP_TOL)


CACHE_TOL = 2e-3  # fp16-rounded teacher logits and Q/K/V against the online fp32 teacher


@pytest.mark.slow
def test_precomputed_teacher_outputs_match_the_online_teacher(tmp_path):
    teacher = tiny_teacher(tmp_path / "teacher", "mistral")
    online, cached = tmp_path / "online", tmp_path / "cached"
    assert run_cli(tmp_path, teacher, online, 6, "export=false") == 0
    assert run_cli(tmp_path, teacher, cached, 6, "export=false", "teacher_cache=true") == 0
    files = sorted((cached / "teacher_cache").iterdir())
    assert [f.name for f in files] == [f"step_{i:07d}.safetensors" for i in range(3)]
    t = load_file(str(files[0]))
    assert t["logits"].shape == (4, 32, 320) and t["logits"].dtype == torch.float16
    assert t["q"].shape == (4, 32, 32) and t["k"].shape == (4, 32, 16)

    def parts(run: Path) -> np.ndarray:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return np.array([(r["ce"], r["kl"], r["ad"]) for r in rows if "loss" in r])

    a, b = parts(online), parts(cached)
    assert a.shape == b.shape == (6, 3) and (a[3:, 1:] > 0).all()
    assert np.allclose(a, b, rtol=CACHE_TOL, atol=CACHE_TOL)
