"""The training loop: three steps against a hand-written AdamW on the same batches (gradient
accumulation 2 x 2 equal to one batch of 4), the run's outputs, resume == uninterrupted, a save
killed half-way leaves the previous checkpoint loadable, and 2 processes (gloo) match 1."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bitnet import BitNetForCausalLM
from bitnet.checkpoint import find_model_dir, load_model_dir
from bitnet.io import current_umask
from bitnet.training import latest_checkpoint, train

from bitnet.training import loop
from bitnet.training.config import load_config
from bitnet.training.dataset import PackedTokens, batch_indices, prepare_data
from bitnet.training.loop import read_metrics

REPO = Path(__file__).resolve().parents[2]
# The child training runs take seconds; under the suite's per-test timeout (300 s, pyproject.toml) so a
# hung child fails its test alone instead of stopping the session.
CHILD_TIMEOUT_S = 240
DDP_TOL = 1e-4  # gloo all-reduce averages gradients in another order than one-process accumulation


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, corpus, token_cache):
    """One uninterrupted 6-step run shared by the tests below."""
    out = tmp_path_factory.mktemp("ref") / "run"
    ov = _overrides(corpus, token_cache, out) + ["log.plot=true", "log.tensorboard=true"]
    train(make_config(ov))
    return out, ov


def make_config(overrides: list[str]):
    return load_config(None, overrides)


def losses(out_dir) -> list[tuple[int, str, float]]:
    """(step, kind, value) rows of a run's metrics.jsonl, for comparing runs."""
    return [(r["step"], k, r[k]) for r in read_metrics(out_dir) for k in ("loss", "val_loss") if k in r]


def _overrides(corpus, token_cache, out) -> list[str]:
    return [
        "model=test-tiny", f"data.paths=[{corpus}]", f"data.cache_dir={token_cache}",
        "data.tokenizer=train", "data.tokenizer_vocab_size=300", "data.seq_len=32",
        "batch_size=4", "micro_batch_size=2", "max_steps=6", "optim.warmup_steps=2",
        "log.log_every=2", "log.eval_every=3", "log.eval_batches=2", "log.progress=false",
        "log.tensorboard=false", "log.plot=false", f"out_dir={out}", "threads=1", "log.save_every=2", "compile=false",
        "log.keep_last=3",
        "device=cpu",  # these tests check exact step-for-step results: on the CPU even on a GPU host
    ]


# The hand-written reference below: 3 optimizer steps of a 4-step two-stage schedule with 2 warmup
# steps, so the steps see warmup, the peak and stage two (the sharp drop, weight decay off).
REF_STEPS, REF_MAX_STEPS, PEAK_LR, WEIGHT_DECAY, GRAD_CLIP = 3, 4, 3e-3, 0.1, 1.0
REF_LR = [PEAK_LR * 1 / 2, PEAK_LR * 2 / 2, PEAK_LR * 0.2]  # warmup (step + 1) / 2 of the peak, then stage two's 0.2
REF_WD = [WEIGHT_DECAY, WEIGHT_DECAY, 0.0]  # decay in stage one only (stage two starts at round(0.5 * 4) = 2)
BETAS, EPS = (0.9, 0.95), 1e-8
# Only the latent weights of the ternary linears decay; the embedding (and the head tied to it) and
# every norm never do. Written out here rather than read from bitnet.training.schedule.
DECAYED = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
# Tolerances, (loss abs, grad-norm rel, weight abs), per micro-batch size of the loop's run:
# - 1 x 4: the loop's forward and backward run on the same batch as the reference; only torch's fused
#   AdamW and clip against the formulas below differ (measured 1e-7 on weights). Checked by breaking
#   the reference: weight decay left on in stage two moves weights by 5e-6; decaying the embedding
#   or the norms moves the step-3 loss by 4e-4; dropping a bias correction moves it by 0.4.
# - 2 x 2 accumulated: float sums in another order, within 1e-6 for two steps; from then on a latent
#   weight or activation that lands on a rounding boundary of the ternary / int8 quantizer flips and
#   the runs drift apart (measured 2.4e-5 on the step-3 loss, 2.7e-5 on weights). Checked by
#   breaking the loop: the sum of micro-batch losses instead of their mean doubles the loss and
#   the norm; one micro-batch only moves the loss by 7e-2; gradients kept across steps by 3e-3.
REF_TOL = {4: (1e-6, 1e-6, 1e-6), 2: (1e-4, 1e-3, 2e-4)}


def _reference_adamw_steps(init: dict[str, torch.Tensor], mcfg, data, seed: int) -> tuple[list, list, dict]:
    """``REF_STEPS`` steps written out: the model's forward and loss on the step's whole batch of 4,
    global-norm gradient clipping, then AdamW (decoupled decay, bias-corrected moments) per parameter.
    Runs on the CPU in fp32, as the loop does here (``device=cpu``: on a GPU, atomics in the
    embedding backward reorder sums, and AdamW turns tiny gradient differences into step-sized ones).
    Returns (losses, grad norms before clipping, final parameters by name)."""
    device = "cpu"
    model = BitNetForCausalLM(mcfg)
    model.load_state_dict(init)
    model.to(device)
    params = dict(model.named_parameters())  # the tied head is the embedding: one entry
    assert DECAYED == {n for n, p in params.items() if p.ndim == 2} - {"model.embed_tokens.weight"}
    m = {n: torch.zeros_like(p) for n, p in params.items()}
    v = {n: torch.zeros_like(p) for n, p in params.items()}
    losses, norms = [], []
    for step in range(REF_STEPS):
        x, y = (t.to(device) for t in data.batch(batch_indices(seed, step, 4, data.n_train)))  # (4, T) each
        model.zero_grad(set_to_none=True)
        logits = model(x)  # (4, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params.values())).item()
            norms.append(norm)
            clip = min(1.0, GRAD_CLIP / (norm + 1e-6))
            t = step + 1
            lr, wd = REF_LR[step], REF_WD[step]
            for n, p in params.items():
                g = p.grad * clip
                if n in DECAYED:
                    p.mul_(1 - lr * wd)
                m[n].mul_(BETAS[0]).add_(g, alpha=1 - BETAS[0])
                v[n].mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
                m_hat = m[n] / (1 - BETAS[0] ** t)
                v_hat = v[n] / (1 - BETAS[1] ** t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + EPS))
    return losses, norms, {n: p.detach().cpu() for n, p in params.items()}


@pytest.mark.parametrize("micro_batch_size", sorted(REF_TOL))
def test_steps_equal_a_hand_written_adamw(tmp_path, corpus, token_cache, monkeypatch, micro_batch_size):
    """The loop's first steps (2 x 2 accumulated micro-batches, and 1 x 4) equal the reference's one
    batch of 4 per step: losses, gradient norms, learning rates and the checkpointed weights."""
    out = tmp_path / "run"
    ov = _overrides(corpus, token_cache, out) + [
        f"max_steps={REF_MAX_STEPS}", f"stop_after_steps={REF_STEPS}", f"micro_batch_size={micro_batch_size}",
        "optim.schedule=two_stage", f"optim.lr={PEAK_LR}", f"optim.weight_decay={WEIGHT_DECAY}",
        "optim.warmup_steps=2", "optim.stage_boundary=0.5", f"optim.betas=[{BETAS[0]}, {BETAS[1]}]",
        f"optim.eps={EPS}", f"optim.grad_clip={GRAD_CLIP}", "log.eval_every=100", "precision=fp32"]
    cfg = make_config(ov)
    init = {}

    def capture_init(mcfg):  # the loop's freshly initialised model, before any step
        model = BitNetForCausalLM(mcfg)
        if not init:  # the first call; later ones build the checkpoint's copy (on the meta device)
            init.update({k: t.detach().clone() for k, t in model.state_dict().items()}, config=mcfg)
        return model

    monkeypatch.setattr(loop, "BitNetForCausalLM", capture_init)
    train(cfg)
    mcfg = init.pop("config")
    _, cache = prepare_data(cfg.data, progress=False)
    data = PackedTokens.open(cache, cfg.data.seq_len, cfg.data.val_fraction)
    want_loss, want_norm, want_params = _reference_adamw_steps(init, mcfg, data, cfg.seed)

    loss_tol, norm_tol, weight_tol = REF_TOL[micro_batch_size]
    rows = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx(REF_LR, rel=1e-12)
    assert [r["wd"] for r in rows] == REF_WD
    assert [r["loss"] for r in rows] == pytest.approx(want_loss, abs=loss_tol)
    assert [r["grad_norm"] for r in rows] == pytest.approx(want_norm, rel=norm_tol)
    assert min(want_norm) > GRAD_CLIP  # the clip is active at every step, so its factor is checked too
    got = load_model_dir(latest_checkpoint(out)).state_dict()
    for name, want in want_params.items():
        moved = (want - init[name]).abs().max().item()
        assert moved > 10 * weight_tol, name  # every parameter took steps larger than the tolerance
        assert (got[name] - want).abs().max().item() < weight_tol, name


def test_two_runs_with_different_precisions_in_one_process(tmp_path, corpus, token_cache):
    """accelerate keeps one AcceleratorState per process and refused a second Accelerator with another
    mixed precision: a notebook training at fp32 then at bf16 stopped with a ValueError."""
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        train(make_config(_overrides(corpus, token_cache, out) + [f"precision={precision}", "max_steps=2"]))
        assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2]


def test_run_outputs(reference_run):
    out, _ = reference_run
    rows = losses(out)
    assert [s for s, k, _ in rows if k == "val_loss"] == [3, 6]
    assert (out / "loss_curve.png").stat().st_size > 1000 and (out / "sample.txt").is_file()
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))
    ck = latest_checkpoint(out)
    assert ck.name == "step_0000006"
    model_dir = find_model_dir(out)
    assert model_dir == ck / "model"
    for f in ("tokenizer.json", "train_config.yaml", "git_revision.txt", "bitnet_config.json"):
        assert (model_dir / f).is_file(), f
    assert load_model_dir(out).config.vocab_size == 320  # 300-token BPE padded to a multiple of 64
    # every file and folder of the run gets the modes the umask gives (atomic writes included)
    mask = current_umask()
    for p in [out / "metrics.jsonl", out / "loss_curve.png", ck, *ck.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_resume_reproduces_uninterrupted_run(reference_run, tmp_path, corpus, token_cache):
    ref, _ = reference_run
    out = tmp_path / "run"
    ov = _overrides(corpus, token_cache, out)
    train(make_config(ov + ["stop_after_steps=4"]))
    assert latest_checkpoint(out).name == "step_0000004"
    train(make_config(ov + ["resume=true"]))
    assert losses(out) == losses(ref)  # exactly, step for step (CPU, same seed)


KILLER = textwrap.dedent("""
    import os, sys
    from bitnet.training import loop
    from bitnet.training.config import load_config
    real = loop.save_model_dir
    calls = []
    def dying_save(model, out_dir, **kw):
        calls.append(out_dir)
        real(model, out_dir, **kw)
        if len(calls) == 2:   # the second checkpoint: all files written, not yet renamed into place
            os._exit(17)      # like SIGKILL: no cleanup, no exception handlers
    loop.save_model_dir = dying_save
    loop.train(load_config(None, sys.argv[1:]))
""")


def test_killed_save_leaves_last_checkpoint_loadable(reference_run, tmp_path, corpus, token_cache):
    ref, _ = reference_run
    out = tmp_path / "run"
    ov = _overrides(corpus, token_cache, out)
    proc = subprocess.run([sys.executable, "-c", KILLER, *ov], cwd=REPO, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 17, proc.stderr[-2000:]
    ckdir = out / "checkpoints"
    assert any(p.name.startswith(".step_0000004") for p in ckdir.iterdir())  # the half-done save is left over
    assert latest_checkpoint(out).name == "step_0000002"
    assert find_model_dir(out) == ckdir / "step_0000002" / "model"
    load_model_dir(out)  # loads
    train(make_config(ov + ["resume=true"]))  # and training goes on from it
    assert losses(out) == losses(ref)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(reference_run, tmp_path, corpus, token_cache):
    ref, _ = reference_run
    out = tmp_path / "run"
    ov = _overrides(corpus, token_cache, out)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "bitnet", "train", str(REPO / "configs/train/test-tiny.yaml"), *ov]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    got, want = losses(out), losses(ref)
    assert [(s, k) for s, k, _ in got] == [(s, k) for s, k, _ in want]
    assert [v for *_, v in got] == pytest.approx([v for *_, v in want], abs=DDP_TOL)
    ck = latest_checkpoint(out)
    assert {p.name for p in ck.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 6


@pytest.mark.slow
def test_compiled_runs_repeat_bit_for_bit(tmp_path, monkeypatch):
    """deterministic (the default): the demo's config, compiled, run twice in one process gives the
    same weights bit for bit. Without it torch.compile's CPU kernels sum in a run-to-run order: every
    pair of such 40-step runs differed when this test was written (deterministic=false)."""
    from safetensors.torch import load_file

    def run(i: int) -> dict[str, torch.Tensor]:
        out = tmp_path / f"run{i}"
        train(load_config(REPO / "configs" / "train" / "shakespeare.yaml", [
            f"out_dir={out}", "max_steps=40", "log.progress=false", "log.tensorboard=false", "log.plot=false",
            "log.save_every=40", f"data.cache_dir={tmp_path / 'cache'}", "device=cpu",
            "threads=2"]))  # with one thread the compiled kernels' sums have one order anyway
        return load_file(find_model_dir(latest_checkpoint(out)) / "model.safetensors")

    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)  # conftest.py turns torch.compile off (read per call)
    assert torch.are_deterministic_algorithms_enabled() is False  # the suite's own setting, restored after each run
    threads = torch.get_num_threads()
    try:
        first, second = run(0), run(1)
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), [k for k in first if not torch.equal(first[k], second[k])]


def test_deterministic_algorithms_restores_the_process_setting():
    torch.use_deterministic_algorithms(False)
    with loop.deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    with loop.deterministic_algorithms(False):  # off leaves whatever the caller set
        assert not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with loop.deterministic_algorithms(False):
            assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_deterministic_auto_is_on_for_cpu_runs_only(monkeypatch):
    cpu, auto_dev = make_config(["device=cpu"]), make_config(["device=auto"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host
    assert loop.wants_deterministic(cpu) and not loop.wants_deterministic(auto_dev)
    assert loop.wants_deterministic(make_config(["device=auto", "deterministic=true"]))
    assert not loop.wants_deterministic(make_config(["device=cpu", "deterministic=false"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loop.wants_deterministic(auto_dev)
    with pytest.raises(ValueError, match="deterministic must be auto, true or false, got 'sometimes'"):
        make_config(["deterministic=sometimes"])
