"""`flywheel lineage`'s version line: "champion since" only while the version still is."""

from __future__ import annotations

from typing import Any

import pytest

from flywheel.cli_lineage import _version_line


def _found(aliases: list[str]) -> dict[str, Any]:
    return {
        "model": "churn",
        "version": "2",
        "aliases": aliases,
        "registered_at": "2026-12-01T00:00:00+00:00",
        "promoted_at": "2026-12-02T00:00:00+00:00",
        "sha256": "ab12",
    }


@pytest.mark.parametrize(
    ("aliases", "shown"),
    [
        (["champion"], "champion since 2026-12-02"),
        ([], "first champion 2026-12-02"),  # rolled back, or replaced by a newer one
        (["challenger"], "first champion 2026-12-02"),
    ],
)
def test_the_version_line_says_since_only_while_it_is_champion(
    aliases: list[str], shown: str
) -> None:
    text = _version_line(_found(aliases)).plain
    assert shown in text, text
    assert ("since" in text) == ("champion" in aliases), text
