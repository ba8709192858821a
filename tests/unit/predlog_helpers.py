"""Shared by the prediction log tests on SQLite (unit) and PostgreSQL (integration)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from flywheel.serving.predlog import PredictionLog, PredictionRecord


def append_from_threads(
    plog: PredictionLog,
    make: Callable[[str, float], PredictionRecord],
    threads: int = 4,
    per_thread: int = 2500,
) -> None:
    """Append ``threads * per_thread`` records (ids ``t<thread>-<i>``) concurrently; return
    once every thread is done."""
    workers = [
        threading.Thread(
            target=lambda t=t: [plog.append(make(f"t{t}-{i}", 1e9 + i)) for i in range(per_thread)]
        )
        for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
