"""The ``bitnet`` command line: one entry point, one subcommand per pipeline stage.

Each subcommand lives in the subpackage that owns it and is imported only when used, so
``bitnet --help`` is instant. A subcommand module exposes ``FUNC(argv: list[str]) -> int``.

Errors that users cause (bad paths, bad files, bad values: ``ValueError`` / ``OSError``) are
printed as one line, ``bitnet <cmd>: error: ...``, with exit status 2. ``BITNET_DEBUG=1`` shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

# The user's guide: README.md and these pages under docs/ in the source repository.
DOCS_HINT = "more: README.md and docs/ in the bitnet source repository"

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("bitnet.demo", "main", "the whole pipeline on the bundled text: train, export, generate, score"),
    "train": ("bitnet.training.cli", "train_main", "train a BitNet model from a YAML config (key=value overrides)"),
    "train-tokenizer": ("bitnet.training.cli", "tokenizer_main", "train a byte-level BPE tokenizer on local text"),
    "distill": ("bitnet.training.distill", "main", "BitDistill: a ternary student from a transformers Llama/Mistral/Qwen teacher"),
    "export": ("bitnet.export.cli", "main", "export a checkpoint to transformers' packed bitnet layout or GGUF"),
    "generate": ("bitnet.inference.cli", "generate_main", "generate text with the C++ engine"),
    "chat": ("bitnet.inference.cli", "chat_main", "interactive streaming chat with the C++ engine"),
    "serve": ("bitnet.inference.serve", "main", "OpenAI-compatible HTTP server with continuous batching (C++ engine)"),
    "bench": ("bitnet.inference.cli", "bench_main", "benchmark the C++ engine (prefill/decode tokens/s, RSS)"),
    "eval": ("bitnet.eval.cli", "eval_main", "score a model with lm-eval (MMLU, GSM8K, ARC) on the C++ engine"),
    "perplexity": ("bitnet.eval.cli", "perplexity_main", "sliding-window perplexity of a text file"),
    "study": ("bitnet.training.study", "main", "ternary vs full-precision twins at small sizes: table and plot"),
    "info": ("bitnet.cli", "info_main", "version, detected CPU features, model presets"),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: bitnet <command> [options]   (bitnet <command> --help for a command's options)",
        "",
        "Native 1.58-bit (ternary) BitNet b1.58 models: train, export, run on CPU, evaluate.",
        "",
        "commands:",
    ]
    lines += [f"  {n.ljust(width)}  {h}" for n, (_, _, h) in COMMANDS.items()]
    lines += ["", DOCS_HINT + " (each command's --help names its page)"]
    return "\n".join(lines)


def info_main(argv: list[str]) -> int:
    import argparse

    argparse.ArgumentParser(prog="bitnet info", description=COMMANDS["info"][2],
                            epilog="more: docs/engine.md in the bitnet source repository").parse_args(argv)
    from . import __version__
    from .paths import list_model_presets

    print(f"bitnet {__version__}")
    try:
        from bitnet.inference import cpu_features

        feats = cpu_features()
        on = [k for k, v in feats.items() if v is True]
        print(f"cpu: {feats['arch']}  features: {' '.join(on) or 'none'}")
        from bitnet.inference import current_isa
        from bitnet.inference.bench import transparent_hugepage_mode

        thp = transparent_hugepage_mode()
        note = {"never": " (the weights get 4 KiB pages: decode is slower)", None: " (unknown)"}.get(thp, "")
        print(f"engine: kernels {current_isa()}; transparent huge pages: {thp or 'n/a'}{note}")
    except ImportError as e:  # the extension was not built: say so, do not hide it
        print(f"cpu: C++ extension not available ({e})")
    print(f"model presets: {', '.join(list_model_presets())}")
    print(DOCS_HINT)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"bitnet {__version__}\n{DOCS_HINT}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"bitnet: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        # Inside the try: a missing optional package raised while the subcommand's module is
        # imported (bitnet.deps.MissingDependencyError is a ValueError) is one line too.
        fn = getattr(importlib.import_module(module), func)
        return int(fn(argv[1:]) or 0)
    except KeyboardInterrupt:
        print(f"bitnet {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bitnet ... | head`: the reader left; no error message, as other CLIs do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing stdout at exit does not raise again
        return 128 + 13  # killed by SIGPIPE, as a shell reports it
    except (ValueError, OSError) as e:
        if os.environ.get("BITNET_DEBUG"):
            raise
        print(f"bitnet {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
