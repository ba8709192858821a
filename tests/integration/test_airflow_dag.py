"""deploy/airflow/flywheel_retrain_dag.py, loaded by Airflow's own DAG loader.

Airflow 3 cannot share flywheel's environment (it pins FastAPI below flywheel's lock), so the
test builds a throwaway virtualenv under ``tmp_path``, installs Airflow there with the repo's
uv (from the uv cache when it holds it, else from the index), and runs a short script in it
that fills a ``DagBag`` from the DAG file and reports what Airflow made of it. The script also
round-trips the DAG through Airflow's serialization (what the scheduler runs from) and asks a
task instance for its retry times, so the backoff is checked as Airflow computes it.

No network and no cache is a failure, not a skip: a skipped check would read as a passing one.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flywheel.config import RetrainSettings
from flywheel.pipelines.retrain import STEPS

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

AIRFLOW = "apache-airflow==3.3.2"
DAG_FILE = Path(__file__).resolve().parents[2] / "deploy" / "airflow" / "flywheel_retrain_dag.py"

# Runs in Airflow's venv: argv = the DAG file. Loads it twice (flywheel's defaults, then with
# the retry settings overridden) and prints one JSON line. DagBag has no include_examples in
# Airflow 3.3 (examples are never loaded by it); AIRFLOW__CORE__LOAD_EXAMPLES is off anyway.
_LOAD = """
import datetime as dt, json, os, sys, uuid
from airflow.dag_processing.dagbag import DagBag
from airflow.models.taskinstance import TaskInstance
from airflow.serialization.serialized_objects import DagSerialization

def load():
    bag = DagBag(dag_folder=sys.argv[1])
    out = {"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
           "dag_ids": sorted(bag.dags)}
    dag = bag.dags.get("flywheel_retrain")
    if dag is None:
        return out
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    end = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    tasks = {}
    for task in dag.tasks:
        ti = TaskInstance(task=scheduled.get_task(task.task_id), dag_version_id=uuid.uuid4(),
                          run_id="check")
        ti.end_date, waits = end, []
        for n in range(1, task.retries + 1):
            ti.try_number = n
            waits.append((ti.next_retry_datetime() - end).total_seconds())
        tasks[task.task_id] = {
            "upstream": sorted(task.upstream_task_ids), "retries": task.retries,
            "retry_delay_s": task.retry_delay.total_seconds(),
            "backoff": task.retry_exponential_backoff,
            "scheduled_backoff": scheduled.get_task(task.task_id).retry_exponential_backoff,
            "waits_s": waits}
    out.update(order=[t.task_id for t in dag.topological_sort()], tasks=tasks,
               schedule=None if dag.schedule is None else str(dag.schedule),
               max_active_runs=dag.max_active_runs)
    return out

default = load()
os.environ.update(FLYWHEEL_RETRAIN__RETRIES="4", FLYWHEEL_RETRAIN__RETRY_BACKOFF_S="2.5")
print(json.dumps({"default": default, "overridden": load()}))
"""


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _install_airflow(tmp_path: Path, env: dict[str, str]) -> Path:
    """A venv under ``tmp_path`` with Airflow in it: from uv's cache, else from the index."""
    venv = tmp_path / "airflow-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    uv = Path(sys.executable).parent / "uv"
    assert uv.exists(), f"uv not found at {uv}: the dev install (requirements/dev.lock) has it"
    install = [str(uv), "pip", "install", "-p", str(python), AIRFLOW]
    cached = _run([*install, "--offline"], env, timeout=300)
    if cached.returncode == 0:
        return python
    online = _run(install, env, timeout=420)
    if online.returncode != 0:
        pytest.fail(
            f"could not install {AIRFLOW} to load the DAG: it is not (fully) in uv's cache "
            "and installing from the package index failed too; is this machine offline? "
            f"Run it once with network access to fill the cache (`{uv} cache dir` shows "
            f"where it is).\n--- offline try:\n{cached.stderr[-1500:]}\n"
            f"--- online try:\n{online.stderr[-1500:]}"
        )
    return python


def _load_dag(tmp_path: Path) -> dict[str, Any]:
    home = tmp_path / "airflow-home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLYWHEEL_", "AIRFLOW", "VIRTUAL_ENV", "PYTHON", "UV_PYTHON"))
    }
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    python = _install_airflow(tmp_path, env)
    done = _run([str(python), "-c", _LOAD, str(DAG_FILE)], env, timeout=300)
    assert done.returncode == 0, f"loading the DAG in Airflow's venv failed:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _check(loaded: dict[str, Any], retries: int, delay_s: float) -> None:
    assert loaded["import_errors"] == {}
    assert loaded["dag_ids"] == ["flywheel_retrain"]
    expected = ["open_run", *STEPS, "finish_run"]  # one task per pipeline step, in order
    assert loaded["order"] == expected
    for before, task_id in zip([None, *expected[:-1]], expected, strict=True):
        task = loaded["tasks"][task_id]
        assert task["upstream"] == ([] if before is None else [before]), task_id
        assert task["retries"] == retries, task_id
        assert task["retry_delay_s"] == delay_s, task_id
        assert task["backoff"], task_id  # exponential backoff on
        assert task["scheduled_backoff"] == 2.0, task_id  # as the scheduler reads it: doubling
        # retry n waits from ceil(delay * 2**(n-1)) to under twice that (Airflow's jitter)
        assert len(task["waits_s"]) == retries, task_id
        for n, wait in enumerate(task["waits_s"], start=1):
            low = max(1, math.ceil(delay_s * 2 ** (n - 1)))
            assert low <= wait < 2 * low, (task_id, n, wait)
    assert loaded["schedule"] is None
    assert loaded["max_active_runs"] == 1


def test_airflow_loads_the_retrain_dag(tmp_path: Path) -> None:
    loaded = _load_dag(tmp_path)
    defaults = RetrainSettings()
    _check(loaded["default"], defaults.retries, defaults.retry_backoff_s)
    _check(loaded["overridden"], 4, 2.5)
    assert os.listdir(tmp_path / "airflow-home") in ([], ["logs"])  # nothing else written
