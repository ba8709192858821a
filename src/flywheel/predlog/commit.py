"""Group commit on the event loop: the ``commit`` durability's fast path.

Every answer of one event-loop turn (the requests one micro-batch scored, typically) queues
its row here and the group is written in ONE transaction on the loop's own connection; the
futures resolve in place. No thread hand-off: measured on a one-core server, waking the
writer thread and coming back cost each answer two or three GIL switch intervals (~5 ms
each) under load, where the commit itself takes well under a millisecond.

- SQLite (:class:`GroupCommit`): a callback at the end of the turn writes the group; the
  loop waits for it (a local commit, ~0.1-0.3 ms for a group of a few rows).
- PostgreSQL (:class:`AsyncGroupCommit`): a task writes the group with psycopg's asyncio
  connection, one statement and one round trip; the loop keeps serving meanwhile, and the
  answers that arrive while a group is in flight form the next group.

When the write fails (the database locked by another writer, the connection lost, a row
the database refuses), nothing is retried on the loop: the rows go to the log's writer
thread, which retries with backoff, isolates refused rows and resolves their futures (False
after ``commit_timeout_s``), as for any queued row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from flywheel.predlog.records import Row

if TYPE_CHECKING:
    from flywheel.predlog.stores import Store

__all__ = ["AsyncGroupCommit", "GroupCommit", "Pending", "settle"]

log = logging.getLogger("flywheel.predlog")

# How long a commit on the loop may wait for SQLite's write lock before the group goes to
# the writer thread instead (the loop must not stall behind another writer).
LOOP_BUSY_TIMEOUT_S = 0.05
_WARN_EVERY_S = 10.0


class Pending:
    """A ``commit`` row in the queue: the row, and the future its caller awaits."""

    __slots__ = ("future", "loop", "row")

    def __init__(self, row: Row, future: asyncio.Future[bool], loop: asyncio.AbstractEventLoop):
        self.row = row
        self.future = future
        self.loop = loop


def _resolve(results: list[tuple[asyncio.Future[bool], bool]]) -> None:
    """On the caller's event loop: settle the futures of one committed group."""
    for future, ok in results:
        if not future.done():  # cancelled (client gone) or already expired
            future.set_result(ok)


def settle(pending: Sequence[Pending], failed: set[int] | None = None) -> None:
    """Resolve ``pending`` (True unless its row's ``id()`` is in ``failed``; all False when
    ``failed`` is None) with one call into each event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool]]] = {}
    for p in pending:
        ok = failed is not None and id(p.row) not in failed
        by_loop.setdefault(p.loop, []).append((p.future, ok))
    for loop, results in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_resolve, results)


class _Group:
    """What both committers share: the rows (and their answers' futures) queued on one event
    loop, and what happens once a group's write succeeded or failed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        count: Callable[[int, int], None],
        hand_off: Callable[[list[Row], list[asyncio.Future[bool]]], None],
    ) -> None:
        self.loop = loop
        self._count = count
        self._hand_off = hand_off
        self._rows: list[Row] = []
        self._futures: list[asyncio.Future[bool]] = []
        self._last_warning = 0.0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: Row) -> asyncio.Future[bool]:
        """Queue ``row`` for the next group (call on the loop)."""
        future = self.loop.create_future()
        self._rows.append(row)
        self._futures.append(future)
        self._schedule()
        return future

    def _schedule(self) -> None:
        raise NotImplementedError

    def _take(self) -> tuple[list[Row], list[asyncio.Future[bool]]]:
        rows, futures = self._rows, self._futures
        self._rows, self._futures = [], []
        return rows, futures

    def _written(self, n: int, new: int, futures: list[asyncio.Future[bool]]) -> None:
        self._count(n, new)
        for future in futures:
            if not future.done():  # cancelled: the client went away
                future.set_result(True)

    def _failed(self, exc: Exception, rows: list[Row], futures: list[asyncio.Future[bool]]) -> None:
        """Close the loop's connection and give the group to the writer thread."""
        self.close()
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "prediction log: a group commit of %d rows failed on the event loop (%s: %s); "
                "the writer thread retries them",
                len(rows),
                type(exc).__name__,
                exc,
            )
        self._hand_off(rows, futures)

    def close(self) -> None:
        raise NotImplementedError


class GroupCommit(_Group):
    """The rows one event loop queued this turn, committed together at its end.

    ``open_store()`` makes the loop's connection (on first use); ``count(n, new)`` records a
    committed group; ``hand_off(rows, futures)`` gives a failed group to the writer thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        open_store: Callable[[], Store],
        count: Callable[[int, int], None],
        hand_off: Callable[[list[Row], list[asyncio.Future[bool]]], None],
    ) -> None:
        super().__init__(loop, count, hand_off)
        self._open_store = open_store
        self._store: Store | None = None
        self._scheduled = False

    def _schedule(self) -> None:
        if not self._scheduled:  # once per turn: the turn's other answers join this group
            self._scheduled = True
            self.loop.call_soon(self.commit)

    def commit(self) -> None:
        """Write the turn's rows in one transaction and release their answers."""
        self._scheduled = False
        rows, futures = self._take()
        if not rows:
            return
        try:
            if self._store is None:
                self._store = self._open_store()
            new = self._store.write_predictions(rows)
        except Exception as exc:
            self._failed(exc, rows, futures)
            return
        self._written(len(rows), new, futures)

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()


class AsyncWriter(Protocol):
    async def write(self, rows: list[Row]) -> int: ...
    def close(self) -> None: ...


class AsyncGroupCommit(_Group):
    """Group commit through an asyncio database connection: while one group is in flight,
    the next answers gather; one task writes group after group until none is left."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        writer: AsyncWriter,
        count: Callable[[int, int], None],
        hand_off: Callable[[list[Row], list[asyncio.Future[bool]]], None],
    ) -> None:
        super().__init__(loop, count, hand_off)
        self._writer = writer
        self._task: asyncio.Task[None] | None = None

    def _schedule(self) -> None:
        if self._task is None:  # starts next turn: this turn's other answers join it
            self._task = self.loop.create_task(self._drain(), name="flywheel-predlog-commit")

    async def _drain(self) -> None:
        try:
            while self._rows:
                rows, futures = self._take()
                try:
                    new = await self._writer.write(rows)
                except Exception as exc:
                    self._failed(exc, rows, futures)
                    continue
                self._written(len(rows), new, futures)
        finally:
            self._task = None

    def close(self) -> None:
        self._writer.close()
