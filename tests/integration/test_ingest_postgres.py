"""Ingest from a real PostgreSQL database: full, incremental, unchanged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest

from flywheel.config import load_settings
from flywheel.data.snapshots import ingest, list_snapshots, read_snapshot
from flywheel.errors import SourceError

pytestmark = pytest.mark.integration

START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def _insert(url: str, first: int, n: int) -> None:
    rows = [
        (
            i % 40,
            START + dt.timedelta(hours=i),
            20 + i % 50,
            round(15.5 + (i * 7) % 90, 2),
            ["basic", "plus", "pro"][i % 3],
            i % 2 == 0,
            i % 2,
        )
        for i in range(first, first + n)
    ]
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS churn_features (customer_id integer, "
            "observed_at timestamptz, age smallint, monthly numeric(8,2), plan text, "
            "paperless boolean, churned integer)"
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO churn_features VALUES (%s,%s,%s,%s,%s,%s,%s)", rows)


def test_postgres_full_incremental_unchanged(pg_url: str, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "fw", source={"url": pg_url})
    _insert(pg_url, 0, 100)
    first = ingest(settings)
    m = first.manifest
    assert first.created and m.rows == 100 and m.parent is None
    types = {c.name: c.type for c in m.columns}
    assert types == {
        "customer_id": "int64",
        "observed_at": "timestamp[us, tz=UTC]",
        "age": "int64",
        "monthly": "double",
        "plan": "string",
        "paperless": "bool",
        "churned": "int64",
    }
    assert m.time_range == ("2024-03-01T00:00:00+00:00", "2024-03-05T03:00:00+00:00")
    assert "postgres@127.0.0.1" in m.source["url"]

    _insert(pg_url, 100, 30)
    second = ingest(settings)
    assert second.created and second.new_rows == 30
    assert second.manifest.parent == m.id and second.manifest.rows == 130
    assert second.manifest.time_range == (m.time_range[0], "2024-03-06T09:00:00+00:00")
    df = read_snapshot(settings, second.manifest)
    assert len(df) == 130 and df["observed_at"].is_monotonic_increasing
    assert df["monthly"].iloc[1] == pytest.approx(22.5)

    third = ingest(settings)
    assert not third.created and third.manifest.id == second.manifest.id
    assert [s.id for s in list_snapshots(settings)] == [m.id, second.manifest.id]


def test_postgres_bad_query_is_a_source_error(pg_url: str, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "fw", source={"url": pg_url})
    with pytest.raises(SourceError, match="churn_features") as info:
        ingest(settings)
    assert info.value.details["url"] == pg_url
