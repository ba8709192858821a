"""Fixtures shared by the unit tests."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def stable_hashes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every row the rollout counters gave the stable hash (``counters.input_key``), in
    order: a test reads how many rows cost a hash."""
    from flywheel.rollout import counters

    rows: list[tuple[Any, ...]] = []
    real = counters.input_key

    def counted(row: tuple[Any, ...]) -> int:
        rows.append(row)
        return real(row)

    monkeypatch.setattr(counters, "input_key", counted)
    return rows
