"""Training configuration: YAML into typed dataclasses, with ``key=value`` overrides.

One place for defaults (the dataclasses below). ``load_config(path, overrides)`` reads a YAML file,
applies overrides such as ``optim.lr=2e-3`` or ``model=10m`` (nested keys with dots, values parsed
as YAML scalars), and checks every key and type: unknown keys and wrong types raise ``ValueError``
naming the key. We hand-write this small checker instead of pulling in OmegaConf (not a dependency
here); it only needs the field types used below.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DataConfig", "OptimConfig", "LogConfig", "TrainConfig", "load_config", "config_to_yaml", "config_from_dict"]


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes packed token sequences."""

    # Files or folders of .txt / .jsonl / .json / .parquet; relative paths are resolved against the
    # YAML file's folder. "bundled:tinyshakespeare" is the text shipped in bitnet/training/data/.
    paths: list[str] = field(default_factory=lambda: ["bundled:tinyshakespeare"])
    text_field: str = "text"  # column of jsonl / parquet records holding the text
    # .txt files: one document per file ("document"), per blank-line paragraph or per line.
    text_sample_by: str = "document"
    # Non-UTF-8 text files: "latin-1" decodes them as Latin-1 (every byte is valid, so nothing is
    # lost or replaced) and warns naming the file; "error" rejects them with the file's name.
    encoding_fallback: str = "latin-1"
    # A tokenizer.json, a folder with tokenizer.json or GPT-2 vocab.json+merges.txt
    # (encoder.json+vocab.bpe), or "train" to train a byte-level BPE on the corpus first.
    tokenizer: str = "train"
    tokenizer_vocab_size: int = 2048  # only for tokenizer: train
    seq_len: int = 128  # tokens per training sequence
    val_fraction: float = 0.1  # tail of the token stream held out for validation
    # Token caches live here (null: $BITNET_CACHE or ~/.cache/bitnet); keyed by tokenizer + files.
    cache_dir: str | None = None
    num_proc: int = 1  # processes for datasets.map tokenization (tokenizers also threads inside)
    streaming: bool = False  # never materialize the corpus: stream records into the token file


@dataclass
class OptimConfig:
    """AdamW and the learning-rate / weight-decay schedule (see ``bitnet.training.schedule``)."""

    lr: float = 3e-3  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # stage one (two_stage) or the whole run (cosine)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # "two_stage": the BitNet b1.58 recipe; "cosine": the usual schedule for full-precision twins.
    schedule: str = "two_stage"
    warmup_steps: int = 50
    stage_boundary: float = 0.5  # fraction of max_steps where stage two begins
    stage1_end_scale: float = 0.6  # LR at the end of stage one, as a fraction of the peak
    stage2_start_scale: float = 0.2  # LR right after the sharp drop, as a fraction of the peak
    final_scale: float = 0.02  # LR at the last step, as a fraction of the peak


@dataclass
class LogConfig:
    log_every: int = 10  # steps between metric rows (train loss, LR, tokens/s)
    eval_every: int = 100  # steps between validation losses (and at the end)
    eval_batches: int = 8  # micro-batches per validation
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    keep_last: int = 2  # checkpoints kept on disk
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on the main process
    plot: bool = True  # loss-curve PNG at the end
    sample_tokens: int = 120  # tokens of sample.txt generated at the end (0: none)


@dataclass
class TrainConfig:
    """A whole training run. Global batch = ``batch_size`` sequences of ``data.seq_len`` tokens per
    optimizer step, split over processes and ``micro_batch_size``-sized gradient-accumulation steps
    (``batch_size`` must be a multiple of ``micro_batch_size * num_processes``)."""

    model: str = "test-tiny"  # preset in configs/model/ or a path to a model YAML
    model_overrides: dict[str, Any] = field(default_factory=dict)  # any BitNetConfig field
    out_dir: str = "runs/default"
    seed: int = 1337
    max_steps: int = 500
    batch_size: int = 16
    micro_batch_size: int = 16
    precision: str = "auto"  # "auto" (bf16 autocast on GPUs that support it, else fp32), "bf16", "fp32"
    device: str = "auto"  # "auto" (the GPU when there is one, else the CPU) or "cpu" (the CPU even on a GPU host)
    # torch.compile the model: one compile of 0.5-2 min on 2 CPU cores, then ~4x faster ternary steps
    # at demo size (benchmarks/bench_train.py --compile); turn off for runs of a few steps.
    compile: bool = True
    # Deterministic kernels (torch.use_deterministic_algorithms, warn-only, for the run): the same
    # config, seed, machine and threads give the same weights bit for bit, torch.compile included
    # (its CPU kernels otherwise sum in a run-to-run order); about 4% slower steps at demo size on
    # the CPU. "auto": on for runs on the CPU, off on a GPU (not measured there); true / false.
    deterministic: bool | str = "auto"
    resume: bool = False  # continue from the newest checkpoint in out_dir
    stop_after_steps: int | None = None  # stop early (as if interrupted); the schedule still plans max_steps
    threads: int | None = None  # torch.set_num_threads; null keeps torch's default
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        """Raises ValueError on values that are well typed but make no sense."""
        checks = [
            (self.max_steps > 0, "max_steps must be > 0"),
            (self.batch_size > 0 and self.micro_batch_size > 0, "batch sizes must be > 0"),
            (self.batch_size % self.micro_batch_size == 0, "batch_size must be a multiple of micro_batch_size"),
            (self.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32"),
            (self.device in ("auto", "cpu"), f"device must be auto or cpu, got {self.device!r}"),
            (self.deterministic in (True, False, "auto"), f"deterministic must be auto, true or false, got {self.deterministic!r}"),
            (self.optim.schedule in ("two_stage", "cosine"), "optim.schedule must be two_stage or cosine"),
            (0.0 < self.optim.stage_boundary <= 1.0, "optim.stage_boundary must be in (0, 1]"),
            (self.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
            (math.isfinite(self.optim.lr) and self.optim.lr > 0, f"optim.lr must be a number > 0, got {self.optim.lr}"),
            (math.isfinite(self.optim.weight_decay) and self.optim.weight_decay >= 0,
             f"optim.weight_decay must be a number >= 0, got {self.optim.weight_decay}"),
            (math.isfinite(self.optim.grad_clip) and self.optim.grad_clip >= 0,
             f"optim.grad_clip must be a number >= 0 (0 = off), got {self.optim.grad_clip}"),
            (self.data.seq_len > 1, "data.seq_len must be > 1"),
            (0.0 <= self.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
            (self.data.encoding_fallback in ("latin-1", "error"), "data.encoding_fallback must be latin-1 or error"),
            (self.data.text_sample_by in ("document", "paragraph", "line"),
             "data.text_sample_by must be document, paragraph or line"),
            (len(self.data.paths) > 0, "data.paths is empty"),
            (self.log.log_every > 0 and self.log.eval_every > 0, "log.log_every and log.eval_every must be > 0"),
            (self.log.keep_last >= 1, "log.keep_last must be >= 1"),
            (self.threads is None or self.threads >= 1, f"threads must be a positive integer, got {self.threads}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"bad training config: {msg}")


# ---------------------------------------------------------------------------- dict <-> dataclass
def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against a field type; return (ok, value converted where lossless: int->float,
    list->tuple)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string: accept it as a float
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp in (str, bool):
        return isinstance(value, tp), value
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False, value
        out = [_type_ok(v, arg) for v in value]
        return all(ok for ok, _ in out), [v for _, v in out]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, value
        out = [_type_ok(v, a) for v, a in zip(value, args)]
        return all(ok for ok, _ in out), tuple(v for _, v in out)
    if origin is dict:
        return isinstance(value, dict), value
    raise TypeError(f"unsupported config field type {tp}")


def config_from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict. Raises ValueError on unknown keys / wrong types."""
    if not isinstance(d, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)} "
                         f"(known: {', '.join(sorted(names))})")
    kwargs = {}
    for k, v in d.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = config_from_dict(tp, v, prefix + k + ".")
            continue
        ok, conv = _type_ok(v, tp)
        if not ok:
            raise ValueError(f"config key {prefix + k}: expected {_type_name(tp)}, got {v!r}")
        kwargs[k] = conv
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["optim"]["betas"] = list(d["optim"]["betas"])  # YAML-friendly
    return d


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML (saved in every checkpoint; loads back with ``load_config``)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def apply_override(d: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to nested dict ``d`` (value parsed as a YAML scalar/list)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {item!r}: cannot parse value ({e})") from None
    parts = key.strip().split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {p} is not a section")
    node[parts[-1]] = value


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (an empty file is an empty mapping).

    Raises:
        FileNotFoundError: ``path`` does not exist (named as ``what``).
        ValueError: not valid YAML, or not a mapping (naming the file).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({yaml_error_line(e)})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a YAML mapping")
    return d


def yaml_error_line(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line error (with a source excerpt and caret) as one line: the problem and where."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if problem is None:
        return " ".join(str(e).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training YAML (or only defaults if ``path`` is None), apply overrides, validate.

    Relative ``data.paths`` / ``data.tokenizer`` are resolved against the YAML file's folder, and
    then against the current directory, whichever exists.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ValueError: unknown keys, wrong types, bad values or bad YAML (naming the file / key).
    """
    d: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        d = read_yaml_mapping(p, "training config")
        if not d:  # an empty file is most likely the wrong file: never start a run on defaults unasked
            raise ValueError(f"{p}: empty training config (no settings; start from configs/train/test-tiny.yaml)")
        base = p.resolve().parent
    for item in overrides or []:
        apply_override(d, item)
    try:
        cfg = config_from_dict(TrainConfig, d)
    except ValueError as e:
        raise ValueError(f"{path}: {e}" if path else str(e)) from None
    cfg.data.paths = [resolve_path(x, base) for x in cfg.data.paths]
    if cfg.data.tokenizer != "train":
        cfg.data.tokenizer = resolve_path(cfg.data.tokenizer, base)
    try:
        cfg.validate()
    except ValueError as e:
        raise ValueError(f"{path}: {e}" if path else str(e)) from None
    return cfg


def resolve_path(p: str, base: Path) -> str:
    """A config path relative to the YAML's folder (``base``), else the working directory;
    absolute and ``bundled:`` paths pass unchanged."""
    if p.startswith("bundled:") or Path(p).is_absolute():
        return p
    for cand in (base / p, Path.cwd() / p):
        if cand.exists():
            return str(cand.resolve())
    return p  # let the data loader raise FileNotFoundError naming it
