"""A hand-edited contract that breaks a rule of the file, as the installed CLI reports it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import flywheel


def test_a_bad_contract_file_exits_2_naming_the_key_and_the_line(tmp_path: Path) -> None:
    rows = "".join(f"{i},{20 + i},{i % 2}\n" for i in range(20))
    (tmp_path / "d.csv").write_text("id,age,y\n" + rows)
    flywheel(tmp_path, "ingest", "--file", "d.csv", "--target", "y", "--dataset", "d")
    snapshot = json.loads(flywheel(tmp_path, "data", "list", "--json").stdout)[0]["id"]
    path = tmp_path / ".flywheel" / "contracts" / "d.yaml"
    lines = path.read_text().splitlines()
    at = lines.index("    min: 18", lines.index("  age:"))  # 20..39 widened by 10% of 19
    lines[at] = "    min: 1000"  # above the inferred max
    path.write_text("\n".join(lines) + "\n")

    err = " ".join(flywheel(tmp_path, "data", "validate", snapshot, code=2).stderr.split())
    assert f"line {at + 1}: columns.age.min must not exceed max" in err
    assert "error (config)" in err
