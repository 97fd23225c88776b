"""The activation quantizer never emits -128 (every path): the int8 heads rely on x in [-127, 127]
(kernels.h, head_i8): AVX2's sign trick negates x by vpsignb, which turns -128 into -128, and its
int16 bound |e x| <= 127 * 127 needs it. Absmax scaling maps -max|x| to -127 exactly; this pins that
for finite inputs of every magnitude, the largest one negative, ties and all-equal rows included."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import every_isa

from bitnet.inference import _C

ISAS = every_isa()  # the ones this CPU cannot run are skipped with the reason (conftest.py)


def _adversarial_rows(rng: np.random.Generator) -> np.ndarray:
    rows = []
    for e in range(-38, 37, 2):  # magnitudes 1e-38 .. 1e36 (finite), the row's largest |x| negative
        r = (rng.standard_normal(333) * 10.0**e).astype(np.float32)
        r[rng.integers(333)] = -np.float32(4 * 10.0**e)
        rows.append(r)
    rows.append(np.full(333, -7.25, np.float32))             # every element at -max|x|
    rows.append(np.full(333, -3.0e38, np.float32))           # near float32's largest
    rows.append(np.full(333, -1e-40, np.float32))            # subnormal, under the eps clamp
    rows.append(-np.arange(333, dtype=np.float32) / 332.0)   # a ramp down to exactly -1
    rows.append(np.linspace(-1.0, 1.0, 333, dtype=np.float32) * np.float32(1 + 2**-23))
    return np.stack(rows)


@pytest.mark.parametrize("isa", ISAS)
def test_quantized_activations_stay_within_127(isa):
    rng = np.random.default_rng(21)
    x = _adversarial_rows(rng)
    # and random rows, each with its own scale and its largest |x| at either sign
    scales = (10.0 ** rng.uniform(-30, 30, size=2000)).astype(np.float32)[:, None]
    y = (rng.standard_normal((2000, 333)).astype(np.float32) * scales).astype(np.float32)
    x = np.concatenate([x, y])
    q, _ = _C.quantize_rows(isa, x)
    assert q.min() >= -127 and q.max() <= 127
    amax = np.abs(x).max(axis=1)
    big = amax >= 1e-5  # below ACT_EPS the scale is clamped and nothing reaches 127
    at_min = np.argmin(x, axis=1)
    neg = big & (x[np.arange(len(x)), at_min] == -amax)
    assert neg.sum() > 40
    np.testing.assert_array_equal(q[np.arange(len(x)), at_min][neg], -127)
