"""Shared fixtures: a small slice of the bundled Shakespeare and a token cache shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet.training import bundled_text

CORPUS_CHARS = 40_000  # enough for a few hundred 32-token windows, tokenized in well under a second


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    p = d / "shakespeare_head.txt"
    p.write_text(bundled_text().read_text()[:CORPUS_CHARS])
    return p


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token_cache")
