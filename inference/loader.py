"""Load a packed export directory (transformers' ``bitnet`` layout) into the C++ engine.

The directory holds ``config.json`` (with ``quantization_config``), ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``, and optionally ``tokenizer.json``. Layout and scale
conventions: ../shared/FORMATS.md section 2.

The safetensors files are memory-mapped, never read whole. We parse the (small) JSON header here
rather than through the ``safetensors`` package because we need zero-copy views into one mapping
(the engine borrows 16-bit tables it does not copy straight from the page cache) and page-level control
(``madvise``) to drop the packed weights from memory once the engine has repacked them. Every
header field, dtype, shape and offset is validated against the file size before any view is made,
and the C++ side checks every shape again, so a hostile file raises ``ValueError`` and is never read
out of bounds.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from bitnet.config import BitNetConfig, read_config_json
from bitnet.safetensors_header import TensorInfo, read_header

from . import _C

__all__ = ["SafetensorsFile", "WeightSet", "load_config", "open_weights", "build_model"]

# dtype name -> numpy dtype used for the view (bf16 travels as its uint16 bit pattern)
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16), "U16": np.dtype(np.uint16), "F16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16), "I32": np.dtype(np.int32), "U32": np.dtype(np.uint32),
    "F32": np.dtype(np.float32), "I64": np.dtype(np.int64), "U64": np.dtype(np.uint64),
    "F64": np.dtype(np.float64),
}
HEAD_CHUNK_ROWS = 8192  # rows of the head quantized or copied (and their file pages released) at a time
_FLOAT16ISH = {"BF16": "bf16", "F16": "f16", "F32": "f32"}
_INT32_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings")  # passed to _C.Model as C++ int
LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class SafetensorsFile:
    """A validated, memory-mapped safetensors file. ``array(name)`` returns a zero-copy view.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: truncated file, corrupt or lying header (sizes, offsets, dtypes, overlaps).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metadata, self.tensors = read_header(self.path)
        for name, t in self.tensors.items():
            if t.dtype not in _DTYPES:
                raise ValueError(f"{self.path}: tensor {name!r} has dtype {t.dtype!r}, which the engine does not read")
        size = self.path.stat().st_size
        self._file = open(self.path, "rb")
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def array(self, name: str) -> np.ndarray:
        """Zero-copy read-only view of tensor ``name`` (bf16 as uint16 bit patterns)."""
        t = self.tensors[name]
        dt = _DTYPES[t.dtype]
        count = math.prod(t.shape)
        if count == 0:
            return np.zeros(t.shape, dt)
        return np.frombuffer(self._mm, dtype=dt, count=count, offset=t.begin).reshape(t.shape)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop the pages of bytes [start, stop) of tensor ``name`` (default: all of it) from this
        process's memory; they are re-read from the page cache on demand."""
        t = self.tensors[name]
        page = mmap.PAGESIZE
        stop = t.end - t.begin if stop is None else stop
        b = (t.begin + start + page - 1) // page * page
        e = min(t.end, t.begin + stop) // page * page
        if self._mm is not None and e > b and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, b, e - b)


class WeightSet:
    """All tensors of an export directory (one file or an index of shards), by name."""

    def __init__(self, directory: Path) -> None:
        single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, SafetensorsFile] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{index}: not a valid safetensors index (needs a 'weight_map' object)") from None
            for name, fn in weight_map.items():
                if not isinstance(fn, str) or Path(fn).name != fn:
                    raise ValueError(f"{index}: shard name {fn!r} for {name!r} must be a plain file name")
                if fn not in self.files:
                    self.files[fn] = SafetensorsFile(directory / fn)
                if name not in self.files[fn].tensors:
                    raise ValueError(f"{directory / fn}: missing tensor {name!r} that the index places there")
                self.where[name] = self.files[fn]
        elif single.is_file():
            f = SafetensorsFile(single)
            self.files[single.name] = f
            self.where = {k: f for k in f.tensors}
        else:
            raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def info(self, name: str) -> TensorInfo:
        return self.where[name].tensors[name]

    def array(self, name: str) -> np.ndarray:
        return self.where[name].array(name)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        self.where[name].release(name, start, stop)

    def path(self, name: str) -> Path:
        return self.where[name].path

    @property
    def nbytes(self) -> int:
        return sum(f.path.stat().st_size for f in self.files.values())


def load_config(directory: Path) -> tuple[dict[str, Any], BitNetConfig, str, float]:
    """Read and check ``config.json``: returns (raw dict, parsed config, linear_class, inner-norm eps).

    Raises:
        FileNotFoundError: no config.json.
        ValueError: unsupported architecture / quantization, inconsistent fields, or a size the
        engine cannot hold (2^31 or more), naming config.json.
    """
    path = directory / "config.json"
    raw = read_config_json(path)
    mt = raw.get("model_type")
    if mt not in ("bitnet", "llama"):
        raise ValueError(f"{path}: unsupported architecture model_type={mt!r} (the engine runs 'bitnet' and 'llama' ternary models)")
    qc = raw.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != "bitnet":
        raise ValueError(f"{path}: not a packed ternary export (quantization_config.quant_method must be 'bitnet')")
    mode = qc.get("quantization_mode", "offline")
    if mode != "offline":
        raise ValueError(f"{path}: quantization_mode={mode!r} is not supported; re-export it packed ('offline')")
    linear_class = qc.get("linear_class", "bitlinear")
    if linear_class not in ("autobitlinear", "bitlinear"):
        raise ValueError(f"{path}: unsupported quantization_config.linear_class {linear_class!r}")
    try:
        cfg = BitNetConfig.from_hf_dict(raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    for field in _INT32_FIELDS:  # the C++ model holds these as int: a larger value would not convert
        value = getattr(cfg, field)
        if not 0 < value < 2**31:
            raise ValueError(f"{path}: {field}={value} is out of range for the engine (1 to 2^31 - 1)")
    inner_eps = qc.get("rms_norm_eps", cfg.rms_norm_eps)
    if cfg.use_rms_norm and not (isinstance(inner_eps, (int, float)) and inner_eps > 0):
        raise ValueError(f"{path}: quantization_config.rms_norm_eps must be a positive number, got {inner_eps!r}")
    if cfg.use_sub_norms and cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
        raise ValueError(f"{path}: attn_sub_norm needs num_attention_heads * head_dim == hidden_size")
    return raw, cfg, linear_class, float(inner_eps or cfg.rms_norm_eps)


def _float_vector(ws: WeightSet, name: str, n: int) -> np.ndarray:
    if name not in ws:
        raise ValueError(f"missing tensor {name!r} in {next(iter(ws.files.values())).path.parent}")
    t = ws.info(name)
    if t.dtype not in _FLOAT16ISH or t.shape != (n,):
        raise ValueError(f"{ws.path(name)}: {name} is {t.dtype}{list(t.shape)}, expected a float tensor of shape [{n}]")
    return to_f32(ws.array(name), t.dtype)


def to_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    """A float32 copy of a bf16 (uint16 bits) / f16 / f32 array."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


def _matrix(ws: WeightSet, name: str, rows: int, cols: int) -> tuple[np.ndarray, str]:
    if name not in ws:
        raise ValueError(f"missing tensor {name!r}")
    t = ws.info(name)
    if t.dtype not in _FLOAT16ISH or t.shape != (rows, cols):
        raise ValueError(
            f"{ws.path(name)}: {name} is {t.dtype}{list(t.shape)}; the config says a float tensor of shape [{rows}, {cols}]"
        )
    return ws.array(name), _FLOAT16ISH[t.dtype]


WEIGHT_FORMATS = ("auto", "i2", "t5")


def auto_weight_format() -> str:
    """The ternary weight layout ``weights="auto"`` loads on this machine.

    "t5" (5 trits per byte, 1.6 bits per weight) where the kernels in use decode it with AVX-512
    VBMI byte tables (the avx512 path on Ice Lake / Zen 4 and later), "i2" (2 bits) everywhere else.
    A rule, not a timing at load: a timing small enough to be quick sits in the cache (it measures
    arithmetic, not the memory-bound decode), one large enough to stream costs seconds per load, and
    both are noisy on a shared machine. The rule comes from inference/csrc/selftest/t5_bench.cpp
    (2B4T's linears, formats alternating in one run; Xeon with AVX-512 VNNI + VBMI, no AMX, 2.3 GHz,
    shared with other jobs, so 1-thread figures in thread CPU time):
    avx512: decode i2 42.8 ms / t5 36.3 ms per token (t5 -15%), prefill of 128 tokens 103 / 116
    tok/s (t5 +13%: a row block is decoded once for all tokens); 2 threads (wall time, loaded
    machine) decode 101 / 83 ms. The t5 decode kernel computes 14.8 GB/s of weights per core in
    cache (i2: 32 GB/s): its decode is at least as fast as i2's while one core streams under
    18.5 GB/s from memory (14.8 x 521 / 417 MB), and t5 keeps its prefill and 20% memory gains.
    avx2: decode 54 / 84 ms, prefill 36 / 23 tok/s: base-3 arithmetic without byte tables is
    compute-bound, so i2. NEON: unmeasured on hardware, so i2. AMX (whose CPUs all have VBMI): one
    token runs the avx512 kernels, several tokens the AMX tiles for both formats (kernels_amx.cpp);
    t5_bench, one core of a Xeon with AMX: decode i2 36.0 / t5 27.5 ms per token, 8 tokens 59 / 54
    ms, 128 tokens 252 / 254 ms, so t5.
    """
    isa, feats = _C.current_isa(), _C.cpu_features()
    return "t5" if isa in ("avx512", "amx") and feats.get("avx512_vbmi", False) else "i2"


# Element types of the engine's KV cache: "f32" (exact against the PyTorch reference) or "f16"
# (rows rounded to nearest-even fp16 when written: half the memory and attention reads per position).
KV_CACHE_DTYPES = ("f32", "f16")


def build_model(directory: Path, threads: int, head: str,
                weights: str = "i2", kv_cache: str = "f32") -> tuple[Any, dict[str, Any], BitNetConfig, WeightSet]:
    """Validate the export and build the C++ model (weights repacked once, packed pages released).

    ``weights`` is the ternary layout the linears are repacked into: "i2" or "t5" (see
    :func:`auto_weight_format`); the logits are the same in both (the integer products are exact).
    ``kv_cache`` is the KV cache's element type, one of :data:`KV_CACHE_DTYPES`.

    Returns ``(model, raw_config, config, weights)``; ``weights`` must stay alive as long as the model
    (the engine borrows the embedding table from its mapping).
    """
    raw, cfg, linear_class, inner_eps = load_config(directory)
    ws = WeightSet(directory)
    C, hd = cfg.hidden_size, cfg.head_dim
    model = _C.Model(
        vocab=cfg.vocab_size, hidden=C, intermediate=cfg.intermediate_size, layers=cfg.num_hidden_layers,
        heads=cfg.num_attention_heads, kv_heads=cfg.num_key_value_heads, head_dim=hd,
        max_positions=cfg.max_position_embeddings, eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        act=cfg.hidden_act, sub_norms=cfg.use_sub_norms, inner_norm=cfg.use_rms_norm, inner_eps=inner_eps, threads=threads,
    )
    model.set_weight_format(weights)
    model.set_kv_dtype(kv_cache)
    expected: set[str] = set()

    def use(name: str) -> str:
        expected.add(name)
        return name

    emb, emb_dtype = _matrix(ws, use("model.embed_tokens.weight"), cfg.vocab_size, C)
    model.set_embedding(emb, emb_dtype)
    if not cfg.tie_word_embeddings:
        lm, lm_dtype = _matrix(ws, use("lm_head.weight"), cfg.vocab_size, C)
        model.set_lm_head(lm, lm_dtype)
    elif "lm_head.weight" in ws:
        expected.add("lm_head.weight")  # a tied export may still carry the (identical) copy; unused
    model.set_norm(-1, "norm", _float_vector(ws, use("model.norm.weight"), C))
    q_out, kv_out = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    shapes = {"self_attn.q_proj": (q_out, C), "self_attn.k_proj": (kv_out, C), "self_attn.v_proj": (kv_out, C),
              "self_attn.o_proj": (C, q_out), "mlp.gate_proj": (cfg.intermediate_size, C),
              "mlp.up_proj": (cfg.intermediate_size, C), "mlp.down_proj": (C, cfg.intermediate_size)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        model.set_norm(i, "input_layernorm", _float_vector(ws, use(p + "input_layernorm.weight"), C))
        model.set_norm(i, "post_attention_layernorm", _float_vector(ws, use(p + "post_attention_layernorm.weight"), C))
        if cfg.use_sub_norms:
            model.set_norm(i, "self_attn.attn_sub_norm", _float_vector(ws, use(p + "self_attn.attn_sub_norm.weight"), C))
            model.set_norm(i, "mlp.ffn_sub_norm",
                           _float_vector(ws, use(p + "mlp.ffn_sub_norm.weight"), cfg.intermediate_size))
        ext = _extensions(raw)  # bitnet distill's Qwen2 / Qwen3 extensions (training/distill_export.py)
        if "qk_norm" in ext:
            for name in ("self_attn.q_norm", "self_attn.k_norm"):
                model.set_norm(i, name, _float_vector(ws, use(p + name + ".weight"), hd))
        for lin in LINEAR_NAMES:
            wname, sname = use(p + lin + ".weight"), use(p + lin + ".weight_scale")
            out_f, in_f = shapes[lin]
            if wname not in ws:
                raise ValueError(f"missing tensor {wname!r} in {directory}")
            t = ws.info(wname)
            if t.dtype != "U8" or out_f % 4 or t.shape != (out_f // 4, in_f):
                raise ValueError(
                    f"{ws.path(wname)}: {wname} is {t.dtype}{list(t.shape)}; the config says packed U8 [{out_f // 4}, {in_f}]"
                )
            if sname not in ws:
                raise ValueError(f"missing tensor {sname!r} in {directory}")
            st = ws.info(sname)
            if st.dtype not in _FLOAT16ISH or math.prod(st.shape) != 1:
                raise ValueError(f"{ws.path(sname)}: {sname} must be one float, got {st.dtype}{list(st.shape)}")
            stored = float(to_f32(ws.array(sname).reshape(1), st.dtype)[0])
            if not math.isfinite(stored) or (linear_class == "bitlinear" and stored == 0.0):
                raise ValueError(f"{ws.path(sname)}: {sname} = {stored} is not a usable scale")
            # One convention inside: multiply. "bitlinear" files store 1/beta and divide.
            beta = stored if linear_class == "autobitlinear" else 1.0 / stored
            norm = _float_vector(ws, use(p + lin + ".rms_norm.weight"), in_f) if cfg.use_rms_norm else None
            model.set_linear(i, lin, ws.array(wname), beta, norm)
            if "attention_bias" in ext and lin.startswith("self_attn."):
                # stored as transformers' AutoBitLinear applies it, y = (x_q . q + b_stored) * weight_scale:
                # the bias the engine adds after scaling is b_stored * beta
                bias = _float_vector(ws, use(p + lin + ".bias"), out_f) * np.float32(beta)
                model.set_norm(i, lin + ".bias", bias)
            ws.release(wname)  # the engine holds its own repacked copy now
    unexpected = sorted(set(ws.where) - expected)
    if unexpected:
        raise ValueError(
            f"{directory}: tensors the config does not account for: {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} (does num_hidden_layers / use_rms_norm match the file?)"
        )
    model.check_complete()
    # The head is built in chunks, each chunk's file pages dropped at once, so peak memory stays at
    # the ternary weights + one head: int8 / int4 quantize it (embedding lookups and int4's exact
    # rescoring page single rows back in later); f16 copies it into huge pages the decode streams
    # faster than the page cache.
    prepare = {"int8": model.quantize_head_rows, "int4": model.quantize_head_rows_int4}.get(head, model.copy_head_rows)
    name = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    row_bytes = (ws.info(name).end - ws.info(name).begin) // cfg.vocab_size
    for r0 in range(0, cfg.vocab_size, HEAD_CHUNK_ROWS):
        r1 = min(cfg.vocab_size, r0 + HEAD_CHUNK_ROWS)
        prepare(r0, r1)
        ws.release(name, r0 * row_bytes, r1 * row_bytes)
    model.set_head_mode(head)
    return model, raw, cfg, ws


EXTENSIONS = ("attention_bias", "qk_norm")  # what bitnet distill's exports may add (training/distill_export.py)


def _extensions(raw: dict[str, Any]) -> list[str]:
    """The ``bitnet_extensions`` of ``config.json`` (what bitnet distill adds for Qwen2 / Qwen3 students)."""
    ext = raw.get("bitnet_extensions") or []
    if not isinstance(ext, list) or any(e not in EXTENSIONS for e in ext):
        raise ValueError(f"config.json: unsupported bitnet_extensions {ext!r} (the engine runs {list(EXTENSIONS)})")
    return ext


def open_weights(directory: str | Path) -> WeightSet:
    return WeightSet(Path(directory))


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
