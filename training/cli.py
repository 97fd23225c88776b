"""``bitnet train`` and ``bitnet train-tokenizer``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["train_main", "tokenizer_main"]


def train_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="bitnet train",
        description="Train a BitNet b1.58 model from a YAML config (configs/train/*.yaml). Overrides are "
        "key=value with dotted keys, e.g. optim.lr=2e-3 model=10m max_steps=200 resume=true "
        "model_overrides.linear_type=fp. Multi-process on CPU (2 processes): accelerate launch --config_file "
        "configs/train/accelerate/cpu2.yaml -m bitnet train ...",
        epilog="more: docs/training.md in the bitnet source repository",
    )
    ap.add_argument("config", help="training YAML file")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    from .config import config_to_yaml, load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from .loop import train

    out = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # once, not once per launched process
        print(f"run folder: {out}")
    return 0


def tokenizer_main(argv: list[str]) -> int:
    from .tokenizer import MIN_BPE_VOCAB

    ap = argparse.ArgumentParser(
        prog="bitnet train-tokenizer",
        description="Train a byte-level BPE tokenizer (tokenizers) on local .txt/.jsonl/.parquet files or "
        "folders and write tokenizer.json (use it with data.tokenizer=PATH).",
        epilog="more: docs/training.md in the bitnet source repository",
    )
    ap.add_argument("paths", nargs="+", help="data files or folders")
    ap.add_argument("-o", "--output", required=True, help="output tokenizer.json path")
    ap.add_argument("--vocab-size", type=int, default=8192,
                    help=f"tokens in the vocabulary, at least {MIN_BPE_VOCAB} (default: 8192)")
    ap.add_argument("--min-frequency", type=int, default=2,
                    help="merge only pairs seen at least this often (default: 2)")
    ap.add_argument("--text-field", default="text", help="record field holding the text (jsonl/parquet; default: text)")
    ap.add_argument("--encoding-fallback", choices=["latin-1", "error"], default="latin-1",
                    help="non-UTF-8 text files: decode as Latin-1 (with a warning) or reject")
    args = ap.parse_args(argv)
    # Checked before any file is read: a bad number or output path fails in a second, not after the corpus.
    if args.vocab_size < MIN_BPE_VOCAB:
        ap.error(f"--vocab-size must be >= {MIN_BPE_VOCAB} (the 256 byte symbols + <|endoftext|>), got {args.vocab_size}")
    if args.min_frequency < 0:
        ap.error(f"--min-frequency must be >= 0, got {args.min_frequency}")
    if Path(args.output).is_dir():
        raise IsADirectoryError(f"{args.output}: is a directory; give the tokenizer.json file to write")
    from tqdm.auto import tqdm

    from bitnet.io import atomic_file

    from .config import DataConfig
    from .dataset import load_records, read_records, resolve_files
    from .tokenizer import iter_batches, train_bpe

    dcfg = DataConfig(paths=list(args.paths), text_field=args.text_field, encoding_fallback=args.encoding_fallback)
    files = resolve_files(dcfg.paths)
    ds = load_records(files, dcfg, streaming=True)
    chars = [0]  # characters of text seen: an empty corpus must not yield a byte-only tokenizer

    def texts():
        for r in tqdm(read_records(ds, files), desc="reading records", unit="rec"):
            chars[0] += len(r["text"].strip())
            yield r["text"]

    tok = train_bpe(iter_batches(texts()), args.vocab_size, args.min_frequency)
    if chars[0] == 0:
        raise ValueError(f"{', '.join(map(str, args.paths))}: no text to train a tokenizer on (the data is empty)")
    with atomic_file(Path(args.output), "w") as f:
        f.write(tok.to_str())
    print(f"wrote {args.output}: {tok.get_vocab_size()} tokens from {len(files)} file(s)")
    return 0
