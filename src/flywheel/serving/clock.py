"""The server's data clock: what a prediction's and a label's time is, on the log.

In production it is the wall clock. A replay (``flywheel replay``) sets it to the simulated
day through ``POST /admin/clock``, so the prediction log, the monitor's windows, the
triggers and their cooldowns all run on the data's time and a year can be replayed in
minutes. The clock keeps running from where it was set (an offset from the wall clock), so
requests within a simulated day stay in order.
"""

from __future__ import annotations

import time

__all__ = ["DataClock"]


class DataClock:
    """``now()``: the wall clock plus an offset (0 unless set)."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def set(self, at: float | None) -> None:
        """Make ``now()`` read ``at`` (epoch seconds) from this moment on; None: the wall clock."""
        self.offset = 0.0 if at is None else float(at) - time.time()

    @property
    def simulated(self) -> bool:
        return self.offset != 0.0

    def describe(self) -> dict[str, float | bool]:
        return {"now": self.now(), "offset_s": self.offset, "simulated": self.simulated}
