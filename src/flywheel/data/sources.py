"""SQL extraction: stream a query from SQLite or PostgreSQL into a Parquet file with bounded memory.

The ADBC drivers hand back Arrow record batches (``cursor.fetch_record_batch()``), which are
normalised and written one at a time to a zstd Parquet file, so memory holds about one batch
(``source.batch_rows`` rows) whatever the size of the table.

Type normalisation, so that SQLite and PostgreSQL give comparable schemas:

* every integer type becomes ``int64`` and every float ``float64``;
* PostgreSQL ``numeric`` and decimals become ``float64``; other PostgreSQL types ADBC returns
  as opaque extensions (json, uuid, ...) keep their text form;
* dictionary columns are decoded and ``large_string`` becomes ``string``;
* timestamps stay as the source gives them (PostgreSQL: ``timestamp[us]`` with or without a
  time zone; SQLite: ISO 8601 ``string``); the manifest records the type and time range;
* field metadata is dropped, so the Parquet bytes depend only on the data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.config import mask_url
from flywheel.errors import DataError, SourceError

__all__ = [
    "ExtractStats",
    "base_query",
    "connect",
    "extract_to_parquet",
    "incremental_query",
    "normalise_schema",
    "open_parquet_writer",
    "parquet_sha256",
    "stream_batches",
    "write_batches",
]

log = logging.getLogger("flywheel.data.sources")

# Fixed writer options: same rows in the same batches give the same bytes (and sha256).
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
}


@dataclass
class ExtractStats:
    """What one extraction wrote."""

    rows: int
    schema: pa.Schema
    time_range: tuple[str, str] | None = None


def _dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite://") else "postgresql"


def _sqlite_path(url: str) -> str:
    path = url.removeprefix("sqlite://").removeprefix("/")
    if path in ("", ":memory:"):
        return ":memory:"
    return path


def connect(url: str) -> Any:
    """An ADBC DB-API connection for a ``sqlite:///`` or ``postgresql://`` URL."""
    try:
        if _dialect(url) == "sqlite":
            import adbc_driver_sqlite.dbapi as sqlite_dbapi

            path = _sqlite_path(url)
            if path != ":memory:" and not os.path.exists(path):
                raise SourceError(
                    f"No SQLite database at {path!r} (source.url={mask_url(url)!r}). "
                    "Fix: run `flywheel simulate` or point source.url at an existing database.",
                    url=mask_url(url),
                )
            return sqlite_dbapi.connect(path)
        import adbc_driver_postgresql.dbapi as pg_dbapi

        return pg_dbapi.connect(url.replace("postgresql+psycopg://", "postgresql://", 1))
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(
            f"Cannot connect to the source database {mask_url(url)!r}: {exc}. "
            "Fix: check source.url (host, port, database, credentials) and that the server runs.",
            url=mask_url(url),
        ) from exc


def base_query(table: str, query: str | None) -> str:
    """The configured or given query, else every row of ``table``."""
    if query:
        return query.strip().rstrip(";")
    return f'SELECT * FROM "{table}"'


def incremental_query(url: str, query: str, timestamp_column: str) -> str:
    """Wrap ``query`` so it returns only rows newer than one bound parameter."""
    placeholder = "?" if _dialect(url) == "sqlite" else "$1"
    return f'SELECT * FROM ({query}) q WHERE q."{timestamp_column}" > {placeholder}'


def _normalise_type(t: pa.DataType) -> pa.DataType:
    if isinstance(t, pa.BaseExtensionType):  # e.g. PostgreSQL numeric, json: opaque text
        numeric = getattr(t, "type_name", "") == "numeric"
        return pa.float64() if numeric else _normalise_type(t.storage_type)
    if pa.types.is_decimal(t):
        return pa.float64()
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_dictionary(t):
        return _normalise_type(t.value_type)
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_null(t):
        return pa.string()
    return t


def normalise_schema(schema: pa.Schema) -> pa.Schema:
    """The schema every batch is cast to (see the module docstring), without metadata."""
    return pa.schema([pa.field(f.name, _normalise_type(f.type)) for f in schema])


def _cast_column(col: pa.Array, target: pa.DataType) -> pa.Array:
    if isinstance(col.type, pa.BaseExtensionType):
        col = col.storage
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col if col.type == target else pc.cast(col, target, safe=True)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.names != schema.names:
        raise DataError(
            f"The extracted columns {batch.schema.names} differ from the snapshot's "
            f"columns {schema.names}. Fix: keep the query's columns stable, or ingest with "
            "--full to start a new root snapshot.",
            columns=batch.schema.names,
        )
    try:
        arrays = [_cast_column(batch.column(i), f.type) for i, f in enumerate(schema)]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"An extracted column does not fit the snapshot's type: {exc}. "
            "Fix: CAST the column in the source query, or ingest with --full.",
        ) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def open_parquet_writer(path: Path | str, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer with flywheel's fixed, deterministic options (zstd)."""
    return pq.ParquetWriter(str(path), schema, **PARQUET_OPTIONS)


def parquet_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _as_text(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.datetime | dt.date) else str(value)


class _RangeTracker:
    """Running min/max of one column across batches."""

    def __init__(self, column: str | None) -> None:
        self.column = column
        self.low: Any = None
        self.high: Any = None

    def update(self, batch: pa.RecordBatch) -> None:
        if self.column is None or self.column not in batch.schema.names:
            return
        mm = pc.min_max(batch.column(self.column))
        low, high = mm["min"].as_py(), mm["max"].as_py()
        if low is not None and (self.low is None or low < self.low):
            self.low = low
        if high is not None and (self.high is None or high > self.high):
            self.high = high

    def result(self) -> tuple[str, str] | None:
        if self.low is None or self.high is None:
            return None
        return (_as_text(self.low), _as_text(self.high))


def _bind(url: str, value: Any, arrow_type: pa.DataType | None) -> Any:
    """One bound parameter as an Arrow batch, typed like the timestamp column."""
    if arrow_type is None or pa.types.is_string(arrow_type):
        array = pa.array([str(value)], pa.string())
    elif pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        parsed: Any = dt.datetime.fromisoformat(str(value))
        if pa.types.is_date(arrow_type):
            parsed = parsed.date()
        array = pa.array([parsed], arrow_type)
    else:
        array = pc.cast(pa.array([str(value)]), arrow_type)
    return pa.record_batch([array], names=["p1"])


@contextmanager
def stream_batches(
    url: str, sql: str, *, params: Any = None, batch_rows: int = 100_000
) -> Iterator[pa.RecordBatchReader]:
    """Run ``sql`` and yield a RecordBatchReader; driver errors become :class:`SourceError`."""
    conn = connect(url)
    try:
        cur = conn.cursor()
        if _dialect(url) == "sqlite":
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
        else:
            cur.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(16 << 20)}
            )
        try:
            cur.execute(sql, params)
            reader = cur.fetch_record_batch()
        except Exception as exc:
            raise _query_error(url, sql, exc) from exc
        try:
            yield reader
        finally:
            cur.close()
    finally:
        conn.close()


def _query_error(url: str, sql: str, exc: Exception) -> SourceError:
    fix = "check source.query / source.table / source.timestamp_column"
    if "Type mismatch" in str(exc):  # SQLite types columns from the first batch of rows
        fix = "CAST the column to one type in source.query, or raise source.batch_rows"
    return SourceError(
        f"The query failed on {mask_url(url)!r}: {exc}. Query: {sql!r}. Fix: {fix}.",
        url=mask_url(url),
        query=sql,
    )


_DONE = object()


def prefetch(batches: Iterable[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """Read the next batches in a thread while the caller writes (both release the GIL).

    Hand-written because no library overlaps an ADBC reader with a Parquet writer; at most
    ``depth`` batches wait in the queue, so memory stays bounded.
    """
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        items.put(batch, timeout=0.1)
                        break
                if stop.is_set():
                    return
            items.put(_DONE)
        except BaseException as exc:  # re-raised in the consumer
            items.put(exc)

    thread = threading.Thread(target=produce, name="flywheel-prefetch", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                items.get(timeout=0.1)
        thread.join()


def write_batches(
    batches: Iterable[pa.RecordBatch],
    path: Path | str,
    schema: pa.Schema,
    *,
    timestamp_column: str | None = None,
) -> ExtractStats:
    """Cast each batch to ``schema`` and append it to a new Parquet file at ``path``."""
    tracker = _RangeTracker(timestamp_column)
    rows = 0
    with open_parquet_writer(path, schema) as writer:
        for batch in prefetch(batches):
            if batch.num_rows == 0:
                continue
            batch = _conform(batch, schema)
            tracker.update(batch)
            writer.write_batch(batch)
            rows += batch.num_rows
    return ExtractStats(rows=rows, schema=schema, time_range=tracker.result())


def extract_to_parquet(
    url: str,
    sql: str,
    path: Path | str,
    *,
    since: Any = None,
    since_type: pa.DataType | None = None,
    schema: pa.Schema | None = None,
    timestamp_column: str | None = None,
    batch_rows: int = 100_000,
) -> ExtractStats:
    """Stream ``sql`` (bound to ``since`` when given) into a zstd Parquet file at ``path``.

    ``schema`` (e.g. the parent snapshot's) fixes the output types; otherwise the normalised
    schema of the query result is used. Memory stays around one batch.
    """
    params = None if since is None else _bind(url, since, since_type)
    with stream_batches(url, sql, params=params, batch_rows=batch_rows) as reader:
        target = schema or normalise_schema(reader.schema)
        try:
            stats = write_batches(reader, path, target, timestamp_column=timestamp_column)
        except (DataError, SourceError):
            raise
        except Exception as exc:
            raise _query_error(url, sql, exc) from exc
    log.debug("extracted %s rows from %s", stats.rows, mask_url(url))
    return stats
