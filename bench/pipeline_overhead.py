"""Orchestration overhead per retraining pipeline run, against the same steps called directly
(issue #15: goal < 1 s local; reported with the orchestrator's server).

    .venv/bin/python -m bench.pipeline_overhead [--rounds N (3)] [--no-server] [--keep]

One small churn workspace in a temp folder (embedded defaults, no FLYWHEEL_* variables; the
spine as ``tests/integration/test_dagster.py`` builds it: 120 days, 800 customers, a
20-iteration HistGradientBoosting, permissive gates, ``retrain.rollout: none``, the
triggers off; the contract's inferred ``max`` of the ``days_since_*`` columns dropped, as
the world ages past it). Each round appends a month of simulated days (31: the source's
rows are monthly, so one new month of rows), then the pipeline retrains four ways on that
same data, the order rotated each round (the first ingests the new rows, the others find
that snapshot unchanged and train on it too):

- ``direct``: the six step bodies of :mod:`flywheel.pipelines.retrain` (its private
  ``_BODIES``: ingest, validate, train, evaluate, register, rollout) called in sequence on an
  in-memory run: no run record, no ledger entries, no retries;
- ``local``: :func:`~flywheel.pipelines.retrain.run_retrain`, the local runner;
- ``dagster``: the ``retrain`` job of :func:`~flywheel.pipelines.dagster_defs.build_definitions`
  (built once, before the clock), ``execute_in_process`` (an ephemeral instance);
- ``server`` (unless ``--no-server``): the job launched through the GraphQL API of a
  ``dagster dev`` started here (SQLite ``DAGSTER_HOME`` in the temp folder, its sensor
  stopped), timed from the launch request to the run's ``RUN_SUCCESS`` event.

The first three open and close their own ``Workspace`` inside the clock (Dagster's resource
does the same per run), in this process, with every module they use imported and one
untimed direct retrain done before the first clock. The server runs throughout, idle
while the others are timed. Per way: median wall time, the steps' own time (the pipeline
run's step seconds; for ``direct``, the same clock around each body) and the overhead =
wall − steps, its excess over the direct call's, and the overhead ÷ the direct call's wall.
The server's run is a new process, so its steps' own time includes the training stack's
first imports: its wall is also set against the in-process ways' steps of the same round,
and split into the launch request, the queue, the run process's start and the run.
Results go to ``bench/results/pipeline_overhead.json``. About 2 min on a quiet 2-core machine, 5 under a load of 7.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flywheel.config import Settings, load_settings
from flywheel.pipelines.runner import PipelineRun, all_runs
from flywheel.workspace import Workspace

RESULTS = Path(__file__).parent / "results"
DAYS = 31  # simulated days appended each round
GATES = {
    "min_metrics": {"roc_auc": 0.6},
    "max_slice_gap": {"roc_auc": 1.0},
    "champion_margin": 0.3,  # a small world: every retrain registers a version
}
RETRAIN: dict[str, Any] = {
    "rollout": "none",
    "on_drift": False,
    "on_prediction_drift": False,
    "on_performance": False,
}
WAYS = ("direct", "local", "dagster", "server")
Timing = dict[str, Any]  # wall_s, steps_s (+ the server's breakdown)


def _clean_env(home: Path) -> None:
    """No FLYWHEEL_* or MLFLOW_* variable from the caller; no flywheel.yaml from the cwd."""
    for key in [k for k in os.environ if k.startswith(("FLYWHEEL_", "MLFLOW_"))]:
        del os.environ[key]
    os.environ["FLYWHEEL_CONFIG"] = os.devnull


def _settings(home: Path) -> Settings:
    return load_settings(home=home, gates=GATES, retrain=RETRAIN)


def _world(home: Path) -> float:
    """The spine: a 120-day, 800-customer world and its first champion (version 1)."""
    from flywheel.pipelines.steps import run_loop
    from flywheel.training.params import TrainParams

    params = TrainParams(family="hist_gb", hyperparams={"max_iter": 20}, cv_folds=0)
    t = time.perf_counter()
    with Workspace(_settings(home)) as ws:
        assert run_loop(ws, days=120, customers=800, params=params).outcome.version == "1"
    return time.perf_counter() - t


def _open_ended_ages(home: Path) -> list[str]:
    """Drop the inferred ``max`` of the ``days_since_*`` columns from the workspace's
    contract: inferred from 120 days, it grows with the world's age, and a few rounds later
    a snapshot breaks it (ingest fails with a contract violation)."""
    import yaml

    path = home / "contracts" / "churn.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    dropped = [c for c, rule in data["columns"].items() if c.startswith("days_since_")]
    for column in dropped:
        data["columns"][column].pop("max", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dropped


def _warm_imports() -> None:
    """Every module the three in-process ways import lazily, before any clock."""
    import flywheel.data.snapshots
    import flywheel.pipelines.dagster_defs
    import flywheel.pipelines.retrain
    import flywheel.pipelines.steps
    import flywheel.registry.artifacts
    import flywheel.registry.register
    import flywheel.rollout.actions
    import flywheel.training.evaluate
    import flywheel.training.train  # noqa: F401


# --------------------------------------------------------------------------- the ways


def _steps_s(run: PipelineRun) -> float:
    return sum(s.seconds for s in run.steps.values())


def _each_s(run: PipelineRun) -> dict[str, float]:
    return {name: s.seconds for name, s in run.steps.items()}


def _direct(settings: Settings, trigger: dict[str, Any]) -> Timing:
    """The step bodies in sequence on a run that is never saved (the same clock as
    ``execute_step`` around each body)."""
    from flywheel.pipelines import retrain

    t0 = time.perf_counter()
    with Workspace(settings) as ws:
        run = PipelineRun(
            id=f"bench-direct-{trigger['key'].rsplit(':', 1)[-1]}",
            model=settings.registry.model_name,
            trigger=trigger,
            created_at=time.time(),
            at=float(trigger["at"]),
        )
        each = {}
        for step in retrain.STEPS:
            t = time.perf_counter()
            retrain._BODIES[step](ws, run)
            each[step] = time.perf_counter() - t
        retrain._HELD.pop(run.id, None)
    wall = time.perf_counter() - t0
    assert run.version is not None
    return {"wall_s": wall, "steps_s": sum(each.values()), "each_s": each, "version": run.version}


def _local(settings: Settings, trigger: dict[str, Any]) -> Timing:
    from flywheel.pipelines.retrain import run_retrain

    t0 = time.perf_counter()
    with Workspace(settings) as ws:
        run = run_retrain(ws, trigger=trigger)
    wall = time.perf_counter() - t0
    assert run.status == "finished", (run.status, run.error)
    return {
        "wall_s": wall,
        "steps_s": _steps_s(run),
        "each_s": _each_s(run),
        "version": run.version,
    }


def _dagster(job: Any, home: Path, trigger: dict[str, Any]) -> Timing:
    from flywheel.pipelines.dagster_defs import run_config

    t0 = time.perf_counter()
    result = job.execute_in_process(run_config=run_config(trigger))
    wall = time.perf_counter() - t0
    assert result.success
    run = PipelineRun.load(home, result.output_for_node("finish_run"))
    assert run.status == "finished", (run.status, run.error)
    return {
        "wall_s": wall,
        "steps_s": _steps_s(run),
        "each_s": _each_s(run),
        "version": run.version,
    }


# --------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env(home: Path, dagster_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    return env | {
        "DAGSTER_HOME": str(dagster_home),
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_CONFIG": os.devnull,
        "FLYWHEEL_GATES__MIN_METRICS": json.dumps(GATES["min_metrics"]),
        "FLYWHEEL_GATES__MAX_SLICE_GAP": json.dumps(GATES["max_slice_gap"]),
        "FLYWHEEL_GATES__CHAMPION_MARGIN": str(GATES["champion_margin"]),
        **{f"FLYWHEEL_RETRAIN__{k.upper()}": str(v).lower() for k, v in RETRAIN.items()},
    }


def _graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        found = json.loads(resp.read())
    if "errors" in found:
        raise RuntimeError(f"GraphQL error: {found['errors']}")
    return found["data"]


_REPO = """{ repositoriesOrError { ... on RepositoryConnection { nodes { name
  location { name } sensors { name sensorState { id status } } } } } }"""
_STOP = """mutation($id: String!) { stopSensor(id: $id) { __typename
  ... on PythonError { message } } }"""
_LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""


class Server:
    """`dagster dev` on the workspace (webserver + daemon, SQLite DAGSTER_HOME), its sensor
    stopped; :meth:`launch` times one run from the launch request to ``RUN_SUCCESS``."""

    def __init__(self, home: Path, folder: Path) -> None:
        import dagster as dg

        self.dg, self.home = dg, home
        dagster_home = folder / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.log = folder / "dagster-dev.log"
        self.url = f"http://127.0.0.1:{_free_port()}"
        exe = str(Path(sys.executable).parent / "dagster")
        t = time.perf_counter()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [exe, "dev", "-m", "flywheel.pipelines.dagster_defs", "-h", "127.0.0.1",
                 "-p", self.url.rsplit(":", 1)[1]],
                stdout=out, stderr=subprocess.STDOUT, env=_server_env(home, dagster_home),
                start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_up(180)
            self.up_s = time.perf_counter() - t
            (repo,) = _graphql(self.url, _REPO)["repositoriesOrError"]["nodes"]
            self.selector = {"repositoryLocationName": repo["location"]["name"],
                             "repositoryName": repo["name"], "jobName": "retrain"}  # fmt: skip
            for sensor in repo["sensors"]:
                _graphql(self.url, _STOP, {"id": sensor["sensorState"]["id"]})
            self.instance = dg.DagsterInstance.from_config(str(dagster_home))
        except BaseException:
            self.close()
            raise

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited ({self.proc.returncode}): {self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        raise RuntimeError(f"dagster dev did not answer within {timeout:.0f}s: {self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def launch(self, trigger: dict[str, Any], timeout: float = 300) -> Timing:
        from flywheel.pipelines.dagster_defs import run_config

        params = {"selector": self.selector, "runConfigData": run_config(trigger)}
        began = time.time()
        done = _graphql(self.url, _LAUNCH, {"p": params})["launchRun"]
        if done["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(f"launchRun: {done}")
        run_id = done["run"]["runId"]
        status = self.dg.DagsterRunStatus
        deadline = time.monotonic() + timeout
        while (run := self.instance.get_run_by_id(run_id)) is None or not run.is_finished:
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} not finished in {timeout:.0f}s: {self._tail()}")
            time.sleep(0.2)
        seen = time.time() - began
        if run.status != status.SUCCESS:
            raise RuntimeError(f"run {run_id} ended {run.status}: {self._tail()}")
        return self._timing(run_id, trigger["key"], began, seen)

    def _timing(self, run_id: str, key: str, began: float, seen: float) -> Timing:
        at = {
            e.dagster_event.event_type.name: e.timestamp
            for e in self.instance.all_logs(run_id)
            if e.dagster_event is not None and e.dagster_event.event_type.name.startswith("RUN_")
        }
        (mine,) = [r for r in all_runs(self.home) if r.key == key]
        assert mine.status == "finished", (mine.status, mine.error)
        return {
            "wall_s": at["RUN_SUCCESS"] - began,
            "steps_s": _steps_s(mine),
            "each_s": _each_s(mine),
            "version": mine.version,
            "seen_s": seen,  # when this script saw it finished (0.2 s polls)
            "launch_request_s": at["RUN_ENQUEUED"] - began,
            "queued_s": at["RUN_STARTING"] - at["RUN_ENQUEUED"],
            "process_start_s": at["RUN_START"] - at["RUN_STARTING"],
            "in_run_s": at["RUN_SUCCESS"] - at["RUN_START"],
        }

    def close(self) -> None:
        """Stop `dagster dev` and what it started (its process group)."""
        if getattr(self, "instance", None) is not None:
            self.instance.dispose()
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


# --------------------------------------------------------------------------- the report


def _summary(rows: list[Timing], direct: dict[str, float] | None) -> dict[str, float]:
    walls = [r["wall_s"] for r in rows]
    steps = [r["steps_s"] for r in rows]
    over = [r["wall_s"] - r["steps_s"] for r in rows]
    out = {
        "wall_s": statistics.median(walls),
        "steps_s": statistics.median(steps),
        "overhead_s": statistics.median(over),
        "overhead_min_s": min(over),
        "overhead_max_s": max(over),
    }
    out = {k: round(v, 3) for k, v in out.items()}
    if direct is not None:
        out["overhead_vs_direct_s"] = out["overhead_s"] - direct["overhead_s"]
        out["overhead_per_direct_wall"] = out["overhead_s"] / direct["wall_s"]
    keys = ("launch_request_s", "queued_s", "process_start_s", "in_run_s", "seen_s", "vs_warm_s")
    for key in keys:
        if rows and key in rows[0]:
            out[key] = statistics.median(r[key] for r in rows)
    return {k: round(v, 3) for k, v in out.items()}


def _print(summary: dict[str, dict[str, float]], rounds: int) -> None:
    print(f"\nper pipeline run, median of {rounds} rounds (overhead = wall − the steps' own time)")
    head = ("way", "wall s", "steps s", "overhead s", "min–max s", "− direct s", "÷ direct wall")
    print(f"{head[0]:<9}{head[1]:>9}{head[2]:>9}{head[3]:>12}{head[4]:>16}{head[5]:>12}"
          f"{head[6]:>15}")  # fmt: skip
    for way, s in summary.items():
        spread = f"{s['overhead_min_s']:.3f}–{s['overhead_max_s']:.3f}"
        print(f"{way:<9}{s['wall_s']:9.2f}{s['steps_s']:9.2f}{s['overhead_s']:12.3f}"
              f"{spread:>16}{s['overhead_vs_direct_s']:12.3f}"
              f"{100 * s['overhead_per_direct_wall']:14.1f}%")  # fmt: skip
    if "server" in summary:
        s = summary["server"]
        print(f"server, median: launch request {s['launch_request_s']:.2f} s + queued "
              f"{s['queued_s']:.2f} s + run process start {s['process_start_s']:.2f} s + "
              f"in the run {s['in_run_s']:.2f} s (steps {s['steps_s']:.2f} s)")  # fmt: skip
        print(f"server: its steps ran in a new process (the training stack's first imports "
              f"count as step time); wall − the in-process ways' median steps of the same "
              f"round: {s['vs_warm_s']:.2f} s")  # fmt: skip


def _rounds(
    n: int, ways: list[str], call: dict[str, Callable[[dict[str, Any]], Timing]], home: Path
) -> dict[str, list[Timing]]:
    from flywheel.pipelines.retrain import manual_trigger
    from flywheel.simulate import simulate

    settings = _settings(home)
    timings: dict[str, list[Timing]] = {w: [] for w in ways}
    for i in range(n):
        order = ways[i % len(ways) :] + ways[: i % len(ways)]
        load = os.getloadavg()[0]
        print(f"round {i + 1} of {n} (load average {load:.2f}): {', '.join(order)}", flush=True)
        simulate(settings, days=DAYS)
        for way in order:
            got = call[way](manual_trigger(f"bench {way} round {i + 1}"))
            got |= {"round": i + 1, "position": order.index(way), "load_1m": load}
            timings[way].append(got)
            each = " ".join(f"{k[:5]} {v:.2f}" for k, v in got["each_s"].items())
            print(f"  {way:<8} wall {got['wall_s']:7.2f} s  steps {got['steps_s']:7.2f} s "
                  f"({each})  v{got['version']}", flush=True)  # fmt: skip
    return timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="Rounds; each appends a month and retrains every way (order rotated).",
    )
    ap.add_argument("--no-server", action="store_true", help="Leave out `dagster dev`.")
    ap.add_argument("--keep", action="store_true", help="Keep the temp folder.")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="flywheel-bench-pipeline-"))
    home = folder / "fw"
    _clean_env(home)
    began, load_start = time.perf_counter(), os.getloadavg()
    spine = _world(home)
    _open_ended_ages(home)
    print(f"the spine (120 days, 800 customers, champion v1): {spine:.1f} s", flush=True)
    ways = list(WAYS[:3] if args.no_server else WAYS)
    server = None if args.no_server else Server(home, folder)
    try:
        if server is not None:
            print(f"dagster dev answered in {server.up_s:.1f} s", flush=True)
        _warm_imports()
        from flywheel.pipelines.dagster_defs import JOB, build_definitions
        from flywheel.pipelines.retrain import manual_trigger

        settings = _settings(home)
        job = build_definitions(settings).get_job_def(JOB)
        warm = _direct(settings, manual_trigger("bench warm-up"))["wall_s"]
        print(f"warm-up (untimed in the results): one direct retrain {warm:.1f} s", flush=True)
        call: dict[str, Callable[[dict[str, Any]], Timing]] = {
            "direct": lambda t: _direct(settings, t),
            "local": lambda t: _local(settings, t),
            "dagster": lambda t: _dagster(job, home, t),
        }
        if server is not None:
            call["server"] = server.launch
        timings = _rounds(args.rounds, ways, call, home)
    finally:
        if server is not None:
            server.close()
    if "server" in timings:
        for row in timings["server"]:
            same = [
                r["steps_s"] for w in WAYS[:3] for r in timings[w] if r["round"] == row["round"]
            ]
            row["vs_warm_s"] = row["wall_s"] - statistics.median(same)
    direct = _summary(timings["direct"], None)
    summary = {w: _summary(timings[w], direct) for w in ways}
    _print(summary, args.rounds)
    result = {
        "rounds": args.rounds,
        "days_per_round": DAYS,
        "world": {"days": 120, "customers": 800, "params": "hist_gb max_iter=20, no CV"},
        "spine_s": round(spine, 1),
        "dagster_dev_up_s": round(server.up_s, 1) if server is not None else None,
        "summary": summary,
        "runs": timings,
        "total_s": round(time.perf_counter() - began, 1),
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg_at_start": load_start,
            "load_avg_at_end": os.getloadavg(),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline_overhead.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"total {result['total_s']:.0f} s; load average at start {load_start[0]:.2f}, "
          f"at end {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")  # fmt: skip
    if args.keep:
        print(f"(folder {folder})")
    else:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
