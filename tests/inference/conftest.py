"""Kernel paths this machine cannot run show up as skips naming the path (engine_helpers.every_isa)."""

from __future__ import annotations

import pytest
from engine_helpers import isa_skip_reason

from bitnet.inference import available_isas, cpu_features


def pytest_itemcollected(item: pytest.Item) -> None:
    """A test parametrized with ``isa`` is skipped, with the reason, when this CPU or build cannot run it."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "isa" in params:
        reason = isa_skip_reason(params["isa"], cpu_features(), available_isas())
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
