"""Rollouts in the serving benchmark (issue #14, "Speed"): one version, a canary at 10% and a
shadow challenger, measured in ONE run on the same core and the same registered model.

    .venv/bin/python -m bench.serving.rollouts [--rounds 10] [--duration 3] [--home DIR]
        [--metric accuracy|none] [--python-clients] [--profile] [--keep]
        [--server-core 0] [--load-core 1]

About 7 minutes with the defaults on the 2-core machine (30 s of it `flywheel run`).

What one run does:

1. ``flywheel run --customers 3000`` in a temp FLYWHEEL_HOME (or ``--home``), then the serving
   benchmark's own preparation (:func:`bench.serving.harness.prepare`): champion v1 and a
   second registered version of the same artifact (v2, the challenger: same family, same
   scores, so the guardrails pass and nothing rolls back while we measure);
2. four ``flywheel serve`` processes, all pinned to the server core, each on its own copy
   of that home (the rollout state lives in the registry's store, so a copy keeps the
   ``one`` server out of the others' rollouts) with its own prediction log: ``one`` (no
   rollout), ``canary`` (``POST /admin/rollout/start``: steps [10, 100], interval 1h, so it
   stays at 10%), ``shadow`` (mirror 100: the champion answers, v2 scores every request
   off the hot path) and ``control``, a second server of one version: its ratio to ``one``
   (A/A) shows how far the host's noise alone moves a ratio. The rollouts start once, on a
   running server (as a user starts them), and run for the whole measurement;
3. ``--rounds`` rounds; a round measures, at 16 then at 64 connections, the four servers
   one after the other in a rotated order (wrk, the serving benchmark's load tool; without
   wrk the Python client of :mod:`bench.doors` takes its place and says so), each after a
   1 s warm-up, with the server's CPU seconds per answer (:class:`bench.doors.Watch`). Only
   the server under load runs: the others are stopped (SIGSTOP) until their turn, so
   neither their rollout agents nor their logs take the core from it. The four figures of
   one round and connection count are taken within ~4 x (1 + duration) seconds, so the
   host's drift (minutes long here) hits each mode alike, and each round's ratio cancels it;
4. at the end ``flywheel rollout status --json`` per rollout: the arms' counts (canary: the
   challenger's observed share; shadow: rows the shadow scored, and the answers it did not
   score, i.e. skipped or still queued), and that the rollout was still running (no
   guardrail fired while we measured); then ``rollout abort``;
5. per mode and connections: medians over the rounds of req/s, p50, p99, CPU µs per
   answer, the server core's busy share and rows per micro-batch; the per-round ratios
   canary/one and shadow/one of req/s, their median with a distribution-free 95% interval
   (order statistics of the binomial), and the verdict against the goal (within 10% of one
   version: ratio >= 0.90): PASS when the whole interval is at or above 0.90, MISS when it
   is below, UNDECIDED when it straddles the line; the same for CPU per answer (one's / the
   mode's: the req/s ratio a saturated server core would show; the one to read when the
   load tool, not the server, sets the pace, i.e. busy well below 1); the shadow's own cost
   (CPU µs per answer over one version's); ``bench/results/serving_rollouts.json``.

The plans keep the default guardrails but the latency one (``max_p99_ratio`` 100,
``p99_slack_ms`` 1000): a shadow's latency includes its wait in the shadow's one-thread
queue, and under load the default (x1.5 + 5 ms) rolled a shadow of the same artifact back
mid-run. ``--metric none`` starts the plans with ``guardrails.metric: none`` (the default,
``accuracy``, makes every tick of the rollout agent count the labelled outcomes of every
row logged since the rollout began). ``--profile`` runs each server under
:mod:`bench.serving.sampler` and prints, per mode, the functions whose stack samples per
answer grew over one version's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from math import comb
from pathlib import Path
from typing import Any

from bench.doors import Door, Watch, _py_process, rest_wrk
from bench.serving import harness, load, procs

ROOT = harness.ROOT
RESULTS = ROOT / "bench" / "results" / "serving_rollouts.json"
# "control": a second server of one version, measured like the others: its ratio to "one"
# (an A/A comparison) shows how far the host's noise alone moves a ratio
MODES = ("one", "canary", "shadow", "control")
ROLLOUTS = ("canary", "shadow")
CONNECTIONS = (16, 64)
GOAL_RATIO = 0.90  # issue #14: requests/s within 10% of serving one version


def say(msg: str) -> None:
    print(f"[bench.serving.rollouts {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- plans, admin


def plan_for(mode: str, challenger: str, metric: str) -> dict[str, Any] | None:
    """The rollout plan of ``mode`` (None: no rollout). A 1 h interval keeps a canary at
    its first step (10%) for the whole measurement."""
    # the shadow's latency counts its wait in the shadow's one-thread queue: under load the
    # default p99 guardrail (x1.5 + 5 ms) rolls a shadow of the SAME artifact back mid-run
    guardrails = {"metric": metric, "max_p99_ratio": 100.0, "p99_slack_ms": 1000.0}
    if mode == "canary":
        return {
            "challenger": challenger,
            "strategy": "canary",
            "steps": [10, 100],
            "interval": "1h",
            "guardrails": guardrails,
        }
    if mode == "shadow":
        return {
            "challenger": challenger,
            "strategy": "shadow",
            "mirror": 100,
            "interval": "1h",
            "guardrails": guardrails,
        }
    return None


def admin(server: procs.Server, token: str, method: str, path: str, body: Any = None) -> Any:
    """One admin call with the bearer token; its JSON answer (RuntimeError on non-2xx)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request(method, path, data, headers)
        answer = conn.getresponse()
        text = answer.read()
    finally:
        conn.close()
    if not 200 <= answer.status < 300:
        raise RuntimeError(f"{method} {path} answered {answer.status}: {text[:300]!r}")
    return json.loads(text)


def rollout_status(env: dict[str, str]) -> dict[str, Any]:
    """``flywheel rollout status --json`` in the serving folder (the registry's state)."""
    done = subprocess.run(
        [harness.PY, "-m", "flywheel", "rollout", "status", "--json"],
        env={**env, "COLUMNS": "400"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flywheel rollout status failed: {done.stderr[-500:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- measuring


def measure(
    server: procs.Server, body: bytes, connections: int, args: argparse.Namespace, work: Path
) -> Door:
    """One run at ``connections``: wrk (after its 1 s warm-up) or the Python client, with
    the server's CPU and its own count of 2xx answers over the run."""
    opts = argparse.Namespace(
        inflight=connections, duration=args.duration, load_core=args.load_core
    )
    watch = Watch(server, "rest")
    if args.tool == "wrk":
        return rest_wrk(watch, server.port, body, opts, work)
    # bench.doors' own client processes; not its python_load, which reads the Watch's
    # counts before the Watch has closed (AttributeError: 'Watch' object has no attribute 'ok')
    url = f"http://127.0.0.1:{server.port}/v1/predict"
    parts = load.split(connections, args.clients)
    now = time.monotonic()
    window = (now + 2.0, now + 2.0 + args.duration)  # connect and warm up, then measure
    with watch:
        results = load.run_processes(_py_process, [("rest", url, body, n, window) for n in parts])
    times = [t for r in results for t in r[0]]
    errors = sum(r[1] for r in results)
    p50, p99 = load._percentile(times, 0.5), load._percentile(times, 0.99)
    return watch.door("REST /v1/predict", len(times) / args.duration, p50, p99, errors, args.tool)


def arms_of(status: dict[str, Any]) -> dict[str, Any]:
    """What a block's ``rollout status`` says: state, weights, per-arm requests; for a
    shadow, the rows it scored and the champion's answers it did not score."""
    state = status.get("rollout") or {}
    arms = status.get("arms") or {}
    champion = (arms.get("champion") or {}).get("requests", 0)
    challenger = (arms.get("challenger") or {}).get("requests", 0)
    out: dict[str, Any] = {
        "rollout": state.get("id"),
        "status": state.get("status"),
        "reason": state.get("reason"),
        "weights": status.get("weights"),
        "champion_requests": champion,
        "challenger_requests": challenger,
        "challenger_errors": (arms.get("challenger") or {}).get("errors", 0),
    }
    if state.get("strategy") == "shadow":
        out["shadow_scored"] = challenger
        out["shadow_not_scored"] = champion - challenger
        out["shadow_scored_share"] = challenger / champion if champion else None
    elif champion + challenger:
        out["challenger_share"] = challenger / (champion + challenger)
    return out


def start_rollout(
    server: procs.Server, mode: str, env: dict[str, str], prep: dict[str, Any], metric: str
) -> dict[str, Any] | None:
    """Start ``mode``'s rollout on ``server`` (None for ``one``); it runs until the end."""
    plan = plan_for(mode, prep["swap_version"], metric)
    if plan is None:
        return None
    state = admin(
        server,
        env["FLYWHEEL_ADMIN_TOKEN"],
        "POST",
        "/admin/rollout/start",
        {"plan": plan, "reason": "bench"},
    )
    return {k: state[k] for k in ("id", "status", "weight")}


def end_rollout(server: procs.Server, env: dict[str, str]) -> dict[str, Any]:
    """Read the arms (the shadow's queue drains first), then abort the rollout."""
    time.sleep(2.0)  # the shadow's queue drains; the agent stores the last counts
    arms = arms_of(rollout_status(env))
    token = env["FLYWHEEL_ADMIN_TOKEN"]
    active = admin(server, token, "GET", "/admin/rollout").get("rollout") or {}
    if active.get("status") in ("running", "paused", "waiting", "promoting"):
        admin(server, token, "POST", "/admin/rollout/abort", {"reason": "bench: done"})
    return arms


def pause(server: procs.Server, stop: bool) -> None:
    """SIGSTOP (``stop``) or SIGCONT ``server``'s process group: only the server under load
    runs on the server core."""
    if server.proc is not None and server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)


def measure_round(
    servers: dict[str, procs.Server], i: int, body: bytes, args: argparse.Namespace, work: Path
) -> dict[str, dict[str, Any]]:
    """Round ``i``: per connection count, each mode's server in a rotated order, alone."""
    order = MODES[i % len(MODES) :] + MODES[: i % len(MODES)]
    say(f"round {i + 1}/{args.rounds}: {' -> '.join(order)} ({args.tool})")
    found: dict[str, dict[str, Any]] = {m: {} for m in MODES}
    for connections in CONNECTIONS:
        for mode in order:
            server = servers[mode]
            pause(server, False)
            mark(args, mode)
            try:
                door = measure(server, body, connections, args, work)
            finally:
                mark(args, "-")
                pause(server, True)
            found[mode][f"c{connections}"] = door.to_dict()
            say(
                f"  {mode:<6} c{connections}: {door.rps:,.0f} req/s, p50 {door.p50_ms} ms, "
                f"p99 {door.p99_ms} ms, server CPU {door.server_cpu_us} µs/answer, "
                f"{door.batch_rows} rows/batch, errors {door.errors}"
            )
    return found


def mark(args: argparse.Namespace, label: str) -> None:
    """Tell the sampler (``--profile``) which mode the server is serving now."""
    if args.profile:
        for mode, path in args.label_files.items():
            path.write_text(label if mode == label else "-")


def profiled_argv(argv: list[str], out: Path, label_file: Path) -> list[str]:
    """``python -m flywheel serve ...`` run under :mod:`bench.serving.sampler`."""
    if argv[1] != "-m":
        raise SystemExit(f"--profile needs a `python -m` server command, got {argv[:3]}")
    return [argv[0], "-m", "bench.serving.sampler", str(out), str(label_file), *argv[1:]]


def hot_spots(profile: dict[str, Any], answers: dict[str, int], top: int = 15) -> dict[str, Any]:
    """Per rollout mode, the functions whose samples per 1,000 answers grew most over one
    version's (inclusive, i.e. with what they call), and each mode's busy threads."""
    out: dict[str, Any] = {}
    base = profile.get("one")
    if base is None or not answers.get("one"):
        return out
    for mode in ("one", "canary", "shadow"):
        found = profile.get(mode)
        if found is None or not answers.get(mode):
            continue
        per = 1000.0 / answers[mode]
        entry: dict[str, Any] = {
            "answers": answers[mode],
            "busy_samples_per_1k_answers": round(found["busy_samples"] * per, 2),
            "threads_per_1k_answers": {t: round(n * per, 2) for t, n in found["threads"].items()},
        }
        if mode != "one":
            base_per = 1000.0 / answers["one"]
            extra = {
                fn: n * per - base["inclusive"].get(fn, 0) * base_per
                for fn, n in found["inclusive"].items()
            }
            ranked = sorted(extra.items(), key=lambda kv: -kv[1])[:top]
            entry["extra_inclusive_per_1k_answers"] = {fn: round(v, 2) for fn, v in ranked}
            own = {
                fn: n * per - base["self"].get(fn, 0) * base_per for fn, n in found["self"].items()
            }
            ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
            entry["extra_self_per_1k_answers"] = {fn: round(v, 2) for fn, v in ranked}
        else:
            entry["top_self"] = dict(list(found["self"].items())[:top])
        out[mode] = entry
    return out


# --------------------------------------------------------------------------- summary


def _median(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def median_interval(values: list[float], level: float = 0.95) -> dict[str, Any] | None:
    """A distribution-free interval for the median of ``values``: drop the ``d`` lowest and
    ``d`` highest, with the largest ``d`` whose binomial tail P(Binomial(n, 1/2) <= d) stays
    within (1 - level) / 2; its coverage is 1 - 2 x that tail. With too few values for
    ``level``, the range and the (lower) coverage it has."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None

    def tail(d: int) -> float:  # P(Binomial(n, 1/2) <= d)
        return sum(comb(n, j) for j in range(d + 1)) / 2**n

    d = 0
    while d + 1 < (n + 1) // 2 and tail(d + 1) <= (1 - level) / 2:
        d += 1
    return {"low": ordered[d], "high": ordered[n - 1 - d], "coverage": 1 - 2 * tail(d)}


def verdict(interval: dict[str, Any] | None) -> str | None:
    """PASS: the median's interval lies at or above the goal; MISS: below; else UNDECIDED
    (also when there were too few rounds for a 95% interval: fewer than 6)."""
    if interval is None:
        return None
    if interval["coverage"] < 0.95:
        return "UNDECIDED"
    if interval["low"] >= GOAL_RATIO:
        return "PASS"
    if interval["high"] < GOAL_RATIO:
        return "MISS"
    return "UNDECIDED"


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per mode and connections: medians over the rounds; per-round ratios to ``one``."""
    out: dict[str, Any] = {}
    for connections in CONNECTIONS:
        key = f"c{connections}"
        table: dict[str, Any] = {}
        for mode in [m for m in MODES if m in rounds[0]]:
            runs = [r[mode][key] for r in rounds]
            table[mode] = {
                "rps": _median([d["rps"] for d in runs]),
                # the server core's busy share: below ~0.9 the load tool, not the server,
                # set the pace, and CPU per answer is the figure to compare
                "server_busy": _median(
                    [d["rps"] * d["server_cpu_us"] / 1e6 for d in runs if d["server_cpu_us"]]
                ),
                "p50_ms": _median([d["p50_ms"] for d in runs]),
                "p99_ms": _median([d["p99_ms"] for d in runs]),
                "cpu_us": _median([d["server_cpu_us"] for d in runs]),
                "batch_rows": _median([d["batch_rows"] for d in runs]),
                "errors": sum(d["errors"] for d in runs),
                "rounds_rps": [d["rps"] for d in runs],
            }
            if mode == "one":
                continue
            ratios = [
                r[mode][key]["rps"] / r["one"][key]["rps"] for r in rounds if r["one"][key]["rps"]
            ]
            extra = [
                r[mode][key]["server_cpu_us"] - r["one"][key]["server_cpu_us"]
                for r in rounds
                if r[mode][key]["server_cpu_us"] and r["one"][key]["server_cpu_us"]
            ]
            # answers per core-second relative to one version: the req/s ratio a saturated
            # server core would show (one version's CPU per answer / this mode's)
            capacity = [
                r["one"][key]["server_cpu_us"] / r[mode][key]["server_cpu_us"]
                for r in rounds
                if r[mode][key]["server_cpu_us"] and r["one"][key]["server_cpu_us"]
            ]
            ratio = _median(ratios)  # type: ignore[arg-type]
            interval = median_interval(ratios)
            cpu_interval = median_interval(capacity)
            table[mode].update(
                ratio=ratio,
                ratios=ratios,
                interval=interval,
                capacity_ratio=_median(capacity),  # type: ignore[arg-type]
                capacity_ratios=capacity,
                capacity_interval=cpu_interval,
                cpu_extra_us=_median(extra),  # type: ignore[arg-type]
                verdict=verdict(interval),
                capacity_verdict=verdict(cpu_interval),
            )
        out[key] = table
    return out


def shadow_cost(arms: dict[str, Any]) -> dict[str, Any]:
    """The shadow's rows scored and not scored over the whole run (its ``rollout status``)."""
    answered = arms.get("champion_requests", 0)
    scored = arms.get("shadow_scored", 0)
    return {
        "answered": answered,
        "scored": scored,
        "not_scored": answered - scored,
        "scored_share": scored / answered if answered else None,
        "status": arms.get("status"),
    }


def print_report(out: dict[str, Any]) -> None:
    print()
    print(
        f"rollouts, 1-row /v1/predict, server pinned to core {out['config']['server_core']}, "
        f"{out['config']['tool']}, {out['config']['rounds']} rounds x "
        f"{out['config']['duration_s']:g} s, medians"
    )
    head = f"{'mode':<8}{'conn':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs':>9}"
    head += f"{'busy':>6}{'rows/b':>8}{'x one':>7}{'interval':>15}  {'verdict':<10}"
    print(head + f"{'CPU x one':>10}{'interval':>15}  {'verdict':<10}")
    for key, table in out["summary"].items():
        for mode, row in table.items():
            print(
                f"{mode:<8}{key[1:]:>5}{_f(row['rps'], 0, ','):>9}{_f(row['p50_ms']):>9}"
                f"{_f(row['p99_ms']):>9}{_f(row['cpu_us'], 0):>9}{_f(row['server_busy']):>6}"
                f"{_f(row['batch_rows']):>8}{_f(row.get('ratio'), 3):>7}"
                f"{_span(row.get('interval')):>15}  {row.get('verdict') or '':<10}"
                f"{_f(row.get('capacity_ratio'), 3):>10}{_span(row.get('capacity_interval')):>15}"
                f"  {row.get('capacity_verdict') or '':<10}"
            )
    for key, table in out["summary"].items():
        for mode in [m for m in MODES[1:] if m in table]:
            row = table[mode]
            ratios = ", ".join(f"{r:.3f}" for r in row["ratios"])
            print(f"{mode} c{key[1:]} x one per round: {ratios}")
    coverage = (out["summary"]["c16"]["canary"].get("interval") or {}).get("coverage")
    print(
        "x one: req/s over one version's in the same round (median), and a distribution-free "
        f"interval for that median ({_f(coverage and 100 * coverage, 1)}% coverage); CPU x "
        "one: one version's server CPU per answer over this mode's (the req/s ratio of a "
        "saturated core); verdict vs the goal (>= 0.90): PASS / MISS when the whole "
        "interval is above / below it, else UNDECIDED; control: a second server of one "
        "version (A/A): how far the host's noise alone moves a ratio"
    )
    cost = out["shadow"]
    print(
        f"shadow: scored {cost['scored']:,} of {cost['answered']:,} answers "
        f"({_f(cost['scored_share'], 3)}), not scored {cost['not_scored']:,}; extra server "
        f"CPU per answer over one version: c16 {_f(out['summary']['c16']['shadow']['cpu_extra_us'], 0)} "
        f"µs, c64 {_f(out['summary']['c64']['shadow']['cpu_extra_us'], 0)} µs"
    )
    canary = out["arms"].get("canary") or {}
    print(
        f"canary: challenger share {_f(canary.get('challenger_share'), 4)} of "
        f"{canary.get('champion_requests', 0) + canary.get('challenger_requests', 0):,} answers"
    )
    for mode in ("canary", "shadow"):
        arms = out["arms"].get(mode) or {}
        if arms.get("status") != "running":  # its figures are not (all) the mode's
            print(
                f"WARNING {mode}: rollout {arms.get('status')} at the end "
                f"({arms.get('reason')}): a guardrail may have fired while measured"
            )
    load_avg = out["config"]["load_avg_at_start"], out["config"]["load_avg_at_end"]
    print(f"load average at start {load_avg[0]}, at end {load_avg[1]}")
    for mode, entry in (out.get("profile") or {}).items():
        print(
            f"profile {mode}: {entry['busy_samples_per_1k_answers']} busy samples per 1k "
            f"answers; threads {entry['threads_per_1k_answers']}"
        )
        for fn, v in (entry.get("extra_inclusive_per_1k_answers") or {}).items():
            print(f"    +{v:>8.2f}  {fn}")


def _span(interval: dict[str, Any] | None) -> str:
    return "-" if interval is None else f"[{interval['low']:.3f}, {interval['high']:.3f}]"


def _f(value: float | None, digits: int = 2, sep: str = "") -> str:
    return "-" if value is None else f"{value:{sep}.{digits}f}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving.rollouts", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the three modes")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    parser.add_argument("--home", type=Path, help="reuse a FLYWHEEL_HOME with a champion")
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument(
        "--metric",
        choices=("accuracy", "none"),
        default="accuracy",
        help="the plans' guardrails.metric (accuracy: the default of a plan)",
    )
    parser.add_argument("--python-clients", action="store_true", help="no wrk, even if installed")
    parser.add_argument("--clients", type=int, default=4, help="processes of the Python client")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp work folder")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the server under bench.serving.sampler (py-spy-like stack samples per mode; "
        "adds a few per cent of CPU): the functions whose samples per answer grow with a rollout",
    )
    args = parser.parse_args(argv)
    args.entry = "cli"  # the rollout agent runs in `flywheel serve` (registry-served)
    use_wrk = shutil.which("wrk") is not None and not args.python_clients
    args.tool = "wrk" if use_wrk else f"python aiohttp client, {args.clients} processes"
    return args


def _env(home: Path, work: Path, mode: str = "one") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    return {
        **env,
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_CONFIG": os.devnull,
        "FLYWHEEL_ADMIN_TOKEN": os.urandom(18).hex(),
        "FLYWHEEL_SERVING__PREDICTION_LOG_URL": f"sqlite:///{work / f'predictions-{mode}.db'}",
        "PYTHONPATH": str(ROOT),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.install_cleanup()
    if shutil.which("taskset") is None:
        raise SystemExit("taskset is missing: apt-get install -y util-linux")
    work = Path(tempfile.mkdtemp(prefix="bench-rollouts-"))
    home = args.home.resolve() if args.home else work / "home"
    env = _env(home, work)
    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "tool": args.tool if args.tool != "wrk" else "wrk -t1",
            "metric": args.metric,
            "server_core": args.server_core,
            "load_core": args.load_core,
            "load_avg_at_start": os.getloadavg(),
            "cpu_count": os.cpu_count(),
        },
    }
    t0 = time.perf_counter()
    servers: dict[str, procs.Server] = {}
    try:
        if args.home is None:
            harness.build_model(home, env, args.customers, work / "flywheel-run.log")
        prep = harness.prepare(work, env)
        out["model"] = {k: prep[k] for k in ("model_name", "champion_version", "swap_version")}
        bodies = harness.bodies(prep)
        body = bodies["v1"]
        envs = {"one": env}
        for mode in MODES[1:]:  # its own registry store: a rollout stays its server's
            shutil.copytree(home, work / f"home-{mode}", symlinks=True)
            envs[mode] = _env(work / f"home-{mode}", work, mode)
        args.label_files = {m: work / f"profile-label-{m}" for m in MODES}
        for mode in MODES:
            server, _ = harness.make_server("flywheel", prep, bodies, work, envs[mode], args)
            server.log_path = work / f"flywheel-{mode}.log"
            if args.profile:
                args.label_files[mode].write_text("-")
                server.argv = profiled_argv(
                    server.argv, work / f"profile-{mode}.json", args.label_files[mode]
                )
            servers[mode] = server
            cold = server.start()
            say(f"flywheel serve ({mode}) pinned to core {args.server_core}: ready in {cold:.1f} s")
            harness.warm_and_measure_idle(server, 200)
            started = start_rollout(server, mode, envs[mode], prep, args.metric)
            if started is not None:
                out.setdefault("rollouts", {})[mode] = started
                harness.warm_and_measure_idle(server, 200)  # the challenger's batcher too
            pause(server, True)
        os.sched_setaffinity(0, {args.load_core})  # this process and its clients: load core
        rounds = [measure_round(servers, i, body, args, work) for i in range(args.rounds)]
        out["rounds"] = rounds
        out["summary"] = summarise(rounds)
        for server in servers.values():
            pause(server, False)
        out["arms"] = {m: end_rollout(servers[m], envs[m]) for m in ROLLOUTS}
        say(f"arms: {out['arms']}")
        out["shadow"] = shadow_cost(out["arms"]["shadow"])
    finally:
        for server in servers.values():
            pause(server, False)
            server.stop()
        if args.profile and "rounds" in out:
            answers = {
                m: sum(r[m][f"c{c}"]["answered"] for r in out["rounds"] for c in CONNECTIONS)
                for m in MODES
            }
            profile = {}
            for mode in MODES:
                found = work / f"profile-{mode}.json"
                if found.exists():
                    profile[mode] = json.loads(found.read_text()).get(mode)
            out["profile"] = hot_spots(profile, answers)
        procs.stop_all()
        out["config"]["load_avg_at_end"] = os.getloadavg()
        out["config"]["wall_s"] = round(time.perf_counter() - t0, 1)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2, default=str))
        if args.keep:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_report(out)
    say(f"results: {RESULTS.relative_to(ROOT)} (wall {out['config']['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
