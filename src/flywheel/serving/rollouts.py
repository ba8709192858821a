"""The live side of a rollout inside the predictor: the router, the challenger, the counts.

A :class:`LiveRollout` is what one served model's slot holds while a rollout is active: an
immutable :class:`~flywheel.rollout.routing.Router` (a new step is a new object swapped in
with one assignment), the challenger's :class:`LoadedModel` (loaded and warmed beside the
champion before the first request reaches it), one :class:`ArmCounter` per arm for the
current step, and for a shadow rollout a queue drained in micro-batches by a one-thread pool,
off the hot path: the champion's answer never waits for it, and when the shadow falls
behind (``SHADOW_QUEUE`` requests waiting) mirrored requests are skipped and counted, never
queued without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from flywheel.rollout.counters import ArmCounter
from flywheel.rollout.routing import Router
from flywheel.serving.loading import LoadedModel

__all__ = ["SHADOW_QUEUE", "LiveRollout", "first_value"]

log = logging.getLogger("flywheel.serving")

SHADOW_QUEUE = 512  # requests waiting for the shadow (each holds its decoded rows)


@dataclass
class LiveRollout:
    id: str
    revision: int
    step: int
    strategy: str
    router: Router
    challenger: LoadedModel
    salt: bytes
    counters: dict[str, ArmCounter] = field(
        default_factory=lambda: {"champion": ArmCounter(), "challenger": ArmCounter()}
    )
    shadow_pool: ThreadPoolExecutor | None = None
    shadow_pending: int = 0  # requests queued or being scored
    shadow_skipped: int = 0  # requests not mirrored because SHADOW_QUEUE were waiting
    shadow_queue: deque[tuple[Any, str, Any]] = field(default_factory=deque)
    shadow_drain: asyncio.Future[Any] | None = None
    closed: bool = False

    @property
    def shadow(self) -> bool:
        return self.strategy == "shadow"

    def close(self) -> None:
        """Stop the shadow: what still waits is dropped (counted as skipped)."""
        self.closed = True
        self.shadow_skipped += len(self.shadow_queue)
        self.shadow_pending -= len(self.shadow_queue)
        self.shadow_queue.clear()
        if self.shadow_pool is not None:
            self.shadow_pool.shutdown(wait=False, cancel_futures=True)


def first_value(request: Any, name: str) -> Any:
    """The first row's value of feature ``name`` in a request (records, columns or Arrow)."""
    try:
        if request.records is not None:
            return request.records[0].get(name) if request.records else None
        columns = request.columns
        if columns is None:
            return None
        if hasattr(columns, "column_names"):
            if name not in columns.column_names or columns.num_rows == 0:
                return None
            return columns.column(name)[0].as_py()
        values = columns.get(name)
        return None if values is None or len(values) == 0 else values[0]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
