"""Micro-measurement of the prediction log (not a test).

Prints the hot-path cost of ``append`` (µs per call, writer running) and the sustained
write rate (records/s from the first append until ``flush`` returns) for SQLite and, when
``--postgres URL`` is given, PostgreSQL. Records look like a served single-row request:
ten features in, a label and two probabilities out.

    .venv/bin/python bench/predlog.py [--records 200000] [--ids ordered] [--postgres URL]

The PostgreSQL database should be a scratch one: the bench drops its prediction tables.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

from flywheel.predlog import PredictionLog, PredictionRecord, open_prediction_log

FEATURES = {
    "tenure": [14],
    "monthly_charges": [70.35],
    "total_charges": [1397.5],
    "contract_type": ["m2m"],
    "region": ["north"],
    "support_calls": [2],
    "num_products": [3],
    "paperless": [True],
    "payment": ["card"],
    "age": [41],
}
OUTPUTS = {"labels": [1], "probabilities": [[0.31, 0.69]]}


IDS = "uuid4"  # or "ordered": time-prefixed ids (uuid7-like), set from --ids


def request_id() -> str:
    if IDS == "ordered":  # index inserts land at the right edge of the B-tree
        return f"{time.time_ns():016x}{os.urandom(8).hex()}"
    return uuid.uuid4().hex  # random: each insert touches a random index page


def records(n: int) -> list[PredictionRecord]:
    now = time.time()
    return [
        PredictionRecord(
            request_id(), now + i * 1e-4, "churn", "3", "rest", FEATURES, OUTPUTS, 1.25
        )
        for i in range(n)
    ]


def append_cost(url: str, n: int) -> float:
    """µs per append with the writer running (queue large enough never to block)."""
    batch = records(n)
    plog = open_prediction_log(url, max_queue=n + 1)
    append = plog.append
    start = time.perf_counter()
    for r in batch:
        append(r)
    elapsed = time.perf_counter() - start
    plog.close(timeout=120)
    return elapsed / n * 1e6


def construct_cost(n: int) -> float:
    """µs to build one PredictionRecord (paid by the caller, for scale)."""
    now = time.time()
    start = time.perf_counter()
    for _ in range(n):
        PredictionRecord("r", now, "churn", "3", "rest", FEATURES, OUTPUTS, 1.25)
    return (time.perf_counter() - start) / n * 1e6


def write_rate(url: str, n: int) -> tuple[float, int]:
    """Records/s sustained through the default settings (block on a full queue)."""
    batch = records(n)
    plog = open_prediction_log(url)
    start = time.perf_counter()
    for r in batch:
        plog.append(r)
    plog.flush(timeout=300)
    elapsed = time.perf_counter() - start
    written = plog.written()
    plog.close()
    return n / elapsed, written


def reset_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS prediction_log, prediction_feedback")


def run(name: str, urls: tuple[str, str], n: int, reset: object = None) -> None:
    """``urls``: one database for each phase (or the same one, with ``reset`` between)."""
    if callable(reset):
        reset()
    cost = append_cost(urls[0], n)
    if callable(reset):
        reset()
    rate, written = write_rate(urls[1], n)
    reader = PredictionLog(urls[1])
    count = reader.count()
    reader.close()
    print(
        f"{name:<10} append {cost:5.2f} µs/call   sustained {rate:9,.0f} records/s "
        f"({written:,} written, {count:,} rows)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--postgres", help="scratch postgresql:// URL (tables are dropped)")
    parser.add_argument(
        "--ids",
        choices=("uuid4", "ordered"),
        default="uuid4",
        help="request id shape: random uuid4 or time-ordered",
    )
    args = parser.parse_args()
    global IDS
    IDS = args.ids
    print(f"{args.records:,} records, {args.ids} request ids")
    print(f"PredictionRecord construction {construct_cost(args.records):.2f} µs (caller side)")
    with tempfile.TemporaryDirectory() as tmp:
        run(
            "sqlite",
            (f"sqlite:///{Path(tmp) / 'a.db'}", f"sqlite:///{Path(tmp) / 'b.db'}"),
            args.records,
        )
    if args.postgres:
        pg = args.postgres
        run("postgresql", (pg, pg), args.records, lambda: reset_postgres(pg))


if __name__ == "__main__":
    main()
