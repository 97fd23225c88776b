"""``bitnet export``: a checkpoint to transformers' packed bitnet layout (default) or to GGUF."""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

from bitnet.checkpoint import TOKENIZER_FILE, find_model_dir

from .hf import CONFIG_JSON, DEFAULT_MAX_SHARD_SIZE, export_hf, load_model

EPILOG = """examples:
  bitnet export runs/10m out/10m-packed                    # newest checkpoint of a run -> transformers layout
  bitnet export runs/10m/checkpoints/step_2000 out/10m     # one training checkpoint
  bitnet export out/10m-packed out/10m.gguf --format gguf              # tq2_0
  python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('out/10m-packed')"

GGUF: upstream llama.cpp's bitnet graph always computes a SiLU-gated FFN, so a relu2 model (such as
2B4T) runs there with the wrong activation; such a model is written only with --allow-relu2.
A linear whose input width is not a multiple of 256 (the TQ block) is written as Q5_0 (or F16 when
not a multiple of 32) with the same ternary values; the command names each such tensor. (Not Q8_0:
llama.cpp's AMX Q8_0 kernel crashes on prompts of two or more tokens on CPUs with AMX.)

more: docs/formats.md in the bitnet source repository
"""


def _size(text: str) -> int:
    """'5GB', '200MB', '1024' -> bytes (powers of 1000 as transformers' max_shard_size; 'GiB' = 1024^3)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB, 2GiB)")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3}[unit[0]]
    size = int(float(m.group(1)) * base**power)
    if size < 1:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (must be at least 1 byte; e.g. 5GB, 500MB, 2GiB)")
    return size


def _source_tokenizer(src: Path) -> Path | None:
    """The tokenizer.json that travels with a checkpoint: next to an HF config, or in the model dir."""
    if (src / CONFIG_JSON).is_file() and (src / TOKENIZER_FILE).is_file():
        return src / TOKENIZER_FILE
    try:
        cand = find_model_dir(src) / TOKENIZER_FILE
    except FileNotFoundError:
        return None
    return cand if cand.is_file() else None


def _gguf_tokenizer(path: Path, read_model) -> object | None:
    """The tokenizers.Tokenizer a GGUF file carries in its own vocabulary (None without one)."""
    desc = read_model(path)
    return desc.tokenizer() if desc.tokenizer is not None else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bitnet export",
        description="Export a checkpoint (model dir, training checkpoint, run dir, or a packed export) to "
        "transformers' packed bitnet layout or to a GGUF for llama.cpp.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="model dir, training checkpoint, run dir, transformers-layout dir (any published "
                                      "ternary family), a .gguf file, or a hub id owner/name[@revision]")
    p.add_argument("out", type=Path, help="output directory (hf) or .gguf file (gguf; a directory gets model.gguf)")
    p.add_argument("--format", choices=("hf", "gguf"), default="hf", help="output format (default: hf)")
    p.add_argument("--type", dest="qtype", choices=("tq2_0", "tq1_0"), default="tq2_0",
                   help="GGUF ternary type: tq2_0 (default; 2.06 bits/weight, faster) or tq1_0 (1.69 bits/weight)")
    p.add_argument("--allow-relu2", action="store_true",
                   help="write a relu2 model to GGUF although llama.cpp will run it with SiLU (warns)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer.json to ship (default: the one inside the checkpoint)")
    p.add_argument("--no-tokenizer", action="store_true", help="hf only: export weights and config without a tokenizer")
    p.add_argument("--max-shard-size", type=_size, default=DEFAULT_MAX_SHARD_SIZE,
                   help="hf only: shard safetensors above this size, with an index file (default 5GB)")
    return p


def main(argv: list[str]) -> int:
    from bitnet.formats import read_model, resolve_model

    args = build_parser().parse_args(argv)
    from bitnet.formats.hub import parse_hub_id

    if not Path(args.checkpoint).exists() and parse_hub_id(args.checkpoint) is None:
        raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint, model or export directory, .gguf file "
                                "(nor a hub id owner/name[@revision])")
    args.checkpoint = resolve_model(args.checkpoint)  # a local path, or a hub id in the hub cache
    is_gguf = args.checkpoint.is_file() and args.checkpoint.suffix.lower() == ".gguf"
    if not args.checkpoint.is_dir() and not is_gguf:
        size = Path(args.checkpoint).stat().st_size
        raise ValueError(f"{args.checkpoint}: {'an empty file' if size == 0 else 'a file'}, not a checkpoint, model or "
                         "export directory (give the folder that holds config.json, or a .gguf file)")
    gguf_file = args.format == "gguf" and args.out.suffix == ".gguf"
    if args.out.exists() and not args.out.is_dir() and not gguf_file:
        why = ("the name does not end in .gguf, so the export would go into a folder of that name (give a .gguf "
               "path or a folder)" if args.format == "gguf" else "the hf export is a folder (give a folder path)")
        raise FileExistsError(f"{args.out}: a file is there; {why}")
    tokenizer = args.tokenizer or (_gguf_tokenizer(args.checkpoint, read_model) if is_gguf
                                   else _source_tokenizer(args.checkpoint))
    if tokenizer is None and not is_gguf and not (args.checkpoint / CONFIG_JSON).is_file():
        find_model_dir(args.checkpoint)  # a folder with no model at all: say that, not "no tokenizer"
    if tokenizer is None and not (args.format == "hf" and args.no_tokenizer):
        raise FileNotFoundError(
            f"{args.checkpoint}: no {TOKENIZER_FILE} found; pass --tokenizer PATH"
            + (" (or --no-tokenizer for a weights-only export)" if args.format == "hf" else "")
        )
    if isinstance(tokenizer, (str, Path)) and not Path(tokenizer).is_file():
        raise FileNotFoundError(f"{tokenizer}: tokenizer file missing")
    model = load_model(args.checkpoint)
    if args.format == "hf":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the no-tokenizer warning: --no-tokenizer asked for it
            out = export_hf(model, args.out, None if args.no_tokenizer else tokenizer,
                            max_shard_size=args.max_shard_size, progress=True)
    else:
        from .gguf_export import export_gguf

        path = args.out if args.out.suffix == ".gguf" else args.out / "model.gguf"
        out = export_gguf(model, path, tokenizer, qtype=args.qtype, allow_relu2=args.allow_relu2, progress=True,
                          log=print)
    print(f"wrote {out}")
    return 0
