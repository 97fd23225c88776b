"""Measure which kernel family (mac or lut) each path should run per shape class; optionally write
the choice into the engine (inference/csrc/kernel_choice.h, compiled in; rebuild after writing).

    python benchmarks/calibrate_kernels.py                 # print the measurements and the choice
    python benchmarks/calibrate_kernels.py --write         # ... and rewrite kernel_choice.h
    python benchmarks/calibrate_kernels.py --isas avx2,avxvnni   # only these paths

For every path this CPU runs (avx2, avxvnni, avx512, amx; neon on ARM) and both weight layouts (i2, t5), it
times one layer's ternary products at the exact bitnet-b1.58-2B-4T shapes (q, k, v, o 2560-wide,
gate / up 6912 x 2560, down 2560 x 6912; ``_C.time_ternary_product``, which splits row blocks
over the threads as the engine does, timed in the threads' CPU time) through the mac and the lut
kernel, the two alternating
inside each round (the machine may be shared: drift hits both alike), at token counts standing for
each shape class (1; 2 and 8; 16 and 32; 128). A class runs lut where its summed best-of-rounds
time beats mac's by more than --margin; otherwise mac. --write replaces the rows of the paths it
measured and keeps the others (measured on another machine) with their measurements. A
measurement script, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHOICE_H = REPO / "inference" / "csrc" / "kernel_choice.h"
# (out, in, count per layer) of 2B4T's linears: q and o, k and v, gate and up, down.
LAYER = ((2560, 2560, 2), (640, 2560, 2), (6912, 2560, 2), (2560, 6912, 1))
CLASSES = ((1,), (2, 8), (16, 32), (128,))  # token counts timed for shape classes 0..3
LABELS = ("1", "2-8", "9-32", ">32")
PATHS = ("avx2", "avxvnni", "avx512", "amx", "neon")  # the paths with lut kernels, in kernel_choice.h's order
ROW = re.compile(r'^\s*\{"(\w+)", (0x[0-9a-f]+), (0x[0-9a-f]+)\},\s*$')


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def layer_s(_C, isa: str, family: str, weights: str, T: int, threads: int, reps: int) -> float:
    """One layer's products in the threads' CPU time per thread (cpu=True): a product's cost does not
    depend on how often other jobs took the cores away meanwhile, as wall time does on a shared machine."""
    return sum(n * _C.time_ternary_product(isa, family, weights, o, i, T, threads, reps, cpu=True)
               for o, i, n in LAYER)


def measure(isas: list[str], threads: int, rounds: int, reps: int) -> dict:
    from bitnet.inference import _C

    best: dict = {}
    for rnd in range(rounds):
        for isa in isas:
            for w in ("i2", "t5"):
                for c, Ts in enumerate(CLASSES):
                    for T in Ts:
                        for fam in ("mac", "lut"):
                            s = layer_s(_C, isa, fam, w, T, threads, reps)
                            key = (isa, w, c, T, fam)
                            best[key] = min(best.get(key, s), s)
        print(f"round {rnd + 1}/{rounds} done", file=sys.stderr, flush=True)
    return best


def choose(best: dict, isas: list[str], margin: float) -> dict[tuple[str, str], int]:
    bits = {}
    for isa in isas:
        for w in ("i2", "t5"):
            mask = 0
            for c, Ts in enumerate(CLASSES):
                mac = sum(best[(isa, w, c, T, "mac")] for T in Ts)
                lut = sum(best[(isa, w, c, T, "lut")] for T in Ts)
                if lut < mac * (1 - margin):
                    mask |= 1 << c
            bits[(isa, w)] = mask
    return bits


def report(best: dict, bits: dict, isas: list[str]) -> list[str]:
    lines = [f"{'path':<8} {'layout':<6} {'class':<5} {'T':>4} {'mac ms':>8} {'lut ms':>8} {'lut/mac':>8}  choice"]
    for isa in isas:
        for w in ("i2", "t5"):
            for c, Ts in enumerate(CLASSES):
                for T in Ts:
                    mac, lut = best[(isa, w, c, T, "mac")], best[(isa, w, c, T, "lut")]
                    pick = "lut" if (bits[(isa, w)] >> c) & 1 else "mac"
                    lines.append(f"{isa:<8} {w:<6} {LABELS[c]:<5} {T:>4} {1e3 * mac:8.2f} {1e3 * lut:8.2f} "
                                 f"{lut / mac:8.2f}  {pick}")
    return lines


def kept_from(old: str, isas: list[str]) -> tuple[list[str], list[str]]:
    """The rows of kernel_choice.h's text ``old`` for paths not in ``isas`` (measured elsewhere), and
    the comment lines behind them: each earlier "Measured on" line with those paths' table lines."""
    rows = [ln.strip() for ln in old.splitlines() if (m := ROW.match(ln)) and m.group(1) not in isas]
    notes: list[str] = []
    heading = None
    for ln in old.split("#pragma once")[0].splitlines():
        if ln.startswith("// Measured on"):
            heading = ln
        elif heading and ln.startswith("//   ") and (path := ln[5:].split(" ", 1)[0]) in PATHS and path not in isas:
            if heading not in notes:
                notes.append(heading)
            notes.append(ln)
    return rows, notes


def write_header(bits: dict, isas: list[str], lines: list[str], threads: int, rounds: int) -> None:
    kept_rows, kept_notes = kept_from(CHOICE_H.read_text() if CHOICE_H.exists() else "", isas)
    table = "\n".join(f"//   {ln}" for ln in lines)
    if kept_notes:
        table += "\n// Kept from earlier runs (paths not measured in this one):\n" + "\n".join(kept_notes)
    new_rows = [f'{{"{isa}", 0x{bits[(isa, "i2")]:x}, 0x{bits[(isa, "t5")]:x}}},' for isa in isas]
    order = {p: i for i, p in enumerate(PATHS)}
    rows = "\n".join("    " + r for r in sorted(new_rows + kept_rows, key=lambda r: order.get(ROW.match(r).group(1), 99)))
    text = f"""// Which kernel family runs each shape class, per path: measured, not guessed. Written by
// `python benchmarks/calibrate_kernels.py --write` (one 2B4T layer's ternary products, mac and lut
// interleaved, best of {rounds} rounds, {threads} threads, CPU time; a class's bit is set where lut beat mac by
// more than the margin); dispatch.cpp copies the bits into each path's kernel table. Paths not
// listed run mac everywhere.
// Measured on {cpu_name()}, {datetime.date.today().isoformat()} (one layer, ms):
{table}
#pragma once
#include <cstdint>

namespace bitnet {{

struct KernelChoice {{
  const char* isa;
  uint8_t lut_i2, lut_t5;  // bit c: shape class c (kernels.h shape_class) runs the lut kernel
}};

constexpr KernelChoice kKernelChoice[] = {{
{rows}
}};

}}  // namespace bitnet
"""
    tmp = CHOICE_H.with_suffix(".h.tmp")
    tmp.write_text(text)
    tmp.replace(CHOICE_H)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="timed calls per measurement (best kept)")
    p.add_argument("--margin", type=float, default=0.05, help="lut must be this much faster to be chosen")
    p.add_argument("--isas", default=None, metavar="A,B",
                   help=f"comma-separated paths to measure (default: every one of {', '.join(PATHS)} this CPU runs)")
    p.add_argument("--write", action="store_true",
                   help=f"rewrite {CHOICE_H.relative_to(REPO)} (the rows of paths not measured are kept)")
    a = p.parse_args(argv)
    from bitnet.inference import available_isas

    runnable = [i for i in PATHS if i in available_isas()]
    if a.isas is None:
        isas = runnable
    else:
        isas = [i.strip() for i in a.isas.split(",") if i.strip()]
        bad = [i for i in isas if i not in runnable]
        if bad or not isas:
            p.error(f"--isas: {', '.join(bad) or 'empty'} not measurable here (paths with lut kernels this CPU runs: "
                    f"{', '.join(runnable) or 'none'})")
    if not isas:
        print("no SIMD path with lut kernels on this CPU: nothing to calibrate")
        return 0
    best = measure(isas, a.threads, a.rounds, a.reps)
    bits = choose(best, isas, a.margin)
    lines = report(best, bits, isas)
    print(f"{cpu_name()}, {a.threads} threads, best of {a.rounds} interleaved rounds, one 2B4T layer")
    print("\n".join(lines))
    if a.write:
        write_header(bits, isas, lines, a.threads, a.rounds)
        print(f"wrote {CHOICE_H}; rebuild the engine (pip install -e .) to use it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
