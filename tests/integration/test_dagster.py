"""The retraining pipeline under Dagster: in-process, then through `dagster dev` (webserver +
daemon on SQLite) started here, with its schedule, its sensor and a real transient failure.

The world is small (120 days, 800 customers, a 20-iteration model) and a retrain has 31 new
days to ingest. The transient failure is real: another process holds ``BEGIN EXCLUSIVE`` on
the SQLite source, so ingest meets "database is locked" until the test sees the retry.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg  # the orchestrate extra (in dev)
import pytest

from flywheel.config import Settings, load_settings
from flywheel.pipelines.runner import PipelineRun, all_runs
from flywheel.pipelines.steps import run_loop
from flywheel.registry.aliases import list_versions
from flywheel.simulate import simulate
from flywheel.training.params import TrainParams
from flywheel.workspace import Workspace
from tests.integration.conftest import free_port, wait_http

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # Dagster warns about its own beta parameters when it resolves a sensor
    pytest.mark.filterwarnings("ignore::dagster.BetaWarning"),
    pytest.mark.filterwarnings("ignore::dagster.PreviewWarning"),
]

GATES = {
    "min_metrics": {"roc_auc": 0.6},
    "max_slice_gap": {"roc_auc": 1.0},
    "champion_margin": 0.3,  # a small world: these tests check the wiring, not the model
}
RETRAIN = {"rollout": "none", "retries": 6, "retry_backoff_s": 0.5}
PARAMS = TrainParams(family="hist_gb", hyperparams={"max_iter": 20}, cv_folds=0)


def _settings(home: Path, **retrain: Any) -> Settings:
    return load_settings(home=home, gates=GATES, retrain=RETRAIN | retrain)


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """A workspace with a champion (version 1) and 31 more days in the source."""
    home = tmp_path / "fw"
    settings = _settings(home)
    with Workspace(settings) as ws:
        assert run_loop(ws, days=120, customers=800, params=PARAMS).outcome.version == "1"
    simulate(settings, days=31)
    return home


def test_the_job_runs_in_process_and_registers_a_new_version(world: Path) -> None:
    from flywheel.pipelines.dagster_defs import JOB, build_definitions, run_config
    from flywheel.pipelines.retrain import manual_trigger

    settings = _settings(world, rollout="canary")
    job = build_definitions(settings).get_job_def(JOB)
    began = time.perf_counter()
    result = job.execute_in_process(run_config=run_config(manual_trigger("test")))
    elapsed = time.perf_counter() - began
    assert result.success
    ops = [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]
    assert ops == ["open_run", "ingest", "validate", "train", "evaluate", "register", "rollout",
                   "finish_run"]  # fmt: skip
    run_id = result.output_for_node("open_run")
    assert result.output_for_node("finish_run") == run_id  # one pipeline run carried along
    run = PipelineRun.load(world, run_id)
    assert run.status == "finished" and run.version == "2" and run.rollout_id
    assert run.trigger["reason"] == "test"
    with Workspace(settings) as ws:
        assert [v.version for v in list_versions(ws)] == ["1", "2"]
    steps = sum(s.seconds for s in run.steps.values())

    # a scheduled run with no new data ends the pipeline run "skipped": not a failed Dagster run
    instance = dg.DagsterInstance.ephemeral()
    tick = {"kind": "schedule", "key": "schedule:test", "at": time.time()}
    again = job.execute_in_process(run_config=run_config(tick), instance=instance)
    assert again.success
    tagged = instance.get_run_by_id(again.run_id)
    assert tagged is not None and tagged.tags["flywheel/status"] == "skipped"
    (skipped,) = [r for r in all_runs(world) if r.key == "schedule:test"]
    assert skipped.status == "skipped" and skipped.steps["train"].status == "pending"
    print(f"\nin-process Dagster job {elapsed:.1f}s, steps {steps:.1f}s: "
          f"overhead {elapsed - steps:.1f}s")  # fmt: skip


# --------------------------------------------------------------------------- with the server


def _log_labels(ws: Workspace, n: int, at: float) -> None:
    """``n`` served predictions and their labels in the prediction log (the volume trigger)."""
    from flywheel.predlog import PredictionRecord

    ids = [f"r{uuid.uuid4().hex[:10]}" for _ in range(n)]
    for rid in ids:
        ws.predlog.append(
            PredictionRecord(rid, at - 60, "churn", "1", "rest", {"x": [1.0]}, {}, 0.5)
        )
    ws.predlog.flush()
    assert ws.predlog.feedback_many([(rid, 1) for rid in ids], ts=at) == n


def _server_env(home: Path, dagster_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    return env | {
        "DAGSTER_HOME": str(dagster_home),
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_CONFIG": os.devnull,
        "FLYWHEEL_GATES__MIN_METRICS": json.dumps(GATES["min_metrics"]),
        "FLYWHEEL_GATES__MAX_SLICE_GAP": json.dumps(GATES["max_slice_gap"]),
        "FLYWHEEL_GATES__CHAMPION_MARGIN": str(GATES["champion_margin"]),
        "FLYWHEEL_RETRAIN__ROLLOUT": "none",
        "FLYWHEEL_RETRAIN__RETRIES": str(RETRAIN["retries"]),
        "FLYWHEEL_RETRAIN__RETRY_BACKOFF_S": str(RETRAIN["retry_backoff_s"]),
        "FLYWHEEL_RETRAIN__SCHEDULE": "* * * * *",
        "FLYWHEEL_RETRAIN__NEW_LABELS": "5",
        "FLYWHEEL_RETRAIN__COOLDOWN": "0s",
    }


def _graphql(url: str, query: str) -> dict[str, Any]:
    body = json.dumps({"query": query}).encode()
    req = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        found: dict[str, Any] = json.loads(resp.read())
    assert "errors" not in found, found
    return found["data"]


def _wait(what: str, found: Callable[[], Any], timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:]
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


@pytest.fixture
def locked_source(world: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding an exclusive lock on the SQLite source until its stdin closes."""
    db = world / "source.db"
    assert db.exists()
    code = (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()\n"
        "c.execute('ROLLBACK')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            sqlite3.connect(db, timeout=0).execute("SELECT 1 FROM sqlite_master").fetchall()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop `dagster dev` and what it started (its process group: webserver, daemon, code
    server, run workers)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_dagster_dev_runs_the_schedule_and_the_sensor_with_a_retry(
    world: Path, tmp_path: Path, locked_source: subprocess.Popen[str]
) -> None:
    began = time.monotonic()
    settings = _settings(world, new_labels=5)
    with Workspace(settings) as ws:
        _log_labels(ws, 5, time.time())  # the sensor's trigger: 5 new labels
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nconcurrency:\n  runs:\n    max_concurrent_runs: 1\n"
    )
    port, log = free_port(), tmp_path / "dagster-dev.log"
    dagster = str(Path(sys.executable).parent / "dagster")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [dagster, "dev", "-m", "flywheel.pipelines.dagster_defs", "-h", "127.0.0.1",
             "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=_server_env(world, dagster_home),
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    instance = None
    try:
        wait_http(f"{url}/server_info", proc, timeout=120)
        up = time.monotonic() - began
        _check_the_ui_lists_everything(url)
        instance = dg.DagsterInstance.from_config(str(dagster_home))
        runs = _runs(instance)

        # the first run (the sensor's, or the schedule's if it ticks first) meets the lock
        retried = _wait("a step's retry", lambda: _retries(instance, runs()), 120, log)
        assert "database is locked" in json.dumps(retried[0][1]), retried
        locked_source.stdin.close()  # type: ignore[union-attr]  # release the lock
        # once the first run has ingested, 31 more days: the second run has new data too
        _wait("the first run's snapshot", lambda: _ingested(world), 120, log)
        simulate(settings, days=31)

        by = {"sensor": "dagster/sensor_name", "schedule": "dagster/schedule_name"}
        done = {
            kind: _wait(f"a successful {kind} run", _succeeded(runs, tag), 150, log)
            for kind, tag in by.items()
        }
        assert done["sensor"].tags["flywheel/trigger"] == "volume"
        assert done["schedule"].tags["flywheel/trigger_key"].startswith("schedule:")
        assert retried[0][0] in {r.run_id for r in done.values()}  # the retried run succeeded
        for kind, run in done.items():
            print(f"\n{kind} run: {_overhead(instance, run, world)}")
        print(f"dagster dev up in {up:.1f}s; test {time.monotonic() - began:.1f}s")
    finally:
        if instance is not None:
            instance.dispose()
        _stop_group(proc)
    finished = [r for r in all_runs(world) if r.status == "finished" and r.version]
    assert len(finished) == 2, [(r.id, r.status, r.error) for r in all_runs(world)]
    with Workspace(settings) as ws:
        assert [v.version for v in list_versions(ws)] == ["1", "2", "3"]
        ledger = [  # both runs' triggers were judged (cooldown, budget) and audited
            t["key"]
            for e in ws.audit.entries()
            if e.action == "retrain_triggered"
            for t in json.loads(e.reason.splitlines()[-1])["triggers"]
        ]
    assert {r.tags["flywheel/trigger_key"] for r in done.values()} <= set(ledger), ledger


def _ingested(home: Path) -> bool:
    return any(r.step("ingest").status == "done" for r in all_runs(home))


def _check_the_ui_lists_everything(url: str) -> None:
    data = _graphql(
        url,
        """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        jobs { name } schedules { name scheduleState { status } }
        sensors { name sensorState { status } } } } } }""",
    )
    (repo,) = data["repositoriesOrError"]["nodes"]
    assert "retrain" in {j["name"] for j in repo["jobs"]}
    assert [(s["name"], s["scheduleState"]["status"]) for s in repo["schedules"]] == [
        ("retrain_schedule", "RUNNING")
    ]
    assert [(s["name"], s["sensorState"]["status"]) for s in repo["sensors"]] == [
        ("retrain_triggers", "RUNNING")
    ]


def _runs(instance: Any) -> Callable[[], list[Any]]:
    return lambda: list(instance.get_runs(filters=dg.RunsFilter(job_name="retrain")))


def _retries(instance: Any, runs: list[Any]) -> list[tuple[str, Any]]:
    found = []
    for run in runs:
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY):
            error = entry.dagster_event.event_specific_data.error
            found.append((run.run_id, error.to_string() if error else entry.user_message))
    return found


def _succeeded(runs: Callable[[], list[Any]], tag: str) -> Callable[[], Any]:
    def first() -> Any:
        for run in runs():
            if tag in run.tags and run.status == dg.DagsterRunStatus.FAILURE:
                raise AssertionError(f"run {run.run_id} ({tag}) failed")
            if tag in run.tags and run.status == dg.DagsterRunStatus.SUCCESS:
                return run
        return None

    return first


def _overhead(instance: Any, run: Any, home: Path) -> str:
    """Where a Dagster run's time went, against its steps' own time (the pipeline run's
    record): queued (enqueued → starting), launched (a process, the code loaded), run."""
    at = {
        e.dagster_event.event_type.name: e.timestamp
        for e in instance.all_logs(run.run_id)
        if e.dagster_event is not None and e.dagster_event.event_type.name.startswith("RUN_")
    }
    key = run.tags["flywheel/trigger_key"]
    (mine,) = [r for r in all_runs(home) if r.key == key]
    steps = sum(s.seconds for s in mine.steps.values())
    queued = at["RUN_STARTING"] - at["RUN_ENQUEUED"]
    launch = at["RUN_START"] - at["RUN_STARTING"]
    ran = at["RUN_SUCCESS"] - at["RUN_START"]
    return (f"queued {queued:.1f}s + launch {launch:.1f}s + run {ran:.1f}s, steps' own "
            f"{steps:.1f}s: overhead {queued + launch + ran - steps:.1f}s "
            f"({ran - steps:.1f}s inside the run)")  # fmt: skip
