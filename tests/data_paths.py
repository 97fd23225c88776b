"""Where the tests find evaluation data (a uniquely named module, importable from every test folder).

``../shared/data`` beside the repository, or ``$BITNET_SHARED_DATA``, when it is there (as on CI):
the full sets. Otherwise the small copy committed in ``tests/fixtures/data``: the same layout, the
first records of each file (tests/fixtures/README.md). ``BITNET_SHARED_DATA=/nonexistent`` runs the
tests as a clean clone without ``../shared`` would.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BITNET_SHARED_DATA") or REPO / ".." / "shared" / "data").resolve()
FIXTURE_DATA = REPO / "tests" / "fixtures" / "data"
FULL_DATA = SHARED_DATA.is_dir()  # False: only the committed fixtures
DATA_DIR = SHARED_DATA if FULL_DATA else FIXTURE_DATA


def shared_path(*parts: str) -> Path:
    """``parts`` under the shared folder when present there, else under the fixtures (which may lack it)."""
    p = SHARED_DATA.joinpath(*parts)
    return p if p.exists() else FIXTURE_DATA.joinpath(*parts)
