"""The prediction log against the real PostgreSQL on this machine."""

from __future__ import annotations

import time

import psycopg
import pytest

from flywheel.predlog import PredictionLog, PredictionRecord, open_prediction_log
from tests.unit.predlog_helpers import append_from_threads

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def rec(
    rid: str, ts: float = 1.0e9, *, model: str = "churn", version: str = "1", inputs: object = None
) -> PredictionRecord:
    return PredictionRecord(
        request_id=rid,
        ts=ts,
        model=model,
        version=version,
        protocol="v2",
        inputs={"tenure": [3], "note": ["naïve \\ \t tab"]} if inputs is None else inputs,
        outputs={"labels": [1], "probabilities": [[0.2, 0.8]]},
        latency_ms=2.5,
    )


def test_exactly_one_row_per_record_and_survives_reopen(pg_url: str) -> None:
    plog = open_prediction_log(pg_url, batch_size=500, flush_interval_s=0.02)
    append_from_threads(plog, rec)
    plog.close()
    assert plog.written() == 10_000 and plog.dropped() == 0
    with psycopg.connect(pg_url) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM prediction_log"
        ).fetchone()
    assert (total, distinct) == (10_000, 10_000)
    reopened = PredictionLog(pg_url)
    try:
        assert reopened.count() == 10_000
        first = reopened.read(limit=1)[0]
        assert first["request_id"] in {"t0-0", "t1-0", "t2-0", "t3-0"}
        assert first["inputs"] == {"tenure": [3], "note": ["naïve \\ \t tab"]}
        assert first["protocol"] == "v2" and first["label"] is None
    finally:
        reopened.close()


def test_feedback_unknown_late_and_latest_label_wins(pg_url: str) -> None:
    with PredictionLog(pg_url) as plog:
        plog.append(rec("a", 10.0))
        assert plog.feedback("a", 0, ts=1_000.0)  # still queued: flushed first
        assert not plog.feedback("nope", 1)
    reopened = open_prediction_log(pg_url)  # "days later"
    try:
        assert reopened.feedback("a", 1, ts=2_000.0)
        assert reopened.feedback("a", 0, ts=1_500.0)  # older than the correction: loses
        assert reopened.feedback_many([("a", 1), ("zzz", 1)], ts=2_000.0) == 1  # tie: later wins
        rows = reopened.read(labelled_only=True)
        assert [(r["request_id"], r["label"], r["label_ts"]) for r in rows] == [("a", 1, 2000.0)]
        assert reopened.count() == 1
    finally:
        reopened.close()


def test_writer_recovers_after_connection_is_killed(pg_url: str) -> None:
    plog = open_prediction_log(pg_url, flush_interval_s=0.01, max_backoff_s=0.2)
    try:
        plog.append(rec("before"))
        plog.flush()
        dbname = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'flywheel-predlog-writer'",
                (dbname,),
            ).fetchall()
        assert killed == [(True,)]
        for i in range(100):
            plog.append(rec(f"after-{i}"))
        plog.flush()
        assert plog.count() == 101 and plog.written() == 101
        assert plog.stats()["failures"] >= 1
    finally:
        plog.close()


def test_refused_record_is_isolated_and_counted(pg_url: str) -> None:
    with PredictionLog(pg_url) as plog:
        plog.append(rec("ok-1"))
        plog.append(rec("nul", model="bad\x00model"))  # PostgreSQL text refuses NUL bytes
        plog.append(rec("ok-2", inputs={"s": "json keeps \u0000 escaped"}))
        plog.flush()
        assert plog.stats()["rejected"] == 1 and plog.written() == 2
        assert sorted(r["request_id"] for r in plog.read()) == ["ok-1", "ok-2"]


def test_drop_policy_against_postgres(pg_url: str) -> None:
    plog = open_prediction_log(pg_url, max_queue=3, on_full="drop", flush_interval_s=0.01)
    plog.pause()
    time.sleep(0.05)
    assert [plog.append(rec(f"r{i}")) for i in range(5)] == [True] * 3 + [False] * 2
    plog.close()
    assert plog.dropped() == 2 and plog.written() == 3


def test_column_rows_read_back_named_and_through_the_view(pg_url: str) -> None:
    from tests.unit.predlog_helpers import check_columns_rows_read_back_named

    def view_rows() -> list:
        with psycopg.connect(pg_url) as conn:
            return conn.execute(
                "SELECT request_id, inputs::text FROM prediction_log_named ORDER BY id"
            ).fetchall()

    with open_prediction_log(pg_url, flush_interval_s=0.02) as plog:
        check_columns_rows_read_back_named(plog, view_rows)


def test_client_ids_never_key_rows_and_labels_match_either_id(pg_url: str) -> None:
    from tests.unit.predlog_helpers import check_client_ids_and_feedback_matching

    with open_prediction_log(pg_url, flush_interval_s=0.01) as plog:
        check_client_ids_and_feedback_matching(plog)


def test_the_read_api_streams_typed_arrow_batches(pg_url: str) -> None:
    from tests.unit.predlog_helpers import check_reads, fill_for_reads

    with open_prediction_log(pg_url, flush_interval_s=0.01) as plog:
        fill_for_reads(plog)
        check_reads(pg_url, plog)


def test_commit_rows_resolve_once_committed(pg_url: str) -> None:
    import asyncio

    plog = open_prediction_log(pg_url, durability="commit", flush_interval_s=30)
    rows = [
        (f"r{i}", 1.0, "m" if i != 3 else "bad\x00", "1", "rest", "[[1]]", "{}", 0.5, None, None)
        for i in range(6)
    ]

    async def main() -> list[bool]:
        return list(await asyncio.gather(*(plog.commit_row(r) for r in rows)))

    try:
        assert asyncio.run(main()) == [True, True, True, False, True, True]  # NUL: refused
        with psycopg.connect(pg_url) as conn:
            ids = {r[0] for r in conn.execute("SELECT request_id FROM prediction_log")}
        assert ids == {"r0", "r1", "r2", "r4", "r5"}
    finally:
        plog.close()


def test_an_older_postgres_log_is_migrated_when_opened(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            """CREATE TABLE prediction_log (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, request_id text NOT NULL,
                ts double precision NOT NULL, model text NOT NULL, version text NOT NULL,
                protocol text NOT NULL, inputs json NOT NULL, outputs json NOT NULL,
                latency_ms double precision NOT NULL)"""
        )
        conn.execute(
            "CREATE UNIQUE INDEX prediction_log_request ON prediction_log "
            "(request_id, model, version)"
        )
        conn.execute(
            """CREATE TABLE prediction_inputs (model text NOT NULL, version text NOT NULL,
                names json NOT NULL, PRIMARY KEY (model, version))"""
        )
        conn.execute(
            """CREATE VIEW prediction_log_named AS SELECT p.id, p.request_id, p.ts, p.model,
                p.version, p.protocol, p.inputs, p.outputs, p.latency_ms FROM prediction_log p"""
        )
        conn.execute(
            "INSERT INTO prediction_log (request_id, ts, model, version, protocol, inputs, "
            "outputs, latency_ms) VALUES ('a', 1, 'churn', '1', 'rest', '{}', '{}', 0.5)"
        )
    with open_prediction_log(pg_url, flush_interval_s=0.01) as plog:
        plog.append(rec("b", inputs={"x": [1]}))
        plog.append(PredictionRecord("c", 2.0, "churn", "2", "v2", {}, {}, 0.1, "theirs"))
        plog.append(PredictionRecord("a", 3.0, "churn", "2", "v2", {}, {}, 0.1))  # a's id
        plog.flush()
        assert plog.stats()["duplicates"] == 1
        assert plog.feedback("theirs", 1)
        assert {r["request_id"]: r["client_id"] for r in plog.read()} == {
            "a": None,
            "b": None,
            "c": "theirs",
        }
    with psycopg.connect(pg_url) as conn:
        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'prediction_log'"
            ).fetchall()
        )
        view = conn.execute("SELECT client_id FROM prediction_log_named WHERE request_id = 'c'")
        assert view.fetchone() == ("theirs",)
    assert "prediction_log_request" not in indexes
    assert "(request_id, role)" in indexes["prediction_log_request_role"]
    assert "WHERE (client_id IS NOT NULL)" in indexes["prediction_log_client"]
