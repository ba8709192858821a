"""Rollout roles in the embedded SQLite log: one row per (request, role), the migration of a
log written before roles, the read API's ``role``, and per-arm outcomes from the labels
(PostgreSQL: tests/integration/test_predlog_roles_postgres.py)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.errors import DataError
from flywheel.predlog import PredictionLog, PredictionRecord, open_prediction_log
from flywheel.predlog.outcomes import arm_outcomes, class_text
from flywheel.predlog.records import encode_record
from flywheel.predlog.sqlite import SqliteStore
from tests.unit import predlog_roles_helpers as roles

pytestmark = pytest.mark.timeout(60)

# The schema as the code before roles made it (client ids, UNIQUE (request_id)).
_BEFORE_ROLES = (
    """CREATE TABLE prediction_log (
        id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, ts REAL NOT NULL,
        model TEXT NOT NULL, version TEXT NOT NULL, protocol TEXT NOT NULL,
        inputs TEXT NOT NULL, outputs TEXT NOT NULL, latency_ms REAL NOT NULL,
        client_id TEXT)""",
    "CREATE UNIQUE INDEX prediction_log_request_id ON prediction_log (request_id)",
    "CREATE INDEX prediction_log_ts ON prediction_log (ts)",
    """CREATE INDEX prediction_log_client ON prediction_log (client_id)
        WHERE client_id IS NOT NULL""",
    """CREATE TABLE prediction_feedback (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL,
        label TEXT NOT NULL, received_at REAL NOT NULL)""",
    """CREATE TABLE prediction_inputs (model TEXT NOT NULL, version TEXT NOT NULL,
        names TEXT NOT NULL, numeric TEXT, classes TEXT, PRIMARY KEY (model, version))""",
    """CREATE VIEW prediction_log_named AS SELECT p.id, p.request_id, p.ts, p.model,
        p.version, p.protocol, p.inputs, p.outputs, p.latency_ms, p.client_id
        FROM prediction_log p""",
)


def _log_before_roles(path: Path) -> None:
    """Rows "a" and "b" of churn version 1, and a label on "a"."""
    with sqlite3.connect(path) as conn:
        for ddl in _BEFORE_ROLES:
            conn.execute(ddl)
        conn.executemany(
            "INSERT INTO prediction_log (request_id, ts, model, version, protocol, inputs, "
            "outputs, latency_ms) VALUES (?, 1.0, 'churn', '1', 'rest', '[[1.0]]', "
            '\'{"labels": ["yes"]}\', 0.5)',
            [("a",), ("b",)],
        )
        conn.execute("INSERT INTO prediction_feedback VALUES (1, 'a', '1', 5.0)")


def _indexes(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'prediction_log' AND sql IS NOT NULL"
            ).fetchall()
        )


def test_a_log_before_roles_is_migrated_and_keys_rows_by_request_and_role(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    _log_before_roles(path)

    def recreate_old_key() -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "CREATE UNIQUE INDEX prediction_log_request_id ON prediction_log (request_id)"
            )

    roles.check_migrated_log_keeps_rows_and_takes_roles(
        f"sqlite:///{path}", lambda: _indexes(path), recreate_old_key
    )
    with sqlite3.connect(path) as conn:
        stored = conn.execute("SELECT request_id, role FROM prediction_log_named ORDER BY id")
        assert stored.fetchall()[:3] == [("a", ""), ("b", ""), ("q", "champion")]
        column = [r for r in conn.execute("PRAGMA table_info(prediction_log)") if r[1] == "role"]
    assert [(c[2], c[3], c[4]) for c in column] == [("TEXT", 1, "''")]  # type, NOT NULL, default
    PredictionLog(f"sqlite:///{path}").close()  # opening again changes nothing
    assert set(_indexes(path)) == {
        "prediction_log_request_role",
        "prediction_log_ts",
        "prediction_log_client",
    }


def test_processes_opening_an_old_log_together_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _log_before_roles(path)
    roles.check_concurrent_opens_migrate_once(f"sqlite:///{path}", lambda: _indexes(path))


def test_a_new_log_keeps_a_requests_rows_per_role(tmp_path: Path) -> None:
    roles.check_retried_batch_is_idempotent(f"sqlite:///{tmp_path}/p.db")
    store = SqliteStore(str(tmp_path / "p.db"))
    try:  # a batch with no role at all: the statement leaves the role to its default
        no_roles = [roles.row("n1", 30.0, ["no"]), roles.row("n2", 31.0, ["no"])]
        assert store.write_predictions(no_roles) == 2
        assert store.write_predictions(no_roles) == 0
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "p.db") as conn:
        stored = conn.execute("SELECT request_id, role FROM prediction_log ORDER BY id")
        assert stored.fetchall() == [
            ("t1", ""),
            ("t1", "champion"),
            ("t1", "shadow"),
            ("t2", "challenger"),
            ("t2", ""),
            ("n1", ""),
            ("n2", ""),
        ]


def test_a_record_carries_its_role_into_the_row() -> None:
    record = PredictionRecord("r", 1.0, "m", "1", "rest", {}, {}, 0.1, "c", "shadow")
    assert encode_record(record)[8:] == ("c", "shadow")
    assert encode_record(PredictionRecord("r", 1.0, "m", "1", "rest", {}, {}, 0.1))[9] is None


def test_the_read_api_gives_and_filters_roles(tmp_path: Path) -> None:
    roles.check_reads_carry_roles(f"sqlite:///{tmp_path}/p.db")
    with pytest.raises(DataError, match="role must be"):
        from flywheel.predlog.read import predictions

        predictions(f"sqlite:///{tmp_path}/p.db", "churn", role=1)  # type: ignore[arg-type]


def test_arm_outcomes_of_a_classifier_with_string_classes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        roles.fill_classifier_arms(plog)
    roles.check_classifier_arms(url)


def test_arm_outcomes_of_classifiers_with_integer_and_boolean_classes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        roles.fill_number_class_arms(plog)
    roles.check_number_class_arms(url)


def test_arm_outcomes_of_regressors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    with open_prediction_log(url, flush_interval_s=0.01) as plog:
        roles.fill_regressor_arms(plog)
    roles.check_regressor_arms(url)


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ([1, 1.0, True, "1", "1.0", "true", "True", "+1"], "1"),
        ([0, 0.0, False, "0", "false", "FALSE"], "0"),
        ([0.25, "0.25", "2.5e-1"], "0.25"),
        (["yes"], "yes"),
    ],
)
def test_classes_compare_as_canonical_text(values: list, text: str) -> None:
    assert {class_text(v) for v in values} == {text}


def test_what_is_no_class_has_no_text() -> None:
    assert [class_text(v) for v in (None, float("nan"), [1], {"a": 1})] == [None] * 4
    assert class_text("Yes") != class_text("yes")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"since": "yesterday"}, "since must be unix seconds"),
        ({"since": 0.0, "until": float("inf")}, "until must be unix seconds"),
        ({"since": 0.0, "positive": 1}, "positive must be the positive class as text"),
    ],
)
def test_bad_outcome_arguments_are_data_errors(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        arm_outcomes(f"sqlite:///{tmp_path}/p.db", "churn", **kwargs)


def test_outcomes_need_no_adbc_pandas_or_pyarrow(tmp_path: Path) -> None:
    """What the serve-only install has is enough: count arms in a fresh interpreter and
    check what it imported."""
    url = f"sqlite:///{tmp_path}/p.db"
    code = f"""
import json, sys
from flywheel.predlog import open_prediction_log
from flywheel.predlog.outcomes import arm_outcomes
with open_prediction_log({url!r}) as plog:
    row = ("r", 1.0, "m", "1", "rest", "[[1]]", '{{"labels": [1]}}', 0.1, None, "champion")
    plog.append_row(row)
    plog.flush()
    plog.feedback("r", 1)
arms = arm_outcomes({url!r}, "m", 0.0)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pyarrow", "adbc_driver_manager",
    "adbc_driver_sqlite", "adbc_driver_postgresql", "pandas"))
print(json.dumps({{"correct": arms[("1", "champion")].correct, "loaded": loaded}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"correct": 1, "loaded": []}
