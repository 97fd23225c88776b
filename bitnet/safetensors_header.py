"""Validation of safetensors headers: the one place every file we read is checked before use.

Shared by the importers (``bitnet.export``) and the C++ engine's loader (``bitnet.inference``), so it
needs neither torch nor numpy. The safetensors library checks headers too, but its messages name
neither the file nor the tensor, and the engine needs the byte offsets for zero-copy views.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DTYPE_SIZES", "MAX_HEADER_BYTES", "TensorInfo", "read_header"]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


def read_header(path: str | Path) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """Read and validate the header of a safetensors file against the file's size.

    Returns ``(metadata, tensors)``: the ``__metadata__`` strings and, per tensor name, its dtype,
    shape and absolute byte span.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming the file (and tensor): truncated file, corrupt or lying header (lengths,
        dtypes, shapes, offsets that disagree with the shape or overlap or run past the end).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors file at {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: empty file, not a safetensors file")
    with open(path, "rb") as f:
        raw = f.read(8)
        (n,) = struct.unpack("<Q", raw) if len(raw) == 8 else (None,)
        # A safetensors file starts with its JSON header's length (u64, at most 100 MB). Text or another
        # format read that way gives an absurd length: not a safetensors file, rather than "truncated".
        if n is None or n == 0 or n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors file (it starts with {raw!r}, not a header length)")
        if 8 + n > size:
            raise ValueError(f"{path}: truncated safetensors file (its header says {n} bytes, the file has {size})")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start, data_len = 8 + n, size - 8 - n
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise ValueError(f"{path}: __metadata__ is not a JSON object")
            metadata = {str(k): str(v) for k, v in info.items()}
            continue
        tensors[name] = _entry(path, name, info, data_start, data_len)
    spans = sorted((t.begin, t.end, k) for k, t in tensors.items())
    for (_, e0, k0), (b1, _, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {k0!r} and {k1!r} overlap in the data section")
    return metadata, tensors


def _entry(path: Path, name: str, info: Any, data_start: int, data_len: int) -> TensorInfo:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{path}: tensor {name!r} has a malformed header entry")
    dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (not isinstance(offs, list) or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
        raise ValueError(f"{path}: tensor {name!r} has invalid data_offsets {offs!r}")
    begin, end = offs
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if not 0 <= begin <= end or end - begin != nbytes:
        raise ValueError(
            f"{path}: tensor {name!r} header says {dtype}{shape} ({nbytes} bytes) but its "
            f"data_offsets {offs} span {end - begin} bytes"
        )
    if end > data_len:
        raise ValueError(f"{path}: tensor {name!r} ends at byte {end} of a {data_len}-byte data section (truncated file?)")
    return TensorInfo(dtype, tuple(shape), data_start + begin, data_start + end)
