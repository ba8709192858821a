"""`flywheel predict --file` reads a CSV as ingest does: only an empty cell is missing."""

from __future__ import annotations

from pathlib import Path

from flywheel.cli import _file_records


def test_only_an_empty_cell_is_missing(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("plan,region,charges\nNA,None,1.5\n,n/a,\n")
    assert _file_records(csv) == [
        {"plan": "NA", "region": "None", "charges": 1.5},  # a category named "NA" stays text
        {"plan": None, "region": "n/a", "charges": None},
    ]
