"""`flywheel worker` as a container runs it, on one small churn world (tests in file order).

Version 1 is trained and promoted on 120 simulated days. A check recorded two minutes ago
makes the schedule (every minute) tick before the worker's first tick, so that tick
retrains; the next tick sees the rollout deciding and holds; a retrain killed with SIGKILL
mid-run resumes as the same pipeline run on the next tick (one version more, not two);
a retrain a `triggers check` by hand fired runs on the next tick, once; SIGTERM stops a
looping worker after its tick; the health check follows the heartbeat.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import FLYWHEEL_BIN, flywheel, newcomer_env

pytestmark = pytest.mark.slow

SETTINGS = {
    "training": {"params_file": "params.yaml"},
    "gates": {"champion_margin": 1.0, "min_metrics": {"roc_auc": 0.5},
              "max_slice_gap": {"roc_auc": 1.0}},
    "retrain": {"schedule": "* * * * *", "cooldown": "0d", "rollout": "canary"},
}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("worker")
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump(SETTINGS))
    (cwd / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    flywheel(cwd, "simulate", "--days", "120", "--customers", "800")
    flywheel(cwd, "ingest")
    flywheel(cwd, "train")
    flywheel(cwd, "promote", "1", "--reason", "first champion")
    return cwd


def _ticks(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _prime_schedule(cwd: Path) -> None:
    """A check recorded two minutes ago: the every-minute schedule ticks before now."""
    before = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    proc = flywheel(cwd, "triggers", "check", "--at", before.isoformat(), "--json")
    assert json.loads(proc.stdout)["fire"] is False  # a first check only records the time


def _runs(cwd: Path) -> list[dict[str, Any]]:
    folder = cwd / ".flywheel" / "pipelines" / "runs"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_no_heartbeat_is_unhealthy(world: Path) -> None:
    proc = flywheel(world, "worker", "--healthcheck", code=1)
    assert "no heartbeat" in proc.stderr


def test_a_scheduled_tick_retrains_and_starts_the_rollout(world: Path) -> None:
    _prime_schedule(world)
    flywheel(world, "simulate", "--days", "31")
    (tick,) = _ticks(flywheel(world, "worker", "--once", "--json").stdout)
    assert tick["errors"] == [], tick
    assert tick["decision"]["fire"] is True
    assert tick["decision"]["triggers"][0]["kind"] == "schedule"
    assert tick["retrain"]["status"] == "finished" and tick["retrain"]["version"] == "2"
    status = json.loads(flywheel(world, "rollout", "status", "--json").stdout)["rollout"]
    assert (status["challenger"], status["strategy"], status["status"]) == (
        "2", "canary", "running"
    )  # fmt: skip
    actions = [e["action"] for e in json.loads(flywheel(world, "registry", "history",
                                                        "--json").stdout)]  # fmt: skip
    assert "retrain_triggered" in actions and actions[-1] == "pipeline_finished"
    healthy = flywheel(world, "worker", "--healthcheck")
    assert "heartbeat" in healthy.stdout


def test_a_rollout_in_flight_holds_the_next_tick(world: Path) -> None:
    status = json.loads(flywheel(world, "rollout", "status", "--json").stdout)["rollout"]
    (tick,) = _ticks(flywheel(world, "worker", "--once", "--json").stdout)
    assert tick["rollout"] == status["id"] and tick["decision"] is None
    assert tick["retrain"] is None
    flywheel(world, "rollout", "abort", "--reason", "the next test retrains again")


def test_a_retrain_killed_mid_run_resumes_on_the_next_tick(world: Path) -> None:
    # the tick resumes any run killed while running (here a `flywheel retrain`; a worker
    # killed mid-retrain leaves the same record), whatever the triggers say
    before = {r["id"] for r in _runs(world)}
    proc = subprocess.Popen(
        [FLYWHEEL_BIN, "retrain", "--reason", "killed below"],
        cwd=world,
        env=newcomer_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        new = [r for r in _runs(world) if r["id"] not in before]
        if new and new[0]["steps"]["train"]["status"] == "done":
            break
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = new[0]["id"]
    versions = len(json.loads(flywheel(world, "registry", "list", "--json").stdout))
    (tick,) = _ticks(flywheel(world, "worker", "--once", "--json").stdout)
    assert tick["retrain"]["run"] == killed and tick["retrain"]["status"] == "finished", tick
    assert [r["id"] for r in _runs(world) if r["id"] not in before] == [killed]
    after = json.loads(flywheel(world, "registry", "list", "--json").stdout)
    assert len(after) == versions + 1
    flywheel(world, "rollout", "abort", "--reason", "the next test loops")


def test_a_check_by_hand_that_fires_is_retrained_by_the_next_tick(world: Path) -> None:
    # `triggers check` records the decision; the retrain it owes was lost before (the
    # worker saw the key decided and the cooldown spent, and ran nothing)
    settings = {**SETTINGS, "retrain": {"cooldown": "30d", "rollout": "none"}}  # no schedule
    (world / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    asked = flywheel(world, "triggers", "check", "--manual", "new columns upstream")
    assert "retrain" in asked.stdout and "owed" in asked.stdout
    key = json.loads(flywheel(world, "triggers", "check", "--dry-run", "--json").stdout)
    assert key["fire"] is False  # the owed retrain holds the cooldown: no second one
    before = {r["id"] for r in _runs(world)}
    (tick,) = _ticks(flywheel(world, "worker", "--once", "--json").stdout)
    assert tick["errors"] == [] and tick["decision"]["fire"] is False, tick
    assert tick["retrain"]["status"] == "finished", tick
    (new,) = [r for r in _runs(world) if r["id"] not in before]
    assert new["trigger"]["kind"] == "manual" and new["trigger"]["key"] == tick["decision"]["owed"]
    assert new["trigger"]["reason"].endswith("new columns upstream")
    (again,) = _ticks(flywheel(world, "worker", "--once", "--json").stdout)
    assert again["decision"]["owed"] is None and again["retrain"] is None  # settled: once


def test_sigterm_stops_a_looping_worker_after_its_tick(world: Path) -> None:
    settings = {**SETTINGS, "retrain": {"cooldown": "0d"}}  # no schedule: a quiet tick
    (world / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    proc = subprocess.Popen(
        [FLYWHEEL_BIN, "worker", "--every", "1h", "--json"],
        cwd=world,
        env=newcomer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())  # the first tick, at once
    assert first["decision"]["fire"] is False and first["errors"] == []
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopping after the current tick" in err
