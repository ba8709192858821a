"""Cold start and idle memory: flywheel's serve-only install against MLServer and
``mlflow models serve``, in one run on one machine (issue #12, item 1).

    .venv/bin/python -m bench.cold_start [--runs N] [--quick] [--home DIR] [--explain]

Cold start = wall time from ``Popen`` to the first 200 answer of a one-row POST, polled every
10 ms; idle RSS = resident memory of the server's whole process tree (workers included) 2 s
after that answer. Each server is started, measured and stopped, one at a time, pinned to one
core; the servers take turns (round-robin, each round in a rotated order, so a drift of the
machine's state and the position in a round fall on every server alike), after one discarded
warm-up round (page cache, bytecode). Median and min–max over ``--runs`` rounds; the goals as
ratios measured in the same run; everything in ``bench/results/cold_start.json``.

Contenders (bench/README.md, "Cold start"):

- ``fw_dir``: flywheel, serve-only venv, ``flywheel serve --model-dir DIR`` (a folder written by
  ``flywheel registry export``; no MLflow import);
- ``fw_registry``: flywheel, serve-only venv, ``flywheel serve`` from the MLflow registry;
- ``fw_full``: flywheel, full install (the project venv), ``flywheel serve`` from the registry;
- ``mlserver``: MLServer + mlserver-sklearn on the same run's sklearn pipeline (joblib), set up
  and started as ``bench.serving`` does (its own venv ``bench/.venvs/mlserver``);
- ``mlflow``: ``mlflow models serve --env-manager local`` on the same run's sklearn pipeline,
  as ``bench.serving`` does.

The model is the champion ``flywheel run`` registers in a fresh FLYWHEEL_HOME (the full venv);
``bench.serving.prep`` derives the sklearn dump and the one-row request from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import cold_start_explain as explain
from bench.serving import harness, procs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cold_start.json"
FULL_VENV = Path(sys.executable).parent.parent
DEFAULT_SERVE_VENVS = (Path("/tmp/sv"), ROOT / "bench" / ".venvs" / "serve")
SERVE_ONLY_ABSENT = ("sklearn", "pandas", "lightgbm", "xgboost", "optuna", "matplotlib", "skl2onnx")
GOAL_COLD_S, GOAL_RSS_MIB = 1.5, 150.0
LABELS = {
    "fw_dir": "flywheel serve --model-dir (serve-only venv)",
    "fw_registry": "flywheel serve, registry (serve-only venv)",
    "fw_full": "flywheel serve, registry (full install)",
    "mlserver": "MLServer 1.7 + mlserver-sklearn",
    "mlflow": "mlflow models serve --env-manager local",
}
FLYWHEEL = ("fw_dir", "fw_registry", "fw_full")
SERVE_ONLY = ("fw_dir", "fw_registry")
PEERS = ("mlserver", "mlflow")
METRICS = ("cold_start_s", "cpu_s", "idle_rss_mib", "idle_pss_mib")


def say(msg: str) -> None:
    print(f"[bench.cold_start {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Setup:
    """What every start needs: the model, the request bodies, the venvs, the folders."""

    work: Path
    home: Path
    prep: dict[str, Any]
    bodies: dict[str, bytes]
    serve_venv: Path
    args: argparse.Namespace
    model_dir: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- preparation


def serve_venv(requested: Path | None) -> Path:
    """The serve-only venv: the one asked for, else /tmp/sv when it is one, else a venv made
    here with ``make install-serve`` (``bench/.venvs/serve``, git-ignored)."""
    candidates = [requested] if requested else list(DEFAULT_SERVE_VENVS)
    for venv in candidates:
        if (venv / ".serve").exists() and (venv / "bin" / "flywheel").exists():
            return venv.resolve()
    venv = candidates[-1]
    say(f"make install-serve VENV={venv} ...")
    subprocess.run(["make", "install-serve", f"VENV={venv}"], cwd=ROOT, check=True)
    return venv.resolve()


def venv_facts(venv: Path) -> dict[str, Any]:
    """Which of the training-stack packages the venv can import (none, for a serve-only one)."""
    code = (
        "import importlib.util as u, json, sys; "
        f"print(json.dumps({{m: u.find_spec(m) is not None for m in {list(SERVE_ONLY_ABSENT)}}}))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
    )
    dists = {d["name"].lower(): d["version"] for d in json.loads(listed.stdout or "[]")}
    return {
        "path": str(venv),
        "importable": json.loads(done.stdout),
        "mlflow": dists.get("mlflow"),
        "mlflow-skinny": dists.get("mlflow-skinny"),
        "onnxruntime": dists.get("onnxruntime"),
        "packages": len(dists),
    }


def has_model_dir(venv: Path) -> bool:
    done = subprocess.run(
        [str(venv / "bin" / "flywheel"), "serve", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    return done.returncode == 0 and "--model-dir" in done.stdout


def export_model_dir(setup: Setup) -> None:
    """``flywheel registry export`` (serve-only venv) into ``WORK/model-dir``, or a skip."""
    if not has_model_dir(setup.serve_venv):
        setup.skipped["fw_dir"] = "`flywheel serve --model-dir` does not exist yet"
        return
    out = setup.work / "model-dir"
    ref = f"{setup.prep['model_name']}@champion"
    done = subprocess.run(
        [str(setup.serve_venv / "bin" / "flywheel"), "registry", "export", ref, "--out", str(out)],
        env=flywheel_env(setup, setup.home, "export"),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        setup.skipped["fw_dir"] = f"`flywheel registry export` failed: {done.stderr[-500:]}"
        return
    setup.model_dir = out


def prepare(args: argparse.Namespace) -> Setup:
    work = Path(tempfile.mkdtemp(prefix="bench-cold-start-"))
    home = args.home.resolve() if args.home else work / "home"
    env = {
        **os.environ,
        "FLYWHEEL_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{FULL_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if args.home is None:
        harness.build_model(home, env, args.customers, work / "flywheel-run.log")
    prep = harness.prepare(work, env)
    setup = Setup(work, home, prep, harness.bodies(prep), serve_venv(args.serve_venv), args)
    wanted = set(args.server_list)
    if "fw_dir" in wanted:
        export_model_dir(setup)
    if "mlserver" in wanted:
        try:
            harness.ensure_mlserver()
        except (OSError, subprocess.CalledProcessError) as exc:
            setup.skipped["mlserver"] = f"MLServer venv could not be made: {exc}"
    return setup


# --------------------------------------------------------------------------- servers


def flywheel_env(setup: Setup, home: Path, key: str) -> dict[str, str]:
    env = {**os.environ, "FLYWHEEL_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    env["FLYWHEEL_SERVING__PREDICTION_LOG_URL"] = f"sqlite:///{setup.work / f'predlog-{key}.db'}"
    if setup.args.bytecode:
        # an installed wheel carries bytecode; this checkout is editable and the machine sets
        # PYTHONDONTWRITEBYTECODE, so flywheel's own modules would compile from source on every
        # start. A pycache prefix (filled by the warm-up round) gives it what an install has.
        env["PYTHONDONTWRITEBYTECODE"] = ""
        env["PYTHONPYCACHEPREFIX"] = str(setup.work / "pycache")
    return env


def flywheel_server(key: str, setup: Setup, python_flags: tuple[str, ...] = ()) -> procs.Server:
    venv = FULL_VENV if key == "fw_full" else setup.serve_venv
    port, grpc_port = procs.free_port(), procs.free_port()
    argv = [str(venv / "bin" / "flywheel")]
    if python_flags:
        argv = [str(venv / "bin" / "python"), *python_flags, "-m", "flywheel"]
    argv += ["serve", "--port", str(port), "--grpc-port", str(grpc_port)]
    home = setup.home
    if key == "fw_dir":
        assert setup.model_dir is not None
        argv += ["--model-dir", str(setup.model_dir)]
        home = setup.work / "empty-home"  # no registry within reach: the folder is all it has
        home.mkdir(exist_ok=True)
    return procs.Server(
        key,
        argv,
        port=port,
        probe=("/v1/predict", setup.bodies["v1"], "application/json"),
        env=flywheel_env(setup, home, key),
        log_path=setup.work / f"{key}.log",
        core=setup.args.core,
    )


def make_server(key: str, setup: Setup) -> procs.Server:
    if key in FLYWHEEL:
        return flywheel_server(key, setup)
    args = argparse.Namespace(server_core=setup.args.core)
    server, _ = harness.make_server(key, setup.prep, setup.bodies, setup.work, {}, args)
    server.env = {**os.environ, **server.env}
    return server


# --------------------------------------------------------------------------- measuring


def start_polled(server: procs.Server, poll_s: float, timeout: float = 240.0) -> float:
    """``procs.Server.start`` with a finer poll: seconds from Popen to the first 200."""
    assert server.log_path is not None
    t0 = time.perf_counter()
    with server.log_path.open("wb") as log:
        server.proc = subprocess.Popen(
            procs.pinned(server.core, server.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server.env,
            cwd=server.cwd,
            start_new_session=True,
        )
    procs._LIVE.append(server.proc)
    while time.perf_counter() - t0 < timeout:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        if server.post_ok():
            return time.perf_counter() - t0
        time.sleep(poll_s)
    raise RuntimeError(f"{server.name} gave no prediction in {timeout:.0f} s:\n{server.log_tail()}")


def tree_memory(server: procs.Server) -> dict[str, Any]:
    """RSS summed over the process tree (the goal's measure), PSS beside it (shared pages
    counted once), and each process."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    rss = pss = 0
    each = []
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
            each.append({"name": proc.name(), "rss_mib": round(info.rss / 2**20, 1)})
    return {"idle_rss_mib": rss / 2**20, "idle_pss_mib": pss / 2**20, "processes": each}


def tree_cpu_s(server: procs.Server) -> float:
    """CPU seconds (user + system) the process tree has used, its reaped children included:
    what the start cost the machine, which another engineer's load does not inflate as it
    does the wall time."""
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def measure(key: str, setup: Setup) -> dict[str, Any]:
    server = make_server(key, setup)
    try:
        load = os.getloadavg()[0]
        cold = start_polled(server, setup.args.poll_ms / 1000)
        cpu = tree_cpu_s(server)
        time.sleep(setup.args.idle_s)
        return {"cold_start_s": cold, "cpu_s": cpu, "load_1min": load, **tree_memory(server)}
    finally:
        server.stop()
        time.sleep(setup.args.pause_s)  # let its teardown finish before the next start


def rounds(setup: Setup, keys: list[str], out: dict[str, Any]) -> None:
    total = setup.args.warmup + setup.args.runs
    for r in range(total):
        turn = r - setup.args.warmup
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        tag = "warm-up" if turn < 0 else f"round {turn + 1}/{setup.args.runs}"
        for key in order:
            try:
                sample = measure(key, setup)
            except Exception as exc:  # report it, keep measuring the others
                out["errors"].setdefault(key, []).append(f"{type(exc).__name__}: {exc}"[-2000:])
                say(f"{tag} {key}: FAILED {type(exc).__name__}")
                continue
            say(
                f"{tag} {key}: {sample['cold_start_s']:.2f} s, "
                f"{sample['idle_rss_mib']:.0f} MiB RSS ({len(sample['processes'])} processes)"
            )
            if turn >= 0:
                sample["round"] = turn
                out["samples"].setdefault(key, []).append(sample)


def explain_one(key: str, setup: Setup) -> dict[str, Any]:
    """One more start of a flywheel server, under ``-X importtime``; see bench.cold_start_explain."""
    say(f"explaining {key} ...")
    server = flywheel_server(key, setup, ("-X", "importtime"))
    try:
        cold = start_polled(server, setup.args.poll_ms / 1000)
        assert server.log_path is not None and server.proc is not None
        answered_at = server.log_path.stat().st_size  # the imports done by the first answer
        time.sleep(setup.args.idle_s)
        pid = server.proc.pid  # taskset execs the server: same process
        idle = {"status": explain.status_mib(pid), "smaps": explain.smaps_by_owner(pid)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[-2000:]}
    finally:
        server.stop()
    text = server.log_path.read_bytes()[:answered_at].decode(errors="replace")
    return explain.summarise(cold, idle, text, Path(server.argv[0]), server.env)


# --------------------------------------------------------------------------- summary


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paired_ratios(samples: dict[str, list[dict[str, Any]]], a: str, b: str, metric: str) -> list:
    """a / b per round (the two measured minutes apart in the same round)."""
    by_round = {s["round"]: s[metric] for s in samples.get(b, [])}
    return [s[metric] / by_round[s["round"]] for s in samples.get(a, []) if s["round"] in by_round]


def summarise(out: dict[str, Any]) -> None:
    samples = out["samples"]
    out["summary"] = {
        key: {m: spread([s[m] for s in runs]) for m in METRICS} for key, runs in samples.items()
    }
    goals: list[dict[str, Any]] = []
    for key in SERVE_ONLY:
        if key in out["summary"]:
            cold = out["summary"][key]["cold_start_s"]["median"]
            rss = out["summary"][key]["idle_rss_mib"]["median"]
            goals.append(_goal(f"{key} cold start ≤ {GOAL_COLD_S} s", cold, GOAL_COLD_S, "s"))
            goals.append(
                _goal(f"{key} idle RSS ≤ {GOAL_RSS_MIB:.0f} MiB", rss, GOAL_RSS_MIB, "MiB")
            )
    out["goals"] = goals
    ratios = []
    for fw in FLYWHEEL:
        for peer in PEERS:
            if fw not in out["summary"] or peer not in out["summary"]:
                continue
            for metric in ("cold_start_s", "cpu_s", "idle_rss_mib"):
                each = paired_ratios(samples, fw, peer, metric)
                ratios.append(
                    {
                        "flywheel": fw,
                        "peer": peer,
                        "metric": metric,
                        "ratio_of_medians": out["summary"][fw][metric]["median"]
                        / out["summary"][peer][metric]["median"],
                        "per_round": spread(each) if each else None,
                    }
                )
    out["ratios"] = ratios


def _goal(label: str, value: float, target: float, unit: str) -> dict[str, Any]:
    return {
        "goal": label,
        "median": value,
        "unit": unit,
        "ratio_to_goal": value / target,
        "verdict": "PASS" if value <= target else "MISS",
    }


def _cell(s: dict[str, float], fmt: str) -> str:
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def print_report(out: dict[str, Any]) -> None:
    head = ("cold start s", "CPU s", "idle RSS MiB", "idle PSS MiB")
    print(f"\n{'server':<46}" + "".join(f"{h:>20}" for h in head) + "  procs")
    for key in LABELS:
        if key in out["summary"]:
            row = out["summary"][key]
            cells = [_cell(row[m], "{:.2f}" if m.endswith("_s") else "{:.0f}") for m in METRICS]
            procs_n = len(out["samples"][key][-1]["processes"])
            print(f"{LABELS[key]:<46}" + "".join(f"{c:>20}" for c in cells) + f"  {procs_n}")
        elif key in out["skipped"] or key in out["errors"]:
            why = out["skipped"].get(key) or out["errors"][key][-1]
            print(f"{LABELS[key]:<46} not measured: {why.splitlines()[0][:120]}")
    print(
        "\n(median of the rounds, min–max in brackets; CPU s: user + system time of the"
        " process tree by the first answer)\n"
    )
    for goal in out["goals"]:
        print(
            f"goal {goal['goal']:<44} {goal['median']:8.2f} {goal['unit']:<4}"
            f" ({goal['ratio_to_goal']:.2f}× the goal)  {goal['verdict']}"
        )
    print()
    names = {"cold_start_s": "cold start", "cpu_s": "CPU s", "idle_rss_mib": "idle RSS"}
    for r in out["ratios"]:
        per = r["per_round"]
        rng = f"  rounds {per['min']:.2f}–{per['max']:.2f}" if per else ""
        print(
            f"{r['flywheel']:>12} / {r['peer']:<9} {names[r['metric']]:<11}"
            f" {r['ratio_of_medians']:.2f}×{rng}"
        )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__)
    parser.add_argument("--runs", type=int, help="measured rounds (default 5, quick 2)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1,000 customers")
    parser.add_argument(
        "--servers", default=",".join(LABELS), help=f"comma list from {','.join(LABELS)}"
    )
    parser.add_argument(
        "--home", type=Path, help="reuse a FLYWHEEL_HOME with a champion (skips `flywheel run`)"
    )
    parser.add_argument("--customers", type=int, help="`flywheel run --customers` (default 3000)")
    parser.add_argument(
        "--serve-venv",
        type=Path,
        help="serve-only venv (default /tmp/sv if it is one, else bench/.venvs/serve, made here)",
    )
    parser.add_argument("--core", type=int, default=0, help="core the servers run on (-1: any)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds first (default 1)")
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--idle-s", type=float, default=2.0, help="wait before reading RSS")
    parser.add_argument("--pause-s", type=float, default=1.0, help="pause after each stop")
    parser.add_argument(
        "--no-bytecode",
        dest="bytecode",
        action="store_false",
        help="run flywheel as this checkout is (its modules compiled from source each start)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="then, per flywheel server: imports (-X importtime) and where the memory is",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp work folder")
    args = parser.parse_args(argv)
    args.runs = args.runs or (2 if args.quick else 5)
    args.customers = args.customers or (1000 if args.quick else 3000)
    args.core = None if args.core < 0 else args.core
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.server_list) - set(LABELS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; known: {', '.join(LABELS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.install_cleanup()
    if args.core is not None and shutil.which("taskset") is None:
        raise SystemExit("taskset is missing: apt-get install -y util-linux (or --core -1)")
    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "samples": {},
        "errors": {},
        "skipped": {},
    }
    setup = None
    try:
        setup = prepare(args)
        out["skipped"] = setup.skipped
        out["model"] = {k: setup.prep[k] for k in ("model_name", "champion_version", "sklearn_uri")}
        out["venvs"] = {"serve": venv_facts(setup.serve_venv), "full": venv_facts(FULL_VENV)}
        keys = [k for k in args.server_list if k not in setup.skipped]
        if args.core is not None:  # the harness and its polling stay off the servers' core
            others = set(os.sched_getaffinity(0)) - {args.core}
            if others:
                os.sched_setaffinity(0, others)
        say(f"servers {', '.join(keys)}; {args.warmup} warm-up + {args.runs} rounds")
        rounds(setup, keys, out)
        summarise(out)
        if args.explain:
            out["explain"] = {key: explain_one(key, setup) for key in keys if key in FLYWHEEL}
    finally:
        procs.stop_all()
        out["machine"]["load_avg_at_end"] = os.getloadavg()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2, default=str))
        if setup is not None and not args.keep:
            shutil.rmtree(setup.work, ignore_errors=True)
        elif setup is not None:
            say(f"work folder kept: {setup.work}")
    print_report(out)
    if args.explain:
        explain.print_explain(out["explain"])
    say(f"results: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
