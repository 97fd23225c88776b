"""BitDistill (arXiv 2510.13998): turn a full-precision transformers causal LM into a ternary one.

``distill(cfg) -> run_dir`` runs three stages on one student:

1. **Modeling refinement** (no steps): the student is a copy of the teacher whose every linear but
   the head is a BitLinear (absmean ternary weights, 8-bit absmax activations) with a SubLN before
   ``o_proj`` and ``down_proj`` (the 2B4T sub-norm positions; ``bitnet.convert``). The SubLN is
   the identity at ``lambda = 0`` and starts with the weight of the teacher's mean activation RMS.
2. **Continued pre-training** on ``data`` with cross-entropy; optionally a linear lambda warm-up
   from full precision (0) to ternary (1) over the first ``pretrain.lambda_warmup`` of its steps.
3. **Distillation fine-tuning**: ``ce_weight * CE + kl_weight * T^2 KL(teacher || student at
   temperature T) + ad_weight * attention-relation KL`` (MiniLM-v2 style Q-Q, K-K, V-V relations
   with ``ad_heads`` split heads, at decoder layer ``ad_layer``).

``max_steps`` optimizer steps are split between stages 2 and 3 by their ``share``; each stage has
its own global batch (its token budget = steps x batch_size x seq_len) and learning rate schedule.
The loop pieces are ``bitnet train``'s (accelerate, deterministic batches that are a pure function
of (seed, stage, step), checkpoints with ``accelerator.save_state`` written atomically, resume,
``metrics.jsonl``, tqdm progress with ETA, ``loss_curve.png``); the run ends with a packed export in
``<out_dir>/export`` (see :mod:`bitnet.training.distill_export`).

Run folder layout::

    <out_dir>/metrics.jsonl, loss_curve.png, distill_config.yaml
    <out_dir>/checkpoints/step_<N:07d>/   accelerator state + trainer_state.json + distill_config.yaml
    <out_dir>/export/                     the packed ternary student (engine, transformers, GGUF exporter)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from bitnet.convert import insert_subln, set_lambda, subln_input_rms, to_bitnet
from bitnet.io import atomic_dir, atomic_file, atomic_path

from .config import DataConfig, LogConfig, OptimConfig, apply_override, config_from_dict, read_yaml_mapping, resolve_path
from .dataset import PackedTokens, batch_indices, prepare_data

__all__ = [
    "DistillConfig", "PretrainStage", "DistillStage", "load_distill_config", "distill", "stage_steps",
    "lambda_at", "logits_kl", "attention_relation_loss", "attention_relation_reference", "load_teacher",
    "load_teacher_tokenizer", "check_teacher_config", "check_accelerate_env", "check_accelerate_file",
    "build_student", "COVERED_MODEL_TYPES",
]

# model_type -> what the export has to add beyond BitNetForCausalLM (see distill_export)
COVERED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
COVERED_ACTS = ("silu",)  # BitNetForCausalLM's relu2 never occurs in these families' teachers
MAX_UNK_FRACTION = 0.01  # more unknown tokens than this in a data sample: the tokenizer does not fit the data
GPU_DISTRIBUTED_TYPES = ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA")
LAUNCHED_ENV = "BITNET_DISTILL_LAUNCHED"  # set for the processes --accelerate-config starts: they do not relaunch


@dataclass
class PretrainStage:
    """Stage 2: continued pre-training with cross-entropy."""

    share: float = 0.5  # fraction of max_steps
    batch_size: int = 8  # sequences per optimizer step (token budget: steps x batch_size x seq_len)
    lr: float = 1.0e-3
    # Fraction of this stage's steps over which lambda goes linearly from 0 (full precision) to 1
    # (ternary); 0 starts ternary. Lambda is 1 in stage 3 and in the export.
    lambda_warmup: float = 0.0


@dataclass
class DistillStage:
    """Stage 3: distillation fine-tuning (the BitDistill loss)."""

    share: float = 0.5
    batch_size: int = 8
    lr: float = 5.0e-4
    ce_weight: float = 1.0
    kl_weight: float = 10.0  # logits distillation
    temperature: float = 5.0  # of the logits KL (the loss is scaled by T^2, Hinton et al.)
    # attention-relation distillation; the paper uses 1e3-1e5 on its scale, but on ours (the KL summed
    # over tokens, averaged over heads and positions, ~1-2 nats at the start) 1e3 drowns CE and KL
    ad_weight: float = 1.0
    ad_layer: int = -1  # decoder layer whose Q/K/V relations are distilled (negative: from the end)
    ad_heads: int = 0  # relation heads Q, K and V are split into (0: num_key_value_heads)
    ad_causal: bool = True  # relations of token i only over tokens j <= i (what a causal LM attends to)


@dataclass
class DistillConfig:
    """A whole ``bitnet distill`` run. Global batch = ``<stage>.batch_size`` sequences per step,
    split over processes and micro-batches of ``micro_batch_size``."""

    teacher: str = ""  # transformers causal-LM directory or hub id
    out_dir: str = "runs/distill"
    seed: int = 1337
    max_steps: int = 200  # optimizer steps of stages 2 and 3 together
    micro_batch_size: int = 8
    subln: bool = True  # stage 1's sub-norms (false: plain to_bitnet, as Falcon3 / Llama3-8B-1.58)
    subln_calibrate: bool = True  # SubLN weight = the teacher's mean input RMS (false: 1)
    precision: str = "auto"  # "auto" (bf16 autocast on GPUs that support it), "bf16", "fp32"
    device: str = "auto"  # "auto" (the GPU when there is one, else the CPU) or "cpu"
    compile: bool = False  # torch.compile the student (long compile on CPU; worth it for long runs)
    deterministic: bool | str = "auto"  # deterministic kernels for the run, as bitnet train's (TrainConfig)
    resume: bool = False
    stop_after_steps: int | None = None  # stop early (as if interrupted); schedules still plan max_steps
    threads: int | None = None
    export: bool = True  # write <out_dir>/export at the end
    # Precompute the teacher's stage-3 outputs (fp16 logits and the ad_layer Q/K/V of every batch)
    # into <out_dir>/teacher_cache before training, then free the teacher: the training steps run
    # without it in memory. Disk: n3 x batch x seq_len x (vocab + 3 widths) x 2 bytes.
    teacher_cache: bool = False
    data: DataConfig = field(default_factory=lambda: DataConfig(paths=[], tokenizer="teacher"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(schedule="cosine", warmup_steps=10,
                                                                   weight_decay=0.0))
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    distill: DistillStage = field(default_factory=DistillStage)
    log: LogConfig = field(default_factory=lambda: LogConfig(tensorboard=False, sample_tokens=0, eval_every=50))

    def validate(self) -> None:
        """Raises ValueError naming the key of a well-typed but meaningless value."""
        s, d = self.pretrain, self.distill
        checks = [
            (bool(self.teacher), "teacher is empty"),
            (self.max_steps > 0, "max_steps must be > 0"),
            (len(self.data.paths) > 0, "data.paths is empty (pass --data PATH)"),
            (self.data.tokenizer == "teacher", "data.tokenizer is always the teacher's; leave it unset"),
            (s.share >= 0 and d.share >= 0 and s.share + d.share > 0, "pretrain.share and distill.share must be >= 0, "
             "not both 0"),
            (s.batch_size > 0 and d.batch_size > 0 and self.micro_batch_size > 0, "batch sizes must be > 0"),
            (s.batch_size % self.micro_batch_size == 0 and d.batch_size % self.micro_batch_size == 0,
             "pretrain.batch_size and distill.batch_size must be multiples of micro_batch_size"),
            (0.0 <= s.lambda_warmup <= 1.0, "pretrain.lambda_warmup must be in [0, 1]"),
            (s.lr > 0 and d.lr > 0, "learning rates must be > 0"),
            (min(d.ce_weight, d.kl_weight, d.ad_weight) >= 0, "loss weights must be >= 0"),
            (d.temperature > 0, "distill.temperature must be > 0"),
            (d.ad_heads >= 0, "distill.ad_heads must be >= 0"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32"),
            (self.device in ("auto", "cpu"), f"device must be auto or cpu, got {self.device!r}"),
            (self.deterministic in (True, False, "auto"), f"deterministic must be auto, true or false, got {self.deterministic!r}"),
            (self.optim.schedule in ("cosine", "two_stage"), "optim.schedule must be cosine or two_stage"),
            (self.data.seq_len > 1, "data.seq_len must be > 1"),
            (0.0 < self.data.val_fraction < 1.0, "data.val_fraction must be in (0, 1)"),
            (self.log.log_every > 0 and self.log.eval_every > 0 and self.log.keep_last >= 1, "bad log settings"),
            (self.threads is None or self.threads >= 1, "threads must be a positive integer"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"bad distill config: {msg}")


def config_to_dict(cfg: DistillConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["optim"]["betas"] = list(d["optim"]["betas"])
    return d


def config_to_yaml(cfg: DistillConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def load_distill_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DistillConfig:
    """Defaults, then a YAML file (optional), then ``key=value`` overrides; validated.

    Raises:
        FileNotFoundError: the YAML file does not exist. ValueError: unknown keys, wrong types or
        bad values, naming the key (and the file).
    """
    d: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        d = read_yaml_mapping(Path(path), "distill config")
        base = Path(path).resolve().parent
    for item in overrides or []:
        apply_override(d, item)
    data = d.get("data")
    if isinstance(data, dict):
        d["data"] = {"tokenizer": "teacher", **data}
    try:
        cfg = config_from_dict(DistillConfig, d)
    except ValueError as e:
        raise ValueError(f"{path}: {e}" if path else str(e)) from None
    cfg.data.paths = [resolve_path(x, base) for x in cfg.data.paths]
    if cfg.teacher and not Path(cfg.teacher).is_absolute() and (base / cfg.teacher).exists():
        cfg.teacher = str((base / cfg.teacher).resolve())
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------------------ schedules
def stage_steps(cfg: DistillConfig) -> tuple[int, int]:
    """(stage-2 steps, stage-3 steps), summing to ``max_steps``."""
    s, d = cfg.pretrain.share, cfg.distill.share
    n2 = int(round(cfg.max_steps * s / (s + d)))
    return n2, cfg.max_steps - n2


def lambda_at(step: int, cfg: DistillConfig) -> float:
    """Quantization strength at optimizer step ``step`` (0-based): the warm-up ramp, then 1."""
    n2, _ = stage_steps(cfg)
    warm = int(round(cfg.pretrain.lambda_warmup * n2))
    if step >= warm:
        return 1.0
    return (step + 1) / (warm + 1)


def _stage_optim(cfg: DistillConfig, stage: int) -> OptimConfig:
    lr = cfg.pretrain.lr if stage == 2 else cfg.distill.lr
    return dataclasses.replace(cfg.optim, lr=lr)


# ------------------------------------------------------------------------------------------ losses
def logits_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over positions.

    student, teacher: (..., V) logits. Returns a 0-dim float32 tensor.
    """
    t = temperature
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)  # (..., V)
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (...)
    return kl.mean() * t * t


def _relation_logprobs(x: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """x (B, T, D) -> log softmax(x_h x_h^T / sqrt(D/heads)) over the last dim: (B, heads, T, T)."""
    B, T, D = x.shape
    d = D // heads
    xh = x.float().view(B, T, heads, d).transpose(1, 2)  # (B, h, T, d)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(d)  # (B, h, T, T)
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return F.log_softmax(scores, dim=-1)


def attention_relation_loss(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], heads: int, causal: bool = True
) -> torch.Tensor:
    """MiniLM-v2 multi-head self-attention relation distillation, BitDistill's L_AD.

    ``student`` / ``teacher``: the (Q, K, V) projections of one layer, each (B, T, D_x) (Q's D may
    differ from K/V's under GQA). Each is split into ``heads`` relation heads of D_x / heads dims;
    the relation of a head is ``softmax(x_h x_h^T / sqrt(d))`` over tokens; the loss is
    ``KL(R_teacher || R_student)`` summed over tokens j, averaged over (B, heads, i), summed over
    Q, K, V. Returns a 0-dim float32 tensor.

    Raises ValueError if a width is not divisible by ``heads``.
    """
    total = torch.zeros((), device=student[0].device)
    for s, t in zip(student, teacher):
        if s.shape[-1] % heads:
            raise ValueError(f"attention relations: width {s.shape[-1]} is not divisible by ad_heads={heads}")
        ls, lt = _relation_logprobs(s, heads, causal), _relation_logprobs(t, heads, causal)
        pt = lt.exp()
        # masked entries: pt = 0 and lt = ls = -inf; count them as 0 (0 * log 0 = 0)
        kl = torch.where(pt > 0, pt * (lt - ls), torch.zeros_like(pt)).sum(-1)  # (B, h, T)
        total = total + kl.mean()
    return total


def attention_relation_reference(student, teacher, heads: int, causal: bool = True) -> float:
    """Slow, loop-by-loop reference of :func:`attention_relation_loss` (tests compare the two)."""
    total = 0.0
    for s, t in zip(student, teacher):
        B, T, D = s.shape
        d = D // heads
        acc, n = 0.0, 0
        for b in range(B):
            for h in range(heads):
                xs, xt = s[b, :, h * d:(h + 1) * d].double(), t[b, :, h * d:(h + 1) * d].double()
                for i in range(T):
                    js = range(i + 1) if causal else range(T)
                    zs = torch.stack([xs[i] @ xs[j] for j in js]) / math.sqrt(d)
                    zt = torch.stack([xt[i] @ xt[j] for j in js]) / math.sqrt(d)
                    ps, pt = torch.softmax(zs, 0), torch.softmax(zt, 0)
                    acc += float((pt * (pt.log() - ps.log())).sum())
                    n += 1
        total += acc / n
    return total


# ------------------------------------------------------------------------------------------ models
def check_teacher_config(teacher: str) -> Any:
    """Load the teacher's transformers config and check it is a covered causal LM (before any weights).

    Raises:
        ValueError: one line naming the teacher: not a causal LM, an architecture not covered, an
        activation or RoPE scaling the ternary export cannot express.
    """
    from transformers import AutoConfig

    try:
        tc = AutoConfig.from_pretrained(teacher)
    except (OSError, ValueError) as e:
        raise ValueError(f"teacher {teacher}: cannot read its transformers config ({str(e).splitlines()[0]})") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    archs = list(getattr(tc, "architectures", None) or [])
    if archs and not any(a in causal or a.endswith("ForCausalLM") for a in archs):
        raise ValueError(f"teacher {teacher}: {', '.join(archs)} is not a causal LM (need a *ForCausalLM model)")
    if tc.model_type not in COVERED_MODEL_TYPES:
        raise ValueError(f"teacher {teacher}: architecture model_type={tc.model_type!r} is not covered "
                         f"(covered: {', '.join(COVERED_MODEL_TYPES)})")
    act = getattr(tc, "hidden_act", None)
    if act not in COVERED_ACTS:
        raise ValueError(f"teacher {teacher}: hidden_act={act!r} is not covered (covered: {', '.join(COVERED_ACTS)})")
    rope = getattr(tc, "rope_parameters", None) or getattr(tc, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ValueError(f"teacher {teacher}: rope_type={rope.get('rope_type')!r} is not covered (only default RoPE)")
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    if head_dim * tc.num_attention_heads != tc.hidden_size:
        raise ValueError(f"teacher {teacher}: num_attention_heads * head_dim = {head_dim * tc.num_attention_heads} "
                         f"!= hidden_size = {tc.hidden_size}; the 2B4T sub-norm layout cannot hold it")
    return tc


def load_teacher_tokenizer(teacher: str) -> Any:
    """The teacher's fast tokenizer (transformers)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(teacher)
    except (OSError, ValueError) as e:
        raise ValueError(f"teacher {teacher}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"teacher {teacher}: needs a fast tokenizer (tokenizer.json)")
    return tok


def load_teacher(teacher: str) -> nn.Module:
    """The teacher model in eval mode, fp32, without gradients (check its config first)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    return model.eval().requires_grad_(False)


def build_student(teacher: nn.Module, *, subln: bool, scales: dict[str, float] | None, lambda_: float) -> nn.Module:
    """Stage 1: a copy of ``teacher`` with BitLinears (all but the head) and, if ``subln``, SubLNs."""
    student = copy.deepcopy(teacher).requires_grad_(True)
    eps = float(getattr(teacher.config, "rms_norm_eps", 1e-5))
    to_bitnet(student, lambda_=lambda_)
    if subln:
        insert_subln(student, eps=eps, lambda_=lambda_, scales=scales)
    return student.train()


def _vocab_check(tok: Any, teacher_cfg: Any, sample: str, teacher: str) -> None:
    """The tokenizer must fit the teacher's embedding and cover the data."""
    n_tok = len(tok)
    if n_tok > teacher_cfg.vocab_size:
        raise ValueError(f"teacher {teacher}: its tokenizer has {n_tok} tokens but the model only "
                         f"{teacher_cfg.vocab_size} embeddings: tokenizer and model do not match")
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    if not ids:
        return
    unk = tok.unk_token_id
    frac = sum(i == unk for i in ids) / len(ids) if unk is not None else 0.0
    if frac > MAX_UNK_FRACTION:
        raise ValueError(f"teacher {teacher}: its tokenizer maps {frac:.0%} of a sample of the data to the unknown "
                         f"token {tok.unk_token!r}: the tokenizer does not match the data")


def _data_sample(paths: list[str], n_chars: int = 100_000) -> str:
    from .dataset import resolve_files

    out = []
    for f in resolve_files(paths)[:8]:
        with open(f, encoding="utf-8", errors="replace") as fh:
            out.append(fh.read(n_chars // 8))
    return "".join(out)


def check_accelerate_env() -> None:
    """A GPU accelerate config (FSDP / DeepSpeed / bf16-fp16 mixed precision) on a machine without a GPU.

    Raises ValueError (one line) naming the setting; the CPU configs (configs/train/accelerate/cpu2.yaml)
    pass.
    """
    if torch.cuda.is_available():
        return
    env = os.environ
    why = None
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        why = "FSDP"
    elif env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        why = "DeepSpeed"
    elif env.get("ACCELERATE_MIXED_PRECISION", "no") in ("fp16", "bf16"):
        why = f"mixed_precision={env['ACCELERATE_MIXED_PRECISION']}"
    if why:
        raise ValueError(f"the accelerate config asks for GPUs ({why}) but this machine has none; use "
                         "configs/train/accelerate/cpu2.yaml or no config on CPU")


def check_accelerate_file(path: str | Path) -> None:
    """The same check on an accelerate config file (``bitnet distill --accelerate-config``)."""
    d = read_yaml_mapping(Path(path), "accelerate config")
    if torch.cuda.is_available() or d.get("use_cpu"):
        return
    gpu = d.get("distributed_type") in GPU_DISTRIBUTED_TYPES or d.get("gpu_ids") not in (None, "", "none") \
        or str(d.get("mixed_precision", "no")) in ("fp16", "bf16")
    if gpu:
        raise ValueError(f"{path}: a GPU accelerate config (distributed_type={d.get('distributed_type')}, "
                         f"gpu_ids={d.get('gpu_ids')}, mixed_precision={d.get('mixed_precision')}) but this machine "
                         "has no GPU; use configs/train/accelerate/cpu2.yaml or no config on CPU")


class _Logits(nn.Module):
    """``model(input_ids).logits`` in float32, so ``bitnet train``'s ``evaluate`` scores HF models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits.float()  # (B, T, V)


class _QKVCapture:
    """Forward hooks that keep the latest outputs of one layer's q/k/v projections."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        layers = model.model.layers
        attn = layers[layer].self_attn
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [getattr(attn, f"{n}_proj").register_forward_hook(self._hook(n)) for n in "qkv"]

    def _hook(self, name: str):
        def fn(_m, _args, output):
            self.out[name] = output
        return fn

    def take(self) -> tuple[torch.Tensor, ...]:
        qkv = tuple(self.out[n] for n in "qkv")
        self.out = {}
        return qkv

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _stage3_batch(cfg: DistillConfig, local: int, n_train: int) -> np.ndarray:
    """The windows of stage-3 step ``local`` (global batch): a pure function of (seed, step)."""
    return batch_indices(cfg.seed + 1000 * 3, local, cfg.distill.batch_size, n_train)


@torch.no_grad()
def _write_teacher_cache(teacher: nn.Module, cap: _QKVCapture, data: PackedTokens, cfg: DistillConfig, n3: int,
                         d: Path, acc) -> Path:
    """One safetensors file per stage-3 step: ``logits`` (B, T, V) and ``q``/``k``/``v`` (B, T, D) in fp16,
    for the step's whole global batch. Files already there (an interrupted run) are kept."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if acc.is_main_process:
        d.mkdir(parents=True, exist_ok=True)
        for local in tqdm(range(n3), desc="teacher cache", unit="step", disable=not cfg.log.progress, file=sys.stdout):
            f = d / f"step_{local:07d}.safetensors"
            if f.is_file():
                continue
            idx = _stage3_batch(cfg, local, data.n_train)
            parts: dict[str, list[torch.Tensor]] = {"logits": [], "q": [], "k": [], "v": []}
            for i in range(0, len(idx), cfg.micro_batch_size):
                x, _ = data.batch(idx[i:i + cfg.micro_batch_size])  # (mb, T)
                with acc.autocast():
                    parts["logits"].append(teacher(input_ids=x.to(acc.device)).logits.half().cpu())  # (mb, T, V)
                for n, t in zip("qkv", cap.take()):
                    parts[n].append(t.half().cpu())  # (mb, T, D)
            with atomic_path(f) as tmp:
                save_file({k: torch.cat(v).contiguous() for k, v in parts.items()}, str(tmp))
    acc.wait_for_everyone()
    return d


def _read_teacher_cache(d: Path, local: int, rows: slice, device) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The cached teacher outputs of stage-3 step ``local`` for batch rows ``rows``, as float32."""
    from safetensors import safe_open

    with safe_open(str(d / f"step_{local:07d}.safetensors"), framework="pt") as f:
        get = lambda n: f.get_slice(n)[rows].float().to(device)  # noqa: E731
        return get("logits"), (get("q"), get("k"), get("v"))


# ------------------------------------------------------------------------------------------ the run
def _comparable(cfg: DistillConfig) -> dict[str, Any]:
    """The config fields that must agree between a run and its resumption."""
    d = config_to_dict(cfg)
    for k in ("resume", "stop_after_steps", "threads", "export", "log", "compile", "deterministic"):
        d.pop(k)
    d["data"].pop("cache_dir")
    return d


def distill(cfg: DistillConfig) -> Path:
    """Run (or resume) the distillation described by ``cfg``; return the run folder.

    Every input is checked before the first step: the teacher (a covered causal LM), its tokenizer
    against the model and the data, the accelerate environment. Raises ValueError /
    FileNotFoundError naming the key, file or teacher at fault.
    """
    cfg.validate()
    check_accelerate_env()
    from .loop import deterministic_algorithms, wants_deterministic

    with deterministic_algorithms(wants_deterministic(cfg)):
        return _distill(cfg)


def _distill(cfg: DistillConfig) -> Path:
    from accelerate.utils import DistributedType, broadcast_object_list, set_seed
    from tqdm.auto import tqdm

    from .loop import _accelerator, evaluate, plot_losses, resume_point
    from .schedule import lr_at, param_groups, wd_at

    tcfg = check_teacher_config(cfg.teacher)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    n2, n3 = stage_steps(cfg)
    n_layers = tcfg.num_hidden_layers
    if not -n_layers <= cfg.distill.ad_layer < n_layers:
        raise ValueError(f"bad distill config: distill.ad_layer={cfg.distill.ad_layer} but the teacher has {n_layers} layers")
    ad_layer = cfg.distill.ad_layer % n_layers
    ad_heads = cfg.distill.ad_heads or tcfg.num_key_value_heads or tcfg.num_attention_heads
    head_dim = getattr(tcfg, "head_dim", None) or tcfg.hidden_size // tcfg.num_attention_heads
    for width in (tcfg.num_attention_heads * head_dim, (tcfg.num_key_value_heads or tcfg.num_attention_heads) * head_dim):
        if width % ad_heads:
            raise ValueError(f"bad distill config: distill.ad_heads={ad_heads} does not divide the Q/K/V width {width}")
    tok = load_teacher_tokenizer(cfg.teacher)
    _vocab_check(tok, tcfg, _data_sample(cfg.data.paths), cfg.teacher)

    acc = _accelerator(cfg)  # bitnet train's: reads precision, device, out_dir, log.tensorboard
    world, rank, main = acc.num_processes, acc.process_index, acc.is_main_process
    for name, bs in (("pretrain", cfg.pretrain.batch_size), ("distill", cfg.distill.batch_size)):
        if bs % (cfg.micro_batch_size * world):
            raise ValueError(f"{name}.batch_size={bs} is not a multiple of micro_batch_size * processes "
                             f"= {cfg.micro_batch_size} * {world}")
    out = Path(cfg.out_dir)
    set_seed(cfg.seed)
    tok_file = _teacher_tokenizer_file(cfg, tok, out, acc)
    data_cfg = dataclasses.replace(cfg.data, tokenizer=str(tok_file))
    with acc.main_process_first():
        _, cache = prepare_data(data_cfg, progress=main)
    data = PackedTokens.open(cache, cfg.data.seq_len, cfg.data.val_fraction)
    top = int(data.tokens.max()) if data.tokens.size else 0
    if top >= tcfg.vocab_size:
        raise ValueError(f"data {', '.join(cfg.data.paths[:2])}: token id {top} >= the teacher's vocab_size "
                         f"{tcfg.vocab_size}: the tokenizer does not match the model")

    teacher = load_teacher(cfg.teacher)
    # Stage 1: modeling refinement (deterministic from the teacher; a resume overwrites it anyway).
    calib_x, _ = data.batch(np.arange(min(8, data.n_train)))
    scales = subln_input_rms(teacher, calib_x) if cfg.subln and cfg.subln_calibrate else None
    student = build_student(teacher, subln=cfg.subln, scales=scales, lambda_=lambda_at(0, cfg))
    opt = torch.optim.AdamW(param_groups(student), lr=cfg.pretrain.lr, betas=cfg.optim.betas, eps=cfg.optim.eps)
    model, opt = acc.prepare(student, opt)
    teacher.to(acc.device)
    raw = acc.unwrap_model(model)
    fwd = torch.compile(model) if cfg.compile else model
    cap_s, cap_t = _QKVCapture(raw, ad_layer), _QKVCapture(teacher, ad_layer)

    def same_config(ckpt: Path) -> None:
        if _comparable(load_distill_config(ckpt / "distill_config.yaml")) != _comparable(cfg):
            raise ValueError(f"{ckpt}: saved with a different distill config; resume with the same settings")

    start = resume_point(acc, out, cfg.resume, same_config, "--out")
    cache = None
    if cfg.teacher_cache and n3 > 0:
        cache = _write_teacher_cache(teacher, cap_t, data, cfg, n3, out / "teacher_cache", acc)
        cap_t.remove()
        teacher = cap_t = None  # freed: stage 3 reads the cache
    if main:
        with atomic_file(out / "distill_config.yaml", "w") as f:
            f.write(config_to_yaml(cfg))

    stop = min(cfg.max_steps, cfg.stop_after_steps or cfg.max_steps)
    if main:
        n_params = sum(p.numel() for n, p in raw.named_parameters() if "embed" not in n and "lm_head" not in n)
        print(f"teacher {cfg.teacher} ({tcfg.model_type}): student {n_params / 1e6:.2f}M non-embedding parameters; "
              f"data {data.n_train} train / {data.n_val} val windows of {cfg.data.seq_len} tokens; "
              f"stage 2: {n2} steps x {cfg.pretrain.batch_size} seqs, stage 3: {n3} steps x {cfg.distill.batch_size} "
              f"seqs; {world} process(es); steps {start}..{stop} of {cfg.max_steps}")
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not (main and cfg.log.progress), unit="step",
               dynamic_ncols=True, file=sys.stdout)
    metrics = open(out / "metrics.jsonl", "a") if main else None  # noqa: SIM115 (closed below)
    eval_cfg = _EvalView(cfg)
    tokens = sum(_tokens_of_step(s, cfg) for s in range(start))
    t_last, n_last = time.perf_counter(), 0
    model.train()
    for step in range(start, stop):
        stage = 2 if step < n2 else 3
        local = step if stage == 2 else step - n2
        n_stage = n2 if stage == 2 else n3
        so = _stage_optim(cfg, stage)
        lr, wd = lr_at(local, so, n_stage), wd_at(local, so, n_stage)
        for i, g in enumerate(opt.param_groups):
            g["lr"] = lr
            g["weight_decay"] = wd if i == 0 else 0.0
        lam = lambda_at(step, cfg)
        set_lambda(raw, lam)
        bs = cfg.pretrain.batch_size if stage == 2 else cfg.distill.batch_size
        per_rank = bs // world
        accum = per_rank // cfg.micro_batch_size
        every = batch_indices(cfg.seed + 1000 * 2, local, bs, data.n_train) if stage == 2 else \
            _stage3_batch(cfg, local, data.n_train)
        mine = every[rank * per_rank:(rank + 1) * per_rank]
        parts = torch.zeros(4, device=acc.device)  # loss, ce, kl, ad (means over the global batch)
        for m in range(accum):
            x, y = data.batch(mine[m * cfg.micro_batch_size:(m + 1) * cfg.micro_batch_size])  # (mb, T)
            x, y = x.to(acc.device), y.to(acc.device)
            sync = contextlib.nullcontext() if m == accum - 1 else acc.no_sync(model)
            with sync:
                logits = fwd(input_ids=x).logits.float()  # (mb, T, V)
                ce = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
                s_qkv = cap_s.take()
                zero = torch.zeros((), device=acc.device)
                kl = ad = zero
                if stage == 2:
                    loss = ce
                else:
                    d = cfg.distill
                    if d.kl_weight > 0 or d.ad_weight > 0:
                        if cache is not None:
                            rows = slice(rank * per_rank + m * cfg.micro_batch_size,
                                         rank * per_rank + (m + 1) * cfg.micro_batch_size)
                            t_logits, t_qkv = _read_teacher_cache(cache, local, rows, acc.device)
                        else:
                            with torch.no_grad(), acc.autocast():
                                t_logits = teacher(input_ids=x).logits.float()  # (mb, T, V)
                            t_qkv = cap_t.take()
                        if d.kl_weight > 0:
                            kl = logits_kl(logits, t_logits, d.temperature)
                        if d.ad_weight > 0:
                            ad = attention_relation_loss(s_qkv, t_qkv, ad_heads, d.ad_causal)
                    loss = d.ce_weight * ce + d.kl_weight * kl + d.ad_weight * ad
                acc.backward(loss / accum)
            parts += torch.stack([loss.detach(), ce.detach(), kl.detach(), ad.detach()]) / accum
        gnorm = acc.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else None
        opt.step()
        opt.zero_grad(set_to_none=True)
        parts = acc.reduce(parts, "mean").tolist()
        if not math.isfinite(parts[0]):
            raise ValueError(f"distillation diverged at step {step + 1} (loss {parts[0]}); lower the stage's lr")
        done = step + 1
        tokens += _tokens_of_step(step, cfg)
        n_last += 1
        if main:
            row = {"step": done, "stage": stage, "lambda": lam, "loss": parts[0], "ce": parts[1], "kl": parts[2],
                   "ad": parts[3], "lr": lr, "tokens": tokens}
            if gnorm is not None:
                row["grad_norm"] = float(gnorm)
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        bar.update(1)
        if done % cfg.log.log_every == 0 or done == stop:
            dt = time.perf_counter() - t_last
            bar.set_postfix(stage=stage, loss=f"{parts[0]:.3f}", ce=f"{parts[1]:.3f}", lam=f"{lam:.2f}",
                            step_s=f"{dt / max(n_last, 1):.2f}")
            t_last, n_last = time.perf_counter(), 0
        if done % cfg.log.eval_every == 0 or done == cfg.max_steps:
            val = evaluate(_Logits(fwd), data, eval_cfg, acc)
            if main:
                metrics.write(json.dumps({"step": done, "val_loss": val}) + "\n")
                metrics.flush()
                bar.write(f"step {done} (stage {stage}): val loss {val:.4f}")
            t_last = time.perf_counter()
        if (cfg.log.save_every and done % cfg.log.save_every == 0) or done == stop:
            _save_checkpoint(acc, model, cfg, done, broadcast_object_list)
            t_last = time.perf_counter()
    bar.close()
    if metrics is not None:
        metrics.close()
    final = raw
    if stop == cfg.max_steps and cfg.export and acc.distributed_type == DistributedType.FSDP:
        # the parameters are sharded: gather the full state (a collective) into an unwrapped student
        sd = acc.get_state_dict(model)
        if main:
            final = _student_skeleton(cfg)
            final.load_state_dict(sd, strict=False)
            final.tie_weights()
    if main and stop == cfg.max_steps:
        if cfg.log.plot:
            plot_losses(out)
        if cfg.export:
            from .distill_export import export_student

            set_lambda(final, 1.0)
            export_student(final.float(), tcfg, out / "export", tokenizer=tok_file)
            print(f"export: {out / 'export'}")
    acc.wait_for_everyone()
    acc.end_training()
    return out


def _student_skeleton(cfg: DistillConfig) -> nn.Module:
    """A student of the right structure (weights to be loaded): the teacher's architecture from its
    config, made ternary, with SubLNs if the run has them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tc = AutoConfig.from_pretrained(cfg.teacher)
    return build_student(AutoModelForCausalLM.from_config(tc), subln=cfg.subln, scales=None, lambda_=1.0)


class _EvalView:
    """The two fields ``bitnet train``'s ``evaluate`` reads, from a DistillConfig."""

    def __init__(self, cfg: DistillConfig) -> None:
        self.micro_batch_size = cfg.micro_batch_size
        self.log = cfg.log


def _tokens_of_step(step: int, cfg: DistillConfig) -> int:
    n2, _ = stage_steps(cfg)
    bs = cfg.pretrain.batch_size if step < n2 else cfg.distill.batch_size
    return bs * cfg.data.seq_len


def _teacher_tokenizer_file(cfg: DistillConfig, tok: Any, out: Path, acc) -> Path:
    """The teacher's tokenizer.json, written once into the run folder (the data cache keys on it)."""
    path = out / "teacher_tokenizer.json"
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        content = tok.backend_tokenizer.to_str()
        if not path.is_file() or path.read_text() != content:
            with atomic_file(path, "w") as f:
                f.write(content)
    acc.wait_for_everyone()
    return path


def _save_checkpoint(acc, model, cfg: DistillConfig, step: int, broadcast) -> Path:
    """``checkpoints/step_<step>`` written atomically (as ``bitnet train``'s); keeps ``log.keep_last``."""
    from .loop import CKPT_RE, git_revision

    final = Path(cfg.out_dir) / "checkpoints" / f"step_{step:07d}"
    with contextlib.ExitStack() as stack:
        tmp = [stack.enter_context(atomic_dir(final)) if acc.is_main_process else None]
        broadcast(tmp)
        acc.save_state(str(tmp[0]))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp[0] / "trainer_state.json").write_text(json.dumps({"step": step, "max_steps": cfg.max_steps}) + "\n")
            (tmp[0] / "distill_config.yaml").write_text(config_to_yaml(cfg))
            (tmp[0] / "git_revision.txt").write_text(git_revision() + "\n")
    acc.wait_for_everyone()
    if acc.is_main_process:
        old = sorted(p for p in final.parent.iterdir() if CKPT_RE.match(p.name))[:-cfg.log.keep_last]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------ CLI
EPILOG = """examples:
  bitnet distill runs/teacher-hf --out runs/distilled --data training/data/tinyshakespeare.txt --max-steps 400
  bitnet distill Qwen/Qwen2.5-0.5B --out runs/q --data /data/text --config configs/distill/default.yaml \\
      distill.kl_weight=5 pretrain.lambda_warmup=0.5
  bitnet distill TEACHER --out DIR --data PATH --accelerate-config configs/train/accelerate/ddp.yaml   # GPUs
The run ends with DIR/export: bitnet generate DIR/export, bitnet export DIR/export out.gguf --format gguf.

more: docs/distill.md in the bitnet source repository
"""


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="bitnet distill",
        description="BitDistill: a ternary (1.58-bit) student from a full-precision transformers causal LM "
        "(Llama, Mistral, Qwen2, Qwen3): SubLN refinement, continued pre-training, logits + attention-relation "
        "distillation. key=value overrides any DistillConfig field (dotted: distill.kl_weight=5).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("teacher", help="transformers causal-LM directory or hub id")
    ap.add_argument("--out", required=True, help="run folder (checkpoints, metrics, DIR/export)")
    ap.add_argument("--data", action="append", required=True, help="text file or folder (repeatable)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="optimizer steps of all stages together (default: the config's max_steps, 200 unless "
                         "--config sets it)")
    ap.add_argument("--config", default=None, help="distill YAML (configs/distill/*.yaml)")
    ap.add_argument("--accelerate-config", default=None,
                    help="run under `accelerate launch --config_file FILE` (checked against this machine first)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="DistillConfig overrides with dotted keys, e.g. distill.kl_weight=5")
    args = ap.parse_intermixed_args(argv)
    overrides = [f"teacher={args.teacher}", f"out_dir={args.out}", "data.paths=" + json.dumps(args.data)]
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    cfg = load_distill_config(args.config, list(args.overrides) + overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    if args.accelerate_config and not os.environ.get(LAUNCHED_ENV):
        check_accelerate_file(args.accelerate_config)
        import subprocess

        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config,
               "-m", "bitnet", "distill", *argv]
        return subprocess.run(cmd, check=False, env={**os.environ, LAUNCHED_ENV: "1"}).returncode
    out = distill(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {out}")
    return 0
