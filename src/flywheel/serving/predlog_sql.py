"""SQL backends of the prediction log: SQLite (stdlib ``sqlite3``, WAL) and PostgreSQL (psycopg 3).

Each :class:`Store` wraps ONE connection and is used by one thread at a time (the log's writer
thread owns one; feedback and reads share another behind a lock). Stores raise the driver's
own exceptions; :mod:`flywheel.serving.predlog` translates them at its boundary and decides,
with :meth:`Store.is_data_error`, whether a failed batch is retried as a whole (connection,
lock, disk: transient) or record by record (a record the database refuses: deterministic).

Written on the raw drivers rather than SQLAlchemy because the batch write is the hot loop of
the log: multi-row ``INSERT`` on sqlite3 and ``COPY`` on psycopg are the fastest paths each
driver has, and SQLAlchemy Core adds ~2x per-row overhead there without buying anything (two
fixed tables, no dialect-specific ORM needs).

Schema (both databases; created idempotently on connect)::

    prediction_log(id, request_id, ts, model, version, protocol, inputs, outputs, latency_ms)
        UNIQUE (request_id, model, version)   -- also the lookup index by request id
        INDEX (ts)
    prediction_feedback(id, request_id, label, received_at)
        INDEX (request_id, received_at)
    prediction_inputs(model, version, names)     -- PRIMARY KEY (model, version)
    VIEW prediction_log_named                    -- prediction_log, inputs always named

``inputs`` is a JSON object (name -> values) or, for the serving core's rows, a JSON array
of columns in the order of the names registered for the row's (model, version) in
``prediction_inputs``: a 14-feature churn row's inputs shrink from 377 to 166 bytes. The view
gives every row its named object back, for SQL readers.

The unique key makes a retried batch idempotent (a commit whose acknowledgement was lost is
not written twice) and still lets one request be logged once per model version (shadow and
A/B traffic). Rows that collide with it are ignored by the database and counted by the log.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "FEEDBACK_TABLE",
    "INPUTS_TABLE",
    "NAMED_VIEW",
    "PREDICTION_COLUMNS",
    "TABLE",
    "PostgresStore",
    "Row",
    "SqliteStore",
    "Store",
]

TABLE = "prediction_log"
FEEDBACK_TABLE = "prediction_feedback"
INPUTS_TABLE = "prediction_inputs"
NAMED_VIEW = "prediction_log_named"
PREDICTION_COLUMNS = (
    "request_id",
    "ts",
    "model",
    "version",
    "protocol",
    "inputs",
    "outputs",
    "latency_ms",
)
_COLS = ", ".join(PREDICTION_COLUMNS)

# (request_id, ts, model, version, protocol, inputs_json, outputs_json, latency_ms)
Row = tuple[str, float, str, str, str, str, str, float]
FeedbackRow = tuple[str, str, float]  # (request_id, label_json, received_at)

# Latest label per request: the feedback row with the greatest (received_at, id). A correlated
# subquery (portable, served by the (request_id, received_at) index) rather than a window
# over the whole feedback table.
_SELECT = f"""
SELECT p.request_id, p.ts, p.model, p.version, p.protocol, p.inputs{{cast}},
       p.outputs{{cast}}, p.latency_ms, f.label{{cast}}, f.received_at
FROM {TABLE} p
LEFT JOIN {FEEDBACK_TABLE} f ON f.id = (
    SELECT f2.id FROM {FEEDBACK_TABLE} f2 WHERE f2.request_id = p.request_id
    ORDER BY f2.received_at DESC, f2.id DESC LIMIT 1)
"""


class Store(Protocol):
    """One connection to the log's database."""

    def write_predictions(self, rows: Sequence[Row]) -> int:
        """Insert ``rows`` in one transaction; return how many were new (not duplicates)."""
        ...

    def add_feedback(self, rows: Sequence[FeedbackRow]) -> None: ...
    def register_inputs(self, model: str, version: str, names_json: str) -> str:
        """Store the input names of (model, version) unless some are stored; return the
        stored ones (JSON text)."""
        ...

    def input_names(self) -> dict[tuple[str, str], str]: ...
    def known_ids(self, ids: Sequence[str]) -> set[str]: ...
    def read(
        self, since: float | None, limit: int | None, model: str | None, labelled_only: bool
    ) -> list[tuple[Any, ...]]: ...
    def count(self) -> int: ...
    def journal_mode(self) -> str: ...
    def close(self) -> None: ...
    @staticmethod
    def is_data_error(exc: BaseException) -> bool: ...


def _where(
    since: float | None, model: str | None, labelled_only: bool, mark: str
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append(f"p.ts >= {mark}")
        params.append(since)
    if model is not None:
        clauses.append(f"p.model = {mark}")
        params.append(model)
    if labelled_only:
        clauses.append("f.id IS NOT NULL")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------- SQLite

_SQLITE_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        ts REAL NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        protocol TEXT NOT NULL,
        inputs TEXT NOT NULL,
        outputs TEXT NOT NULL,
        latency_ms REAL NOT NULL)""",
    f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_request ON {TABLE} (request_id, model, version)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts)",
    f"""CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        label TEXT NOT NULL,
        received_at REAL NOT NULL)""",
    f"""CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_request
        ON {FEEDBACK_TABLE} (request_id, received_at)""",
    f"""CREATE TABLE IF NOT EXISTS {INPUTS_TABLE} (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        names TEXT NOT NULL,
        PRIMARY KEY (model, version))""",
    f"""CREATE VIEW IF NOT EXISTS {NAMED_VIEW} AS
        SELECT p.id, p.request_id, p.ts, p.model, p.version, p.protocol,
            CASE WHEN json_type(p.inputs) = 'array' AND i.names IS NOT NULL THEN
                (SELECT json_group_object(n.value, json_extract(p.inputs, '$[' || n.key || ']'))
                 FROM json_each(i.names) n)
            ELSE p.inputs END AS inputs,
            p.outputs, p.latency_ms
        FROM {TABLE} p LEFT JOIN {INPUTS_TABLE} i ON i.model = p.model AND i.version = p.version""",
)


# Rows per INSERT statement. sqlite3's ``executemany`` runs one ``sqlite3_step`` per row and
# releases the GIL around each, handing a one-core server back and forth between the writer
# and the event loop; one multi-row INSERT per chunk releases it once per chunk, and took
# the writer's SQLite time from ~3.1 to ~2.1 µs per row (1,000-row batches, in isolation).
_ROWS_PER_INSERT = 250
# Page size of a new SQLite log file (see SqliteStore.__init__).
_PAGE_SIZE = 16384


@lru_cache(maxsize=8)
def _sqlite_insert(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT OR IGNORE INTO {TABLE} ({_COLS}) VALUES {values}"


class SqliteStore:
    """A WAL-mode SQLite database file; ``synchronous=NORMAL`` (durable at each checkpoint,
    never corrupt; a power cut may lose the last few commits, an application crash loses none)."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so a batch takes
        # the write lock up front and never fails half-way on a lock upgrade.
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            # 16 KiB pages for a new file (an existing one keeps its own): a batch of
            # ~550-byte rows is written in a quarter of the WAL frames; measured 3.0 -> 2.0
            # µs of CPU (syscalls included) per logged prediction, 1,000-row batches.
            self._conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(
                    f"journal_mode is {mode!r}, not 'wal' (is {path!r} on a network filesystem?)"
                )
            self._conn.execute("PRAGMA synchronous=NORMAL")
            limit = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._rows_per_insert = max(1, min(_ROWS_PER_INSERT, limit // len(PREDICTION_COLUMNS)))
            with self._tx():
                for ddl in _SQLITE_DDL:
                    self._conn.execute(ddl)
        except BaseException:
            self._conn.close()
            raise

    def _tx(self) -> _SqliteTx:
        return _SqliteTx(self._conn)

    def write_predictions(self, rows: Sequence[Row]) -> int:
        conn, per = self._conn, self._rows_per_insert
        with self._tx():
            before = conn.total_changes
            for i in range(0, len(rows), per):
                chunk = rows[i : i + per]
                conn.execute(_sqlite_insert(len(chunk)), list(chain.from_iterable(chunk)))
            return conn.total_changes - before

    def add_feedback(self, rows: Sequence[FeedbackRow]) -> None:
        with self._tx():
            self._conn.executemany(
                f"INSERT INTO {FEEDBACK_TABLE} (request_id, label, received_at) VALUES (?, ?, ?)",
                rows,
            )

    def register_inputs(self, model: str, version: str, names_json: str) -> str:
        with self._tx():
            self._conn.execute(
                f"INSERT OR IGNORE INTO {INPUTS_TABLE} (model, version, names) VALUES (?, ?, ?)",
                (model, version, names_json),
            )
            row = self._conn.execute(
                f"SELECT names FROM {INPUTS_TABLE} WHERE model = ? AND version = ?",
                (model, version),
            ).fetchone()
        return str(row[0])

    def input_names(self) -> dict[tuple[str, str], str]:
        cur = self._conn.execute(f"SELECT model, version, names FROM {INPUTS_TABLE}")
        return {(m, v): n for m, v, n in cur}

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            cur = self._conn.execute(
                f"SELECT DISTINCT request_id FROM {TABLE} WHERE request_id IN ({marks})", chunk
            )
            found.update(r[0] for r in cur)
        return found

    def read(
        self, since: float | None, limit: int | None, model: str | None, labelled_only: bool
    ) -> list[tuple[Any, ...]]:
        where, params = _where(since, model, labelled_only, "?")
        sql = _SELECT.format(cast="") + where + " ORDER BY p.ts, p.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return list(self._conn.execute(sql, params))

    def count(self) -> int:
        return int(self._conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    def journal_mode(self) -> str:
        return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    @staticmethod
    def is_data_error(exc: BaseException) -> bool:
        # OperationalError (locked, read-only, disk I/O, missing table) is transient;
        # a constraint or type the database refuses is the record's fault.
        return isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError)


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        elif self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


# --------------------------------------------------------------------------- PostgreSQL

_PG_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id text NOT NULL,
        ts double precision NOT NULL,
        model text NOT NULL,
        version text NOT NULL,
        protocol text NOT NULL,
        inputs json NOT NULL,
        outputs json NOT NULL,
        latency_ms double precision NOT NULL)""",
    f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_request ON {TABLE} (request_id, model, version)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts)",
    f"""CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id text NOT NULL,
        label json NOT NULL,
        received_at double precision NOT NULL)""",
    f"""CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_request
        ON {FEEDBACK_TABLE} (request_id, received_at)""",
    f"""CREATE TABLE IF NOT EXISTS {INPUTS_TABLE} (
        model text NOT NULL,
        version text NOT NULL,
        names json NOT NULL,
        PRIMARY KEY (model, version))""",
    f"""CREATE OR REPLACE VIEW {NAMED_VIEW} AS
        SELECT p.id, p.request_id, p.ts, p.model, p.version, p.protocol,
            CASE WHEN json_typeof(p.inputs) = 'array' AND i.names IS NOT NULL THEN
                (SELECT json_object_agg(n.name, e.value)
                 FROM json_array_elements_text(i.names) WITH ORDINALITY n(name, k)
                 JOIN json_array_elements(p.inputs) WITH ORDINALITY e(value, k) USING (k))
            ELSE p.inputs END AS inputs,
            p.outputs, p.latency_ms
        FROM {TABLE} p LEFT JOIN {INPUTS_TABLE} i ON i.model = p.model AND i.version = p.version""",
)
# Names the advisory lock that serialises first-time DDL when several replicas start at once.
_PG_DDL_LOCK = 0x70_72_65_64
_STAGE = "prediction_log_stage"


class PostgresStore:
    """PostgreSQL through psycopg 3. A batch is COPY'd into a session temp table and moved
    with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: COPY's speed, plus the
    idempotence COPY alone cannot give (COPY has no ON CONFLICT)."""

    def __init__(self, conninfo: str, *, connect_timeout_s: float = 5.0, name: str = "") -> None:
        import psycopg  # imported only when PostgreSQL is chosen

        self._conn = psycopg.connect(
            conninfo,
            connect_timeout=max(1, round(connect_timeout_s)),
            application_name=f"flywheel-predlog{'-' + name if name else ''}",
        )
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_DDL_LOCK,))
                for ddl in _PG_DDL:
                    self._conn.execute(ddl)
            self._conn.execute(
                f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
                    request_id text, ts double precision, model text, version text,
                    protocol text, inputs text, outputs text, latency_ms double precision)
                    ON COMMIT DELETE ROWS"""
            )
            self._conn.commit()
        except BaseException:
            self._conn.close()
            raise

    def write_predictions(self, rows: Sequence[Row]) -> int:
        with self._conn.transaction(), self._conn.cursor() as cur:
            with cur.copy(f"COPY {_STAGE} ({_COLS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                f"""INSERT INTO {TABLE} ({_COLS})
                    SELECT request_id, ts, model, version, protocol, inputs::json, outputs::json,
                           latency_ms FROM {_STAGE}
                    ON CONFLICT (request_id, model, version) DO NOTHING"""
            )
            return int(cur.rowcount)

    def add_feedback(self, rows: Sequence[FeedbackRow]) -> None:
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {FEEDBACK_TABLE} (request_id, label, received_at) "
                "VALUES (%s, %s::json, %s)",
                rows,
            )

    def register_inputs(self, model: str, version: str, names_json: str) -> str:
        with self._conn.transaction():
            self._conn.execute(
                f"INSERT INTO {INPUTS_TABLE} (model, version, names) VALUES (%s, %s, %s::json) "
                "ON CONFLICT (model, version) DO NOTHING",
                (model, version, names_json),
            )
            row = self._conn.execute(
                f"SELECT names::text FROM {INPUTS_TABLE} WHERE model = %s AND version = %s",
                (model, version),
            ).fetchone()
        assert row is not None
        return str(row[0])

    def input_names(self) -> dict[tuple[str, str], str]:
        cur = self._conn.execute(f"SELECT model, version, names::text FROM {INPUTS_TABLE}")
        found = {(m, v): n for m, v, n in cur}
        self._conn.commit()
        return found

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        cur = self._conn.execute(
            f"SELECT DISTINCT request_id FROM {TABLE} WHERE request_id = ANY(%s)", (list(ids),)
        )
        found = {r[0] for r in cur}
        self._conn.commit()
        return found

    def read(
        self, since: float | None, limit: int | None, model: str | None, labelled_only: bool
    ) -> list[tuple[Any, ...]]:
        where, params = _where(since, model, labelled_only, "%s")
        sql = _SELECT.format(cast="::text") + where + " ORDER BY p.ts, p.id"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        rows = self._conn.execute(sql, params).fetchall()
        self._conn.commit()
        return rows

    def count(self) -> int:
        row = self._conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        self._conn.commit()
        return int(row[0]) if row else 0

    def journal_mode(self) -> str:
        return "postgresql"

    def close(self) -> None:
        self._conn.close()

    @staticmethod
    def is_data_error(exc: BaseException) -> bool:
        import psycopg

        # DataError: bad JSON, NUL byte, out-of-range number; IntegrityError: NOT NULL.
        # Everything else (OperationalError: connection lost, admin shutdown, disk full)
        # is retried with a fresh connection.
        return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)
