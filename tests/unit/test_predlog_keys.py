"""The prediction log's own package: keyed by the server's id, the client's id beside it,
labels matched to either, older logs migrated, and nothing of the serving stack imported."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.predlog import PredictionLog, PredictionRecord, open_prediction_log
from tests.unit.predlog_helpers import check_client_ids_and_feedback_matching

pytestmark = pytest.mark.timeout(60)

SERVING_STACK = (
    "flywheel.serving",
    "fastapi",
    "starlette",
    "grpc",
    "uvicorn",
    "aiomqtt",
    "onnxruntime",
    "prometheus_client",
    "sklearn",
)


def test_the_package_imports_nothing_of_the_serving_stack(tmp_path: Path) -> None:
    """Monitoring reads the log without loading a server: import every module of the
    package and read a log through the Arrow API in a fresh interpreter."""
    code = f"""
import sys, json
import flywheel.predlog, flywheel.predlog.read, flywheel.predlog.feedback
import flywheel.predlog.sqlite, flywheel.predlog.postgres
from flywheel.predlog import PredictionRecord, open_prediction_log
from flywheel.predlog.read import labels, predictions
url = "sqlite:///{tmp_path}/p.db"
with open_prediction_log(url) as plog:
    plog.append(PredictionRecord("r1", 1.0, "m", "1", "rest", {{"x": [1.0]}}, {{"labels": [1]}}, 0.1))
    plog.flush()
    plog.feedback("r1", 1)
rows = sum(b.num_rows for b in predictions(url, "m"))
rows += sum(b.num_rows for b in labels(url, "m"))
banned = {SERVING_STACK!r}
print(json.dumps({{"rows": rows, "loaded": sorted(
    m for m in sys.modules if m.startswith(banned))}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rows": 2, "loaded": []}


def test_the_old_serving_modules_are_gone() -> None:
    import importlib.util

    assert importlib.util.find_spec("flywheel.serving.predlog") is None
    assert importlib.util.find_spec("flywheel.serving.predlog_sql") is None


def test_client_ids_never_key_rows_and_labels_match_either_id(tmp_path: Path) -> None:
    with open_prediction_log(f"sqlite:///{tmp_path}/p.db", flush_interval_s=0.01) as plog:
        check_client_ids_and_feedback_matching(plog)


# --------------------------------------------------------------------------- migration

_OLD_DDL = (
    """CREATE TABLE prediction_log (
        id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, ts REAL NOT NULL,
        model TEXT NOT NULL, version TEXT NOT NULL, protocol TEXT NOT NULL,
        inputs TEXT NOT NULL, outputs TEXT NOT NULL, latency_ms REAL NOT NULL)""",
    "CREATE UNIQUE INDEX prediction_log_request ON prediction_log (request_id, model, version)",
    "CREATE INDEX prediction_log_ts ON prediction_log (ts)",
    """CREATE TABLE prediction_feedback (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL,
        label TEXT NOT NULL, received_at REAL NOT NULL)""",
    """CREATE TABLE prediction_inputs (model TEXT NOT NULL, version TEXT NOT NULL,
        names TEXT NOT NULL, PRIMARY KEY (model, version))""",
    """CREATE VIEW prediction_log_named AS SELECT p.id, p.request_id, p.ts, p.model,
        p.version, p.protocol, p.inputs, p.outputs, p.latency_ms FROM prediction_log p""",
)


def _old_log(path: Path, rows: list[tuple[str, str]]) -> None:
    """A log as the code before client ids wrote it: ``rows`` of (request_id, version)."""
    with sqlite3.connect(path) as conn:
        for ddl in _OLD_DDL:
            conn.execute(ddl)
        conn.executemany(
            "INSERT INTO prediction_log (request_id, ts, model, version, protocol, inputs, "
            "outputs, latency_ms) VALUES (?, 1.0, 'churn', ?, 'rest', '{\"x\": [1]}', "
            "'{\"labels\": [0]}', 0.5)",
            rows,
        )
        conn.execute("INSERT INTO prediction_inputs VALUES ('churn', '1', '[\"x\"]')")


def _indexes(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'prediction_log' AND sql IS NOT NULL"
            ).fetchall()
        )


def test_an_older_sqlite_log_is_migrated_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _old_log(path, [("a", "1"), ("b", "1")])
    with open_prediction_log(f"sqlite:///{path}", flush_interval_s=0.01) as plog:
        plog.append(PredictionRecord("c", 2.0, "churn", "1", "rest", {"x": [2]}, {}, 0.1, "mine"))
        plog.append(PredictionRecord("a", 3.0, "churn", "2", "rest", {"x": [3]}, {}, 0.1))
        plog.flush()
        assert plog.stats()["duplicates"] == 1  # "a" is now a key on its own
        rows = {r["request_id"]: (r["version"], r["client_id"]) for r in plog.read()}
        assert rows == {"a": ("1", None), "b": ("1", None), "c": ("1", "mine")}
        assert plog.feedback("mine", 1)  # a client id one prediction carries
    indexes = _indexes(path)
    assert "prediction_log_request" not in indexes  # the old (request_id, model, version) key
    assert "(request_id, role)" in indexes["prediction_log_request_role"]
    assert "client_id IS NOT NULL" in indexes["prediction_log_client"]
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(prediction_inputs)")]
        view = conn.execute("SELECT request_id, client_id FROM prediction_log_named").fetchall()
    assert columns == ["model", "version", "names", "numeric", "classes"]
    assert sorted(view, key=str) == sorted([("a", None), ("b", None), ("c", "mine")], key=str)
    PredictionLog(f"sqlite:///{path}").close()  # opening again changes nothing


def test_an_older_log_whose_rows_share_request_ids_keeps_its_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.db"
    _old_log(path, [("a", "1"), ("a", "2")])  # one request logged for two versions
    with open_prediction_log(f"sqlite:///{path}", flush_interval_s=0.01) as plog:
        assert "keeping the (request_id, model, version) key" in caplog.text
        plog.append(PredictionRecord("b", 2.0, "churn", "1", "rest", {"x": [2]}, {}, 0.1, "c"))
        plog.append(PredictionRecord("b", 2.0, "churn", "1", "rest", {"x": [2]}, {}, 0.1, "c"))
        plog.flush()
        assert plog.count() == 3 and plog.stats()["duplicates"] == 1  # still idempotent
    assert "prediction_log_request" in _indexes(path)
