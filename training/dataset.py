"""The data pipeline: local files -> ``datasets`` records -> tokens -> a memory-mapped token cache
-> packed fixed-length sequences.

- Files: .txt (one record per file, paragraph or line), .jsonl / .json and .parquet (one record
  per row, text in ``data.text_field``), given as files or folders (searched recursively).
- Encoding: every .txt / .jsonl file is checked for UTF-8 first. One that is not is either decoded
  as Latin-1 (``encoding_fallback: latin-1``; every byte maps to one character, so nothing is
  dropped or replaced, and a warning names the file) or rejected with a ValueError naming it.
- Tokens: records are tokenized in batches (``tokenizers`` threads inside ``encode_batch``; with
  ``num_proc > 1`` also over ``datasets.map`` worker processes), an EOS token ends every record,
  and the stream is written to ``tokens.bin`` (uint16 or uint32) under a cache folder keyed by the
  tokenizer and the files' paths, sizes and modification times, so a second run reads it back
  without tokenizing. With ``streaming: true`` records are streamed into the file (the corpus is
  never held in memory or in an Arrow cache), so corpora larger than RAM work.
- Packing: the token stream is cut into windows of ``seq_len + 1`` tokens overlapping by one
  (inputs and shifted labels); the last ``val_fraction`` of the windows is the validation split.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import torch
from tokenizers import Tokenizer

from bitnet.io import atomic_dir

from .config import DataConfig
from .tokenizer import eos_id, iter_batches, load_tokenizer, train_bpe

T = TypeVar("T")

__all__ = [
    "TEXT_EXTS", "bundled_text", "resolve_files", "check_utf8", "load_records", "read_records", "prepare_data",
    "PackedTokens", "pack_reference", "batch_indices", "default_cache_dir",
]

TEXT_EXTS = (".txt", ".text", ".md")
JSON_EXTS = (".jsonl", ".json")
PARQUET_EXTS = (".parquet",)
CACHE_VERSION = 1  # bump when the cache layout or tokenization changes


def bundled_text(name: str = "tinyshakespeare") -> Path:
    """A text file shipped in ``bitnet/training/data/`` (e.g. the public-domain Tiny Shakespeare)."""
    p = Path(__file__).resolve().parent / "data" / f"{name}.txt"
    if not p.is_file():
        raise FileNotFoundError(f"no bundled text {name!r} (looked for {p})")
    return p


def default_cache_dir() -> Path:
    return Path(os.environ.get("BITNET_CACHE", Path.home() / ".cache" / "bitnet"))


def resolve_files(paths: list[str]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into the list of data files.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no supported file.
        ValueError: a file given explicitly has an unsupported extension.
    """
    exts = TEXT_EXTS + JSON_EXTS + PARQUET_EXTS
    out: list[Path] = []
    for s in paths:
        if s.startswith("bundled:"):
            out.append(bundled_text(s.split(":", 1)[1]))
            continue
        p = Path(s).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no data files ({', '.join(exts)})")
            out += found
        elif p.is_file():
            if p.suffix.lower() not in exts:
                raise ValueError(f"{p}: unsupported data file type {p.suffix!r} (use {', '.join(exts)})")
            out.append(p)
        else:
            raise FileNotFoundError(f"data path {p} not found")
    return [f.resolve() for f in out]


def check_utf8(path: Path, chunk_bytes: int = 1 << 20) -> int | None:
    """None if ``path`` is valid UTF-8, else the byte offset of the first invalid sequence.

    Reads in chunks with an incremental decoder, so memory stays bounded for huge files.
    """
    dec = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            try:
                dec.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                return offset + e.start
            if not chunk:
                return None
            offset += len(chunk)


def file_encoding(path: Path, fallback: str) -> str:
    """"utf-8", or "latin-1" (warning naming the file) when it is not UTF-8 and the fallback allows.

    Raises ValueError naming the file when ``fallback == "error"``.
    """
    if path.suffix.lower() in PARQUET_EXTS:
        return "utf-8"  # parquet strings are typed; pyarrow validates them itself
    bad = check_utf8(path)
    if bad is None:
        return "utf-8"
    if fallback == "error":
        raise ValueError(f"{path}: not valid UTF-8 (first bad byte at offset {bad}); re-encode it, or allow "
                         "the Latin-1 fallback (data.encoding_fallback=latin-1, --encoding-fallback latin-1)")
    warnings.warn(f"{path}: not valid UTF-8 (first bad byte at offset {bad}); decoding it as Latin-1",
                  UnicodeWarning, stacklevel=3)
    return "latin-1"


def _read_error(files: list, e: Exception) -> ValueError:
    """The error for records that could not be read: the files (up to three) and the cause's first line."""
    names = [str(f) for f in files]
    return ValueError(f"cannot read {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}: "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def read_records(records: Iterable[T], files: list[Path]) -> Iterator[T]:
    """``records`` as they are read. A streamed dataset parses its files only while it is iterated (so
    :func:`load_records` cannot see a malformed line); an error then is a ValueError naming ``files``."""
    it = iter(records)
    while True:
        try:
            r = next(it)
        except StopIteration:
            return
        except Exception as e:  # pyarrow's ArrowInvalid, json errors, decoding errors, ...
            raise _read_error(files, e) from None
        yield r


def load_records(files: list[Path], cfg: DataConfig, streaming: bool, hf_cache: Path | None = None):
    """Load ``files`` with ``datasets`` into one (Iterable)Dataset with a single ``text`` column.

    Files are grouped by loader and encoding (one ``load_dataset`` call per group) and the groups
    concatenated in order of first appearance.

    Raises ValueError naming the file if a record file lacks ``cfg.text_field`` or cannot be parsed.
    """
    import datasets

    groups: dict[tuple[str, str], list[str]] = {}
    for f in files:
        ext = f.suffix.lower()
        kind = "text" if ext in TEXT_EXTS else "json" if ext in JSON_EXTS else "parquet"
        groups.setdefault((kind, file_encoding(f, cfg.encoding_fallback)), []).append(str(f))
    parts = []
    for (kind, enc), group in groups.items():
        kw: dict = {"data_files": {"train": group}, "split": "train", "streaming": streaming}
        if hf_cache is not None:
            kw["cache_dir"] = str(hf_cache)
        if kind == "text":
            kw.update(sample_by=cfg.text_sample_by, keep_linebreaks=True, encoding=enc)
        elif kind == "json":
            kw.update(encoding=enc)
        try:
            ds = datasets.load_dataset(kind, **kw)
        except Exception as e:  # datasets/pyarrow raise many types; name the files and the cause
            raise _read_error(group, e) from None
        field = "text" if kind == "text" else cfg.text_field
        cols = ds.column_names
        if cols is None:  # a streamed dataset knows its columns only after reading a record
            cols = list(next(read_records(ds, group), {}))
        if field not in cols:
            raise ValueError(f"{group[0]}: records have no {field!r} field (fields: {cols}); "
                             "set data.text_field")
        ds = ds.select_columns([field])
        if field != "text":
            ds = ds.rename_column(field, "text")
        parts.append(ds)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _files_key(files: list[Path], cfg: DataConfig) -> dict:
    return {
        "version": CACHE_VERSION,
        "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        "text_field": cfg.text_field,
        "sample_by": cfg.text_sample_by,
        "encoding_fallback": cfg.encoding_fallback,
    }


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _get_tokenizer(files: list[Path], cfg: DataConfig, cache: Path, progress: bool) -> Tokenizer:
    if cfg.tokenizer != "train":
        return load_tokenizer(cfg.tokenizer)
    tdir = cache / "tokenizers" / _digest({**_files_key(files, cfg), "vocab": cfg.tokenizer_vocab_size})
    if (tdir / "tokenizer.json").is_file():
        return load_tokenizer(tdir / "tokenizer.json")
    if progress:
        print(f"training a {cfg.tokenizer_vocab_size}-token byte-level BPE on {len(files)} file(s)")
    ds = load_records(files, cfg, streaming=True)
    tok = train_bpe(iter_batches(r["text"] for r in read_records(ds, files)), cfg.tokenizer_vocab_size)
    with atomic_dir(tdir) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
    return tok


def prepare_data(cfg: DataConfig, progress: bool = True) -> tuple[Tokenizer, Path]:
    """Resolve files and tokenizer, tokenize into the cache if needed; return (tokenizer, cache dir).

    The cache dir holds ``tokens.bin`` and ``meta.json`` (dtype, token count, record count, files).
    Call it on one process first (``accelerator.main_process_first()``): the others then hit the cache.
    """
    files = resolve_files(cfg.paths)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    tok = _get_tokenizer(files, cfg, cache, progress)
    key = _digest({**_files_key(files, cfg), "tokenizer": _digest(tok.to_str())})
    out = cache / "tokens" / key
    if (out / "meta.json").is_file():
        return tok, out
    eos = eos_id(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32

    def encode(batch: dict) -> dict:
        # Each record becomes its tokens followed by EOS, the separator between packed documents.
        return {"ids": [e.ids + [eos] for e in tok.encode_batch(batch["text"])]}

    ds = load_records(files, cfg, streaming=cfg.streaming, hf_cache=cache / "hf")
    if cfg.streaming:
        ds = ds.map(encode, batched=True, batch_size=256, remove_columns=["text"])
        rows = (r["ids"] for r in read_records(ds, files))
    else:
        ds = ds.map(encode, batched=True, batch_size=256, remove_columns=["text"], num_proc=cfg.num_proc
                    if cfg.num_proc > 1 else None, load_from_cache_file=False, desc="tokenizing")
        rows = (ids for b in ds.iter(batch_size=1024) for ids in b["ids"])
    n_tokens = n_records = 0
    with atomic_dir(out) as tmp:
        with open(tmp / "tokens.bin", "wb") as f:
            for ids in rows:
                a = np.asarray(ids, dtype=dtype)
                f.write(a.tobytes())
                n_tokens += a.size
                n_records += 1
        meta = {"dtype": np.dtype(dtype).name, "n_tokens": n_tokens, "n_records": n_records, "eos_id": eos,
                "vocab_size": vocab, "files": [str(f) for f in files]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if progress:
        print(f"tokenized {n_records} records from {len(files)} file(s): {n_tokens:,} tokens -> {out}")
    return tok, out


@dataclass
class PackedTokens:
    """Packed sequences over a memory-mapped token cache (nothing is read until a batch asks).

    Window ``i`` is ``tokens[i*T : i*T + T + 1]``; windows ``[0, n_train)`` train and
    ``[n_train, n_windows)`` validate.
    """

    tokens: np.ndarray  # (N,) memmap of uint16/uint32
    seq_len: int
    n_train: int
    n_val: int

    @classmethod
    def open(cls, cache: Path, seq_len: int, val_fraction: float) -> "PackedTokens":
        """Raises ValueError when the corpus is too short for one training window."""
        meta = json.loads((cache / "meta.json").read_text())
        if meta["n_tokens"] == 0:
            raise ValueError(f"{cache}: the corpus produced no tokens ({', '.join(meta['files'][:3])})")
        tokens = np.memmap(cache / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
        n = (meta["n_tokens"] - 1) // seq_len
        n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
        if val_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        if n - n_val < 1:
            raise ValueError(f"corpus too small: {meta['n_tokens']} tokens give {n} windows of seq_len={seq_len} "
                             f"({', '.join(meta['files'][:3])})")
        return cls(tokens, seq_len, n - n_val, n_val)

    def batch(self, windows: np.ndarray, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """windows (B,) window numbers within ``split`` -> inputs, labels, both (B, T) int64."""
        base = 0 if split == "train" else self.n_train
        starts = (np.asarray(windows, dtype=np.int64) + base) * self.seq_len  # (B,)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]  # (B, T+1)
        w = torch.from_numpy(self.tokens[idx].astype(np.int64))  # (B, T+1)
        return w[:, :-1], w[:, 1:]


def pack_reference(docs: list[list[int]], eos: int, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Slow readable reference of the packing: concatenate documents each followed by EOS, cut into
    (inputs, labels) windows of ``seq_len`` (labels shifted by one). Used by the tests."""
    stream: list[int] = []
    for d in docs:
        stream += d + [eos]
    out = []
    i = 0
    while i + seq_len + 1 <= len(stream):
        out.append((stream[i:i + seq_len], stream[i + 1:i + seq_len + 1]))
        i += seq_len
    return out


@lru_cache(maxsize=4)
def _epoch_perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Training windows of the global batch of optimizer step ``step``: (batch_size,) in [0, n).

    Sample ``p = step * batch_size + j`` is window ``perm_e[p % n]`` with ``e = p // n`` and
    ``perm_e`` a permutation seeded by ``(seed, e)``: every window once per epoch, a pure function
    of the step. This is what makes resume and multi-process runs reproduce the single-process run
    exactly, without carrying a data loader's state (why we do not use a shuffling DataLoader).
    """
    p = step * batch_size + np.arange(batch_size)  # (B,)
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(p // n):
        m = p // n == e
        out[m] = _epoch_perm(seed, int(e), n)[p[m] % n]
    return out
