"""``bitnet generate`` / ``bitnet chat`` / ``bitnet bench``: the C++ engine from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["generate_main", "chat_main", "bench_main"]


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="model directory (config.json + safetensors, any published ternary family), "
                                     "a .gguf file, or a hub id owner/name[@revision]")
    _engine_flags(p)


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all CPUs of this process)")
    p.add_argument("--head", choices=["auto", "f16", "int8", "int4"], default="auto",
                   help="output head precision (default: auto, which is int8)")
    p.add_argument("--weights", choices=["auto", "i2", "t5"], default="auto",
                   help="ternary weight layout in memory: i2 (2 bits), t5 (1.6 bits), auto (the faster here; default)")
    p.add_argument("--kv-cache", choices=["f32", "f16"], default="f32",
                   help="KV cache element type: f32 (exact; default) or f16 (half the cache memory and attention "
                        "reads)")


def _sampling_args(p: argparse.ArgumentParser, max_new: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new,
                   help=f"most tokens to generate, >= 0 (default: {max_new})")
    p.add_argument("--temperature", type=float, default=0.0, help=">= 0; 0 = greedy (default: 0)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (0 = off; default: off)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1] (default: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 0; divides the logits of tokens already seen (1 = off; default: 1)")
    p.add_argument("--seed", type=int, default=None, help="in [0, 2**63 - 1] (default: a fresh random seed)")


def _check_args(a: argparse.Namespace) -> None:
    """One line per bad value, before the model is loaded (same wording as every other command)."""
    from .engine import check_threads

    check_threads(a.threads, "--threads")
    if hasattr(a, "temperature"):
        _sampling(a)
    if getattr(a, "prompt", None) == "":
        raise ValueError("--prompt is empty: give some text to continue")


def _sampling(a: argparse.Namespace):
    """The flags' :class:`~bitnet.inference.sampling.SamplingParams` (errors name the flags)."""
    from .engine import engine_params

    return engine_params(a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.repetition_penalty, a.seed,
                         getattr(a, "stop", None), cli=True)


def _load(a: argparse.Namespace, **override):
    """The Engine for the command's model (a directory, .gguf file or hub id); its load log (family or
    GGUF architecture, FFN and why) goes to stderr."""
    from .engine import Engine

    kw = dict(threads=a.threads, head=a.head, weights=a.weights, kv_cache=a.kv_cache)
    eng = Engine(a.model_dir, **{**kw, **override})
    for line in eng.load_log:
        print(f"[load] {line}", file=sys.stderr)
    return eng



def generate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bitnet generate", description="Generate text with the C++ engine (streams to stdout).",
                                epilog="more: docs/engine.md in the bitnet source repository")
    _engine_args(p)
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--no-stream", action="store_true", help="print the whole text at the end")
    _sampling_args(p, 128)
    a = p.parse_args(argv)
    _check_args(a)
    eng = _load(a)
    t0 = time.perf_counter()
    if a.no_stream:
        print(eng.generate(a.prompt, sampling=_sampling(a)))
    else:
        sys.stdout.write(a.prompt)
        for piece in eng.stream(a.prompt, sampling=_sampling(a)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    print(f"[{time.perf_counter() - t0:.2f} s]", file=sys.stderr)
    return 0


def chat_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bitnet chat",
                                description="Interactive streaming chat (2B4T chat format unless the export has a "
                                            "chat_template). Empty line or Ctrl-D quits; /reset clears the history.",
                                epilog="more: docs/engine.md in the bitnet source repository")
    _engine_args(p)
    p.add_argument("--system", default="You are a helpful assistant.", help="system prompt")
    _sampling_args(p, 256)
    a = p.parse_args(argv)
    _check_args(a)
    eng = _load(a)
    history = [{"role": "system", "content": a.system}] if a.system else []
    while True:
        try:
            user = input("you> ")
        except EOFError:
            print()
            return 0
        if not user.strip():
            return 0
        if user.strip() == "/reset":
            history = history[:1] if a.system else []
            continue
        history.append({"role": "user", "content": user})
        sys.stdout.write("assistant> ")
        reply = []
        for piece in eng.chat_stream(history, sampling=_sampling(a)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


def bench_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bitnet bench",
        description="Benchmark the C++ engine: prefill and decode tokens/s, load time, peak RSS. "
                    "--shape builds random weights of a preset's shape in memory (no file needed); "
                    "--project prints per-layer decode time at 7B..100B shapes and the projected tokens/s.",
        epilog="more: docs/engine.md and docs/benchmarks.md in the bitnet source repository")
    p.add_argument("model_dir", nargs="?", help="model directory, .gguf file or hub id owner/name[@revision]")
    p.add_argument("--shape", help="random weights at a real model's shape (falcon3-1b, falcon3-3b, falcon3-7b, "
                                   "falcon3-10b, llama3-8b, bitnet-2b4t) or a preset's (700m, test-tiny, ...)")
    p.add_argument("--act", choices=["relu2", "silu"], default=None, help="override the preset's hidden_act")
    p.add_argument("--project", action="store_true", help="print the scaling projection table")
    _engine_flags(p)
    p.add_argument("--prompt-len", type=int, default=128,
                   help="tokens prefilled before decode, >= 1: decode attends to prompt-len .. prompt-len + "
                        "decode-len positions (default: 128)")
    p.add_argument("--decode-len", type=int, default=64, help="tokens decoded one at a time, >= 1 (default: 64)")
    a = p.parse_args(argv)
    _check_args(a)
    for flag, v in (("--prompt-len", a.prompt_len), ("--decode-len", a.decode_len)):
        if v < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {v}")
    from . import _C
    from .bench import peak_rss_bytes, project_table, random_model, time_prefill_decode, transparent_hugepage_mode
    from .engine import AUTO_HEAD
    from .loader import auto_weight_format, default_threads

    threads = a.threads if a.threads is not None else default_threads()
    weights = auto_weight_format() if a.weights == "auto" else a.weights
    head = AUTO_HEAD if a.head == "auto" else a.head
    if a.project:
        print(f"# per-layer decode time at real shapes, random ternary weights ({weights}), {threads} threads, "
              f"{head} head, kernels={_C.current_isa()}")
        print(f"{'model':>12} {'layers':>6} {'ternary B':>9} {'ms/layer':>9} {'head ms':>8} {'weights GB':>10} {'tok/s':>7}")
        for r in project_table(threads, head=head, weights=weights):
            print(f"{r['model']:>12} {r['layers']:>6} {r['ternary_params_B']:>9.2f} {r['ms_per_layer']:>9.3f} "
                  f"{r['head_ms']:>8.2f} {r['weight_GB']:>10.2f} {r['tok_s']:>7.2f}")
        return 0
    if (a.model_dir is None) == (a.shape is None):
        p.error("give exactly one of MODEL_DIR or --shape (or --project)")
    t0 = time.perf_counter()
    if a.shape:
        from .bench import shape_config

        overrides = {"hidden_act": a.act} if a.act else {}
        cfg = shape_config(a.shape, **overrides)
        model, vocab, file_bytes = random_model(cfg, threads, head=head, weights=weights, kv_cache=a.kv_cache), cfg.vocab_size, None
        what = f"--shape {a.shape} (random weights, {cfg.hidden_act})"
    else:
        eng = _load(a, threads=threads, head=head, weights=weights)
        model, vocab, file_bytes = eng._model, eng.vocab_size, eng.file_bytes
        what = str(a.model_dir)
    load_s = time.perf_counter() - t0
    r = time_prefill_decode(model, vocab, a.prompt_len, a.decode_len)
    rss = peak_rss_bytes()
    print(f"model: {what}")
    print(f"kernels: {_C.current_isa()}  threads: {threads}  head: {model.head_mode}  weights: {model.weight_format}  "
          f"kv cache: {model.kv_dtype}  huge pages: {transparent_hugepage_mode() or 'n/a'}")
    print(f"load: {load_s:.2f} s")
    print(f"prefill: {r['prefill_tok_s']:.1f} tok/s ({a.prompt_len} tokens)")
    print(f"decode:  {r['decode_tok_s']:.2f} tok/s ({a.decode_len} tokens)")
    line = f"peak RSS: {rss / 1e9:.3f} GB"
    if file_bytes:
        line += f"  (weight files {file_bytes / 1e9:.3f} GB, ratio {rss / file_bytes:.2f})"
    print(line)
    return 0
