"""The churn world on real PostgreSQL: same seed, same rows as on SQLite; atomic appends."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa

from flywheel.config import Settings, load_settings, sqlalchemy_url
from flywheel.errors import SourceError
from flywheel.simulate import feature_rows, simulate, world_exists

pytestmark = pytest.mark.integration

DRIFT = ["price_rise@45", "new_contract@2025-02-10"]


def _features(url: str) -> pd.DataFrame:
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            df = pd.read_sql_query(sa.text("SELECT * FROM churn_features"), conn)
    finally:
        engine.dispose()
    df["observed_at"] = pd.to_datetime(df["observed_at"])
    return df.sort_values(["customer_id", "observed_at"]).reset_index(drop=True)


def test_postgres_world_equals_the_sqlite_world(tmp_path: Path, pg_url: str) -> None:
    lite = load_settings(home=tmp_path / "lite")
    pg = load_settings(home=tmp_path / "pg", source={"url": pg_url})
    simulate(lite, days=100, customers=400, scenarios=DRIFT)
    first = simulate(pg, days=60, customers=400, scenarios=DRIFT)
    second = simulate(pg, days=40)
    assert first.source == pg_url and second.last_day == dt.date(2025, 4, 10)
    assert world_exists(pg) and feature_rows(pg) == second.feature_rows > 0

    a, b = _features(str(lite.source.url)), _features(pg_url)
    assert list(a.columns) == list(b.columns)
    assert str(b["observed_at"].dtype).startswith("datetime64")
    # sums and averages may differ in the last bit between the two engines
    pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9)


def test_observed_at_is_a_real_timestamp(pg_url: str) -> None:
    simulate(load_settings(source={"url": pg_url}), days=40, customers=50)
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'churn_features' AND column_name = 'observed_at'"
        ).fetchone()
    assert row == ("timestamp without time zone",)


def test_a_failed_append_leaves_postgres_as_it_was(pg_url: str) -> None:
    settings: Settings = load_settings(source={"url": pg_url})
    simulate(settings, days=40, customers=200)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        before = conn.execute("SELECT COUNT(*) FROM monthly_usage").fetchone()
        conn.execute(
            "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'disk on fire'; END $$ LANGUAGE plpgsql"
        )
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON churn_events FOR EACH ROW EXECUTE FUNCTION boom()"
        )
    with pytest.raises(SourceError, match="disk on fire"):
        simulate(settings, days=30)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM monthly_usage").fetchone() == before
        assert conn.execute("SELECT last_day FROM sim_state").fetchone() == (39,)
