"""A year of the churn world replayed: total wall time and where it went (issue #15).

    .venv/bin/python -m bench.replay [--days 365] [--requests-per-day 2000] [--drift ticket_churn@120]

In a fresh folder (embedded defaults, no FLYWHEEL_* variables): ``flywheel run`` (the spine
and the first champion), then ``flywheel replay`` with the options given; both as the
installed entry point. Prints the replay's summary and its wall-time breakdown (serving the
traffic, posting labels, monitoring, triggers, retraining with the pipeline's own overhead,
simulation, the timeline) and writes them to ``bench/results/replay.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}


def _pipeline_overhead(home: Path) -> dict[str, float]:
    """Per pipeline run: its wall time against the sum of its steps' own time."""
    runs = sorted((home / "pipelines" / "runs").glob("*.json"))
    out: dict[str, float] = {"runs": float(len(runs))}
    walls, steps = [], []
    for path in runs:
        record = json.loads(path.read_text())
        inner = sum(float(s.get("seconds") or 0) for s in record.get("steps", {}).values())
        if record.get("finished_at") and record.get("created_at"):
            walls.append(float(record["finished_at"]) - float(record["created_at"]))
            steps.append(inner)
    if walls:
        out["pipeline_wall_s"] = round(sum(walls), 2)
        out["steps_s"] = round(sum(steps), 2)
        out["overhead_per_run_s"] = round((sum(walls) - sum(steps)) / len(walls), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--requests-per-day", type=int, default=2000)
    ap.add_argument("--drift", action="append", default=None)
    ap.add_argument("--keep", action="store_true", help="Keep the folder (prints its path).")
    args = ap.parse_args()
    drift = args.drift if args.drift is not None else ["ticket_churn@120"]
    folder = Path(tempfile.mkdtemp(prefix="flywheel-bench-replay-"))
    flywheel = str(BIN / "flywheel")
    t = time.perf_counter()
    subprocess.run([flywheel, "run"], cwd=folder, env=_env(), check=True, capture_output=True)
    spine = time.perf_counter() - t
    cmd = [
        flywheel,
        "replay",
        "--days",
        str(args.days),
        "--requests-per-day",
        str(args.requests_per_day),
        "--json",
    ]
    for d in drift:
        cmd += ["--drift", d]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=_env(), check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    summary = json.loads(done.stdout)
    parts = summary["seconds"]
    result = {
        "days": args.days,
        "requests_per_day": args.requests_per_day,
        "drift": drift,
        "spine_s": round(spine, 1),
        "replay_wall_s": round(wall, 1),
        "breakdown_s": parts,
        "unaccounted_s": round(wall - sum(parts.values()), 1),
        "summary": {k: v for k, v in summary.items() if k != "seconds"},
        "pipeline": _pipeline_overhead(folder / ".flywheel"),
        "cpus": os.cpu_count(),
    }
    print(f"flywheel run (the spine): {spine:.1f} s")
    print(
        f"replay of {args.days} days at {args.requests_per_day:,} requests/day: {wall:.1f} s wall "
        f"({summary['requests']:,} requests, {summary['retrains']} retrains, "
        f"{summary['promotions']} promotions, {summary['rollbacks']} rollbacks)"
    )
    for key, value in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {key:<14} {value:8.1f} s  {100 * value / wall:5.1f}%")
    print(f"  {'(process, imports)':<14} {result['unaccounted_s']:8.1f} s")
    if result["pipeline"].get("overhead_per_run_s") is not None:
        print(
            f"pipeline runs: {int(result['pipeline']['runs'])}, orchestration overhead "
            f"{result['pipeline']['overhead_per_run_s']:.3f} s per run (local runner)"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replay.json").write_text(json.dumps(result, indent=2))
    print(f"timeline: {summary['timeline']}" if args.keep else f"(folder {folder})")


if __name__ == "__main__":
    main()
