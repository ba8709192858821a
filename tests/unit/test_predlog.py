"""The prediction log on its embedded default: a real SQLite file in WAL mode."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import flywheel.predlog as predlog_module
from flywheel.errors import ConfigError, DataError, FlywheelError
from flywheel.predlog import (
    PredictionLog,
    PredictionLogError,
    PredictionRecord,
    Row,
    encode_json,
    open_prediction_log,
)
from flywheel.predlog.sqlite import SqliteStore
from tests.unit.predlog_helpers import append_from_threads

pytestmark = pytest.mark.timeout(60)


def rec(
    rid: str,
    ts: float = 1.0e9,
    *,
    model: str = "churn",
    version: str = "1",
    inputs: object = None,
    outputs: object = None,
) -> PredictionRecord:
    return PredictionRecord(
        request_id=rid,
        ts=ts,
        model=model,
        version=version,
        protocol="rest",
        inputs={"tenure": [3], "plan": ["basic"]} if inputs is None else inputs,
        outputs={"labels": [1], "probabilities": [[0.2, 0.8]]} if outputs is None else outputs,
        latency_ms=1.5,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{(tmp_path / 'logs' / 'predictions.db').as_posix()}"


@pytest.fixture
def plog(url: str) -> Iterator[PredictionLog]:
    log = open_prediction_log(url, flush_interval_s=0.02)
    yield log
    log.close()


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_public_api() -> None:
    assert sorted(predlog_module.__all__) == [
        "Durability",
        "LabelResult",
        "PredictionLog",
        "PredictionLogError",
        "PredictionRecord",
        "Row",
        "encode_json",
        "open_prediction_log",
    ]
    assert issubclass(PredictionLogError, FlywheelError)
    assert PredictionLogError("x").status == 503


def test_exactly_one_row_per_record_from_many_threads(url: str) -> None:
    plog = open_prediction_log(url, batch_size=500, flush_interval_s=0.02)
    append_from_threads(plog, rec)
    plog.close()
    assert plog.written() == 10_000 and plog.dropped() == 0 and plog.depth() == 0
    assert plog.stats()["duplicates"] == 0
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM prediction_log"
        ).fetchone()
    assert (total, distinct) == (10_000, 10_000)


def test_records_survive_close_and_reopen(url: str) -> None:
    with PredictionLog(url) as plog:
        plog.append(
            rec("a", 100.0, inputs={"x": np.array([1.5, 2.5])}, outputs={"labels": [np.int64(1)]})
        )
        plog.append(rec("b", 200.0))
    reopened = PredictionLog(url)
    try:
        rows = reopened.read()
        assert reopened.count() == 2
        assert [r["request_id"] for r in rows] == ["a", "b"]
        assert rows[0]["inputs"] == {"x": [1.5, 2.5]}
        assert rows[0]["outputs"] == {"labels": [1]}
        assert rows[0] | {"inputs": None, "outputs": None} == {
            "request_id": "a",
            "client_id": None,
            "ts": 100.0,
            "model": "churn",
            "version": "1",
            "role": None,
            "protocol": "rest",
            "inputs": None,
            "outputs": None,
            "latency_ms": 1.5,
            "label": None,
            "label_ts": None,
        }
    finally:
        reopened.close()


def test_wal_mode_is_enabled(plog: PredictionLog, url: str) -> None:
    assert plog.journal_mode() == "wal"
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384  # a new file


def test_an_existing_sqlite_file_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE other (x)")  # written with the default 4 KiB pages
    plog = open_prediction_log(f"sqlite:///{path}")
    try:
        plog.append(PredictionRecord("r1", 1.0, "churn", "1", "rest", {"a": [1]}, {}, 0.1))
        plog.flush()
        assert plog.count() == 1
    finally:
        plog.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_drop_policy_counts_drops_when_writer_stalls(url: str) -> None:
    plog = open_prediction_log(url, max_queue=10, on_full="drop", flush_interval_s=0.01)
    plog.pause()
    time.sleep(0.05)  # the writer is parked at the gate
    results = [plog.append(rec(f"r{i}")) for i in range(25)]
    assert results == [True] * 10 + [False] * 15
    assert plog.dropped() == 15 and plog.depth() == 10
    plog.resume()
    plog.close()
    assert plog.written() == 10 and PredictionLog(url).count() == 10


def test_block_policy_applies_backpressure(url: str) -> None:
    plog = open_prediction_log(
        url, max_queue=5, on_full="block", block_timeout_s=5.0, flush_interval_s=0.01
    )
    plog.pause()
    time.sleep(0.05)
    assert all(plog.append(rec(f"r{i}")) for i in range(5))
    outcome: list[bool] = []
    producer = threading.Thread(target=lambda: outcome.append(plog.append(rec("late"))))
    producer.start()
    producer.join(0.3)
    assert producer.is_alive() and not outcome  # held back while the queue is full
    plog.resume()
    producer.join(5)
    assert outcome == [True] and plog.dropped() == 0
    plog.close()
    assert plog.written() == 6


def test_block_policy_drops_after_timeout(url: str) -> None:
    plog = open_prediction_log(url, max_queue=2, block_timeout_s=0.1, flush_interval_s=0.01)
    plog.pause()
    time.sleep(0.05)
    plog.append(rec("a"))
    plog.append(rec("b"))
    started = time.monotonic()
    assert plog.append(rec("c")) is False
    assert time.monotonic() - started >= 0.1
    assert plog.dropped() == 1
    plog.close()  # resumes and flushes
    assert plog.written() == 2


def test_flush_times_out_while_writer_paused(plog: PredictionLog) -> None:
    plog.pause()
    time.sleep(0.05)
    plog.append(rec("a"))
    with pytest.raises(PredictionLogError, match="did not write its queue"):
        plog.flush(timeout=0.1)
    plog.resume()
    plog.flush()
    assert plog.count() == 1


def test_append_after_close_is_counted_as_dropped(url: str) -> None:
    plog = open_prediction_log(url)
    plog.close()
    assert plog.append(rec("a")) is False
    assert plog.dropped() == 1


def test_close_without_start_writes_queued_records(url: str) -> None:
    plog = PredictionLog(url)
    plog.append(rec("a"))
    plog.close()
    assert PredictionLog(url).count() == 1


def test_feedback_by_id_and_unknown_id(plog: PredictionLog) -> None:
    plog.append(rec("a"))  # still queued: feedback flushes, then finds it
    assert plog.feedback("a", 1) is True
    assert plog.feedback("nope", 0) is False
    assert plog.feedback_many([("a", 0), ("nope", 1), ("b", 1)]) == 1
    rows = plog.read()
    assert [(r["request_id"], r["label"]) for r in rows] == [("a", 0)]
    assert isinstance(rows[0]["label_ts"], float)


def test_late_feedback_after_reopen_and_latest_label_wins(url: str) -> None:
    with PredictionLog(url) as plog:
        plog.append(rec("a", 10.0))
        plog.append(rec("b", 20.0))
    reopened = open_prediction_log(url)  # "days later"
    try:
        assert reopened.feedback("a", {"churned": True}, ts=1_000.0)
        assert reopened.feedback("a", {"churned": False}, ts=2_000.0)  # correction
        assert reopened.feedback("a", {"churned": "stale"}, ts=1_500.0)  # older: loses
        assert reopened.feedback("b", "x", ts=5.0)
        assert reopened.feedback("b", "y", ts=5.0)  # same time: the later insert wins
        labels = {r["request_id"]: (r["label"], r["label_ts"]) for r in reopened.read()}
        assert labels == {"a": ({"churned": False}, 2_000.0), "b": ("y", 5.0)}
        assert reopened.count() == 2  # labels never rewrite or add prediction rows
    finally:
        reopened.close()


def test_the_server_id_is_the_key_and_duplicates_are_counted(plog: PredictionLog) -> None:
    plog.append(rec("a", version="1"))
    plog.append(rec("a", version="2"))  # the same server id again: a duplicate (a retry)
    plog.append(rec("b", version="2"))
    plog.flush()
    assert plog.written() == 2 and plog.stats()["duplicates"] == 1
    assert plog.feedback("a", 1)
    assert [(r["request_id"], r["version"], r["label"]) for r in plog.read()] == [
        ("a", "1", 1),
        ("b", "2", None),
    ]


def test_read_filters(plog: PredictionLog) -> None:
    for i in range(6):
        plog.append(rec(f"r{i}", 100.0 + i, model="churn" if i % 2 else "ltv"))
    plog.flush()
    plog.feedback("r3", 1)
    assert [r["request_id"] for r in plog.read(since=102.0)] == ["r2", "r3", "r4", "r5"]
    assert [r["request_id"] for r in plog.read(since=102.0, limit=2)] == ["r2", "r3"]
    assert [r["request_id"] for r in plog.read(model="churn")] == ["r1", "r3", "r5"]
    assert [r["request_id"] for r in plog.read(labelled_only=True)] == ["r3"]
    with pytest.raises(DataError):
        plog.read(limit=-1)


def test_unencodable_values_and_bad_records_do_not_stop_the_writer(plog: PredictionLog) -> None:
    plog.append(rec("odd", inputs={"x": object()}))
    bad = rec("bad")
    bad.ts = "not-a-number"  # type: ignore[assignment]
    assert plog.append(bad) is False  # refused at once, counted as rejected
    plog.append(rec("good", outputs={"labels": np.array([1, 0]), "s": {1}}))
    plog.flush()
    rows = {r["request_id"]: r for r in plog.read()}
    assert set(rows) == {"odd", "good"}
    assert "$unencodable" in rows["odd"]["inputs"]
    assert rows["good"]["outputs"] == {"labels": [1, 0], "s": [1]}
    assert plog.stats()["rejected"] == 1 and plog.written() == 2


def test_unencodable_label_is_a_data_error(plog: PredictionLog) -> None:
    plog.append(rec("a"))
    with pytest.raises(DataError, match="not JSON-serialisable"):
        plog.feedback("a", object())


def test_writer_recovers_after_transient_database_error(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    plog = open_prediction_log(
        f"sqlite:///{path}", flush_interval_s=0.01, connect_timeout_s=0.05, max_backoff_s=0.1
    )
    plog.append(rec("before"))
    plog.flush()
    # Another process holds the write lock (a long migration, a backup): writes fail.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(50):
            plog.append(rec(f"during-{i}"))
        wait_until(lambda: plog.stats()["failures"] >= 2)
        assert plog.depth() == 50  # kept, not lost
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    plog.flush()
    assert plog.count() == 51 and plog.written() == 51
    plog.close()


def test_close_with_database_unavailable_reports_lost_records(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    plog = open_prediction_log(
        f"sqlite:///{path}", flush_interval_s=0.01, connect_timeout_s=0.05, max_backoff_s=0.05
    )
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(5):
            plog.append(rec(f"r{i}"))
        with pytest.raises(PredictionLogError, match="could not write 5 records"):
            plog.close(timeout=0.3)
        assert plog.stats()["lost"] == 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sqlite://",
        "sqlite:///",
        "sqlite:///:memory:",
        "mysql://u@h/db",
        "/tmp/p.db",
        "sqlite:///p.db?mode=ro",
    ],
)
def test_bad_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="prediction log"):
        PredictionLog(bad)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", 0),
        ("flush_interval_s", 0),
        ("max_queue", 0),
        ("on_full", "wait"),
        ("block_timeout_s", -1),
    ],
)
def test_bad_settings_are_config_errors(url: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        PredictionLog(url, **{key: value})  # type: ignore[arg-type]


def test_unreachable_database_is_a_prediction_log_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PredictionLogError, match="Cannot open the prediction log"):
        PredictionLog(f"sqlite:///{blocker}/p.db")


def test_object_arrays_from_grpc_are_stored_as_json_lists(tmp_path: Path) -> None:
    """gRPC hands the core numpy columns, strings as object arrays; they log as plain JSON."""
    import numpy as np

    from flywheel.predlog import PredictionLog, PredictionRecord

    plog = PredictionLog(f"sqlite:///{tmp_path}/p.db")
    plog.start()
    inputs = {"plan": np.array(["basic", "pro"], dtype=object), "x": np.array([1.5, 2.0])}
    plog.append(PredictionRecord("r1", 1.0, "m", "1", "grpc", inputs, np.array([0, 1]), 0.1))
    plog.close()
    (row,) = PredictionLog(f"sqlite:///{tmp_path}/p.db").read()
    assert row["inputs"] == {"plan": ["basic", "pro"], "x": [1.5, 2.0]}
    assert row["outputs"] == [0, 1]


def test_sqlite_batch_larger_than_one_insert_keeps_every_row(tmp_path: Path) -> None:
    """The SQLite store writes a batch as several multi-row INSERTs: every row lands once,
    with its own values, and duplicates are ignored across statement boundaries."""
    store = SqliteStore(str(tmp_path / "p.db"))

    def row(rid: str, i: int) -> tuple[object, ...]:
        return (
            rid,
            float(i),
            "churn",
            "1",
            "rest",
            f'{{"x": [{i}]}}',
            '{"labels": [0]}',
            0.5,
            None,
            None,
        )

    rows = [row(f"r{i}", i) for i in range(601)]  # more than two statements' worth
    try:
        assert store.write_predictions(rows) == 601
        again = [*rows[248:253], row("new", 601)]  # straddles a statement boundary
        assert store.write_predictions(again) == 1
        with sqlite3.connect(tmp_path / "p.db") as conn:
            stored = conn.execute(
                "SELECT request_id, ts, inputs FROM prediction_log ORDER BY id"
            ).fetchall()
    finally:
        store.close()
    assert stored == [(r[0], r[1], r[5]) for r in [*rows, row("new", 601)]]


def test_append_encodes_the_record_when_called(plog: PredictionLog) -> None:
    """What is logged is the record as it was appended, not as it is when the writer runs."""
    inputs = {"x": [1.0]}
    outputs = {"labels": np.array([0])}
    plog.pause()
    assert plog.append(rec("a", inputs=inputs, outputs=outputs))
    inputs["x"][0] = 2.0
    outputs["labels"][0] = 1
    plog.resume()
    plog.flush()
    (row,) = plog.read()
    assert row["inputs"] == {"x": [1.0]} and row["outputs"] == {"labels": [0]}


def encoded(r: PredictionRecord) -> Row:
    rid = r.request_id
    return (
        rid,
        r.ts,
        r.model,
        r.version,
        r.protocol,
        encode_json(r.inputs, rid, "inputs"),
        encode_json(r.outputs, rid, "outputs"),
        r.latency_ms,
        r.client_id,
        r.role,
    )


def test_append_row_stores_what_append_stores(url: str) -> None:
    plog = open_prediction_log(url, flush_interval_s=0.01)
    outputs = {"labels": np.array([1]), "probabilities": np.array([[0.25, 0.75]], np.float32)}
    assert plog.append(rec("via-record", outputs=outputs))
    assert plog.append_row(encoded(rec("via-row", outputs=outputs)))
    plog.flush()
    a, b = plog.read()
    assert (a["request_id"], b["request_id"]) == ("via-record", "via-row")
    assert {k: v for k, v in a.items() if k != "request_id"} == {
        k: v for k, v in b.items() if k != "request_id"
    }
    assert b["outputs"] == {"labels": [1], "probabilities": [[0.25, 0.75]]}
    plog.close()
    assert plog.append_row(encoded(rec("late"))) is False  # closed: dropped, counted
    assert plog.dropped() == 1 and plog.written() == 2


def test_append_row_applies_the_same_backpressure(url: str) -> None:
    plog = open_prediction_log(url, max_queue=3, on_full="drop", flush_interval_s=0.01)
    plog.pause()
    time.sleep(0.05)
    results = [plog.append_row(encoded(rec(f"r{i}"))) for i in range(5)]
    assert results == [True] * 3 + [False] * 2 and plog.dropped() == 2
    plog.resume()
    plog.close()
    assert plog.written() == 3


def test_encode_json_keeps_non_string_keys_and_never_raises() -> None:
    assert encode_json({1: [0.5], "a": np.array([2, 3])}, "r", "inputs") == '{"1":[0.5],"a":[2,3]}'
    assert encode_json({"plan": np.array(["x", None], dtype=object)}, "r", "inputs") == (
        '{"plan":["x",null]}'
    )
    assert "$unencodable" in encode_json({"x": object()}, "r", "inputs")


def test_column_rows_read_back_named_and_through_the_view(plog: PredictionLog, url: str) -> None:
    from tests.unit.predlog_helpers import check_columns_rows_read_back_named

    def view_rows() -> list:
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(
                "SELECT request_id, inputs FROM prediction_log_named ORDER BY id"
            ).fetchall()

    check_columns_rows_read_back_named(plog, view_rows)


def test_labels_find_rows_the_writer_commits_while_they_are_looked_up() -> None:
    """The race CI met (feedback right after 55 answers: 53 'unknown'): the first lookup
    misses rows in flight; the writer commits them before anyone asks whether rows are
    pending. Pending is asked before the lookup, so the lookup runs again and finds them."""
    from contextlib import contextmanager

    from flywheel.predlog.feedback import store_labels

    committed: set[str] = set()
    stored: list[object] = []
    in_flight = {"a", "b"}

    class Store:
        def known_ids(self, ids: list[str]) -> set[str]:
            found = committed & set(ids)
            committed.update(in_flight)  # the writer commits right after this lookup
            in_flight.clear()
            return found

        def client_matches(self, ids: list[str]) -> dict[str, object]:
            return {}

        def add_feedback(self, rows: list[object]) -> None:
            stored.extend(rows)

    @contextmanager
    def reading(what: str) -> Iterator[Store]:
        yield Store()

    result = store_labels(reading, [("a", 1), ("b", 0)], 1.0, lambda: bool(in_flight), lambda: None)
    assert (result.accepted, result.unknown) == (2, [])
    assert len(stored) == 2
