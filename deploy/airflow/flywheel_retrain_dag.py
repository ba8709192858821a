"""flywheel's retraining pipeline as an Airflow 3 DAG, for teams that run Airflow.

Copy this file into Airflow's ``dags/`` folder. It is wiring only: one task per step of
``flywheel.pipelines.retrain.STEPS``, each running ``execute_step`` (idempotent and cached,
so a retry or a cleared task resumes) in flywheel's own Python, a separate virtualenv:
Airflow 3 pins FastAPI below what flywheel's serving stack locks, so the two do not share
an environment (docs/orchestration.md). flywheel never imports this file.

Environment of the Airflow worker:
- ``FLYWHEEL_PYTHON``: flywheel's interpreter (default: ``/opt/flywheel/.venv/bin/python``).
- ``FLYWHEEL_HOME`` and any other ``FLYWHEEL_*`` setting: passed through to each step.

A step exits 75 (EX_TEMPFAIL) on a transient failure (``runner.is_transient``): Airflow
retries it with exponential backoff. A failed gate or no new data ends the pipeline run
(``gated``, ``skipped``): the task is skipped, and so is what follows. Any other failure
fails the task without a retry. The
schedule is off (``schedule=None``): flywheel's triggers decide (``flywheel triggers``), or
trigger the DAG by hand or through Airflow's REST API with ``{"trigger": {...}}`` as conf.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

STEPS = ("ingest", "validate", "train", "evaluate", "register", "rollout")
PYTHON = os.environ.get("FLYWHEEL_PYTHON", "/opt/flywheel/.venv/bin/python")
TRANSIENT = 75  # EX_TEMPFAIL
ENDED = 99  # the pipeline run ended without failing: a failed gate, or no new data

# Runs in flywheel's interpreter: argv = action, run id (or the trigger's JSON), step.
_ENTRY = """
import json, sys
from flywheel.errors import GateFailed
from flywheel.pipelines import retrain
from flywheel.pipelines.runner import is_transient
from flywheel.workspace import Workspace
action, arg, step = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with Workspace() as ws:
        if action == "open":
            print(json.dumps({"run_id": retrain.open_run(ws, json.loads(arg) or None).id}))
        elif action == "step":
            print(json.dumps(retrain.execute_step(ws, arg, step), default=str))
        else:
            retrain.finish_run(ws, arg)
            print(json.dumps({"run_id": arg}))
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    ended = isinstance(exc, (GateFailed, getattr(retrain, "NoNewData", GateFailed)))
    sys.exit(99 if ended else 75 if is_transient(exc) else 1)
"""


def _flywheel(action: str, arg: str, step: str = "") -> dict:
    """Run one action in flywheel's Python; its last stdout line is the JSON result."""
    done = subprocess.run(
        [PYTHON, "-c", _ENTRY, action, arg, step], capture_output=True, text=True, check=False
    )
    print(done.stdout + done.stderr)
    if done.returncode == TRANSIENT:
        raise RuntimeError(f"{action} {step}: transient failure, retrying: {done.stderr[-500:]}")
    if done.returncode == ENDED:  # gated or skipped: what follows is skipped, nothing failed
        raise AirflowSkipException(f"{action} {step}: {done.stderr.strip()[-500:]}")
    if done.returncode != 0:
        raise AirflowFailException(f"{action} {step} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


RETRY = {
    "retries": int(os.environ.get("FLYWHEEL_RETRAIN__RETRIES", "3")),
    "retry_delay": timedelta(
        seconds=float(os.environ.get("FLYWHEEL_RETRAIN__RETRY_BACKOFF_S", "1"))
    ),
    "retry_exponential_backoff": 2.0,  # Airflow 3: a multiplier (each wait doubles)
}


@dag(
    dag_id="flywheel_retrain",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=RETRY,
    tags=["flywheel"],
)
def flywheel_retrain() -> None:
    @task
    def open_run() -> str:
        trigger = (get_current_context()["dag_run"].conf or {}).get("trigger") or {}
        return str(_flywheel("open", json.dumps(trigger))["run_id"])

    def step_task(step: str):  # type: ignore[no-untyped-def]
        @task(task_id=step)
        def run_step(run_id: str) -> str:
            _flywheel("step", run_id, step)
            return run_id

        return run_step

    @task
    def finish_run(run_id: str) -> str:
        return str(_flywheel("finish", run_id)["run_id"])

    run_id = open_run()
    for step in STEPS:
        run_id = step_task(step)(run_id)
    finish_run(run_id)


flywheel_retrain()
