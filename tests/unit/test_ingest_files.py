"""Ingest of a user's CSV or Parquet file: content addressing, contracts, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flywheel.config import Settings
from flywheel.data import contract as contracts
from flywheel.data.snapshots import ingest, list_snapshots, read_snapshot
from flywheel.data.store import open_store
from flywheel.errors import ContractViolation, DataError

FRAME = pd.DataFrame(
    {
        "customer_id": [1, 2, 3, 4, 5, 6],
        "age": [31, 45, 27, 60, 38, 52],
        "plan": ["basic", "pro", "basic", "plus", "pro", "basic"],
        "spend": [10.5, 99.0, 12.25, 55.0, 80.0, 20.0],
        "churned": [0, 1, 0, 1, 0, 0],
    }
)


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.csv"
    FRAME.to_csv(path, index=False)
    return path


def _nothing_written(settings: Settings) -> bool:
    store = open_store(settings)
    return store.list("datasets") == [] and not settings.contracts_dir.exists()


def test_csv_ingest_round_trips(settings: Settings, csv_file: Path) -> None:
    result = ingest(settings, file=csv_file, target="churned", dataset="users")
    m = result.manifest
    assert result.created and result.contract_created and m.rows == 6 and m.parent is None
    assert m.source["file"] == "users.csv" and len(m.source["sha256"]) == 64
    assert m.target == "churned" and m.dataset == "users"
    pd.testing.assert_frame_equal(read_snapshot(settings, m), FRAME)
    again = ingest(settings, file=csv_file, target="churned", dataset="users")
    assert not again.created and again.manifest.id == m.id


def test_parquet_and_csv_of_same_rows_share_a_snapshot(
    settings: Settings, csv_file: Path, tmp_path: Path
) -> None:
    pq_file = tmp_path / "users.parquet"
    FRAME.to_parquet(pq_file, index=False)
    first = ingest(settings, file=csv_file, target="churned", dataset="users").manifest
    second = ingest(settings, file=pq_file, target="churned", dataset="users")
    assert not second.created and second.manifest.sha256 == first.sha256
    assert len(list_snapshots(settings, "users")) == 1


def test_changed_file_is_validated_against_the_contract(
    settings: Settings, csv_file: Path, tmp_path: Path
) -> None:
    ingest(settings, file=csv_file, target="churned", dataset="users")
    bad = FRAME.assign(plan=["basic", "gold", "basic", "plus", "pro", "basic"])
    bad_file = tmp_path / "users2.csv"
    bad.to_csv(bad_file, index=False)
    with pytest.raises(ContractViolation) as info:
        ingest(settings, file=bad_file, target="churned", dataset="users")
    assert "'plan'" in info.value.message and "gold" in info.value.message
    assert len(list_snapshots(settings, "users")) == 1
    assert contracts.contract_path(settings.contracts_dir, "users").exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "No file"),
        (b"", "empty"),
        (b"a,b,churned\n", "no rows"),
        (b"a,b,churned\n1,2,0\n3,4,5,6,7\n", "Cannot read"),
        (b"a,churned\n\xff\xfe\x00,1\n", "Cannot read"),
        (b"a,b\n1,2\n", "'churned' is not in"),
    ],
    ids=["missing", "empty", "header-only", "ragged", "not-utf8", "no-target"],
)
def test_bad_files_are_clear_errors_and_write_nothing(
    settings: Settings, tmp_path: Path, content: bytes | None, match: str
) -> None:
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        ingest(settings, file=path, target="churned", dataset="users")
    assert str(path) in info.value.message and "Fix" in info.value.message
    assert _nothing_written(settings)


def test_garbled_parquet_and_unknown_suffix(settings: Settings, tmp_path: Path) -> None:
    garbled = tmp_path / "x.parquet"
    garbled.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="Cannot read"):
        ingest(settings, file=garbled, target="churned", dataset="users")
    odd = tmp_path / "x.xlsx"
    odd.write_bytes(b"abc")
    with pytest.raises(DataError, match="Unsupported file type"):
        ingest(settings, file=odd, target="churned", dataset="users")
    assert _nothing_written(settings)
