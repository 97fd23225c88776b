"""One torch thread for the tests' tiny models (a uniquely named module, importable from every test folder)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine run many times faster on one intra-op thread: their
    matmuls are too small to split, and a busy machine's second thread spin-waits (40 AdamW steps of
    test-tiny: 30-40 s on 2 threads, 1 s on one, under load 12 on 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
