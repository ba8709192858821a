"""The prediction log: a queue, one writer thread, and the log's own reads and feedback.

Use::

    plog = open_prediction_log("sqlite:///.flywheel/predictions.db")   # built and started
    plog.append(PredictionRecord(rid, time.time(), "churn", "3", "rest", inputs, outputs, 1.7))
    plog.feedback(rid, 1)               # days later: True, or False for an unknown id
    plog.read(since=t0, model="churn")  # rows joined with their latest label (small reads)
    plog.close()                        # on shutdown: writes everything queued

Monitoring reads large ranges through :mod:`flywheel.predlog.read` (Arrow batches).

API
---
:class:`PredictionLog`
    ``start()`` the writer thread; ``append(record) -> bool`` (False: dropped or rejected,
    counted); ``append_row(row) -> bool``, the same for a row the caller encoded (the
    serving hot path); ``commit_row(row)`` (on an event loop) queues a row and returns a
    future that resolves True once the row is committed (the ``commit`` durability);
    ``register_inputs(model, version, names, numeric=, classes=)`` lets rows of that version
    carry their inputs as a JSON array of columns; ``flush(timeout)`` waits until every
    record appended before the call is written; ``close(timeout)`` flushes, then stops.
    Counters: ``depth()``, ``dropped()``, ``written()`` and, in :meth:`PredictionLog.stats`,
    ``duplicates``, ``rejected``, ``failures``, ``lost``, ``commits``. ``feedback(id, label)``,
    ``feedback_many(items)``, ``label(items)``, ``read(...)``, ``count()``.
    ``pause()``/``resume()`` hold the writer (maintenance windows; tests use them).
:func:`open_prediction_log`
    Build from a URL (``sqlite:///path`` or ``postgresql://...``) and start.

Durability
----------
``durability="async"`` (default): the caller queues the row and moves on (the server sends
its answer); the writer commits it within about ``flush_interval_s``. A ``kill -9`` loses
the rows queued in that window. ``durability="commit"``: the server awaits
:meth:`PredictionLog.commit_row`, so an answer is released only once its row is committed.
Rows are committed in groups (group commit), on the event loop itself: every answer of one
loop turn (typically all the requests of a micro-batch) joins one transaction written at the
end of the turn, and their futures resolve in place (:mod:`flywheel.predlog.commit`).
"Committed" means in the database: it survives the server process dying (``kill -9``, OOM,
a crash). On SQLite (WAL, ``synchronous=NORMAL``) a power cut may still lose the last
commits; fsyncing each group (``FULL``) measured 35-50% of throughput at 16 connections
against ~10% without, so it is not done. A group the loop cannot write (the database locked or down, a row
refused) goes to the writer thread, which retries and isolates as for any row; a row not
committed in ``commit_timeout_s`` (plus one retry) or refused resolves False: the server
then answers 503 instead of an unlogged prediction.

Hot path
--------
``append`` costs a few µs: orjson encodes the record into one row tuple on the caller's
thread, then a length check and a ``deque.append`` (atomic under the GIL, no lock).
``append_row`` skips the record: the serving core builds the row itself (~1.8 µs, ~3% less
server CPU per request under load). Encoding on the caller's thread rather than in the
writer is measured: a queued record kept as Python objects stays alive for the flush
interval, and on a one-core server that cost ~15% of ``/v1/predict`` throughput. The
writer drains up to ``batch_size`` rows whenever that many are queued, or every
``flush_interval_s`` otherwise (or at once for ``commit`` rows), and writes them in ONE
transaction (SQLite: multi-row ``INSERT``s; PostgreSQL ``COPY`` then
``INSERT ... ON CONFLICT DO NOTHING``).

Backpressure, drops, failures
-----------------------------
The queue holds at most ``max_queue`` records. When full, ``on_full="block"`` makes the
append wait up to ``block_timeout_s`` for room, then drop; ``on_full="drop"`` drops at once.
Every drop is counted and logged (rate-limited). A batch the database will not take for a
transient reason is retried on a fresh connection with exponential backoff (``failures``
counts attempts); a record the database refuses for its content is isolated by retrying the
batch one record at a time and counted as ``rejected``. Duplicate server ids are ignored by
the database and counted as ``duplicates`` (a retried batch is idempotent): the key is
(request id, rollout role), so a champion's and a shadow's row of one request are both kept. Only when
``close`` times out with the database still down are records given up: counted as ``lost``,
logged, and ``close`` raises :class:`PredictionLogError`.

Feedback and reads do blocking I/O: call them from a worker thread (e.g.
``run_in_threadpool``), not from an event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, Literal

import orjson

from flywheel.config import mask_url
from flywheel.errors import ConfigError, DataError, FlywheelError
from flywheel.predlog.commit import (
    LOOP_BUSY_TIMEOUT_S,
    AsyncGroupCommit,
    GroupCommit,
    Pending,
    settle,
)
from flywheel.predlog.feedback import LabelResult, store_labels
from flywheel.predlog.records import PredictionLogError, PredictionRecord, Row, encode_record
from flywheel.predlog.stores import Store, open_store, parse_url

__all__ = ["Durability", "PredictionLog", "open_prediction_log"]

log = logging.getLogger("flywheel.predlog")

Durability = Literal["async", "commit"]
_DROP_LOG_EVERY_S = 10.0


class _Marker:
    """Put in the queue by ``flush``; set by the writer once everything before it is written."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class PredictionLog:
    """The prediction log at ``url``. Opens (and creates or migrates) the database at
    construction, so a bad URL or an unreachable database fails at start-up; ``start()``
    starts the writer. See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 1000,
        flush_interval_s: float = 0.1,
        max_queue: int = 100_000,
        on_full: Literal["block", "drop"] = "block",
        block_timeout_s: float = 1.0,
        connect_timeout_s: float = 5.0,
        max_backoff_s: float = 5.0,
        durability: Durability = "async",
        commit_timeout_s: float = 5.0,
    ) -> None:
        self._check_settings(
            batch_size, flush_interval_s, max_queue, on_full, block_timeout_s, durability
        )
        self.url = url
        self._kind, self._target = parse_url(url)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self.on_full = on_full
        self.block_timeout_s = block_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_backoff_s = max_backoff_s
        self.durability: Durability = durability
        self.durable = durability == "commit"
        self.commit_timeout_s = commit_timeout_s

        self._queue: collections.deque[Row | _Marker | Pending] = collections.deque()
        self._wake = threading.Event()  # wakes the writer early (batch full, flush, close)
        self._groups: dict[asyncio.AbstractEventLoop, GroupCommit | AsyncGroupCommit] = {}
        self._last_checkpoint = 0.0
        self._gate = threading.Event()  # cleared by pause(): the writer holds
        self._gate.set()
        self._abort = threading.Event()  # close() gave up: stop retrying
        self._room = threading.Condition()  # blocked producers wait here
        self._blocked = 0
        self._stats_lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("dropped", "written", "duplicates", "rejected", "failures", "lost", "commits"), 0
        )
        self._last_drop_log = 0.0
        self._in_flight = 0
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._writer_store: Store | None = None
        self._reader_lock = threading.Lock()
        self._reader: Store | None = None
        with self._reader_lock:
            self._reader_store()  # fail fast; creates or migrates the schema

    @staticmethod
    def _check_settings(
        batch_size: int,
        flush_interval_s: float,
        max_queue: int,
        on_full: str,
        block_timeout_s: float,
        durability: str,
    ) -> None:
        checks = [
            ("batch_size", batch_size, batch_size >= 1, "an integer >= 1"),
            ("flush_interval_s", flush_interval_s, flush_interval_s > 0, "a number > 0"),
            ("max_queue", max_queue, max_queue >= 1, "an integer >= 1"),
            ("on_full", on_full, on_full in ("block", "drop"), "'block' or 'drop'"),
            ("block_timeout_s", block_timeout_s, block_timeout_s >= 0, "a number >= 0"),
            ("durability", durability, durability in ("async", "commit"), "'async' or 'commit'"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise ConfigError(
                    f"The prediction log's {name} must be {rule}, got {value!r}.", key=name
                )

    # ------------------------------------------------------------------ connections

    def _open_store(self, name: str) -> Store:
        return open_store(
            self._kind,
            self._target,
            timeout_s=self.connect_timeout_s,
            name=name,
            small_pages=self.durable,
        )

    def _error(self, what: str, exc: BaseException) -> PredictionLogError:
        return PredictionLogError(
            f"Cannot {what} the prediction log at {mask_url(self.url)!r}: {exc}. Check the "
            "prediction log URL and that the database is up and writable.",
            url=mask_url(self.url),
        )

    def _reader_store(self) -> Store:
        """The shared connection for feedback/read/count; call with ``_reader_lock`` held."""
        if self._reader is None:
            try:
                self._reader = self._open_store("reader")
            except Exception as exc:
                raise self._error("open", exc) from exc
        return self._reader

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[Store]:
        with self._reader_lock:
            store = self._reader_store()
            try:
                yield store
            except FlywheelError:
                raise
            except Exception as exc:
                # Drop the connection: the next call reconnects (DB restarted, conn killed).
                self._reader = None
                with contextlib.suppress(Exception):
                    store.close()
                raise self._error(what, exc) from exc

    # ------------------------------------------------------------------ hot path

    def append(self, record: PredictionRecord) -> bool:
        """Encode one record and queue it; no lock. False when dropped (queue full, or
        closed) or rejected (it cannot be encoded)."""
        q = self._queue
        if (len(q) >= self.max_queue or self._closed) and not self._wait_for_room():
            return False
        row = self._row(record)
        if row is None:
            return False
        q.append(row)
        if len(q) >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def append_row(self, row: Row) -> bool:
        """Queue a row its caller encoded (the predictor's hot path: no record object, no
        checks). The fields must already have :data:`Row`'s types, the JSON ones made with
        :func:`~flywheel.predlog.records.encode_json`; a row the database refuses is still
        isolated and counted as ``rejected`` by the writer. False when dropped."""
        q = self._queue
        if (len(q) >= self.max_queue or self._closed) and not self._wait_for_room():
            return False
        q.append(row)
        if len(q) >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def commit_row(self, row: Row) -> asyncio.Future[bool]:
        """Queue ``row`` for this event-loop turn's group commit; the future resolves True
        once the row is committed, False when the log is closed, the database refuses the
        row, or it is not committed within ``commit_timeout_s`` (it may still be written).
        Call it on the event loop (see :mod:`flywheel.predlog.commit`)."""
        loop = asyncio.get_running_loop()
        if self._closed:
            self._drop("the log is closed")
            future: asyncio.Future[bool] = loop.create_future()
            future.set_result(False)
            return future
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = self._group_commit(loop)
        return group.add(row)

    def _group_commit(self, loop: asyncio.AbstractEventLoop) -> GroupCommit | AsyncGroupCommit:
        hand_off = partial(self._hand_off, loop)
        if self._kind == "sqlite":
            return GroupCommit(loop, self._loop_store, self._count_written, hand_off)
        from flywheel.predlog.postgres import AsyncPostgresWriter

        writer = AsyncPostgresWriter(self._target, connect_timeout_s=self.connect_timeout_s)
        return AsyncGroupCommit(loop, writer, self._count_written, hand_off)

    def _loop_store(self) -> Store:
        """The event loop's own SQLite connection: a short busy timeout, so a locked
        database sends the group to the writer thread instead of stalling the loop."""
        return open_store(
            self._kind,
            self._target,
            timeout_s=LOOP_BUSY_TIMEOUT_S,
            small_pages=True,
            checkpoints=False,  # the writer thread checkpoints (_checkpoint), off the loop
        )

    def _hand_off(
        self,
        loop: asyncio.AbstractEventLoop,
        rows: list[Row],
        futures: list[asyncio.Future[bool]],
    ) -> None:
        """A group the loop could not commit: the writer thread retries it, isolates refused
        rows and resolves the futures."""
        pending = [Pending(r, f, loop) for r, f in zip(rows, futures, strict=True)]
        if self._closed:
            settle(pending)
            return
        self._queue.extend(pending)
        self._wake.set()

    def _wait_for_room(self) -> bool:
        """The queue is full or the log closed: wait for room (``on_full="block"``) or drop.
        True when there is room now; False when the record was dropped (counted)."""
        if self._closed:
            return self._drop("the log is closed")
        if self.on_full == "drop" or self.block_timeout_s == 0:
            return self._drop("the queue is full")
        deadline = time.monotonic() + self.block_timeout_s
        with self._room:
            self._blocked += 1
            try:
                while len(self._queue) >= self.max_queue:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._closed:
                        return self._drop("the queue stayed full for block_timeout_s")
                    self._wake.set()
                    self._room.wait(left)
            finally:
                self._blocked -= 1
        return True

    def _row(self, record: PredictionRecord) -> Row | None:
        try:
            return encode_record(record)
        except Exception as exc:  # e.g. ts or latency_ms not a number
            self._add("rejected", 1)
            log.error(
                "prediction log refused record %r: %s: %s",
                getattr(record, "request_id", None),
                type(exc).__name__,
                exc,
            )
            return None

    def _drop(self, why: str) -> bool:
        now = time.monotonic()
        with self._stats_lock:
            self._counts["dropped"] += 1
            dropped = self._counts["dropped"]
            report = now - self._last_drop_log >= _DROP_LOG_EVERY_S
            if report:
                self._last_drop_log = now
        if report:
            log.warning(
                "prediction log dropped a record: %s (%d dropped so far, depth %d, max_queue %d)",
                why,
                dropped,
                len(self._queue),
                self.max_queue,
            )
        return False

    # ------------------------------------------------------------------ metrics

    def depth(self) -> int:
        """Records queued or being written, not yet committed."""
        return len(self._queue) + self._in_flight

    def dropped(self) -> int:
        return self._counts["dropped"]

    def written(self) -> int:
        return self._counts["written"]

    def stats(self) -> dict[str, int]:
        """All counters plus ``depth``: dropped, written, duplicates, rejected, failures,
        lost, and commits (transactions that wrote rows: the groups of group commit)."""
        with self._stats_lock:
            return {"depth": self.depth(), **self._counts}

    def _add(self, key: str, n: int) -> None:
        with self._stats_lock:
            self._counts[key] += n

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is not None:
            return
        if self._closed:
            raise PredictionLogError("The prediction log is closed; open a new one.")
        self._spawn()

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flywheel-predlog", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Hold the writer after its current batch (records keep queueing)."""
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()
        self._wake.set()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every record appended before this call is written (or rejected).

        Raises :class:`PredictionLogError` when that takes longer than ``timeout``
        (database down, writer paused): nothing is lost, the records stay queued."""
        if self._closed:
            return  # close() already wrote (or accounted for) everything
        if self._thread is None:
            if not self._queue:
                return
            self.start()
        marker = _Marker()
        self._queue.append(marker)
        self._wake.set()
        if not marker.event.wait(timeout):
            raise PredictionLogError(
                f"The prediction log did not write its queue within {timeout}s "
                f"({self.depth()} records pending, {self._counts['failures']} failed writes); "
                "check the database, or flush again with a longer timeout.",
                depth=self.depth(),
            )

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything queued and stop the writer. Appends after this are dropped.

        If the database stays unwritable past ``timeout``, the records still queued are
        counted as ``lost``, logged, and :class:`PredictionLogError` is raised."""
        if self._closed:
            return
        self._closed = True
        with self._room:
            self._room.notify_all()
        if self._thread is None and self._queue:
            self._spawn()
        lost = self._stop_writer(timeout) if self._thread is not None else 0
        self._close_stores()
        self._add("lost", lost)
        total = self._counts["lost"]  # includes a batch the writer gave up on (abort)
        if total:
            log.error(
                "prediction log closed with %d records unwritten (database %s unavailable)",
                total,
                mask_url(self.url),
            )
            raise PredictionLogError(
                f"The prediction log could not write {total} records before closing "
                f"(timeout {timeout}s); the database at {mask_url(self.url)!r} is unavailable.",
                lost=total,
            )

    def _stop_writer(self, timeout: float) -> int:
        """Let the writer drain and stop; return how many queued records were left over."""
        assert self._thread is not None
        self._stopping = True
        self.resume()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abort.set()  # stop retrying; the writer counts its in-flight batch as lost
            self._thread.join(self.connect_timeout_s + 5)
        # Stragglers: producers that passed the closed check as close() began.
        if not self._abort.is_set() and self._queue:
            give_up = threading.Timer(timeout, self._abort.set)
            give_up.start()
            try:
                self._write_items(self._drain_all())
            finally:
                give_up.cancel()
        left = self._drain_all()
        settle([i for i in left if type(i) is Pending])  # type: ignore[misc]
        return sum(1 for item in left if not isinstance(item, _Marker))

    def _close_stores(self) -> None:
        for group in self._groups.values():
            group.close()
        with self._reader_lock:
            for store in (self._reader, self._writer_store):
                if store is not None:
                    with contextlib.suppress(Exception):
                        store.close()
            self._reader = self._writer_store = None

    def __enter__(self) -> PredictionLog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        q = self._queue
        while not self._abort.is_set():
            if len(q) < self.batch_size and not self._stopping:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
            if not self._stopping:
                self._gate.wait()
            items = self._drain()
            self._write_items(items)
            if self._groups:
                self._checkpoint()
            if self._blocked:
                with self._room:
                    self._room.notify_all()
            if self._stopping and not q:
                return

    def _checkpoint(self) -> None:
        """The commit durability's loop connection does not checkpoint SQLite's WAL (a
        checkpoint copies megabytes: the loop would stall on it); the writer thread does,
        at most once a second, PASSIVE (it never waits for the loop's commits)."""
        now = time.monotonic()
        if now - self._last_checkpoint < 1.0:
            return
        self._last_checkpoint = now
        try:
            if self._writer_store is None:
                self._writer_store = self._open_store("writer")
            self._writer_store.checkpoint()
        except Exception as exc:  # the next round tries again
            self._reset_writer()
            log.warning("prediction log: WAL checkpoint failed (%s: %s)", type(exc).__name__, exc)

    def _drain(self) -> list[Row | _Marker | Pending]:
        items: list[Row | _Marker | Pending] = []
        popleft = self._queue.popleft
        rows = 0
        # counted in depth() before they leave the queue: a row between the two is neither
        # queued nor in flight, and a caller asking depth() then would think it written
        self._in_flight = self.batch_size
        while rows < self.batch_size:
            try:
                item = popleft()
            except IndexError:
                break
            items.append(item)
            if type(item) is not _Marker:
                rows += 1
        self._in_flight = rows
        return items

    def _drain_all(self) -> list[Row | _Marker | Pending]:
        items = list(self._queue)
        self._queue.clear()
        return items

    def _write_items(self, items: Sequence[Row | _Marker | Pending]) -> None:
        """Write the rows among ``items`` in one transaction, then settle their commit
        futures and set the flush markers."""
        rows: list[Row] = []
        pending: list[Pending] = []
        markers: list[_Marker] = []
        for item in items:
            kind = type(item)
            if kind is tuple:
                rows.append(item)  # type: ignore[arg-type]
            elif kind is Pending:
                pending.append(item)  # type: ignore[arg-type]
                rows.append(item.row)  # type: ignore[union-attr]
            else:
                markers.append(item)  # type: ignore[arg-type]
        failed = self._write(rows, pending) if rows else set()
        if pending:
            settle(pending, failed)
        for marker in markers:
            marker.event.set()

    def _write(self, rows: list[Row], pending: Sequence[Pending] = ()) -> set[int]:
        """Write one batch, retrying transient failures until it lands or close() aborts.
        Returns the ``id()`` of every row not committed (refused, or lost on abort)."""
        remaining: collections.deque[Row] = collections.deque(rows)  # not yet committed
        failed: set[int] = set()
        one_by_one = False
        delay = 0.05
        started = time.monotonic()
        try:
            while remaining:
                store = self._writer_store
                try:
                    if store is None:
                        store = self._writer_store = self._open_store("writer")
                    if one_by_one:
                        self._write_one_by_one(store, remaining, failed)
                    else:
                        new = store.write_predictions(rows)
                        self._count_written(len(rows), new)
                        remaining.clear()
                except Exception as exc:
                    if store is not None and store.is_data_error(exc) and not one_by_one:
                        one_by_one = True  # isolate the record(s) the database refuses
                        continue
                    self._add("failures", 1)
                    log.warning(
                        "prediction log write of %d records failed (%s: %s); retrying in %.2fs",
                        len(remaining),
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    self._reset_writer()
                    if pending and time.monotonic() - started > self.commit_timeout_s:
                        self._expire(pending)
                    if self._abort.wait(delay):
                        self._add("lost", len(remaining))
                        failed.update(id(r) for r in remaining)
                        return failed
                    delay = min(delay * 2, self.max_backoff_s)
        finally:
            self._in_flight = 0
        return failed

    def _expire(self, pending: Sequence[Pending]) -> None:
        """The database has refused writes for ``commit_timeout_s``: answer the commit rows
        being written and those queued behind them with False (they stay queued and may
        still be written)."""
        queued = [i for i in self._queue.copy() if type(i) is Pending]
        settle([*pending, *queued])  # type: ignore[list-item]

    def _write_one_by_one(
        self, store: Store, remaining: collections.deque[Row], failed: set[int]
    ) -> None:
        """Commit records singly, taking each off ``remaining`` once settled; a transient
        error propagates with the rest still remaining."""
        while remaining:
            row = remaining[0]
            try:
                new = store.write_predictions([row])
            except Exception as exc:
                if not store.is_data_error(exc):
                    raise
                self._add("rejected", 1)
                failed.add(id(row))
                log.error("prediction log refused record %s: %s", row[0], exc)
            else:
                self._count_written(1, new)
            remaining.popleft()

    def _count_written(self, n: int, new: int) -> None:
        with self._stats_lock:
            self._counts["commits"] += 1
            self._counts["written"] += new
            self._counts["duplicates"] += n - new
        if n - new:
            log.warning(
                "prediction log ignored %d rows whose request id (and role) was logged", n - new
            )

    def _reset_writer(self) -> None:
        store, self._writer_store = self._writer_store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    # ------------------------------------------------------------------ input names

    def register_inputs(
        self,
        model: str,
        version: str,
        names: Sequence[str],
        *,
        numeric: Sequence[bool] | None = None,
        classes: Sequence[Any] | None = None,
    ) -> bool:
        """Record the input names of (model, version) once, so rows of that version may carry
        ``inputs`` as a JSON array of columns in this order; ``numeric`` (which inputs are
        numbers) and ``classes`` (a classifier's) type the read API's columns. True when the
        stored names are ``names``; False when (model, version) was registered with other
        names (logged): its rows must then keep named objects. Blocking I/O: call it from a
        worker thread (the predictor does, when it loads a version)."""
        names = [str(n) for n in names]
        dumps = orjson.dumps
        with self._reading("register the input names in") as store:
            stored = orjson.loads(
                store.register_inputs(
                    model,
                    version,
                    dumps(names).decode(),
                    None if numeric is None else dumps([bool(n) for n in numeric]).decode(),
                    None if classes is None else dumps(list(classes), default=str).decode(),
                )
            )
        if stored != names:
            log.warning(
                "prediction log: %s version %s was registered with other input names; its "
                "rows keep named inputs",
                model,
                version,
            )
            return False
        return True

    # ------------------------------------------------------------------ feedback + reads

    def feedback(self, request_id: str, label: Any, *, ts: float | None = None) -> bool:
        """Attach a ground-truth ``label`` to a logged prediction. False: unknown id."""
        return self.label([(request_id, label)], ts=ts).accepted == 1

    def feedback_many(self, items: list[tuple[str, Any]], *, ts: float | None = None) -> int:
        """Attach many labels in one transaction; returns how many were stored (items whose
        id is unknown are skipped)."""
        return self.label(items, ts=ts).accepted

    def label(self, items: Sequence[tuple[str, Any]], *, ts: float | None = None) -> LabelResult:
        """Attach labels by id (the server's request id, else a client id that exactly one
        prediction carries; see :mod:`flywheel.predlog.feedback`) in one transaction;
        returns how many were stored and which ids were unknown."""
        received_at = time.time() if ts is None else float(ts)
        return store_labels(self._reading, items, received_at, lambda: self.depth() > 0, self.flush)

    def read(
        self,
        *,
        since: float | None = None,
        limit: int | None = None,
        model: str | None = None,
        labelled_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Written predictions (oldest first) joined with their latest label, as dicts, for
        small reads (monitoring reads Arrow batches: :mod:`flywheel.predlog.read`).

        Each dict: request_id, client_id, ts, model, version, role (the rollout role, None
        when none was active), protocol, inputs, outputs, latency_ms, label (None when no
        feedback yet) and label_ts (its received_at). A label is keyed by request id: it
        joins every row of its request (a champion's and a shadow's alike).
        ``since`` is inclusive. Records still queued are not included: ``flush()`` first."""
        if limit is not None and limit < 0:
            raise DataError(f"limit must be >= 0, got {limit!r}.", limit=limit)
        with self._reading("read") as store:
            rows = store.read(since, limit, model, labelled_only)
            names = {key: orjson.loads(v.names) for key, v in store.versions().items()}
        loads = orjson.loads

        def inputs(r: tuple[Any, ...]) -> Any:
            value = loads(r[5])
            if type(value) is list:  # columns in the order registered for (model, version)
                known = names.get((r[2], r[3]))
                if known is not None and len(known) == len(value):
                    return dict(zip(known, value, strict=True))
            return value

        return [
            {
                "request_id": r[0],
                "client_id": r[10],
                "ts": r[1],
                "model": r[2],
                "version": r[3],
                "role": r[11],
                "protocol": r[4],
                "inputs": inputs(r),
                "outputs": loads(r[6]),
                "latency_ms": r[7],
                "label": None if r[8] is None else loads(r[8]),
                "label_ts": r[9],
            }
            for r in rows
        ]

    def count(self) -> int:
        """Rows written to the database (queued records not included)."""
        with self._reading("count") as store:
            return store.count()

    def journal_mode(self) -> str:
        """SQLite's journal mode ("wal"), or "postgresql"."""
        with self._reading("inspect") as store:
            return store.journal_mode()


def open_prediction_log(url: str, **kw: Any) -> PredictionLog:
    """Open the log at ``url`` (``sqlite:///path``, WAL; or ``postgresql://...``) and start
    its writer. Keyword arguments are :class:`PredictionLog`'s."""
    plog = PredictionLog(url, **kw)
    plog.start()
    return plog
