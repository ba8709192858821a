"""Rollout roles in the prediction log, checked the same way on SQLite (unit) and PostgreSQL
(integration): the (request_id, role) key and the migration to it, the read API's ``role``,
and :func:`flywheel.predlog.outcomes.arm_outcomes`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson

from flywheel.predlog import PredictionLog, PredictionRecord, Row, open_prediction_log
from flywheel.predlog.stores import open_store, parse_url


def row(
    rid: str,
    ts: float,
    labels: list[Any],
    *,
    model: str = "churn",
    version: str = "1",
    role: str | None = None,
    probabilities: bool = True,
    client: str | None = None,
) -> Row:
    """A logged row of one request as the serving core encodes it (one input, ``x``)."""
    probas = [[0.5, 0.5] for _ in labels] if probabilities else None
    outputs = orjson.dumps({"labels": labels, "probabilities": probas}).decode()
    inputs = orjson.dumps([[1.0] * len(labels)]).decode()
    return (rid, ts, model, version, "rest", inputs, outputs, 1.0, client, role)


# --------------------------------------------------------------------------- the key


def check_migrated_log_keeps_rows_and_takes_roles(
    url: str, indexes: Callable[[], dict[str, str]], recreate_old_key: Callable[[], None]
) -> None:
    """An old log (rows "a", "b", a label on "a"; key UNIQUE (request_id)) opened by this
    code: rows kept with no role, key UNIQUE (request_id, role); an old key an older
    process recreates is dropped at the next open; a request's champion and shadow rows are
    both kept; retried batches stay idempotent, rows with no role included."""
    PredictionLog(url).close()
    found = indexes()
    assert "(request_id, role)" in found["prediction_log_request_role"]
    assert "prediction_log_request_id" not in found
    recreate_old_key()  # an older replica reopening the log builds its key again
    assert "prediction_log_request_id" in indexes()
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        assert "prediction_log_request_id" not in indexes()
        before = {r["request_id"]: (r["role"], r["label"]) for r in plog.read()}
        assert before == {"a": (None, 1), "b": (None, None)}
        plog.append_row(row("q", 10.0, ["yes"], role="champion"))
        plog.append_row(row("q", 11.0, ["no"], version="2", role="shadow"))
        plog.append(PredictionRecord("r", 12.0, "churn", "2", "v2", {}, {}, 0.1, role="shadow"))
        plog.append_row(row("q", 13.0, ["yes"], role="champion"))  # a retry: the same key
        plog.append_row(row("b", 14.0, ["no"]))  # no role: collides with the old row "b"
        plog.flush()
        assert plog.count() == 5 and plog.stats()["duplicates"] == 2
        assert plog.feedback("q", "yes")  # by request id: reaches both of q's rows
        rows = sorted((r["request_id"], r["role"], r["version"], r["label"]) for r in plog.read())
    assert rows == [
        ("a", None, "1", 1),
        ("b", None, "1", None),
        ("q", "champion", "1", "yes"),
        ("q", "shadow", "2", "yes"),
        ("r", "shadow", "2", None),
    ]
    check_retried_batch_is_idempotent(url)


def check_retried_batch_is_idempotent(url: str) -> None:
    """The store's batch write, retried whole (its first commit's answer lost): nothing is
    written twice, whichever role the rows carry."""
    kind, target = parse_url(url)
    store = open_store(kind, target)
    batch = [
        row("t1", 20.0, ["yes"]),
        row("t1", 20.0, ["yes"], role="champion"),
        row("t1", 20.0, ["no"], version="2", role="shadow"),
        row("t2", 21.0, ["no"], role="challenger"),
    ]
    try:
        assert store.write_predictions(batch) == 4
        assert store.write_predictions(batch) == 0
        assert store.write_predictions([*batch, row("t2", 22.0, ["no"])]) == 1
    finally:
        store.close()


def check_concurrent_opens_migrate_once(url: str, indexes: Callable[[], dict[str, str]]) -> None:
    """Several processes' connections opening an old log at once: each succeeds, and the
    log ends with the one new key."""
    kind, target = parse_url(url)
    errors: list[BaseException] = []

    def open_close() -> None:
        try:
            open_store(kind, target, timeout_s=30).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_close) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    keys = {
        name
        for name, sql in indexes().items()
        if "UNIQUE" in sql.upper() and not name.endswith("_pkey")
    }
    assert keys == {"prediction_log_request_role"}


# --------------------------------------------------------------------------- read API


def check_reads_carry_roles(url: str) -> None:
    """The read API's ``role`` column and filter; a label joins every row of its request;
    a client id reaches a request logged twice (once per role) without being ambiguous."""
    import pyarrow as pa

    from flywheel.predlog.read import labels, predictions

    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        plog.register_inputs("churn", "1", ["x"], numeric=[True], classes=["no", "yes"])
        plog.register_inputs("churn", "2", ["x"], numeric=[True], classes=["no", "yes"])
        plog.append_row(row("q1", 1.0, ["yes"], role="champion", client="mine"))
        plog.append_row(row("q1", 1.5, ["no"], version="2", role="shadow", client="mine"))
        plog.append_row(row("q2", 2.0, ["no", "yes"], role="champion"))
        plog.append_row(row("q3", 3.0, ["yes"]))  # no rollout active
        plog.flush()
        assert plog.feedback("mine", "no", ts=100.0)  # one request, two rows: not ambiguous
        assert plog.feedback("q2", ["no", "no"], ts=101.0)

    table = pa.Table.from_batches(predictions(url, "churn"))
    assert table.schema.field("role").type == pa.string()
    assert table.schema.names.index("role") == table.schema.names.index("version") + 1
    got = [
        (r["request_id"], r["row"], r["version"], r["role"], r["prediction"], r["label"])
        for r in table.to_pylist()
    ]
    assert got == [
        ("q1", 0, "1", "champion", "yes", "no"),
        ("q1", 0, "2", "shadow", "no", "no"),
        ("q2", 0, "1", "champion", "no", "no"),
        ("q2", 1, "1", "champion", "yes", "no"),
        ("q3", 0, "1", None, "yes", None),
    ]

    def ids(role: str) -> list[tuple[str, int]]:
        rows = pa.Table.from_batches(predictions(url, "churn", role=role)).to_pylist()
        assert {r["role"] for r in rows} <= {None if role == "" else role}
        return [(r["request_id"], r["row"]) for r in rows]

    assert ids("champion") == [("q1", 0), ("q2", 0), ("q2", 1)]
    assert ids("shadow") == [("q1", 0)]
    assert ids("") == [("q3", 0)]
    assert list(predictions(url, "churn", role="challenger")) == []
    one_version = pa.Table.from_batches(predictions(url, "churn", "2", role="shadow"))
    assert one_version.column("request_id").to_pylist() == ["q1"]
    listed = pa.Table.from_batches(labels(url, "churn")).to_pylist()
    assert sorted((r["request_id"], r["role"], r["label"]) for r in listed) == [
        ("q1", "champion", '"no"'),
        ("q1", "shadow", '"no"'),
        ("q2", "champion", '["no","no"]'),
    ]


# --------------------------------------------------------------------------- outcomes


def fill_classifier_arms(plog: PredictionLog) -> None:
    """churn (classes "no", "yes"): version 1 the champion, 2 its shadow, on the same
    requests; a no-rollout row; rows outside [100, 150) and another model's."""
    for version in ("1", "2"):
        plog.register_inputs("churn", version, ["x"], numeric=[True], classes=["no", "yes"])
    both = {  # request: (ts, champion's labels, shadow's labels)
        "A": (100.0, ["yes"], ["no"]),
        "B": (101.0, ["no", "yes"], ["no", "no"]),
        "C": (102.0, ["yes"], ["yes"]),  # never labelled
        "D": (103.0, ["yes", "no"], ["no", "no"]),
        "E": (104.0, ["yes", "yes"], ["yes", "no"]),  # a label list of the wrong length
    }
    for rid, (ts, champion, shadow) in both.items():
        plog.append_row(row(rid, ts, champion, role="champion"))
        plog.append_row(row(rid, ts + 0.5, shadow, version="2", role="shadow"))
    plog.append_row(row("N", 105.0, ["yes"]))  # no rollout active
    plog.append_row(row("old", 50.0, ["yes"], role="champion"))  # before since
    plog.append_row(row("late", 150.0, ["yes"], role="champion"))  # at until: excluded
    plog.append_row(row("other", 100.0, ["yes"], model="other", role="champion"))
    plog.flush()
    assert plog.feedback("A", "no", ts=1_000.0)
    assert plog.feedback("A", "yes", ts=2_000.0)  # the correction: the latest wins
    assert plog.feedback("B", ["no", "yes"])
    assert plog.feedback("D", "no")  # one label for both rows
    assert plog.feedback("E", ["yes", "no", "yes"])  # 3 labels for 2 rows: none applies
    assert plog.feedback("N", "no")
    for rid in ("old", "late", "other"):
        assert plog.feedback(rid, "yes")


def check_classifier_arms(url: str) -> None:
    from flywheel.predlog.outcomes import arm_outcomes, labels_mark

    assert labels_mark(url) == (9, 9)  # the rollout's cue to count again: 9 labels stored

    arms = arm_outcomes(url, "churn", 100.0, until=150.0)
    assert set(arms) == {("1", "champion"), ("2", "shadow"), ("1", None)}
    counted = ("requests", "rows", "labelled", "correct", "positives", "caught")
    champion = arms[("1", "champion")]
    # A, B, D labelled (5 rows); right: A, B's 2, D's second; "yes" (registered second):
    # labelled A and B's second, both predicted; predicted "yes": A, B's second, D's first.
    assert [getattr(champion, k) for k in counted] == [5, 8, 5, 4, 2, 2]
    assert champion.predicted_positive == 3
    shadow = arms[("2", "shadow")]  # right: B's first, D's two; never "yes"
    assert [getattr(shadow, k) for k in counted] == [5, 8, 5, 3, 2, 0]
    assert shadow.predicted_positive == 0
    assert arms[("1", None)].to_dict() == {
        "version": "1",
        "role": None,
        "requests": 1,
        "rows": 1,
        "labelled": 1,
        "correct": 0,
        "positives": 0,
        "caught": 0,
        "predicted_positive": 1,
        "abs_error_sum": 0.0,
        "sq_error_sum": 0.0,
    }
    by_no = arm_outcomes(url, "churn", 100.0, until=150.0, positive="no")[("1", "champion")]
    # "no": B's first and D's two; caught: B's first, D's second; predicted: those two.
    assert (by_no.positives, by_no.caught, by_no.predicted_positive) == (3, 2, 2)
    everything = arm_outcomes(url, "churn", 0.0)[("1", "champion")]
    assert (everything.requests, everything.labelled) == (7, 7)  # old and late join
    assert arm_outcomes(url, "nobody", 0.0) == {}


def fill_number_class_arms(plog: PredictionLog) -> None:
    """fraud: version 1 (integer classes 0, 1) the champion, version 2 (classes false,
    true) the challenger; labels sent as strings, numbers and booleans."""
    plog.register_inputs("fraud", "1", ["x"], numeric=[True], classes=[0, 1])
    plog.register_inputs("fraud", "2", ["x"], numeric=[True], classes=[False, True])
    requests = {  # request: (champion's, challenger's, label)
        "F1": ([1], [True], "1"),
        "F2": ([0], [True], True),
        "F3": ([1, 0], [True, True], [1.0, False]),
        "F4": ([0], [False], "0"),
        "F5": ([1], [False], "abc"),  # not a class: labelled, and wrong for both
    }
    for i, (rid, (champion, challenger, _)) in enumerate(requests.items()):
        plog.append_row(row(rid, 10.0 + i, champion, model="fraud", role="champion"))
        plog.append_row(
            row(rid, 10.5 + i, challenger, model="fraud", version="2", role="challenger")
        )
    plog.flush()
    for rid, (_, _, label) in requests.items():
        assert plog.feedback(rid, label)


def check_number_class_arms(url: str) -> None:
    from flywheel.predlog.outcomes import arm_outcomes

    arms = arm_outcomes(url, "fraud", 0.0)
    counted = ("requests", "rows", "labelled", "correct", "positives", "caught")
    champion = arms[("1", "champion")]
    # right: F1, F3's two, F4; positive 1 (second class): F1, F2, F3's first; caught F1, F3.
    assert [getattr(champion, k) for k in counted] == [5, 6, 6, 4, 3, 2]
    assert champion.predicted_positive == 3  # F1, F3's first, F5
    challenger = arms[("2", "challenger")]
    # right: F1, F2, F3's first, F4; positive true: F1, F2, F3's first, all caught.
    assert [getattr(challenger, k) for k in counted] == [5, 6, 6, 4, 3, 3]
    assert challenger.predicted_positive == 4
    assert challenger.abs_error_sum == 0.0  # a classifier: no error sums


def fill_regressor_arms(plog: PredictionLog) -> None:
    """ltv: version 1 registered without classes (a regressor) the champion; version 2,
    registered by nobody, its shadow."""
    plog.register_inputs("ltv", "1", ["x"], numeric=[True])
    requests = {  # request: (champion's, shadow's or None, label or None)
        "R1": ([10.5], [12.0], 12.5),
        "R2": ([1.0, 2.0], [1.5, 3.0], [1.5, "2"]),
        "R3": ([3.0], [3.0], None),
        "R4": ([4.0], None, "n/a"),  # not a number: unlabelled
    }
    for i, (rid, (champion, shadow, _)) in enumerate(requests.items()):
        kw: dict[str, Any] = {"model": "ltv", "probabilities": False}
        plog.append_row(row(rid, 10.0 + i, champion, role="champion", **kw))
        if shadow is not None:
            plog.append_row(row(rid, 10.5 + i, shadow, version="2", role="shadow", **kw))
    plog.flush()
    for rid, (_, _, label) in requests.items():
        if label is not None:
            assert plog.feedback(rid, label)


def check_regressor_arms(url: str) -> None:
    from flywheel.predlog.outcomes import arm_outcomes

    arms = arm_outcomes(url, "ltv", 0.0)
    champion = arms[("1", "champion")]
    # errors: R1 2.0; R2 0.5 and 0.0
    assert (champion.requests, champion.rows, champion.labelled) == (4, 5, 3)
    assert (champion.abs_error_sum, champion.sq_error_sum) == (2.5, 4.25)
    assert champion.correct == 0
    shadow = arms[("2", "shadow")]  # errors: R1 0.5; R2 0.0 and 1.0
    assert (shadow.requests, shadow.rows, shadow.labelled) == (3, 4, 3)
    assert (shadow.abs_error_sum, shadow.sq_error_sum) == (1.5, 1.25)
