"""Ingest from SQLite into content-addressed snapshots, the catalog, and contract enforcement."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from flywheel.config import Settings, load_settings
from flywheel.data import contract as contracts
from flywheel.data.snapshots import (
    get_snapshot,
    ingest,
    latest_snapshot,
    list_snapshots,
    read_snapshot,
    require_valid,
    validate_snapshot,
)
from flywheel.data.store import open_store
from flywheel.errors import ContractViolation, DataError, NotFound, SourceError

COLUMNS = (
    "customer_id INTEGER, observed_at TEXT, tenure INTEGER, monthly REAL, plan TEXT, "
    "churned INTEGER"
)


def _rows(seed: int, start: int, n: int) -> list[tuple[object, ...]]:
    rng = np.random.default_rng(seed)
    return [
        (
            (start + i) % 150,  # customers recur: ids stay in the contract's inferred range
            f"2024-01-{1 + (start + i) // 24:02d}T{(start + i) % 24:02d}:00:00",
            int(rng.integers(0, 72)),
            round(float(rng.uniform(10, 120)), 2),
            str(rng.choice(["basic", "plus", "pro"])),
            int(rng.integers(0, 2)),
        )
        for i in range(n)
    ]


def _load(db: Path, rows: list[tuple[object, ...]]) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS churn_features ({COLUMNS})")
        conn.executemany("INSERT INTO churn_features VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.close()


@pytest.fixture
def source(settings: Settings) -> Path:
    settings.home.mkdir(parents=True, exist_ok=True)
    db = settings.home / "source.db"
    _load(db, _rows(seed=1, start=0, n=200))
    return db


def test_first_ingest_writes_parts_manifest_contract(settings: Settings, source: Path) -> None:
    result = ingest(settings)
    m = result.manifest
    assert result.created and result.contract_created and result.new_rows == 200
    assert m.id == "snap-" + m.sha256[:16] and m.parent is None and m.rows == 200
    assert m.time_range == ("2024-01-01T00:00:00", "2024-01-09T07:00:00")
    assert m.timestamp_column == "observed_at" and m.target == "churned"
    assert m.key_columns == ["customer_id", "observed_at"]
    assert m.source["query"] == 'SELECT * FROM "churn_features"' and m.source["mode"] == "full"
    assert {c.name: c.type for c in m.columns}["monthly"] == "double"
    assert contracts.contract_path(settings.contracts_dir, "churn").exists()
    assert m.contract_version == result.validation.contract_version  # type: ignore[union-attr]
    store = open_store(settings)
    assert store.list("datasets/churn/parts") == [m.parts[0].key]
    assert m.parts[0].key == f"datasets/churn/parts/{m.parts[0].sha256}.parquet"
    record = json.loads(store.get_bytes(f"datasets/churn/validations/{m.id}.json"))
    assert record["passed"] is True and record["contract_version"] == m.contract_version
    df = read_snapshot(settings, m.id)
    assert len(df) == 200 and list(df.columns)[:2] == ["customer_id", "observed_at"]


def test_unchanged_data_makes_no_new_snapshot(settings: Settings, source: Path) -> None:
    first = ingest(settings)
    again = ingest(settings)
    assert not again.created and again.new_rows == 0
    assert again.manifest.id == first.manifest.id
    full = ingest(settings, full=True)  # same rows, same bytes: same content address
    assert not full.created and full.manifest.id == first.manifest.id
    assert len(list_snapshots(settings)) == 1


def test_incremental_ingest_adds_one_part_with_parent(settings: Settings, source: Path) -> None:
    first = ingest(settings).manifest
    _load(source, _rows(seed=2, start=200, n=50))
    result = ingest(settings)
    m = result.manifest
    assert result.created and result.new_rows == 50 and not result.contract_created
    assert m.parent == first.id and m.rows == 250 and m.source["mode"] == "incremental"
    assert m.parts[:1] == first.parts and len(m.parts) == 2
    assert m.time_range == ("2024-01-01T00:00:00", "2024-01-11T09:00:00")
    df = read_snapshot(settings, m)
    assert df["customer_id"].tolist() == [i % 150 for i in range(250)]
    assert [s.id for s in list_snapshots(settings, "churn")] == [first.id, m.id]
    assert latest_snapshot(settings, "churn") == m


def test_full_reextract_is_a_new_root(settings: Settings, source: Path) -> None:
    ingest(settings)
    _load(source, _rows(seed=2, start=200, n=5))
    m = ingest(settings, full=True).manifest
    assert m.parent is None and len(m.parts) == 1 and m.rows == 205


def test_same_seed_same_snapshot_hash(tmp_path: Path) -> None:
    hashes = []
    for name in ("a", "b"):
        s = load_settings(home=tmp_path / name)
        s.home.mkdir(parents=True)
        _load(s.home / "source.db", _rows(seed=7, start=0, n=120))
        hashes.append(ingest(s).manifest.sha256)
    assert hashes[0] == hashes[1]


def test_contract_violation_writes_nothing(settings: Settings, source: Path) -> None:
    first = ingest(settings).manifest
    bad = [(r[0], r[1], r[2], None, r[4], r[5]) for r in _rows(seed=3, start=300, n=3)]
    _load(source, bad)  # 'monthly' never had a NULL: the inferred contract forbids them
    store = open_store(settings)
    before = {p: store.list(f"datasets/churn/{p}") for p in ("parts", "snapshots", "validations")}
    with pytest.raises(ContractViolation) as info:
        ingest(settings)
    assert "'monthly'" in info.value.message and info.value.details["violations"]
    assert any(v["column"] == "monthly" for v in info.value.details["violations"])
    after = {p: store.list(f"datasets/churn/{p}") for p in ("parts", "snapshots", "validations")}
    assert after == before and latest_snapshot(settings, "churn") == first


def test_revalidate_after_contract_edit(settings: Settings, source: Path) -> None:
    m = ingest(settings).manifest
    assert require_valid(settings, m).passed
    path = contracts.contract_path(settings.contracts_dir, "churn")
    contract = contracts.load_contract(path)
    contract.columns["tenure"].max = 1  # tighten: existing data now breaks the rule
    contracts.save_contract(contract, path)
    with pytest.raises(ContractViolation, match="validate"):
        require_valid(settings, m)  # validated against an older contract version
    report = validate_snapshot(settings, m.id)
    assert not report.passed and any(v.column == "tenure" for v in report.violations)
    with pytest.raises(ContractViolation, match="tenure"):
        require_valid(settings, m)


def test_get_snapshot_by_prefix_and_not_found(settings: Settings, source: Path) -> None:
    m = ingest(settings).manifest
    assert get_snapshot(settings, m.id[:9]) == m
    with pytest.raises(NotFound) as info:
        get_snapshot(settings, m.id[:-1] + "z")
    assert m.id in info.value.details["near"]


def test_corrupt_part_is_detected_on_read(settings: Settings, source: Path) -> None:
    m = ingest(settings).manifest
    store = open_store(settings)
    data = bytearray(store.get_bytes(m.parts[0].key))
    data[-20] ^= 0xFF
    Path(store.path(m.parts[0].key)).write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        read_snapshot(settings, m)


def test_empty_first_extraction_is_an_error(settings: Settings, source: Path) -> None:
    with pytest.raises(DataError, match="no rows"):
        ingest(settings, query="SELECT * FROM churn_features WHERE 1 = 0")
    assert list_snapshots(settings) == []
    assert not contracts.contract_path(settings.contracts_dir, "churn").exists()


def test_source_errors_name_the_url(settings: Settings, source: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no_such_table"):
        ingest(settings, query="SELECT * FROM no_such_table")
    missing = load_settings(home=tmp_path / "fw2", source={"url": "sqlite:///nowhere/x.db"})
    with pytest.raises(SourceError, match="No SQLite database"):
        ingest(missing)
    pg = load_settings(home=tmp_path / "fw3", source={"url": "postgresql://u:pw@127.0.0.1:1/db"})
    with pytest.raises(SourceError) as info:
        ingest(pg)
    assert "u:***@127.0.0.1:1" in info.value.message and "pw" not in info.value.message


def test_type_change_after_first_batch_is_a_source_error(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "fw", source={"batch_rows": 2})
    settings.home.mkdir(parents=True)
    rows = _rows(seed=4, start=0, n=6)
    _load(settings.home / "source.db", [(*r[:3], None, *r[4:]) for r in rows[:2]] + rows[2:])
    with pytest.raises(SourceError, match="CAST"):
        ingest(settings)  # the driver typed 'monthly' from two NULLs, then met a REAL
    assert list_snapshots(settings) == []
