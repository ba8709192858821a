"""Ingest benchmark: flywheel's streaming ADBC → Parquet extraction vs pandas (and connectorx).

Run: ``.venv/bin/python -m bench.ingest [--rows N] [--skip-postgres]``

It generates a churn-like wide table (15 mixed numeric / text / timestamp columns with NULLs)
with numpy, bulk-loads it into SQLite (ADBC bulk ingest) and into a dedicated PostgreSQL
database (COPY via psycopg; created and dropped here), then extracts it into a zstd Parquet
file with each contender in its own subprocess, so each peak RSS (``ru_maxrss``) is that
contender's alone. flywheel runs the exact code path of ``flywheel ingest``
(:func:`flywheel.data.sources.extract_to_parquet` + the part's sha256).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the orchestrating process stays small: its peak RSS is inherited by the
    import pyarrow as pa  # workers it spawns (ru_maxrss survives execve), so no data lives here

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TABLE = "churn_features"
SQL = f'SELECT * FROM "{TABLE}"'
RESULTS = Path(__file__).parent / "results" / "ingest.json"
CONTENDERS = ("flywheel", "pandas", "connectorx")


# ------------------------------------------------------------------ data


def make_table(rows: int, seed: int = 42) -> pa.Table:
    """A churn-like table: ids, timestamps, counts, money, categories, flags, some NULLs."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-01-01T00:00:00", "s")
    observed = start + np.sort(rng.integers(0, 365 * 86400, rows)).astype("timedelta64[s]")
    monthly = rng.gamma(4.0, 18.0, rows).round(2)
    tenure = rng.integers(0, 73, rows)

    def nulls(values: np.ndarray, share: float) -> pa.Array:
        return pa.array(values, mask=rng.random(rows) < share)

    def pick(options: list[str], share: float = 0.0) -> pa.Array:
        return nulls(np.array(options)[rng.integers(0, len(options), rows)], share)

    return pa.table(
        {
            "customer_id": np.arange(rows, dtype=np.int64),
            "observed_at": pa.array(observed.astype("datetime64[us]")).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "tenure_months": tenure,
            "age": rng.integers(18, 90, rows),
            "monthly_charges": monthly,
            "total_charges": nulls((monthly * tenure).round(2), 0.02),
            "support_tickets": rng.poisson(1.2, rows),
            "last_login_days": nulls(rng.exponential(9.0, rows).round(1), 0.05),
            "data_usage_gb": nulls(rng.lognormal(2.0, 0.8, rows).round(3), 0.01),
            "contract_type": pick(["month-to-month", "one-year", "two-year"]),
            "region": pick(["north", "south", "east", "west", "central"]),
            "payment_method": pick(["card", "bank", "paypal", "invoice"], 0.03),
            "plan": pick(["basic", "plus", "pro", "family"]),
            "paperless": rng.integers(0, 2, rows),
            "churned": (rng.random(rows) < 0.2).astype(np.int64),
        }
    )


def load_sqlite(table: pa.Table, path: Path) -> str:
    """Bulk-load into a new SQLite file (timestamps as ISO text, like any SQLite app)."""
    import adbc_driver_sqlite.dbapi as sqlite_dbapi
    import pyarrow as pa

    ts = table.column("observed_at").cast(pa.timestamp("us")).cast(pa.string())
    text = table.set_column(1, "observed_at", ts)
    with sqlite_dbapi.connect(str(path)) as conn, conn.cursor() as cur:
        cur.adbc_ingest(TABLE, text, mode="create")
        conn.commit()
    return f"sqlite:///{path}"


_PG_TYPES = {
    "int64": "bigint",
    "double": "double precision",
    "string": "text",
    "timestamp[us, tz=UTC]": "timestamptz",
}


def load_postgres(table: pa.Table) -> str:
    """Create a dedicated database and COPY the table into it; returns its URL."""
    import psycopg
    import pyarrow.csv as pacsv

    name = f"fw_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    columns = ", ".join(f'"{f.name}" {_PG_TYPES[str(f.type)]}' for f in table.schema)
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE TABLE "{TABLE}" ({columns})')
        with cur.copy(f'COPY "{TABLE}" FROM STDIN (FORMAT csv)') as copy:
            view = buf.getbuffer()
            for offset in range(0, len(view), 8 << 20):
                copy.write(view[offset : offset + (8 << 20)])
        cur.execute(f'ANALYZE "{TABLE}"')
    return url


def drop_postgres(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------ contenders (in a worker)


def run_flywheel(url: str, out: Path, batch_rows: int) -> int:
    from flywheel.data.sources import extract_to_parquet, parquet_sha256

    stats = extract_to_parquet(url, SQL, out, timestamp_column="observed_at", batch_rows=batch_rows)
    parquet_sha256(out)  # ingest hashes every part: count it
    return stats.rows


def run_pandas(url: str, out: Path, batch_rows: int) -> int:
    import pandas as pd

    if url.startswith("sqlite://"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as con:
            df = pd.read_sql(SQL, con)
    else:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as con:
            df = pd.read_sql(SQL, con)
        engine.dispose()
    df.to_parquet(out, compression="zstd", index=False)
    return len(df)


def run_connectorx(url: str, out: Path, batch_rows: int) -> int:
    import connectorx as cx
    import pyarrow.parquet as pq

    table = cx.read_sql(url, SQL, return_type="arrow")
    pq.write_table(table, out, compression="zstd")
    return int(table.num_rows)


RUNNERS: dict[str, Callable[[str, Path, int], int]] = {
    "flywheel": run_flywheel,
    "pandas": run_pandas,
    "connectorx": run_connectorx,
}


def worker(contender: str, url: str, out: Path, batch_rows: int) -> dict[str, Any]:
    """Run one contender in this process; report time, rows and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    rows = RUNNERS[contender](url, out, batch_rows)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rows": rows,
        "seconds": seconds,
        "peak_rss_mib": peak,
        "start_rss_mib": before,
        "parquet_mib": out.stat().st_size / 2**20,
    }


def measure(contender: str, url: str, out: Path, batch_rows: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.ingest", "--worker", contender, "--url", url]
    cmd += ["--out", str(out), "--batch-rows", str(batch_rows)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


_IMPORTS = {
    "flywheel": [
        "flywheel.data.sources",
        "adbc_driver_sqlite.dbapi",
        "adbc_driver_postgresql.dbapi",
    ],
    "pandas": ["pandas", "sqlalchemy", "psycopg", "sqlite3", "pyarrow.parquet"],
    "connectorx": ["connectorx", "pyarrow.parquet"],
}


def _preload(contender: str) -> None:
    """Import a contender's libraries before the clock starts (import time is not ingest)."""
    import importlib

    for module in _IMPORTS[contender]:
        importlib.import_module(module)


# ------------------------------------------------------------------ report


def _ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """flywheel vs pandas per source: speed-up and memory ratio (pandas / flywheel)."""
    out: dict[str, dict[str, float]] = {}
    by = {(r["contender"], r["source"]): r for r in results if "error" not in r}
    for source in {r["source"] for r in results}:
        fw, pd_ = by.get(("flywheel", source)), by.get(("pandas", source))
        if fw and pd_:
            out[source] = {
                "speedup": pd_["seconds"] / fw["seconds"],
                "memory_ratio": pd_["peak_rss_mib"] / fw["peak_rss_mib"],
            }
    return out


def _print(results: list[dict[str, Any]], ratios: dict[str, dict[str, float]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Ingest: SQL → zstd Parquet (each contender in its own process)")
    names = ("contender", "source", "seconds", "rows/s", "peak RSS MiB", "Δ RSS MiB", "Parquet MiB")
    for name in names:
        table.add_column(name, justify="left" if name in ("contender", "source") else "right")
    for r in results:
        if "error" in r:
            table.add_row(r["contender"], r["source"], "error", r["error"][:60], "", "", "")
            continue
        table.add_row(
            r["contender"],
            r["source"],
            f"{r['seconds']:.2f}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['peak_rss_mib'] - r['start_rss_mib']:.0f}",
            f"{r['parquet_mib']:.1f}",
        )
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    for source, ratio in sorted(ratios.items()):
        console.print(
            f"[bold]{source}[/]: flywheel is {ratio['speedup']:.1f}x faster than pandas "
            f"and uses {ratio['memory_ratio']:.1f}x less peak memory"
        )


# ------------------------------------------------------------------ main


def prepare(rows: int, tmp: Path, skip_postgres: bool) -> dict[str, str]:
    """Generate the table and load it into each source; returns source name -> URL."""
    data = make_table(rows)
    sources = {"sqlite": load_sqlite(data, tmp / "source.db")}
    if not skip_postgres:
        sources["postgresql"] = load_postgres(data)
    return sources


def _sources(rows: int, tmp: Path, skip_postgres: bool) -> dict[str, str]:
    """Run :func:`prepare` in a subprocess, so this process never holds the data."""
    cmd = [sys.executable, "-m", "bench.ingest", "--prepare", str(tmp), "--rows", str(rows)]
    cmd += ["--skip-postgres"] if skip_postgres else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"preparing the benchmark data failed:\n{proc.stderr}")
    sources: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return sources


def run(rows: int, batch_rows: int, skip_postgres: bool, out: Path) -> dict[str, Any]:
    from rich.progress import Progress

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp_dir, Progress() as bar:
        tmp = Path(tmp_dir)
        task = bar.add_task(f"generating + loading {rows:,} rows", total=None)
        sources = _sources(rows, tmp, skip_postgres)
        bar.update(task, total=len(sources) * len(CONTENDERS), completed=0)
        try:
            for source, url in sources.items():
                for contender in CONTENDERS:
                    bar.update(task, description=f"{contender} ← {source}")
                    r = measure(contender, url, tmp / f"{contender}-{source}.parquet", batch_rows)
                    r.update(contender=contender, source=source)
                    if "error" not in r:
                        r["rows_per_s"] = r["rows"] / r["seconds"]
                    results.append(r)
                    bar.advance(task)
        finally:
            if "postgresql" in sources:
                drop_postgres(sources["postgresql"])
    ratios = _ratios(results)
    report = {
        "rows": rows,
        "batch_rows": batch_rows,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "results": results,
        "flywheel_vs_pandas": ratios,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    _print(results, ratios)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows in the generated table.")
    parser.add_argument("--batch-rows", type=int, default=100_000, help="Rows per Arrow batch.")
    parser.add_argument("--skip-postgres", action="store_true", help="Only benchmark SQLite.")
    parser.add_argument("--json", type=Path, default=RESULTS, help="Where to write results.")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(args.rows, args.prepare, args.skip_postgres)))
        return
    if args.worker:
        _preload(args.worker)
        print(json.dumps(worker(args.worker, args.url, args.out, args.batch_rows)))
        return
    run(args.rows, args.batch_rows, args.skip_postgres, args.json)


if __name__ == "__main__":
    main()
