"""The AMX kernels at the shapes of their own loops, against the scalar reference or numpy's exact
product.

The few-token product (kernels_amx.cpp, gemm_few: 1 to 16 tokens, row blocks in groups of
kFewBlocks = 3, the last group of 1 or 2 row blocks) against the scalar reference, for every row-block
count from 1 to 7 (every group split: 3 + 3 + 1, 3 + 2, ...) and for K that ends inside a chunk of 16
packed tiles, both weight layouts, on random and extreme inputs (all +1 / all -1 rows against tokens
of -128 and 127: the largest sums).

The int8 head (head_i8_amx: row blocks of 16, each block's logits written out one block later,
transposed in registers; tokens in groups of up to 16; the last rows on the VNNI kernel) at 1 to 5 row
blocks with and without a tail, every token count 1..33, random and extreme (+-127) values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitnet.inference import _C
from bitnet.quant import pack_ternary

MATMUL = {"i2": _C.ternary_matmul, "t5": _C.ternary5_matmul}
pytestmark = pytest.mark.skipif("amx" not in _C.available_isas(), reason="this CPU or build has no AMX path")


def _packed(q: np.ndarray) -> np.ndarray:
    return pack_ternary(torch.from_numpy(q)).numpy()


@pytest.mark.parametrize("layout", ["i2", "t5"])
@pytest.mark.parametrize("blocks", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("in_f", [300, 700])  # 15 and 35 t5 tiles: chunks of 16 with a short last one
def test_every_group_split_equals_ref(layout, blocks, in_f):
    rng = np.random.default_rng(blocks * 1000 + in_f)
    q = rng.integers(-1, 2, size=(16 * blocks, in_f)).astype(np.int8)
    p = _packed(q)
    f = MATMUL[layout]
    for T in (2, 5, 8, 16):
        x = rng.integers(-128, 128, size=(T, in_f)).astype(np.int8)
        np.testing.assert_array_equal(f("amx", p, x), f("ref", p, x), err_msg=f"T={T}")


@pytest.mark.parametrize("layout", ["i2", "t5"])
@pytest.mark.parametrize("blocks", [4, 5])
def test_extremes_in_every_group(layout, blocks):
    K, T = 2560, 8
    x = np.where(np.arange(T)[:, None] % 2 == 0, -128, 127).astype(np.int8).repeat(K, axis=1)
    for qv in (1, -1):
        q = np.full((16 * blocks, K), qv, np.int8)
        want = (x[:, :1].astype(np.int64) * qv * K).repeat(16 * blocks, axis=1)
        np.testing.assert_array_equal(MATMUL[layout]("amx", _packed(q), x), want)


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
@pytest.mark.parametrize("tail", [0, 7])
def test_head_every_block_and_token_count(blocks, tail):
    rng = np.random.default_rng(blocks * 10 + tail)
    V, C = 16 * blocks + tail, 200
    E = rng.integers(-127, 128, size=(V, C), dtype=np.int8)
    E[0], E[V - 1] = 127, -127  # the largest row sums, in the first and the last row block
    for T in range(1, 34):
        x = rng.integers(-127, 128, size=(T, C), dtype=np.int8)
        x[0], x[T - 1] = 127, -127
        want = x.astype(np.int64) @ E.T.astype(np.int64)
        np.testing.assert_array_equal(_C.head_i8("amx", E, x), want, err_msg=f"T={T}")
