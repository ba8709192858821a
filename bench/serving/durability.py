"""The cost of the prediction log's ``commit`` durability against ``async``, in one run.

Two ``flywheel serve`` processes on the same champion, one per durability, each with its
own prediction log (SQLite by default; ``--postgres-admin URL`` adds a PostgreSQL pair on
throwaway databases created and dropped here), both alive and pinned to the server core,
measured with wrk (``/v1/predict``, one real row) in alternating rounds (async, commit,
commit, async, ...) at 16 and 64 connections, so machine drift hits both alike. Prints
req/s, p50 and p99 per mode (medians over the rounds) and the median of the rounds'
commit/async throughput ratios; writes ``bench/results/durability.json``.

    .venv/bin/python -m bench.serving.durability [--home FLYWHEEL_HOME] [--rounds 4]
        [--duration 10] [--server-core 0] [--load-core 1] [--postgres-admin URL]

Without ``--home`` it first runs ``flywheel run --customers 3000`` in a temp home.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.serving import load, procs

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def say(text: str) -> None:
    print(text, flush=True)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    return {**env, "FLYWHEEL_HOME": str(home), "FLYWHEEL_CONFIG": os.devnull}


def _home(args: argparse.Namespace, work: Path) -> Path:
    if args.home:
        return Path(args.home).resolve()
    home = work / "fw"
    say("flywheel run --customers 3000 (a champion to serve) ...")
    subprocess.run(
        [PY, "-m", "flywheel", "run", "--customers", "3000"],
        env=_env(home),
        cwd=work,
        check=True,
        capture_output=True,
    )
    return home


def _row(home: Path) -> bytes:
    code = (
        "import json; from flywheel.config import load_settings; "
        "from flywheel.data.snapshots import read_snapshot, latest_snapshot; "
        "s = load_settings(); df = read_snapshot(s, latest_snapshot(s, 'churn'))"
        ".drop(columns=['churned', 'customer_id', 'observed_at']).dropna().head(1); "
        "print(df.to_json(orient='records'))"
    )
    out = subprocess.run(
        [PY, "-c", code], env=_env(home), capture_output=True, text=True, check=True
    )
    return json.dumps({"records": json.loads(out.stdout)}).encode()


def _server(
    name: str, home: Path, log_url: str, durability: str, body: bytes, work: Path, core: int
) -> procs.Server:
    port = procs.free_port()
    return procs.Server(
        name=name,
        argv=[PY, "-m", "flywheel", "serve", "--port", str(port), "--no-grpc"],
        port=port,
        probe=("/v1/predict", body, "application/json"),
        env={
            **_env(home),
            "FLYWHEEL_SERVING__PREDICTION_LOG_URL": log_url,
            "FLYWHEEL_SERVING__PREDICTION_LOG_DURABILITY": durability,
            "FLYWHEEL_SERVING__POLL_INTERVAL_S": "0",
        },
        cwd=work,
        log_path=work / f"{name}.log",
        core=core,
    )


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    return {
        "rps": median("rps"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "errors": sum(r["errors"] for r in runs),
    }


def _rounds(
    contenders: list[tuple[str, str]], script: Path, connections: int, args: Any
) -> dict[str, list[dict[str, Any]]]:
    """Alternating wrk runs (A B, B A, ...) after one discarded warm-up run of each."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in contenders}
    for _, url in contenders:
        load.run_wrk(url, script, connections, min(args.duration, 2.0), args.load_core)
    for i in range(args.rounds):
        for name, url in contenders if i % 2 == 0 else contenders[::-1]:
            result, _ = load.run_wrk(url, script, connections, args.duration, args.load_core)
            runs[name].append(result.to_dict())
        shown = ", ".join(f"{n} {runs[n][-1]['rps']:,.0f}" for n, _ in contenders)
        say(f"  c{connections} round {i + 1}/{args.rounds}: {shown} req/s")
    return runs


def compare(
    backend: str, urls: tuple[str, str], home: Path, body: bytes, work: Path, args: Any
) -> dict[str, Any]:
    """async vs commit on one backend: both servers up, alternating wrk rounds."""
    modes = ("async", "commit")
    servers = [
        _server(f"{backend}-{mode}", home, url, mode, body, work, args.server_core)
        for mode, url in zip(modes, urls, strict=True)
    ]
    out: dict[str, Any] = {}
    try:
        for server in servers:
            server.start()
        script = load.lua_script(work / "predict.lua", body, "application/json")
        contenders = [
            (m, f"http://127.0.0.1:{s.port}/v1/predict")
            for m, s in zip(modes, servers, strict=True)
        ]
        for connections in (16, 64):
            runs = _rounds(contenders, script, connections, args)
            summary = {m: _summary(runs[m]) for m in modes}
            per_round = [
                c["rps"] / a["rps"]
                for a, c in zip(runs["async"], runs["commit"], strict=True)
                if a["rps"]
            ]
            ratio = statistics.median(per_round) if per_round else None
            out[f"c{connections}"] = {
                **summary,
                "commit_over_async": ratio,
                "per_round": per_round,
                "runs": runs,
            }
            say(_line(backend, connections, summary, ratio))
    finally:
        for server in servers:
            server.stop()
    return out


def _line(backend: str, connections: int, modes: dict[str, Any], ratio: float | None) -> str:
    parts = [
        f"{m} {v['rps']:,.0f} req/s p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms"
        for m, v in modes.items()
    ]
    shown = "n/a" if ratio is None else f"{ratio:.3f}"
    return f"{backend:<10} c{connections}: " + " | ".join(parts) + f" | commit/async {shown}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="a FLYWHEEL_HOME with a champion (default: make one)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument(
        "--postgres-admin", help="e.g. postgresql://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    procs.install_cleanup()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = _home(args, work)
        body = _row(home)
        sqlite = tuple(f"sqlite:///{work / f'{m}.db'}" for m in ("async", "commit"))
        results["sqlite"] = compare("sqlite", sqlite, home, body, work, args)  # type: ignore[arg-type]
        if args.postgres_admin:
            results["postgresql"] = _postgres(args, home, body, work)
    target = ROOT / "bench" / "results" / "durability.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(results, indent=2))
    say(f"results: {target}")


def _postgres(args: argparse.Namespace, home: Path, body: bytes, work: Path) -> dict[str, Any]:
    import psycopg

    names = [f"fw_durability_{m}_{uuid.uuid4().hex[:6]}" for m in ("async", "commit")]
    base = args.postgres_admin.rsplit("/", 1)[0]
    with psycopg.connect(args.postgres_admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        urls = (f"{base}/{names[0]}", f"{base}/{names[1]}")
        return compare("postgresql", urls, home, body, work, args)
    finally:
        with psycopg.connect(args.postgres_admin, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
