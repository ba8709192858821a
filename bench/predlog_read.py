"""The prediction log's read API for monitoring, on 1M logged predictions (not a test).

Writes N rows (default 1,000,000) the way the server logs them (14 churn-like inputs as a
JSON array of columns after ``register_inputs``, a label and two probabilities, a client id
on a third of them, a label for a tenth) into a fresh SQLite file and into a throwaway
PostgreSQL database (created and dropped here), then reads every row back through
:func:`flywheel.predlog.read.predictions` and prints rows/s and seconds per 1M rows.

    .venv/bin/python -m bench.predlog_read [--rows 1000000] [--batch-rows 65536]
        [--postgres-admin postgresql://postgres@127.0.0.1:5432/postgres] [--no-postgres]

Results also go to ``bench/results/predlog_read.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.predlog import PredictionLog, encode_json, open_prediction_log
from flywheel.predlog.read import labels, predictions

MODEL, VERSION = "churn", "3"
NUMERIC = (
    "tenure_months",
    "senior",
    "monthly_charges",
    "total_charges",
    "avg_minutes",
    "data_gb",
    "tickets_90d",
    "days_since_last_ticket",
    "late_payments_6m",
    "contract_days_left",
)
CATEGORICAL = {
    "contract_type": ["month_to_month", "one_year", "two_year"],
    "plan": ["basic", "standard", "premium"],
    "payment_method": ["card", "bank_transfer", "invoice", "paypal"],
    "region": ["north", "south", "east", "west"],
}
NAMES = [*NUMERIC[:1], *CATEGORICAL, *NUMERIC[1:]]  # the order a trained pipeline takes


def _columns(rng: np.random.Generator, n: int) -> dict[str, Any]:
    """n churn-like rows, per feature (numbers with a few missing values)."""
    cols: dict[str, Any] = {
        "tenure_months": rng.integers(1, 72, n).astype(float),
        "senior": rng.integers(0, 2, n).astype(float),
        "monthly_charges": rng.normal(70, 20, n).round(2),
        "total_charges": rng.gamma(2, 900, n).round(2),
        "avg_minutes": rng.normal(300, 90, n).round(1),
        "data_gb": rng.gamma(2, 4, n).round(2),
        "tickets_90d": rng.poisson(1.2, n).astype(float),
        "days_since_last_ticket": rng.integers(0, 365, n).astype(float),
        "late_payments_6m": rng.poisson(0.4, n).astype(float),
        "contract_days_left": rng.integers(0, 730, n).astype(float),
    }
    cols["days_since_last_ticket"][rng.random(n) < 0.05] = np.nan  # missing: JSON null
    for name, values in CATEGORICAL.items():
        cols[name] = rng.choice(values, n)
    return cols


def write(url: str, n: int, seed: int = 0) -> float:
    """Log n predictions as the server does; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    plog = open_prediction_log(url, max_queue=200_000)
    plog.register_inputs(
        MODEL, VERSION, NAMES, numeric=[name not in CATEGORICAL for name in NAMES], classes=[0, 1]
    )
    prefix = os.urandom(6).hex()
    start = time.perf_counter()
    t0 = time.time() - n * 0.001
    step = 100_000
    for first in range(0, n, step):
        m = min(step, n - first)
        cols = _columns(rng, m)
        columns = [cols[name] for name in NAMES]
        p1 = rng.random(m)
        for i in range(m):
            j = first + i
            rid = f"{prefix}{j:012x}"
            inputs = [[c[i]] for c in columns]  # one row: one value per column
            outputs = {"labels": [int(p1[i] > 0.5)], "probabilities": [[1 - p1[i], p1[i]]]}
            plog.append_row(
                (
                    rid,
                    t0 + j * 0.001,
                    MODEL,
                    VERSION,
                    "rest",
                    encode_json(inputs, rid, "inputs"),
                    encode_json(outputs, rid, "outputs"),
                    1.2,
                    f"client-{j}" if j % 3 == 0 else None,
                    None,  # role: no rollout
                )
            )
    plog.flush(timeout=600)
    ids = [f"{prefix}{j:012x}" for j in range(0, n, 10)]
    for k in range(0, len(ids), 10_000):
        plog.feedback_many([(rid, int(rng.random() < 0.3)) for rid in ids[k : k + 10_000]])
    plog.close(timeout=120)
    return time.perf_counter() - start


def read(url: str, batch_rows: int) -> dict[str, Any]:
    """Every prediction through the read API: rows, seconds, rows/s; and the labels."""
    start = time.perf_counter()
    rows = labelled = batches = 0
    for batch in predictions(url, MODEL, VERSION, batch_rows=batch_rows):
        rows += batch.num_rows
        labelled += batch.num_rows - batch.column("label").null_count
        batches += 1
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    got_labels = sum(b.num_rows for b in labels(url, MODEL, batch_rows=batch_rows))
    label_seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "batches": batches,
        "labelled_rows": labelled,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "seconds_per_1m": round(seconds / rows * 1e6, 2),
        "labels": got_labels,
        "labels_seconds": round(label_seconds, 2),
    }


def run(name: str, url: str, n: int, batch_rows: int) -> dict[str, Any]:
    wrote = write(url, n)
    PredictionLog(url).close()  # the log is complete and closed before the clock starts
    out = read(url, batch_rows)
    out["write_seconds"] = round(wrote, 1)
    print(
        f"{name:<10} {out['rows']:,} rows in {out['seconds']:.2f} s: {out['rows_per_s']:,} "
        f"rows/s, {out['seconds_per_1m']:.2f} s per 1M ({out['batches']} batches, "
        f"{out['labelled_rows']:,} labelled; labels(): {out['labels']:,} in "
        f"{out['labels_seconds']:.2f} s; written in {wrote:.0f} s)",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=65536)
    parser.add_argument("--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"rows": args.rows, "batch_rows": args.batch_rows}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = run(
            "sqlite", f"sqlite:///{Path(tmp) / 'p.db'}", args.rows, args.batch_rows
        )
    if not args.no_postgres:
        import psycopg

        name = f"fw_predlog_read_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = args.postgres_admin.rsplit("/", 1)[0] + f"/{name}"
            results["postgresql"] = run("postgresql", url, args.rows, args.batch_rows)
        finally:
            with psycopg.connect(args.postgres_admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    out = Path(__file__).parent / "results" / "predlog_read.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
