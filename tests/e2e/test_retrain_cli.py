"""`flywheel retrain` as a user runs it, on one small churn world (tests in file order).

Version 1 is trained and promoted on 120 simulated days; then each test simulates a month
more and retrains: a new version with its rollout; a contract violation on the new days
(exit 5, ``pipeline_failed``, the webhook told, nothing new); a retrain killed with SIGKILL
once its model is trained, then resumed (one snapshot, one FINISHED MLflow run, one
version); a source locked by another process while the pipeline starts (retried).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tests.e2e.conftest import FLYWHEEL_BIN, flywheel, newcomer_env

pytestmark = pytest.mark.slow

HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


class _Hook(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cwd = tmp_path_factory.mktemp("retrain")
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    settings = {
        "training": {"params_file": "params.yaml"},
        "gates": {"champion_margin": 1.0, "min_metrics": {"roc_auc": 0.5},
                  "max_slice_gap": {"roc_auc": 1.0}},
        "retrain": {"rollout": "canary", "retries": 5, "retry_backoff_s": 0.5},
        "monitoring": {"webhook_url": f"http://127.0.0.1:{hook.server_port}/hook"},
    }  # fmt: skip
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    (cwd / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    flywheel(cwd, "simulate", "--days", "120", "--customers", "800")
    flywheel(cwd, "ingest")
    flywheel(cwd, "train")
    flywheel(cwd, "promote", "1", "--reason", "first champion")
    yield {"cwd": cwd, "hook": _Hook.bodies}
    hook.shutdown()


def _json(cwd: Path, *args: str, code: int = 0) -> Any:
    return json.loads(flywheel(cwd, *args, code=code).stdout)


def _counts(cwd: Path) -> tuple[int, int]:
    """(snapshots, versions)."""
    return len(_json(cwd, "data", "list", "--json")), len(_json(cwd, "registry", "list", "--json"))


def _record(cwd: Path, run_id: str) -> dict[str, Any]:
    path = cwd / ".flywheel" / "pipelines" / "runs" / f"{run_id}.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _tagged_runs(cwd: Path, run_id: str) -> list[tuple[str, str]]:
    """(MLflow run, status) of each training run tagged with the pipeline run."""
    with sqlite3.connect(cwd / ".flywheel" / "mlflow.db") as conn:
        rows = conn.execute(
            "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'flywheel.pipeline_run' AND t.value = ?",
            (run_id,),
        ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def test_a_retrain_registers_a_version_and_starts_its_rollout(world: dict[str, Any]) -> None:
    cwd = world["cwd"]
    flywheel(cwd, "simulate", "--days", "31")
    snapshots, versions = _counts(cwd)
    run = _json(cwd, "retrain", "--reason", "a month more", "--json")
    assert run["status"] == "finished", run
    assert list(run["steps"]) == ["ingest", "validate", "train", "evaluate", "register", "rollout"]
    assert all(s["status"] == "done" and s["attempts"] == 1 for s in run["steps"].values())
    assert run["version"] == "2" and run["trigger"]["reason"] == "a month more"
    assert _counts(cwd) == (snapshots + 1, versions + 1)
    assert _tagged_runs(cwd, run["id"]) == [(run["run_id"], "FINISHED")]
    assert _record(cwd, run["id"])["snapshot_id"] == run["snapshot_id"]
    status = _json(cwd, "rollout", "status", "--json")["rollout"]
    assert (status["id"], status["challenger"], status["strategy"]) == (
        run["rollout_id"], "2", "canary"
    )  # fmt: skip
    lineage = _json(cwd, "lineage", "2", "--json")
    assert lineage["pipeline_run"]["id"] == run["id"] and lineage["warnings"] == []
    actions = [e["action"] for e in _json(cwd, "registry", "history", "--json")]
    assert actions.count("pipeline_started") == 1 and actions[-1] == "pipeline_finished"
    flywheel(cwd, "rollout", "abort", "--reason", "the next tests retrain again")


def test_waiting_with_no_server_says_nothing_decides(world: dict[str, Any]) -> None:
    """`retrain --wait` with no `flywheel serve` waited silently for ever; it now says, once,
    that no server writes the rollout's counts (and keeps waiting)."""
    cwd = world["cwd"]  # no new days (they would cross the contract's ranges later on)
    proc = subprocess.Popen(
        [FLYWHEEL_BIN, "retrain", "--reason", "waits", "--wait"],
        cwd=cwd,
        env=newcomer_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        deadline = time.monotonic() + 180
        while "no server has written counts" not in seen:
            line = proc.stderr.readline()
            assert line and time.monotonic() < deadline, seen
            seen += line
        assert proc.poll() is None  # still waiting
    finally:
        proc.kill()
        proc.wait(timeout=30)
    flywheel(cwd, "rollout", "abort", "--reason", "the next tests retrain again")


def test_a_contract_violation_stops_the_run_and_alerts(world: dict[str, Any]) -> None:
    cwd = world["cwd"]
    flywheel(cwd, "simulate", "--days", "31")
    snapshots, versions = _counts(cwd)
    source = cwd / ".flywheel" / "source.db"
    with sqlite3.connect(source) as conn:  # a region the contract does not allow
        kept = conn.execute("SELECT customer_id, region FROM customers LIMIT 50").fetchall()
        conn.executemany(
            "UPDATE customers SET region = 'atlantis' WHERE customer_id = ?",
            [(c,) for c, _ in kept],
        )
    proc = flywheel(cwd, "retrain", code=5)
    err = " ".join(proc.stderr.split())
    assert "region" in err and "atlantis" in err and "pipeline run pr-" in err
    assert _counts(cwd) == (snapshots, versions)
    history = _json(cwd, "registry", "history", "--json")
    failed = history[-1]
    assert failed["action"] == "pipeline_failed"
    detail = json.loads(failed["reason"].splitlines()[-1])
    record = _record(cwd, detail["pipeline_run"])
    assert record["status"] == "failed" and record["error"]["kind"] == "contract"
    assert [s["status"] for s in record["steps"].values()] == ["failed"] + ["pending"] * 5
    assert record["steps"]["ingest"]["attempts"] == 1  # a violation is not retried
    (alert,) = [b for b in world["hook"] if b.get("event") == "pipeline_failed"]
    assert alert["pipeline_run"] == record["id"] and "atlantis" in alert["text"]
    with sqlite3.connect(source) as conn:  # the source is put right again
        conn.executemany(
            "UPDATE customers SET region = ? WHERE customer_id = ?", [(r, c) for c, r in kept]
        )
    world["failed_run"] = record["id"]


def test_a_killed_retrain_resumes_without_duplicates(world: dict[str, Any]) -> None:
    cwd, run_id = world["cwd"], world["failed_run"]
    snapshots, versions = _counts(cwd)
    proc = subprocess.Popen(
        [FLYWHEEL_BIN, "retrain"],  # resumes the run the violation stopped, data now fixed
        cwd=cwd,
        env=newcomer_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _record(cwd, run_id)["steps"]["train"]["status"] != "done":
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = _record(cwd, run_id)
    assert killed["status"] == "running" and killed["version"] is None, killed
    run = _json(cwd, "retrain", "--json")
    assert run["id"] == run_id and run["status"] == "finished", run
    steps = run["steps"]
    assert steps["ingest"]["attempts"] == 2 and steps["train"]["attempts"] == 1
    assert _counts(cwd) == (snapshots + 1, versions + 1)
    assert _tagged_runs(cwd, run_id) == [(run["run_id"], "FINISHED")]
    assert run["version"] == str(versions + 1)
    flywheel(cwd, "rollout", "abort", "--reason", "the next test retrains again")


def test_a_locked_source_is_retried(world: dict[str, Any]) -> None:
    cwd = world["cwd"]
    flywheel(cwd, "simulate", "--days", "31")
    hold = [sys.executable, "-c", HOLD, str(cwd / ".flywheel" / "source.db"), "4"]
    holder = subprocess.Popen(hold, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    try:
        run = _json(cwd, "retrain", "--json")
    finally:
        holder.wait(timeout=30)
    ingest = run["steps"]["ingest"]
    assert run["status"] == "finished" and ingest["attempts"] > 1, ingest
    assert ingest["status"] == "done" and ingest["error"] is None
    assert run["steps"]["train"]["attempts"] == 1


def test_a_second_pipeline_run_on_the_same_home_is_refused(world: dict[str, Any]) -> None:
    # a CronJob's `flywheel retrain` while the worker's tick retrains: one at a time
    cwd = world["cwd"]
    flywheel(cwd, "rollout", "abort", "--reason", "this test retrains again")
    versions = _counts(cwd)[1]  # no new days: a retrain by hand on the same data
    lock = cwd / ".flywheel" / "pipelines" / "run.lock"
    first = subprocess.Popen(
        [FLYWHEEL_BIN, "retrain", "--json"], cwd=cwd, env=newcomer_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (lock.exists() and f"pid {first.pid} " in lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    second = flywheel(cwd, "retrain", code=13)
    err = " ".join(second.stderr.split())
    assert "in progress" in err and f"pid {first.pid}" in err and "failed" not in err
    out, _ = first.communicate(timeout=180)
    assert first.returncode == 0 and json.loads(out)["status"] == "finished"
    assert _counts(cwd)[1] == versions + 1  # one version: the refused run left nothing
    assert lock.read_text() == ""  # released
