"""Reads for monitoring: predictions (inputs, outputs, latest label) and labels as Arrow
record batches, streamed, never the whole range in memory.

    from flywheel.predlog.read import labels, predictions

    for batch in predictions("sqlite:///.flywheel/predictions.db", "churn", version="3",
                             start=t0, end=t1):
        ...  # pyarrow.RecordBatch: one row per scored row

:func:`predictions` yields one Arrow row per scored row (a request of n rows gives n), with
``request_id`` (the server's), ``row`` (its position in the request), ``client_id``, ``ts``
(timestamp, UTC), ``model``, ``version``, ``role`` (the version's part in a rollout:
"champion", "challenger" or "shadow"; null when no rollout was active), ``protocol``,
``latency_ms``, one column per input feature (float64 when numeric, string when
categorical; named ``input_<name>`` where the name is one of these fixed columns' or starts
with ``proba_``: :func:`input_column`), ``prediction`` (the label, or the value of a
regressor), one ``proba_<class>`` float64 column per class of a classifier, and
``label`` + ``label_ts`` (the latest feedback for the request; null when none; labels are
keyed by request id, so a request's label reaches each of its logged rows: the champion's
and a shadow's alike). The schema is
fixed before the first batch, from what the serving core registered for the model's
versions (input names and kinds, classes) and, for rows nothing registered, from the first
batch read. :func:`labels` yields the labels received in a time range.

How it streams: SQLite is read in chunks by keyset pagination on ``(ts, id)`` (each chunk
one short read transaction, so the writer's checkpoints are never held back); PostgreSQL
is read as one query the server streams (``COPY (SELECT ...) TO STDOUT`` in binary, through
the ADBC driver), cut into batches as it arrives. Both come in as Arrow columns; the JSON
``inputs``/``outputs`` of a whole chunk are decoded with ONE ``orjson.loads`` each and
turned into typed Arrow arrays column by column, not row by row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import DataError
from flywheel.predlog._decode import TIMESTAMP, Plan, input_column, label_batch
from flywheel.predlog.records import PredictionLogError
from flywheel.predlog.stores import FEEDBACK_TABLE, TABLE, open_store, parse_url

if TYPE_CHECKING:
    from flywheel.predlog.stores import VersionInfo
    from flywheel.predlog.writer import PredictionLog

__all__ = ["TIMESTAMP", "input_column", "labels", "predictions"]


# --------------------------------------------------------------------------- public API


def predictions(
    source: str | PredictionLog,
    model: str,
    version: str | None = None,
    start: float | datetime | None = None,
    end: float | datetime | None = None,
    batch_rows: int = 65536,
    with_labels: bool = True,
    role: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """The predictions of ``model`` (and ``version``) logged in ``[start, end)`` (unix
    seconds or datetimes; naive ones are UTC), oldest first, as record batches of the
    predictions of at most ``batch_rows`` rows of the log (logged requests). ``source`` is
    the log's URL or a :class:`~flywheel.predlog.writer.PredictionLog` (rows it still queues
    are not read).
    ``with_labels=False`` skips the feedback join (``label``/``label_ts`` stay null).
    ``role``: only the rows logged in that rollout role ("champion", "challenger",
    "shadow"; ``""``: those logged with no rollout active); None: every row.

    The label is the request's latest feedback, joined by request id: when a champion and
    a shadow scored one request, the label reaches both rows."""
    url, lo, hi = _check(source, start, end, batch_rows)
    if role is not None and not isinstance(role, str):
        raise DataError(
            f"role must be a rollout role (champion, challenger, shadow), '' or None; got "
            f"{role!r}.",
            field="role",
        )
    kind, target = parse_url(url)
    known = _registered(url, model, version)
    if kind == "sqlite":
        query = _sqlite_predictions(model, version, lo, hi, role)
        raw: Iterator[pa.Table] = _sqlite_chunks(target, query, batch_rows)
        if with_labels:
            raw = _joined(raw, _sqlite_latest_labels(target, query))
    else:
        sql = _pg_predictions(model, version, lo, hi, with_labels, role)
        raw = _pg_chunks(target, sql, batch_rows)
    return _decoded(raw, model, known)


def labels(
    source: str | PredictionLog,
    model: str | None = None,
    start: float | datetime | None = None,
    end: float | datetime | None = None,
    batch_rows: int = 65536,
) -> Iterator[pa.RecordBatch]:
    """Every label received in ``[start, end)`` (by ``label_ts``, its received time), oldest
    first, for the predictions of ``model`` (None: every model): ``request_id``, ``client_id``,
    ``model``, ``version``, ``role`` (null: no rollout), ``ts`` (the prediction's time),
    ``label`` (the label's JSON text, as sent: a number, string, or a list for a multi-row
    request) and ``label_ts``. Several labels for one request are all listed;
    :func:`predictions` joins the latest. A label is listed once per logged row of its
    request: twice for a request a champion and a shadow both scored (``role`` tells)."""
    url, lo, hi = _check(source, start, end, batch_rows)
    kind, target = parse_url(url)
    _registered(url, model or "", None)  # creates or migrates the schema, like the writer
    mark = "?" if kind == "sqlite" else None
    clauses = [f"f.received_at >= {_lit(lo, mark)}"] if lo is not None else []
    clauses += [f"f.received_at < {_lit(hi, mark)}"] if hi is not None else []
    clauses += [f"p.model = {_lit(model, mark)}"] if model is not None else []
    select = (
        "SELECT f.id, p.request_id, p.client_id, p.model, p.version, "
        "NULLIF(p.role, '') AS role, p.ts, "
        f"f.label{'' if kind == 'sqlite' else '::text'} AS label, f.received_at "
        f"FROM {FEEDBACK_TABLE} f JOIN {TABLE} p ON p.request_id = f.request_id"
    )
    if kind == "sqlite":
        params = tuple(v for v in (lo, hi, model) if v is not None)
        query = _Keyset(select, clauses, params, ("f.received_at", "received_at"), ("f.id", "id"))
        raw = _sqlite_chunks(target, query, batch_rows)
    else:
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        raw = _pg_chunks(target, select + where + " ORDER BY f.received_at, f.id", batch_rows)
    return (label_batch(chunk) for chunk in raw)


# --------------------------------------------------------------------------- arguments


def _seconds(value: float | datetime | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise DataError(
        f"{name} must be unix seconds or a datetime, got {value!r}.", field=name, value=value
    )


def _check(
    source: Any, start: float | datetime | None, end: float | datetime | None, batch_rows: int
) -> tuple[str, float | None, float | None]:
    url = source if isinstance(source, str) else getattr(source, "url", None)
    if not isinstance(url, str):
        raise DataError(
            f"source must be a prediction log URL or a PredictionLog, got {source!r}.",
            field="source",
        )
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise DataError(
            f"batch_rows must be an integer >= 1, got {batch_rows!r}.", field="batch_rows"
        )
    return url, _seconds(start, "start"), _seconds(end, "end")


def _registered(url: str, model: str, version: str | None) -> dict[str, VersionInfo]:
    """What the serving core registered for ``model``'s versions; opening the store also
    creates or migrates the schema, as the writer does."""
    kind, target = parse_url(url)
    try:
        store = open_store(kind, target, name="reader")
    except Exception as exc:
        raise PredictionLogError(
            f"Cannot open the prediction log to read it: {exc}. Check the URL and that the "
            "database is up.",
        ) from exc
    try:
        found = store.versions(model)
    finally:
        store.close()
    return {v: info for (_, v), info in found.items() if version is None or v == version}


def _lit(value: Any, mark: str | None) -> str:
    """A bound parameter (SQLite: ``?``) or, for PostgreSQL, an inline literal: ADBC streams
    a query with COPY only when it has no bound parameters."""
    if mark is not None:
        return mark
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if "\x00" in text:
        raise DataError("A model, version or role cannot hold a NUL byte.", field="model")
    return "'" + text.replace("'", "''") + "'"


# --------------------------------------------------------------------------- SQL + chunks


class _Keyset:
    """A SQLite query read in chunks ordered by ``(order, tie)`` (each an SQL expression and
    its column in the result): each chunk starts after the last row of the previous one
    (keyset pagination, served by the index on ``ts``, or on ``received_at`` for labels)."""

    def __init__(
        self,
        select: str,
        clauses: list[str],
        params: tuple[Any, ...],
        order: tuple[str, str],
        tie: tuple[str, str],
    ) -> None:
        self.select, self.clauses, self.params = select, clauses, params
        self.order, self.tie = order, tie

    def sql(self, first: bool) -> str:
        key = f"({self.order[0]}, {self.tie[0]}) > (?, ?)"
        clauses = self.clauses if first else [*self.clauses, key]
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return f"{self.select}{where} ORDER BY {self.order[0]}, {self.tie[0]} LIMIT ?"

    def after(self, table: pa.Table) -> tuple[Any, Any]:
        """The key of the chunk's last row: where the next chunk starts."""
        return table.column(self.order[1])[-1].as_py(), table.column(self.tie[1])[-1].as_py()


def _filters(
    model: str,
    version: str | None,
    lo: float | None,
    hi: float | None,
    role: str | None,
    mark: str | None,
) -> list[str]:
    """The WHERE clauses of a predictions read, in the order of their parameters."""
    clauses = [f"p.model = {_lit(model, mark)}"]
    clauses += [f"p.version = {_lit(version, mark)}"] if version is not None else []
    clauses += [f"p.ts >= {_lit(lo, mark)}"] if lo is not None else []
    clauses += [f"p.ts < {_lit(hi, mark)}"] if hi is not None else []
    clauses += [f"p.role = {_lit(role, mark)}"] if role is not None else []
    return clauses


# The row's role as the read API gives it: null when no rollout was active (stored '').
_ROLE = "NULLIF(p.role, '') AS role"


def _sqlite_predictions(
    model: str, version: str | None, lo: float | None, hi: float | None, role: str | None
) -> _Keyset:
    select = (
        f"SELECT p.id, p.request_id, p.client_id, p.ts, p.version, {_ROLE}, p.protocol, "
        f"p.latency_ms, p.inputs, p.outputs FROM {TABLE} p"
    )
    params = tuple(v for v in (model, version, lo, hi, role) if v is not None)
    clauses = _filters(model, version, lo, hi, role, "?")
    return _Keyset(select, clauses, params, ("p.ts", "ts"), ("p.id", "id"))


def _pg_predictions(
    model: str,
    version: str | None,
    lo: float | None,
    hi: float | None,
    with_labels: bool,
    role: str | None,
) -> str:
    label = ", f.label::text AS label, f.received_at AS label_ts" if with_labels else ""
    # The latest label per request as one hash-joined set (DISTINCT ON), not a subquery per row.
    join = (
        f" LEFT JOIN (SELECT DISTINCT ON (request_id) request_id, label, received_at "
        f"FROM {FEEDBACK_TABLE} ORDER BY request_id, received_at DESC, id DESC) f "
        "ON f.request_id = p.request_id"
        if with_labels
        else ""
    )
    where = " AND ".join(_filters(model, version, lo, hi, role, None))
    return (
        f"SELECT p.request_id, p.client_id, p.ts, p.version, {_ROLE}, p.protocol, "
        "p.latency_ms, "
        f"p.inputs::text AS inputs, p.outputs::text AS outputs{label} "
        f"FROM {TABLE} p{join} WHERE {where} ORDER BY p.ts, p.id"
    )


def _sqlite_chunks(path: str, query: _Keyset, batch_rows: int) -> Iterator[pa.Table]:
    import adbc_driver_sqlite.dbapi as adbc

    # autocommit: no read transaction is held between chunks (WAL checkpoints go on).
    conn = adbc.connect(path, autocommit=True)
    cur = conn.cursor()
    try:
        # One Arrow batch per chunk: the driver infers each column's type from its first
        # batch, so a column NULL in the first rows (client_id, label) must see them all.
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows + 1)})
        after: tuple[Any, ...] = ()
        while True:
            cur.execute(query.sql(not after), (*query.params, *after, batch_rows))
            table = cur.fetch_arrow_table()
            if table.num_rows:
                yield table
            if table.num_rows < batch_rows:
                return
            after = query.after(table)
    finally:
        cur.close()
        conn.close()


def _pg_chunks(conninfo: str, sql: str, batch_rows: int) -> Iterator[pa.Table]:
    import adbc_driver_postgresql.dbapi as adbc

    conn = adbc.connect(conninfo, autocommit=True)
    cur = conn.cursor()
    try:
        cur.execute(sql)
        yield from _rechunk(cur.fetch_record_batch(), batch_rows)
    finally:
        cur.close()
        conn.close()


def _rechunk(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """``batches`` (any sizes) as tables of exactly ``rows`` rows (the last: the rest)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(held)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held)


def _sqlite_latest_labels(path: str, query: _Keyset) -> pa.Table:
    """The latest label of every labelled prediction the query selects: ``request_id``,
    ``label``, ``label_ts``. Read once, driven by the feedback table (one lookup per label
    instead of one per prediction: a correlated subquery cost ~1.5 µs per prediction read),
    and joined to each chunk by hash (:func:`_joined`). Its size is that of the labels."""
    import adbc_driver_sqlite.dbapi as adbc

    where = " AND ".join(query.clauses)
    # CROSS JOIN keeps feedback the outer loop: each label looks its prediction up by id.
    sql = (
        "SELECT f.request_id AS request_id, f.label AS label, f.received_at AS label_ts "
        f"FROM {FEEDBACK_TABLE} f CROSS JOIN {TABLE} p ON p.request_id = f.request_id "
        f"WHERE {where} ORDER BY f.received_at DESC, f.id DESC"
    )
    with adbc.connect(path, autocommit=True) as conn, conn.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "1000000"})
        cur.execute(sql, query.params)
        found = cur.fetch_arrow_table()
    found = pa.table(
        {
            "request_id": found.column("request_id").cast(pa.string()),
            "label": found.column("label").cast(pa.string()),
            "label_ts": found.column("label_ts").cast(pa.float64()),
        }
    )
    # Newest first: keep each request's first row.
    numbered = found.append_column("at", pa.array(range(found.num_rows), pa.int64()))
    first = numbered.group_by("request_id", use_threads=False).aggregate([("at", "min")])
    return found.take(first.column("at_min"))


def _joined(chunks: Iterator[pa.Table], latest: pa.Table) -> Iterator[pa.Table]:
    """``chunks`` with each row's latest label (``label``, ``label_ts``; null when none)."""
    ids = latest.column("request_id").combine_chunks()
    for chunk in chunks:
        at = pc.index_in(chunk.column("request_id").cast(pa.string()), value_set=ids)
        yield chunk.append_column("label", latest.column("label").take(at)).append_column(
            "label_ts", latest.column("label_ts").take(at)
        )


# --------------------------------------------------------------------------- decoding


def _decoded(
    raw: Iterator[pa.Table], model: str, known: dict[str, VersionInfo]
) -> Iterator[pa.RecordBatch]:
    plan: Plan | None = None
    for chunk in raw:
        if plan is None:
            plan = Plan(model, known, chunk)
        yield plan.decode(chunk)
