"""One path's multiply-accumulate ternary products per token count, against that path's int8 bound.

    python benchmarks/bench_mac_kernels.py                        # avx512, i2 and t5, T = 1 2 8 16 32 128
    python benchmarks/bench_mac_kernels.py --isa avx2 --tokens 1,8 --threads 1

Times one bitnet-b1.58-2B-4T layer's ternary products (q, k, v, o, gate, up, down at their exact
shapes; ``_C.time_ternary_product``, row blocks split over the threads as the engine splits them,
the threads' CPU time: robust where other jobs share the cores) through the path's mac kernel, for
each layout and token count, best of ``--rounds`` interleaved rounds, and prints the layer's
milliseconds and its share of the int8 multiply-accumulate bound measured in the same run
(``_C.int8_mac_peak``: the product instruction on registers only). ``--so`` times another build of
the engine's extension module (a saved ``_C*.so``) in this process's place, for before/after tables
(run the two builds in alternating processes). A measurement script, not a test.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

# (out, in, count per layer) of 2B4T's linears: q and o, k and v, gate and up, down.
LAYER = ((2560, 2560, 2), (640, 2560, 2), (6912, 2560, 2), (2560, 6912, 1))
LAYER_MACS = sum(o * i * n for o, i, n in LAYER)  # weight-activation products per token


def load_engine(so: str) -> ModuleType:
    """The engine's extension module: the installed one, or the build at path ``so``."""
    if not so:
        from bitnet.inference import _C

        return _C
    loader = importlib.machinery.ExtensionFileLoader("_C", so)
    spec = importlib.util.spec_from_loader("_C", loader)
    if spec is None:
        raise SystemExit(f"{so}: not an extension module")
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--isa", default="avx512")
    p.add_argument("--weights", default="i2,t5", help="layouts, comma-separated")
    p.add_argument("--tokens", default="1,2,8,16,32,128", help="token counts, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--so", default="", help="time this build of the extension module instead")
    a = p.parse_args(argv)
    _C = load_engine(a.so)
    if a.isa not in _C.available_isas():
        print(f"path {a.isa} does not run here (available: {', '.join(_C.available_isas())})")
        return 0
    Ts = [int(t) for t in a.tokens.split(",")]
    layouts = a.weights.split(",")
    best: dict[tuple[str, int], float] = {}
    peak = 0.0
    for _ in range(a.rounds):
        peak = max(peak, _C.int8_mac_peak(a.isa, a.threads, 0.3))
        for w in layouts:
            for T in Ts:
                s = sum(n * _C.time_ternary_product(a.isa, "mac", w, o, i, T, a.threads, 3, cpu=True) for o, i, n in LAYER)
                best[(w, T)] = min(best.get((w, T), s), s)
    print(f"{a.isa} mac, one 2B4T layer, {a.threads} threads, CPU time, best of {a.rounds} interleaved rounds; "
          f"bound {peak / 1e9:.0f} G MAC/s")
    print(f"{'layout':<7}" + "".join(f"{'T=' + str(T):>14}" for T in Ts))
    for w in layouts:
        cells = [f"{1e3 * best[(w, T)]:6.2f} ms {LAYER_MACS * T / best[(w, T)] / peak * 100:3.0f}%" for T in Ts]
        print(f"{w:<7}" + "".join(f"{c:>14}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
