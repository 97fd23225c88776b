"""Our C++ engine against the fastest native CPU engines for ternary models (the anchors), in one run.

    ../shared/anchors/build.sh                        # once: llama-bench of each anchor + its GGUF files
    python benchmarks/bench_anchors.py                # 2 interleaved rounds at 1 and 2 threads
    python benchmarks/bench_anchors.py --rounds 3 --threads 2 --heads int8,f16 --depths 128,1024,4096 --json out.json

The anchors (../shared/anchors/README.md) are upstream llama.cpp (TQ2_0), ik_llama.cpp (IQ2_BN,
IQ2_BN_R4) and bitnet.cpp (I2_S), built natively by ``build.sh``, each running the same random
weights with the exact bitnet-b1.58-2B-4T shape in its own best formats (the six GGUF files of
``$ANCHOR_MODELS``). Ours runs a random model of the same shape with ``hidden_act: silu`` (the
anchors' ``bitnet`` graph is SiLU-gated), written once by ``bitnet.export.export_hf`` and loaded by
``Engine`` like any export (``--heads`` / ``--weights`` are passed to it by name, so new head modes
and weight formats need no change here).

Every configuration runs in its own process, in interleaved rounds, at each thread count:
- anchors: ``llama-bench -p 128 -n 64 -r 3`` (pp128: 128 tokens in one batch from an empty cache;
  tg64: 64 tokens one at a time from an empty cache; each the mean of 3 repetitions after a warm-up);
- ours: ``bitnet.inference.bench.time_pp_tg``, which times the same two tests the same way.
The summary keeps each configuration's best round. It prints tok/s, ours against the best anchor for
each measure, the kernels that ran, bytes read per decoded token against the machine's measured read
bandwidth, peak RSS against the weight files, load time, and decode at longer contexts (``--depths``;
the best anchor too where its llama-bench has ``-d``), and then 128-token prefill of each SIMD path
(avx2, avx512, amx; ``--no-mac-bound`` skips it) against that path's int8 multiply-accumulate
bound (``_C.int8_mac_peak``); for avx2, which has no VNNI, also against the ceiling of its product
and accumulate pair (vpmaddubsw + vpaddw, ``accumulate=True``). The machine is shared and noisy:
only ratios from one run mean anything. This is a measurement script, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ANCHORS_DIR = Path(os.environ.get("ANCHORS", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bitnet-anchors"))
WORK = REPO / "out" / "bench_engine"
# Anchor configurations, as ../shared/anchors/bench.sh runs them: label, llama-bench variable of
# env.sh, GGUF file stem in $ANCHOR_MODELS, extra llama-bench arguments.
ANCHORS = (
    ("llama.cpp TQ2_0, Q6_K head", "LLAMA_BENCH_UPSTREAM", "upstream-TQ2_0-q6khead", ("-fa", "1")),
    ("llama.cpp TQ2_0, F16 head", "LLAMA_BENCH_UPSTREAM", "upstream-TQ2_0-f16head", ("-fa", "1")),
    ("ik_llama.cpp IQ2_BN, Q6_K head", "LLAMA_BENCH_IK", "ik-IQ2_BN-q6khead", ("-fa", "1")),
    ("ik_llama.cpp IQ2_BN_R4, Q6_K head", "LLAMA_BENCH_IK", "ik-IQ2_BN_R4-q6khead", ("-fa", "1")),
    ("bitnet.cpp I2_S, Q6_K head", "LLAMA_BENCH_BITNETCPP", "bitnetcpp-I2_S-q6khead", ()),
    ("bitnet.cpp I2_S, F16 head", "LLAMA_BENCH_BITNETCPP", "bitnetcpp-I2_S-f16head", ()),
)
MAC_LOOP_INSTRS = 12  # kernels.h kMacLoopInstrs: independent product instructions per loop iteration
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


# ------------------------------------------------------------------------------------------ machine
def cpu_description(path: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model name (with its family / model numbers where the name alone is vague, as cloud CPUs'
    "AMD EPYC" is), logical CPUs and the flags that decide the kernels (Linux /proc/cpuinfo)."""
    model, flags, n, ids = "unknown", set(), 0, {}
    try:
        for line in path.read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "processor":
                n += 1
            elif key == "model name" and model == "unknown":
                model = val.strip()
            elif key in ("cpu family", "model") and key not in ids:
                ids[key] = val.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(val.split())
    except OSError:
        pass
    if ids:
        model += " (" + ", ".join(f"{'family' if k == 'cpu family' else k} {v}" for k, v in ids.items()) + ")"
    return {"model": model, "logical_cpus": n or os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "flags": {f: f in flags for f in CPU_FLAGS}}


def read_anchor_env(anchors: Path) -> dict[str, str]:
    """The variables ``build.sh`` wrote to ``anchors/env.sh`` (``export NAME=value`` lines).

    Raises:
        FileNotFoundError: no env.sh (the anchors are not built).
    """
    env_sh = anchors / "env.sh"
    if not env_sh.is_file():
        raise FileNotFoundError(f"no {env_sh}: build the anchors first (../shared/anchors/build.sh)")
    env = {}
    for line in env_sh.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            k, _, v = line[len("export "):].partition("=")
            env[k.strip()] = shlex.split(v)[0] if v.strip() else ""
    return env


# ------------------------------------------------------------------------------------------ anchors
def vm_hwm(pid: int | str = "self") -> int | None:
    """Peak resident set size of a live process (VmHWM of /proc/PID/status) in bytes, or None.

    Unlike ``getrusage``'s ru_maxrss, VmHWM belongs to the process's own address space: a child
    started with vfork + exec (as subprocess does) reports its parent's peak in ru_maxrss.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_sampling_rss(cmd: list[str], stderr_path: Path, period_s: float = 0.1) -> tuple[str, int | None, float]:
    """Run ``cmd``; returns (stdout, its peak RSS in bytes, wall seconds). The peak is VmHWM read
    every ``period_s`` while it runs (its last reading, which a peak after it could only miss by
    the final ``period_s``; the engines here reach theirs at load time).

    Raises:
        RuntimeError: non-zero exit (the message names the stderr log).
    """
    t0 = time.perf_counter()
    out_path = stderr_path.with_suffix(".out")
    peak = None
    with open(stderr_path, "w") as err, open(out_path, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=REPO)
        while p.poll() is None:
            peak = vm_hwm(p.pid) or peak
            time.sleep(period_s)
    if p.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited with {p.returncode}; see {stderr_path}")
    return out_path.read_text(), peak, time.perf_counter() - t0


def depth_option(bench_bin: str) -> str | None:
    """How this llama-bench times decode after a context: ``-d`` (upstream: cache depth before each
    test), ``-gp`` (ik_llama.cpp: ``tg N @ pp D``, D prompt tokens untimed, then N timed) or None."""
    try:
        h = subprocess.run([bench_bin, "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    opts = {line.split()[0].rstrip(",") for line in (h.stdout + h.stderr).splitlines() if line.strip().startswith("-")}
    return "-d" if "-d" in opts else "-gp" if "-gp" in opts else None


def llama_bench(bench_bin: str, gguf: Path, threads: int, n_prompt: int, n_gen: int, reps: int,
                extra: tuple[str, ...], log: Path, depth: int = 0, depth_opt: str = "-d") -> dict[str, Any]:
    """One llama-bench process: ``pp_tok_s`` / ``tg_tok_s`` (mean of ``reps``, as it reports them),
    their std, its peak RSS and wall time.

    Raises:
        RuntimeError: llama-bench failed or printed no result for a requested test.
    """
    cmd = [bench_bin, "-m", str(gguf), "-t", str(threads), "-r", str(reps), *extra, "-o", "json"]
    if depth and depth_opt == "-gp":  # tg<n_gen>@pp<depth> only
        cmd += ["-p", "0", "-n", "0", "-gp", f"{depth},{n_gen}"]
    else:
        cmd += ["-p", str(n_prompt), "-n", str(n_gen)] + (["-d", str(depth)] if depth else [])
    out, rss, wall = run_sampling_rss(cmd, log)
    try:
        rows = json.loads(out[out.index("["):])
    except ValueError:
        raise RuntimeError(f"{Path(bench_bin).name}: no JSON result for {gguf.name}; see {log}") from None
    res: dict[str, Any] = {"peak_rss": rss, "wall_s": wall, "file_bytes": gguf.stat().st_size}
    for r in rows:
        kind = "pp" if r.get("n_gen", 0) == 0 else "tg"
        res[f"{kind}_tok_s"], res[f"{kind}_std"] = float(r["avg_ts"]), float(r.get("stddev_ts", 0.0))
        res.setdefault("build", r.get("build_commit"))
    for kind, n in (("pp", n_prompt), ("tg", n_gen)):
        if n and f"{kind}_tok_s" not in res:
            raise RuntimeError(f"{Path(bench_bin).name}: no {kind}{n} result for {gguf.name}; see {log}")
    return res


# ------------------------------------------------------------------------------------------ ours
def build_export(work: Path, max_positions: int, seed: int = 0, gguf: bool = False) -> Path:
    """Write (once) a random 2B4T-shaped SiLU model as our export ``work/hf`` (and, with ``gguf``,
    as ``work/tq2_0-f16head.gguf`` for the llama-cpp-python interoperability check).

    ``max_position_embeddings`` is raised to ``max_positions`` where the longest decode needs it
    (no weight depends on it; llama-bench's ``-d`` extends llama.cpp's context the same way).
    Returns the export directory.
    """
    hf, gg = work / "hf", work / "tq2_0-f16head.gguf"
    need_hf = not hf.is_dir()
    if not need_hf:
        have = json.loads((hf / "config.json").read_text()).get("max_position_embeddings", 0)
        if have < max_positions:
            print(f"{hf}: max_position_embeddings {have} < {max_positions}; rebuilding", flush=True)
            need_hf = True
    need_gguf = gguf and not gg.is_file()
    if not (need_hf or need_gguf):
        return hf
    import torch

    from bitnet.export import export_gguf, export_hf
    from bitnet.model import BitNetConfig, BitNetForCausalLM
    from bitnet.training.tokenizer import train_bpe

    work.mkdir(parents=True, exist_ok=True)
    text = (REPO / ".." / "shared" / "data" / "text" / "tinyshakespeare" / "input.txt").read_text()[:200_000]
    tok = train_bpe([text], vocab_size=1024)
    preset = BitNetConfig.from_preset("bitnet-2b4t")
    cfg = BitNetConfig.from_preset("bitnet-2b4t", hidden_act="silu", bos_token_id=None, eos_token_id=None,
                                   max_position_embeddings=max(preset.max_position_embeddings, max_positions))
    print(f"building a random {cfg.num_parameters() / 1e9:.2f}B-parameter model (bf16) ...", flush=True)
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)  # 4.8 GB instead of 9.6
    try:
        model = BitNetForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    if need_hf:
        t0 = time.perf_counter()
        export_hf(model, hf, tok)
        print(f"export_hf -> {hf}: {time.perf_counter() - t0:.0f} s", flush=True)
    if need_gguf:
        t0 = time.perf_counter()
        export_gguf(model, gg, tok)
        print(f"export_gguf (TQ2_0, F16 head) -> {gg}: {time.perf_counter() - t0:.0f} s", flush=True)
    return hf


def ours_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration of our engine in this (fresh) process: load, pp/tg as llama-bench, peak
    RSS (before any depth test, whose KV cache would count), then decode at each depth."""
    import numpy as np  # noqa: F401  (imported before the timer: part of the import, not the load)

    t0 = time.perf_counter()
    from bitnet.inference import Engine, _C
    from bitnet.inference.bench import peak_rss_bytes, time_pp_tg

    t1 = time.perf_counter()
    if spec.get("isa"):
        _C.set_isa(spec["isa"])
    if spec.get("family"):
        _C.set_kernel_family(spec["family"])
    kw = {"weights": spec["weights"]} if spec.get("weights") else {}
    eng = Engine(spec["model"], threads=spec["threads"], head=spec["head"], **kw)
    t2 = time.perf_counter()
    m, V, C = eng._model, eng.vocab_size, eng.model_config.hidden_size
    res: dict[str, Any] = {"import_s": t1 - t0, "load_s": t2 - t1, "file_bytes": eng.file_bytes,
                           "isa": _C.current_isa(), "head_mode": m.head_mode, "weight_bytes": m.weight_bytes,
                           "vocab": V, "hidden": C, "linear_macs": ternary_macs_per_token(eng.model_config)}
    for obj, attr in ((m, "weight_format"), (eng, "weights")):  # the ternary format, once the engine names it
        if isinstance(getattr(obj, attr, None), str):
            res["weight_format"] = getattr(obj, attr)
    for attr in ("decode_bytes", "head_bytes", "ternary_bytes"):  # exact counts, where the model gives them
        if hasattr(m, attr):
            res[attr] = int(getattr(m, attr))
    if spec["n_prompt"] or spec["n_gen"]:
        res.update(time_pp_tg(m, V, spec["n_prompt"], spec["n_gen"], spec["reps"]))
        res["peak_rss"] = vm_hwm() or peak_rss_bytes()
    res["depth_tg"] = {str(d): time_pp_tg(m, V, 0, spec["n_gen"], spec["depth_reps"], depth=d)["tg_tok_s"]
                       for d in spec.get("depths", ())}
    if spec.get("batch"):  # batched decode steps of 1 and `batch` sequences (bench_paths.batched_steps_ms)
        from bench_paths import batched_steps_ms

        res.update(batched_steps_ms(m, V, spec["batch"], reps=spec["reps"]))
    res["kernel_family"] = _C.kernel_family()
    return res


def ternary_macs_per_token(cfg: Any) -> int:
    """int8 multiply-accumulates of the ternary linears for one token (q, k, v, o, gate, up, down of
    every layer). Prefill adds attention (under 1% at 128 tokens of 2B4T) and one head row for the
    last token only; neither is counted, so the share of the bound below is a slight underestimate."""
    h, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return L * (2 * h * q + 2 * h * kv + 3 * h * f)


# The paths prefill is measured on against their own bound: (isa, kernel family). "auto" on amx: its
# tiles are not an instruction the bound loops time, so it gets no bound.
BOUND_PATHS = (("avx2", "mac"), ("avx2", "lut"), ("avx2", "auto"), ("avxvnni", "mac"), ("avxvnni", "auto"),
               ("avx512", "mac"), ("avx512", "lut"), ("amx", "auto"))
LUT_LANES = 32  # tokens per table row on every lut path (two ymm or one zmm of int16 lanes)
LUT_GROUP = {"i2": 4, "t5": 5}  # weights per table lookup (trits per index byte)


def mac_bound_rows(model: Path, threads: list[int], n_prompt: int, reps: int, rounds: int, logs: Path,
                   batch: int = 8) -> list[dict]:
    """Prefill of each SIMD path (BITNET_ISA and BITNET_KERNEL forced) against its own bound, and its
    batched decode steps of 1 and `batch` sequences. mac: the int8 multiply-accumulate bound of the
    path's product instruction (_C.int8_mac_peak); lut: table lookups/s on an L1-resident table
    (_C.lut_peak) times the products one lookup stands for (lanes x trits per index byte); amx: no
    bound (its tiles are not the product instruction the bound loops time). Both bounds are rates
    per second of the threads' own CPU time (what the cores can do), while prefill is wall time: on
    a shared machine the share comes out low by whatever the other jobs took."""
    from bitnet.inference import _C, available_isas

    paths = [(i, f) for i, f in BOUND_PATHS if i in available_isas()]
    rows = []
    for t in threads:
        for isa, fam in paths:
            best: dict[str, Any] = {}
            for rnd in range(rounds):
                r = run_ours({"model": str(model), "head": "int8", "weights": "", "threads": t, "isa": isa,
                              "family": fam, "n_prompt": n_prompt, "n_gen": 0, "reps": reps, "depth_reps": 1,
                              "depths": [], "batch": batch}, logs / f"macbound-r{rnd}-t{t}-{isa}-{fam}.log")
                if r["pp_tok_s"] > best.get("pp_tok_s", 0.0):
                    best = r
            w = best.get("weight_format", "?")
            row = {"threads": t, "isa": isa, "family": fam, "weights": w, "pp_tok_s": best["pp_tok_s"],
                   "macs_per_s": best["pp_tok_s"] * best["linear_macs"], "linear_macs": best["linear_macs"],
                   "step1_ms": best.get("step1_ms"), f"step{batch}_ms": best.get(f"step{batch}_ms")}
            if fam == "mac":
                row["bound"] = _C.int8_mac_peak(isa, t, 0.5)
            elif fam == "lut" and w in LUT_GROUP:
                row["lookups_per_s"] = _C.lut_peak(isa, t, 0.5)
                row["bound"] = row["lookups_per_s"] * LUT_LANES * LUT_GROUP[w]
            if isa == "avx2" and fam == "mac":  # no VNNI: every product also costs an add; the pair's own ceiling
                row["acc_ceiling"] = _C.int8_mac_peak(isa, t, 0.5, accumulate=True)
            rows.append(row)
            print(f"[bound, {t} thr] {isa}:{fam:<5} pp{n_prompt} {row['pp_tok_s']:7.1f} tok/s" +
                  (f", bound {row['bound'] / 1e9:.0f} G MAC/s" if "bound" in row else "") +
                  (f", product + add {row['acc_ceiling'] / 1e9:.0f} G MAC/s" if "acc_ceiling" in row else "") +
                  (f", steps of 1 / {batch}: {row['step1_ms']:.1f} / {row[f'step{batch}_ms']:.1f} ms"
                   if row.get("step1_ms") else ""), flush=True)
    return rows


def print_mac_bound(rows: list[dict], n_prompt: int) -> None:
    if not rows:
        return
    print(f"\n## prefill (pp{n_prompt}) against each kernel family's bound")
    print(f"mac bound: every thread runs {MAC_LOOP_INSTRS} independent product instructions on registers only "
          f"(avx512: vpdpbusd zmm, 64 MACs each; avxvnni: vpdpbusd ymm, 32; avx2: vpmaddubsw ymm, 32 MACs each), "
          f"best of 3 timed rounds (bitnet.inference._C.int8_mac_peak); work: {rows[0]['linear_macs'] / 1e9:.3f} G MAC "
          f"per token in the ternary linears (attention and the head's last row not counted)")
    if any(r.get("family") == "lut" for r in rows):
        print("lut bound: every thread runs the lut kernels' inner step (an index byte, a table row added into an "
              "int16 accumulator) on an L1-resident table (_C.lut_peak), in lookups/s times the products one lookup "
              "stands for (32 tokens x 4 (i2) or 5 (t5) weights), as G MAC/s")
    if any("acc_ceiling" in r for r in rows):
        print("avx2 has no VNNI: its kernels add every vpmaddubsw result into an accumulator (vpaddw). 'product + "
              "add' times that pair the same way (registers only, nothing loaded): the most an AVX2 kernel can "
              "reach on this CPU, as G MAC/s and as a share of the bound")
    print(f"{'threads':>7} {'kernels':<11} {'weights':<7} {'pp tok/s':>9} {'G MAC/s':>8} {'bound':>7} {'share':>6} "
          f"{'product + add':>13} {'of bound':>8}")
    for r in rows:
        bound = f"{r['bound'] / 1e9:7.0f} {r['macs_per_s'] / r['bound'] * 100:5.0f}%" if "bound" in r else f"{'-':>7} {'-':>6}"
        ceil = (f"{r['acc_ceiling'] / 1e9:13.0f} {r['acc_ceiling'] / r['bound'] * 100:7.0f}%" if "acc_ceiling" in r
                else f"{'-':>13} {'-':>8}")
        name = f"{r['isa']}:{r['family']}" if r.get("family") else r["isa"]
        print(f"{r['threads']:>7} {name:<11} {r['weights']:<7} {r['pp_tok_s']:9.1f} {r['macs_per_s'] / 1e9:8.0f} {bound} "
              f"{ceil}")
    steps = [r for r in rows if r.get("step1_ms")]
    if steps:
        nb = next(int(k[4:-3]) for k in steps[0] if k.startswith("step") and k != "step1_ms")
        print(f"\n## batched decode steps per path (forward_batch, one token per sequence, 64 positions cached)")
        print(f"{'threads':>7} {'kernels':<11} {'1 seq ms':>9} {f'{nb} seq ms':>9} {'ratio':>6}")
        for r in steps:
            sb = r[f"step{nb}_ms"]
            print(f"{r['threads']:>7} {r['isa'] + ':' + r['family']:<11} {r['step1_ms']:9.1f} {sb:9.1f} "
                  f"{sb / r['step1_ms']:6.2f}")


def run_ours(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    out, _, wall = run_sampling_rss([sys.executable, __file__, "--worker", json.dumps(spec)], log)
    r = json.loads(out.strip().splitlines()[-1])
    r["wall_s"] = wall
    return r


def bytes_per_token(r: dict[str, Any]) -> tuple[int, int | None]:
    """(weight bytes read per decoded token, of which the head) for one of our results.

    ``Model.weight_bytes`` counts the repacked ternary weights plus the int8 head where one is built;
    the 16-bit head is a copy of the (vocab, hidden) table outside that count. Models that report
    ``decode_bytes`` / ``head_bytes`` themselves are taken at their word. The per-token embedding
    row, norms and KV cache are left out (under 1 MB per token at these lengths).
    """
    if "decode_bytes" in r:
        return r["decode_bytes"], r.get("head_bytes")
    f16_head = 2 * r["vocab"] * r["hidden"]
    if r["head_mode"] == "f16":
        return r["weight_bytes"] + f16_head, f16_head
    return r["weight_bytes"], r.get("head_bytes")


# ------------------------------------------------------------------------------------------ report
def summarize(rounds: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Best round per configuration: pp and tg each at its best, load time at its least."""
    best: dict[str, dict[str, Any]] = {}
    for rnd in rounds:
        for name in names:
            r = rnd.get(name)
            if r is None:
                continue
            b = best.setdefault(name, dict(r))
            for k in ("pp_tok_s", "tg_tok_s"):
                if k in r:
                    b[k] = max(b.get(k, 0.0), r[k])
            if "load_s" in r:
                b["load_s"] = min(b["load_s"], r["load_s"])
    return best


def print_report(res: dict[str, Any]) -> None:
    mach, n_p, n_g = res["machine"], res["n_prompt"], res["n_gen"]
    fl = mach["flags"]
    print(f"\n# machine: {mach['model']}, {mach['usable_cpus']} usable CPUs; "
          f"AVX-512 VNNI {'yes' if fl['avx512_vnni'] else 'no'}, AMX {'yes' if fl['amx_int8'] else 'no'}, "
          f"AVX2 {'yes' if fl['avx2'] else 'no'}; huge pages: {res['thp']}")
    print(f"# best of {res['rounds']} interleaved rounds; every figure a mean of {res['reps']} repetitions after a "
          f"warm-up (llama-bench -r {res['reps']}); pp{n_p}: {n_p} tokens at once from an empty cache, "
          f"tg{n_g}: {n_g} tokens one at a time from an empty cache")
    for t, per in res["threads"].items():
        best, bw = per["best"], per["read_bandwidth"]
        print(f"\n## {t} thread{'s' if t != '1' else ''}")
        print(f"{'engine':<40} {'pp' + str(n_p) + ' tok/s':>12} {'tg' + str(n_g) + ' tok/s':>11} "
              f"{'peak RSS GB':>11} {'files GB':>8} {'RSS/files':>9} {'load s':>6}")
        for name, r in best.items():
            rss, fb = r.get("peak_rss"), r.get("file_bytes")
            load = f"{r['load_s']:6.2f}" if "load_s" in r else f"{'-':>6}"
            print(f"{name:<40} {r.get('pp_tok_s', float('nan')):>12.1f} {r.get('tg_tok_s', float('nan')):>11.2f} "
                  f"{rss / 1e9 if rss else float('nan'):>11.3f} {fb / 1e9 if fb else float('nan'):>8.3f} "
                  f"{rss / fb if rss and fb else float('nan'):>9.2f} {load}")
        anchors = {n: r for n, r in best.items() if not n.startswith("ours")}
        ours = {n: r for n, r in best.items() if n.startswith("ours")}
        if anchors:
            bp = max(anchors, key=lambda n: anchors[n].get("pp_tok_s", 0.0))
            bt = max(anchors, key=lambda n: anchors[n].get("tg_tok_s", 0.0))
            print(f"best anchor: prefill {bp} ({anchors[bp]['pp_tok_s']:.1f}), decode {bt} ({anchors[bt]['tg_tok_s']:.2f})")
            for n, r in ours.items():
                print(f"{n} / best anchor: prefill {r['pp_tok_s'] / anchors[bp]['pp_tok_s']:.2f}x, "
                      f"decode {r['tg_tok_s'] / anchors[bt]['tg_tok_s']:.2f}x")
        print(f"read bandwidth ({t} threads, best of the run; it ranged {min(per['bandwidths']) / 1e9:.1f}-"
              f"{bw / 1e9:.1f} GB/s): {bw / 1e9:.1f} GB/s")
        for n, r in ours.items():
            total, head = bytes_per_token(r)
            got = total * r["tg_tok_s"]
            head_s = f" (head {head / 1e9:.3f})" if head is not None else ""
            fmt = f", weights {r['weight_format']}" if "weight_format" in r else ""
            print(f"{n}: kernels {r['isa']}, head {r['head_mode']}{fmt}; reads {total / 1e9:.3f} GB/token{head_s} -> "
                  f"{got / 1e9:.1f} GB/s at decode = {got / bw * 100:.0f}% of the read bandwidth; "
                  f"import {r['import_s']:.2f} s + load {r['load_s']:.2f} s")
        if per.get("depth"):
            ds = sorted({int(d) for r in per["depth"].values() for d in r})
            print(f"decode tok/s ({n_g} tokens) after a context of " + ", ".join(map(str, ds)) + " tokens:")
            for n, r in per["depth"].items():
                print(f"  {n:<38} " + "  ".join(f"{r.get(str(d), float('nan')):7.2f}" for d in ds))


# ------------------------------------------------------------------------------------------ main
def parse_list(text: str, kind: type = str) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (the best of them is kept)")
    p.add_argument("--reps", type=int, default=3, help="repetitions inside each measurement (llama-bench -r)")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-len", type=int, default=64)
    p.add_argument("--heads", default="int8,f16", help="our head modes, passed to Engine(head=...) by name")
    p.add_argument("--weights", default="", help="our ternary weight formats, passed to Engine(weights=...) by name "
                                                 "(default: the engine's own choice)")
    p.add_argument("--depths", default="128,1024,4096", help="decode after a context of these lengths ('' skips)")
    p.add_argument("--depth-reps", type=int, default=2, help="timed repetitions at each depth")
    p.add_argument("--no-mac-bound", action="store_true",
                   help="skip prefill of each SIMD path (avx2, avx512, amx) against its int8 multiply-accumulate bound")
    p.add_argument("--no-anchor-depth", action="store_true", help="skip llama-bench -d for the best anchor")
    p.add_argument("--anchors", type=Path, default=ANCHORS_DIR, help="where build.sh put the anchors")
    p.add_argument("--only-anchors", default="", help="comma-separated GGUF stems to run (default: all six; "
                                                      "'none' runs ours alone)")
    p.add_argument("--work", type=Path, default=WORK, help="where our export is built (once)")
    p.add_argument("--model", type=Path, default=None, help="our export to run instead of building one")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.worker:
        print(json.dumps(ours_worker(json.loads(a.worker))))
        return 0
    from bitnet.inference import HEAD_MODES, Engine, _C
    from bitnet.inference.bench import transparent_hugepage_mode

    threads, heads, weights = parse_list(a.threads, int), parse_list(a.heads), parse_list(a.weights) or [""]
    depths = parse_list(a.depths, int)
    if bad := [h for h in heads if h not in HEAD_MODES]:
        raise ValueError(f"--heads: {bad} not among the engine's head modes {HEAD_MODES}")
    import inspect

    if weights != [""] and "weights" not in inspect.signature(Engine).parameters:
        raise ValueError("--weights: this Engine takes no weights= option yet")
    import bitnet.inference.loader as loader

    formats = getattr(loader, "WEIGHT_FORMATS", None)
    if formats and (bad := [w for w in weights if w and w not in formats]):
        raise ValueError(f"--weights: {bad} not among the engine's weight formats {formats}")
    only = set(parse_list(a.only_anchors))
    anchors = [x for x in ANCHORS if not only or x[2] in only]
    env = read_anchor_env(a.anchors) if anchors else {}
    models = Path(env.get("ANCHOR_MODELS", "."))
    for _, var, stem, _ in anchors:
        for f in (Path(env[var]), models / f"{stem}.gguf"):
            if not f.exists():
                raise FileNotFoundError(f"missing {f}: rerun ../shared/anchors/build.sh")
    model = a.model or build_export(a.work, max(depths, default=0) + a.decode_len)
    logs = a.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    ours = [(f"ours, {h} head" + (f", {w} weights" if w else ""), h, w) for w in weights for h in heads]
    # Interleave ours with the anchors so that no engine always runs after the same one.
    order: list[tuple[str, Any]] = []
    for i in range(max(len(ours), len(anchors))):
        order += [("ours", ours[i])] if i < len(ours) else []
        order += [("anchor", anchors[i])] if i < len(anchors) else []
    names = [o[1][0] for o in order]
    res: dict[str, Any] = {"machine": cpu_description(), "thp": transparent_hugepage_mode() or "n/a",
                           "rounds": a.rounds, "reps": a.reps, "n_prompt": a.prompt_len, "n_gen": a.decode_len,
                           "depths": depths, "anchors_dir": str(a.anchors), "model": str(model), "threads": {}}
    raw = {t: [] for t in threads}
    bws = {t: [] for t in threads}
    depth_raw: dict[int, dict[str, list[dict[str, float]]]] = {t: {} for t in threads}
    for rnd in range(a.rounds):
        for t in threads:
            got: dict[str, Any] = {}
            for kind, cfg in order:
                name = cfg[0]
                log = logs / f"r{rnd}-t{t}-{name.replace(' ', '_').replace(',', '')}.log"
                if kind == "anchor":
                    _, var, stem, extra = cfg
                    r = llama_bench(env[var], models / f"{stem}.gguf", t, a.prompt_len, a.decode_len, a.reps, extra, log)
                else:
                    _, head, w = cfg
                    r = run_ours({"model": str(model), "head": head, "weights": w, "threads": t,
                                  "n_prompt": a.prompt_len, "n_gen": a.decode_len, "reps": a.reps,
                                  "depth_reps": a.depth_reps, "depths": depths if cfg is ours[0] else []}, log)
                    if r["depth_tg"]:
                        depth_raw[t].setdefault(name, []).append(r["depth_tg"])
                got[name] = r
                print(f"[round {rnd + 1}, {t} thr] {name:<40} pp{a.prompt_len} {r['pp_tok_s']:7.1f}  "
                      f"tg{a.decode_len} {r['tg_tok_s']:6.2f} tok/s" +
                      (f"  depth tg {r['depth_tg']}" if r.get("depth_tg") else ""), flush=True)
            raw[t].append(got)
            bws[t].append(_C.read_bandwidth(1 << 30, t, 3))
    for t in threads:
        best = summarize(raw[t], names)
        per: dict[str, Any] = {"best": best, "bandwidths": bws[t], "read_bandwidth": max(bws[t]), "rounds": raw[t],
                               "depth": {n: {d: max(x[d] for x in xs) for d in xs[0]} for n, xs in depth_raw[t].items()}}
        anchor_best = [n for n in best if not n.startswith("ours")]
        if depths and anchor_best and not a.no_anchor_depth:
            bt = max(anchor_best, key=lambda n: best[n]["tg_tok_s"])
            _, var, stem, extra = next(x for x in anchors if x[0] == bt)
            if opt := depth_option(env[var]):
                per["depth"][bt] = {}
                for d in depths:
                    log = logs / f"depth{d}-t{t}-{stem}.log"
                    r = llama_bench(env[var], models / f"{stem}.gguf", t, 0, a.decode_len, a.depth_reps, extra, log,
                                    depth=d, depth_opt=opt)
                    per["depth"][bt][str(d)] = r["tg_tok_s"]
                    print(f"[depth {d}, {t} thr] {bt:<40} tg{a.decode_len} {r['tg_tok_s']:6.2f} tok/s", flush=True)
            else:
                print(f"# the llama-bench of {bt} has neither -d nor -gp: no anchor figures at depth")
        res["threads"][str(t)] = per
    if not a.no_mac_bound and a.prompt_len:
        res["mac_bound"] = mac_bound_rows(model, threads, a.prompt_len, a.reps, a.rounds, logs)
    print_report(res)
    print_mac_bound(res.get("mac_bound", []), a.prompt_len)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
