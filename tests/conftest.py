"""Shared test fixtures and paths (evaluation data: see data_paths.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from data_paths import FULL_DATA, SHARED_DATA

# transformers wraps its BitNet quantizers in torch.compile; compiled rounding flips borderline
# activations, so every comparison against transformers runs both sides eagerly.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full shared data folder; a test that needs more than tests/fixtures/data skips without it."""
    if not FULL_DATA:
        pytest.skip(f"the shared data folder is missing: {SHARED_DATA} (../shared/data beside the repo, "
                    "or $BITNET_SHARED_DATA); tests/fixtures/data does not hold what this test reads")
    return SHARED_DATA

