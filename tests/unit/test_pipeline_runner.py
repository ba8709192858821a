"""The retraining pipeline's runner: which errors are transient, retries with backoff, the
run record, and cached steps (the real SQLite source, locked by a real second connection)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.config import load_settings
from flywheel.errors import ContractViolation, GateFailed, SourceError
from flywheel.pipelines import retrain
from flywheel.pipelines.runner import PipelineRun, call_with_retries, is_transient
from flywheel.workspace import Workspace


def _locked() -> SourceError:
    """A SourceError raised from the driver's "database is locked", as ingest raises it."""
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as exc:
            raise SourceError("The query failed on 'sqlite:///x.db': database is locked") from exc
    except SourceError as err:
        return err


def test_transient_errors_are_told_from_the_others() -> None:
    assert is_transient(_locked())
    assert is_transient(ConnectionRefusedError("connection refused"))
    assert is_transient(TimeoutError())
    assert not is_transient(sqlite3.OperationalError("no such table: churn_features"))
    assert not is_transient(ValueError("database is locked"))  # not a driver's error class
    violation = ContractViolation("bad rows", violations=[])
    violation.__cause__ = sqlite3.OperationalError("database is locked")
    assert not is_transient(violation)  # a contract violation never is, whatever its cause
    assert not is_transient(GateFailed("worse than the champion"))


def test_a_transient_error_is_retried_with_doubling_backoff() -> None:
    calls, waits = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _locked()
        return "ok"

    told: list[int] = []
    result = call_with_retries(
        flaky, retries=3, backoff_s=0.5, sleep=waits.append, on_retry=lambda n, w, e: told.append(n)
    )
    assert result == "ok"
    assert len(calls) == 3 and waits == [0.5, 1.0] and told == [1, 2]


def test_retries_run_out_and_other_errors_are_not_retried() -> None:
    calls, waits = [], []

    def always_locked() -> None:
        calls.append(1)
        raise _locked()

    with pytest.raises(SourceError):
        call_with_retries(always_locked, retries=2, backoff_s=0.1, sleep=waits.append)
    assert len(calls) == 3 and waits == [0.1, 0.2]

    calls.clear()

    def violation() -> None:
        calls.append(1)
        raise ContractViolation("new rows break the contract", violations=[])

    with pytest.raises(ContractViolation):
        call_with_retries(violation, retries=5, backoff_s=0.1, sleep=waits.append)
    assert len(calls) == 1


HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0.5)
conn.execute("COMMIT")
"""


def _source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, x REAL, y INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, i / 3, i % 2) for i in range(40)])


@pytest.fixture
def small(tmp_path: Path) -> Workspace:
    _source(tmp_path / "src.db")
    settings = load_settings(
        home=tmp_path / "fw",
        source={"url": f"sqlite:///{tmp_path / 'src.db'}", "table": "t", "target": "y",
                "timestamp_column": None, "key_columns": ["id"]},
        retrain={"retries": 6, "retry_backoff_s": 0.1},
    )  # fmt: skip
    return Workspace(settings)


def test_a_locked_source_is_retried_and_the_step_counts_its_attempts(
    small: Workspace, tmp_path: Path
) -> None:
    run = retrain.open_run(small, retrain.manual_trigger("unit"))
    # another process holds the lock for 3 s (SQLite's POSIX locks do not block within one
    # process; the first attempt spends a while importing before it reaches the source)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "src.db"), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    try:
        r = small.settings.retrain
        out = call_with_retries(
            lambda: retrain.execute_step(small, run.id, "ingest"),
            retries=r.retries,
            backoff_s=r.retry_backoff_s,
        )
    finally:
        holder.wait(timeout=30)
    stored = PipelineRun.load(small.settings.home, run.id)
    step = stored.steps["ingest"]
    assert step.status == "done" and step.attempts >= 2, step
    assert out["snapshot_id"] == stored.snapshot_id and out["rows"] == 40
    assert stored.status == "running"


def test_a_step_done_is_not_run_again(small: Workspace, tmp_path: Path) -> None:
    run = retrain.open_run(small, retrain.manual_trigger("unit"))
    first = retrain.execute_step(small, run.id, "ingest")
    (tmp_path / "src.db").unlink()  # running ingest again would fail now
    again = retrain.execute_step(small, run.id, "ingest")
    assert again == first
    assert PipelineRun.load(small.settings.home, run.id).steps["ingest"].attempts == 1
    # the next step cannot skip ahead, and the same trigger key resumes the same run
    with pytest.raises(Exception, match="needs"):
        retrain.execute_step(small, run.id, "train")
    assert retrain.open_run(small, run.trigger).id == run.id


def test_a_contract_violation_fails_the_run_in_the_ledger(small: Workspace, tmp_path: Path) -> None:
    first = retrain.open_run(small, retrain.manual_trigger("first"))
    retrain.execute_step(small, first.id, "ingest")  # infers the contract: y in {0, 1}
    with sqlite3.connect(tmp_path / "src.db") as conn:
        conn.execute("INSERT INTO t VALUES (100, 1.0, 7)")  # y = 7: beyond the contract
    with pytest.raises(ContractViolation):
        retrain.run_retrain(small, trigger=retrain.manual_trigger("second"))
    failed = retrain.latest_unfinished(small)
    assert failed is not None and failed.status == "failed"
    assert failed.error is not None and failed.error["kind"] == "contract"
    assert failed.steps["ingest"].attempts == 1  # not retried
    assert [s.status for s in failed.steps.values()][1:] == ["pending"] * 5
    actions = [e.action for e in small.audit.entries()]
    assert actions[-1] == "pipeline_failed"
