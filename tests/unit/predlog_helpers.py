"""Shared by the prediction log tests on SQLite (unit) and PostgreSQL (integration)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flywheel.predlog import PredictionLog, PredictionRecord


def append_from_threads(
    plog: PredictionLog,
    make: Callable[[str, float], PredictionRecord],
    threads: int = 4,
    per_thread: int = 2500,
) -> None:
    """Append ``threads * per_thread`` records (ids ``t<thread>-<i>``) concurrently; return
    once every thread is done."""
    workers = [
        threading.Thread(
            target=lambda t=t: [plog.append(make(f"t{t}-{i}", 1e9 + i)) for i in range(per_thread)]
        )
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def check_columns_rows_read_back_named(plog: PredictionLog, view_rows: Callable[[], list]) -> None:
    """Rows whose inputs are a JSON array of columns come back named, from ``read()`` and
    from the ``prediction_log_named`` view; object rows are untouched; names are immutable.
    ``view_rows()`` returns (request_id, inputs JSON text or object) ordered by id."""
    from flywheel.predlog import encode_json

    assert plog.register_inputs("churn", "7", ["tenure", "plan"])
    assert plog.register_inputs("churn", "7", ("tenure", "plan"))  # idempotent
    assert not plog.register_inputs("churn", "7", ["plan", "tenure"])  # names are immutable
    columns = [[3.0, None], ["basic", "pro"]]
    outputs = {"labels": [1, 0], "probabilities": [[0.2, 0.8], [0.9, 0.1]]}
    plog.append_row(
        (
            "c1",
            1.0,
            "churn",
            "7",
            "rest",
            encode_json(columns, "c1", "inputs"),
            encode_json(outputs, "c1", "outputs"),
            0.5,
            None,
            None,
        )
    )
    plog.append(PredictionRecord("d1", 2.0, "churn", "7", "rest", {"tenure": [4.0]}, {}, 0.5))
    plog.append_row(
        (
            "u1",
            3.0,
            "other",
            "1",
            "rest",
            encode_json([[1.0]], "u1", "inputs"),
            "{}",
            0.5,
            None,
            None,
        )
    )
    plog.flush()
    by_id = {r["request_id"]: r for r in plog.read()}
    assert by_id["c1"]["inputs"] == {"tenure": [3.0, None], "plan": ["basic", "pro"]}
    assert by_id["c1"]["outputs"] == outputs
    assert by_id["d1"]["inputs"] == {"tenure": [4.0]}
    assert by_id["u1"]["inputs"] == [[1.0]]  # no names registered: left as stored
    import orjson

    view = {rid: orjson.loads(v) if isinstance(v, str) else v for rid, v in view_rows()}
    assert view == {
        "c1": {"tenure": [3.0, None], "plan": ["basic", "pro"]},
        "d1": {"tenure": [4.0]},
        "u1": [[1.0]],
    }


def _row(rid: str, client: str | None, ts: float = 1.0) -> tuple:
    return (rid, ts, "churn", "1", "rest", '{"x": [1.0]}', '{"labels": [1]}', 0.5, client, None)


def check_client_ids_and_feedback_matching(plog: PredictionLog) -> None:
    """The server's id keys the rows; a client id (reused or not) rides along. Labels match
    a server id first, else a client id exactly one prediction carries; others are
    unknown."""
    for i in range(4):  # one client reusing its X-Request-ID: four answers, four rows
        plog.append_row(_row(f"s{i}", "dup"))
    plog.append_row(_row("s9", "once"))
    plog.append_row(_row("s8", "s0"))  # a client id that is another row's server id
    plog.flush()
    assert plog.count() == 6 and plog.stats()["duplicates"] == 0
    assert sorted((r["request_id"], r["client_id"]) for r in plog.read()) == [
        ("s0", "dup"),
        ("s1", "dup"),
        ("s2", "dup"),
        ("s3", "dup"),
        ("s8", "s0"),
        ("s9", "once"),
    ]
    result = plog.label([("s1", 1), ("once", 0), ("dup", 1), ("s0", 0), ("never", 1)], ts=10.0)
    assert result.accepted == 3
    assert result.unknown == ["dup", "never"]  # "dup" names four predictions: ambiguous
    assert result.matched == {"s1": "s1", "once": "s9", "s0": "s0"}  # a server id wins
    labels = {r["request_id"]: r["label"] for r in plog.read()}
    assert labels == {"s0": 0, "s1": 1, "s2": None, "s3": None, "s8": None, "s9": 0}
    assert plog.feedback("dup", 1) is False
    plog.append_row(_row("s7", "late"))  # still queued: feedback flushes, then finds it
    assert plog.feedback("late", 1) is True
    assert {r["request_id"]: r["label"] for r in plog.read()}["s7"] == 1


WEIRD = ["a,b", 'q"uote', "back\\slash", "ünï ✓", "[x]", "],[", "null", ""]


def fill_for_reads(plog: PredictionLog) -> None:
    """A log the read API tests read: registered and unregistered versions, one-row and
    multi-row requests, both input forms, awkward strings, labels (latest wins)."""
    from flywheel.predlog import encode_json

    assert plog.register_inputs(
        "churn",
        "1",
        ["tenure", "plan", "version"],
        numeric=[True, False, True],
        classes=["no", "yes"],
    )

    def add(rid: str, ts: float, columns: list, labels: list, client: str | None = None) -> None:
        probas = [[0.25, 0.75] if lab == "yes" else [0.9, 0.1] for lab in labels]
        outputs = {"labels": labels, "probabilities": probas}
        plog.append_row(
            (rid, ts, "churn", "1", "rest", encode_json(columns, rid, "inputs"),
             encode_json(outputs, rid, "outputs"), 1.5, client, None)
        )  # fmt: skip

    add("r1", 100.0, [[3.0], ["basic"], [7.0]], ["yes"], client="c1")
    add("r2", 101.0, [[1.0, None], ["pro", None], [7, 8]], ["no", "yes"])  # two rows
    for i, text in enumerate(WEIRD):
        add(f"w{i}", 102.0, [[float(i)], [text], [1.0]], ["no"])  # same ts: keyset ties
    add("early", 50.0, [[0.5], ["basic"], [1.0]], ["no"])  # logged late, read first
    plog.append(  # a named-object row of a registered version
        PredictionRecord("n1", 103.0, "churn", "1", "python", {"tenure": [9], "plan": ["max"]},
                         {"labels": ["yes"], "probabilities": [[0.4, 0.6]]}, 2.0)
    )  # fmt: skip
    plog.append(  # a version nothing registered: typed from what is read
        PredictionRecord("u1", 104.0, "churn", "2", "python", {"tenure": [5.0], "extra": ["e"]},
                         {"labels": ["no"], "probabilities": [[0.8, 0.2]]}, 2.0)
    )  # fmt: skip
    plog.append(PredictionRecord("x1", 100.5, "other", "1", "rest", {"a": [1]}, {}, 1.0))
    plog.flush()
    assert plog.feedback("r1", "no", ts=1_000.0)
    assert plog.feedback("r1", "yes", ts=2_000.0)  # the correction: latest wins
    assert plog.feedback("r2", ["yes", "no"], ts=1_500.0)  # one label per row
    assert plog.feedback("n1", "maybe", ts=1_600.0)  # not a class, but a string: kept


def check_reads(url: str, plog: PredictionLog) -> None:
    """:func:`predictions` and :func:`labels` over the log :func:`fill_for_reads` made."""
    import pyarrow as pa

    from flywheel.predlog.read import TIMESTAMP, labels, predictions

    batches = list(predictions(url, "churn", batch_rows=3))
    assert len(batches) == 5  # 14 logged requests of churn, 3 a chunk: streamed
    table = pa.Table.from_batches(batches)
    assert table.schema.names == [
        "request_id", "row", "client_id", "ts", "model", "version", "role", "protocol",
        "latency_ms", "tenure", "plan", "input_version", "prediction", "proba_no", "proba_yes",
        "label", "label_ts",
    ]  # fmt: skip
    types = {f.name: f.type for f in table.schema}
    assert (types["tenure"], types["plan"], types["input_version"]) == (
        pa.float64(), pa.string(), pa.float64()
    )  # fmt: skip
    assert (types["ts"], types["label_ts"], types["prediction"]) == (
        TIMESTAMP,
        TIMESTAMP,
        pa.string(),
    )
    rows = table.to_pylist()
    order = [(r["request_id"], r["row"]) for r in rows]
    assert order == [("early", 0), ("r1", 0), ("r2", 0), ("r2", 1)] + [
        (f"w{i}", 0) for i in range(len(WEIRD))
    ] + [("n1", 0), ("u1", 0)]  # fmt: skip
    by = {(r["request_id"], r["row"]): r for r in rows}
    r1 = by[("r1", 0)]
    assert (r1["client_id"], r1["tenure"], r1["plan"], r1["input_version"]) == (
        "c1",
        3.0,
        "basic",
        7.0,
    )
    assert (r1["prediction"], r1["proba_yes"], r1["label"]) == ("yes", 0.75, "yes")
    assert r1["ts"].timestamp() == 100.0 and r1["label_ts"].timestamp() == 2_000.0
    assert r1["model"] == "churn" and r1["protocol"] == "rest" and r1["latency_ms"] == 1.5
    assert [(by[("r2", i)]["tenure"], by[("r2", i)]["plan"], by[("r2", i)]["label"]) for i in (0, 1)] == [
        (1.0, "pro", "yes"), (None, None, "no")
    ]  # fmt: skip
    assert [by[(f"w{i}", 0)]["plan"] for i in range(len(WEIRD))] == WEIRD
    assert by[("w0", 0)]["label"] is None and by[("w0", 0)]["label_ts"] is None
    n1 = by[("n1", 0)]
    assert (n1["tenure"], n1["plan"], n1["input_version"], n1["label"]) == (
        9.0,
        "max",
        None,
        "maybe",
    )
    u1 = by[("u1", 0)]
    assert (u1["version"], u1["tenure"], u1["proba_no"], u1["prediction"]) == ("2", 5.0, 0.8, "no")

    ranged = pa.Table.from_batches(predictions(url, "churn", "1", start=101.0, end=103.0))
    assert sorted(set(ranged.column("request_id").to_pylist())) == sorted(
        ["r2", *(f"w{i}" for i in range(len(WEIRD)))]
    )
    plain = pa.Table.from_batches(predictions(plog, "churn", with_labels=False))
    assert plain.num_rows == table.num_rows and plain.column("label").null_count == plain.num_rows
    assert list(predictions(url, "nobody")) == []

    got = pa.Table.from_batches(labels(url, "churn", start=1_000.0, end=2_000.0)).to_pylist()
    assert [(r["request_id"], r["label"], r["label_ts"].timestamp()) for r in got] == [
        ("r1", '"no"', 1_000.0), ("r2", '["yes","no"]', 1_500.0), ("n1", '"maybe"', 1_600.0)
    ]  # fmt: skip
    assert sum(b.num_rows for b in labels(url)) == 4
