"""Our C++ engine against the native anchors; the llama-cpp-python interoperability check.

    python benchmarks/bench_engine.py                      # = benchmarks/bench_anchors.py (all its options)
    python benchmarks/bench_engine.py --interop            # llama.cpp (llama-cpp-python) runs our GGUF export
    python benchmarks/bench_engine.py --head-accuracy      # the int8 head's accuracy cost (trains a small model)

The performance comparison is ``bench_anchors.py``: our engine and native llama-bench builds of
upstream llama.cpp, ik_llama.cpp and bitnet.cpp (../shared/anchors) in one run, interleaved, at 1
and 2 threads. ``--interop`` only checks that upstream llama.cpp, through llama-cpp-python, loads and
runs our GGUF export (TQ2_0, F16 head) of the same random 2B4T-shaped model, and prints both engines'
tok/s on that path: ``Llama.eval`` from Python, one call per decoded token, is not llama-bench's
measurement and is no performance claim. This is a measurement script, not a test.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_anchors  # noqa: E402


def interop_worker(kind: str, path: str, threads: int, prompt_len: int, decode_len: int) -> dict:
    """One engine in this (fresh) process: prefill ``prompt_len`` tokens, then decode greedily."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=prompt_len).astype(np.int32)  # ids of real (non-UNUSED) tokens
    if kind == "ours":
        from bitnet.inference import Engine
        from bitnet.inference.bench import time_prefill_decode

        eng = Engine(path, threads=threads, head="f16")
        return time_prefill_decode(eng._model, eng.vocab_size, prompt_len, decode_len)
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=prompt_len + decode_len + 8,
                n_batch=prompt_len, n_ubatch=prompt_len, verbose=False)
    t1 = time.perf_counter()
    llm.eval(ids.tolist())
    t2 = time.perf_counter()

    def last_logits() -> np.ndarray:  # llama-cpp-python keeps only the last row without logits_all
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

    nxt = int(np.argmax(last_logits()))
    for _ in range(decode_len):
        llm.eval([nxt])
        nxt = int(np.argmax(last_logits()))
    t3 = time.perf_counter()
    return {"prefill_tok_s": prompt_len / (t2 - t1), "decode_tok_s": decode_len / (t3 - t2)}


def interop(work: Path, threads: int, prompt_len: int, decode_len: int) -> None:
    """Build (once) our export and GGUF export of the random 2B4T-shaped model; run each in its engine."""
    hf = bench_anchors.build_export(work, 4096 + decode_len, gguf=True)  # the export bench_anchors uses
    for kind, path in (("ours", hf), ("llama", work / "tq2_0-f16head.gguf")):
        cmd = [sys.executable, __file__, "--interop-worker", kind, str(path), str(threads), str(prompt_len), str(decode_len)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout.splitlines()[-1])
        name = "ours (export_hf, 16-bit head)" if kind == "ours" else "llama-cpp-python (export_gguf TQ2_0, F16 head)"
        print(f"{name:<48} prefill {r['prefill_tok_s']:7.1f} tok/s  decode {r['decode_tok_s']:6.2f} tok/s "
              f"(Python per-token path, {threads} threads)", flush=True)
    print("llama.cpp loaded and ran our GGUF export; for speed see benchmarks/bench_anchors.py (native llama-bench)")


def head_accuracy(threads: int, steps: int = 300) -> None:
    """Train a small BitNet on Shakespeare, export it, and compare the int8 head with the 16-bit one
    on held-out text: top-1 agreement and perplexity."""
    import tempfile

    import torch

    from bitnet.export import export_hf
    from bitnet.inference import Engine
    from bitnet.model import BitNetConfig, BitNetForCausalLM
    from bitnet.training.tokenizer import train_bpe

    text = (REPO / ".." / "shared" / "data" / "text" / "tinyshakespeare" / "input.txt").read_text()
    split = int(len(text) * 0.9)
    tok = train_bpe([text[:split]], vocab_size=2048)
    train = torch.tensor(tok.encode(text[:split]).ids)
    held = tok.encode(text[split:]).ids
    cfg = BitNetConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=True, hidden_act="relu2")
    torch.manual_seed(0)
    model = BitNetForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        starts = torch.randint(0, len(train) - 129, (16,), generator=g)
        batch = torch.stack([train[s : s + 129] for s in starts])
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {steps} steps, last train loss {loss.item():.3f}")
    model.eval()
    with tempfile.TemporaryDirectory() as d:
        out = export_hf(model, Path(d) / "exp", tok)
        res = {}
        for head in ("f16", "int8"):
            eng = Engine(out, threads=threads, head=head)
            nll, top1 = [], []
            for s in range(0, min(len(held) - 257, 256 * 40), 256):
                chunk = held[s : s + 257]
                lg = eng.logits(chunk[:-1]).astype(np.float64)  # (256, V)
                lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
                nll.append(lse - lg[np.arange(256), chunk[1:]])
                top1.append(lg.argmax(-1))
            res[head] = (np.concatenate(nll), np.concatenate(top1))
    agree = (res["f16"][1] == res["int8"][1]).mean()
    ppl = {h: float(np.exp(res[h][0].mean())) for h in res}
    print(f"held-out tokens: {res['f16'][0].size}")
    print(f"top-1 agreement int8 vs f16 head: {agree * 100:.2f}%")
    print(f"perplexity: f16 head {ppl['f16']:.3f}, int8 head {ppl['int8']:.3f} "
          f"({(ppl['int8'] / ppl['f16'] - 1) * 100:+.3f}%)")


def main() -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--interop", action="store_true", help="llama-cpp-python runs our GGUF export (interoperability)")
    own.add_argument("--head-accuracy", action="store_true", help="measure the int8 head's accuracy cost")
    own.add_argument("--interop-worker", nargs=5, help=argparse.SUPPRESS)
    a, rest = own.parse_known_args()
    if a.interop_worker:
        kind, path, threads, pl, dl = a.interop_worker
        print(json.dumps(interop_worker(kind, path, int(threads), int(pl), int(dl))))
        return 0
    if a.interop or a.head_accuracy:
        p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--prompt-len", type=int, default=128)
        p.add_argument("--decode-len", type=int, default=64)
        p.add_argument("--work", type=Path, default=bench_anchors.WORK)
        b = p.parse_args(rest)
        if a.head_accuracy:
            head_accuracy(b.threads)
        else:
            interop(b.work, b.threads, b.prompt_len, b.decode_len)
        return 0
    if "-h" in rest or "--help" in rest:
        print("bench_engine.py [--interop | --head-accuracy] [--threads N] ...; otherwise bench_anchors.py:\n")
    return bench_anchors.main(rest)


if __name__ == "__main__":
    sys.exit(main())
