"""Shared by the prediction log tests on SQLite (unit) and PostgreSQL (integration)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flywheel.serving.predlog import PredictionLog, PredictionRecord


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
    from flywheel.serving.predlog import encode_json

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
        )
    )
    plog.append(PredictionRecord("d1", 2.0, "churn", "7", "rest", {"tenure": [4.0]}, {}, 0.5))
    plog.append_row(
        ("u1", 3.0, "other", "1", "rest", encode_json([[1.0]], "u1", "inputs"), "{}", 0.5)
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
