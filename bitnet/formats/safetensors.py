"""Memory-mapped safetensors files and directories (one file or an index of shards), numpy only.

We parse the (small) JSON header ourselves (:mod:`bitnet.safetensors_header`) rather than through the
``safetensors`` package because the engine needs zero-copy views into one mapping (it borrows 16-bit
tables straight from the page cache) and page-level control (``madvise``) to drop packed weights
once the engine has repacked them. Every header field, dtype, shape and offset is validated against
the file size before any view is made, so a hostile file raises ``ValueError``, never a crash.
"""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path

import numpy as np

from bitnet.safetensors_header import TensorInfo, read_header

__all__ = ["SafetensorsFile", "WeightSet", "FLOAT_DTYPES", "to_f32"]

FLOAT_DTYPES = {"BF16": "bf16", "F16": "f16", "F32": "f32"}  # safetensors dtype -> the engine's name


def to_f32(a: np.ndarray, dtype: str) -> np.ndarray:
    """A float32 copy of a bf16 (uint16 bits) / f16 / f32 array (dtype in safetensors' or the engine's names)."""
    if dtype in ("BF16", "bf16"):
        return (a.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(a, dtype=np.float32)


# dtype name -> numpy dtype used for the view (bf16 travels as its uint16 bit pattern)
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16), "U16": np.dtype(np.uint16), "F16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16), "I32": np.dtype(np.int32), "U32": np.dtype(np.uint32),
    "F32": np.dtype(np.float32), "I64": np.dtype(np.int64), "U64": np.dtype(np.uint64),
    "F64": np.dtype(np.float64),
}


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
        elif any(directory.glob("pytorch_model*.bin")):
            raise FileNotFoundError(f"{directory}: only pytorch_model*.bin (pickles, which this project never loads); "
                                    "convert them to model.safetensors first (safetensors' convert tool)")
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
