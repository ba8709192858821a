"""The prediction log on SQLite (stdlib ``sqlite3``, WAL): the embedded default.

Schema and migration: see :mod:`flywheel.predlog.stores`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Generator, Sequence
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

from flywheel.predlog.records import FeedbackRow, Row
from flywheel.predlog.stores import (
    COLS_SQL,
    COLUMNS,
    FEEDBACK_TABLE,
    INPUTS_TABLE,
    KEY_INDEX,
    NAMED_VIEW,
    NAMED_VIEW_SELECT,
    OLDER_KEY_INDEXES,
    ROLE_VALUE,
    SELECT_ROWS,
    TABLE,
    ClientMatch,
    VersionInfo,
    arm_rows_sql,
    chunks,
    where,
)

__all__ = ["SqliteStore"]

log = logging.getLogger("flywheel.predlog")

_TABLES = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        ts REAL NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        protocol TEXT NOT NULL,
        inputs TEXT NOT NULL,
        outputs TEXT NOT NULL,
        latency_ms REAL NOT NULL,
        client_id TEXT,
        role TEXT NOT NULL DEFAULT '')""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts)",
    f"""CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        label TEXT NOT NULL,
        received_at REAL NOT NULL)""",
    f"""CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_request
        ON {FEEDBACK_TABLE} (request_id, received_at)""",
    f"CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_received ON {FEEDBACK_TABLE} (received_at)",
    f"""CREATE TABLE IF NOT EXISTS {INPUTS_TABLE} (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        names TEXT NOT NULL,
        numeric TEXT,
        classes TEXT,
        PRIMARY KEY (model, version))""",
)
_NAMED_INPUTS = """CASE WHEN json_type(p.inputs) = 'array' AND i.names IS NOT NULL THEN
                (SELECT json_group_object(n.value, json_extract(p.inputs, '$[' || n.key || ']'))
                 FROM json_each(i.names) n)
            ELSE p.inputs END"""
_CLIENT_INDEX = f"""CREATE INDEX IF NOT EXISTS {TABLE}_client ON {TABLE} (client_id)
    WHERE client_id IS NOT NULL"""
_VIEW = f"CREATE VIEW {NAMED_VIEW} AS " + NAMED_VIEW_SELECT.format(
    inputs=_NAMED_INPUTS, table=TABLE, inputs_table=INPUTS_TABLE
)

# Rows per INSERT statement. sqlite3's ``executemany`` runs one ``sqlite3_step`` per row and
# releases the GIL around each, handing a one-core server back and forth between the writer
# and the event loop; one multi-row INSERT per chunk releases it once per chunk, and took
# the writer's SQLite time from ~3.1 to ~2.1 µs per row (1,000-row batches, in isolation).
_ROWS_PER_INSERT = 250
# Page size of a new SQLite log file (see SqliteStore.__init__): 16 KiB for the writer's
# large batches; the log asks for 4 KiB in the commit durability, whose groups are a few
# rows: every commit writes each page it touches (table, two or three indexes) to the WAL,
# and a group of 8 rows measured 264 µs per commit with 4 KiB pages against 604 with 16.
PAGE_SIZE = 16384
SMALL_PAGE_SIZE = 4096


# A row's placeholders. With roles, the role as stored ('' for None) by SQL. Without (every
# row of the statement has None, the log outside rollouts): the role is not bound at all and
# takes its default ''. Binding None costs sqlite3 an adapter lookup per value (+0.4 µs a
# row on ~3 µs, measured with 1,000-row batches), and dropping the roles from the
# parameters is one C-level list operation (SqliteStore.write_predictions).
_ROLE_AT = COLUMNS.index("role")
_VALUES = "(" + ", ".join(ROLE_VALUE.format("?") if c == "role" else "?" for c in COLUMNS) + ")"
_VALUES_NO_ROLE = "(" + ", ".join("?" * (len(COLUMNS) - 1)) + ")"
_COLS_NO_ROLE = ", ".join(c for c in COLUMNS if c != "role")


@lru_cache(maxsize=16)
def _insert(rows: int, roles: bool) -> str:
    values = ", ".join([_VALUES if roles else _VALUES_NO_ROLE] * rows)
    columns = COLS_SQL if roles else _COLS_NO_ROLE
    # ON CONFLICT DO NOTHING (any unique key: an older log may keep its old one) rather
    # than INSERT OR IGNORE, which would also skip a row breaking NOT NULL, silently.
    return f"INSERT INTO {TABLE} ({columns}) VALUES {values} ON CONFLICT DO NOTHING"


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a log written by older code to this schema (idempotent; in the DDL transaction,
    which ``BEGIN IMMEDIATE`` serialises between processes)."""
    have = _columns(conn, TABLE)
    if "client_id" not in have:
        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN client_id TEXT")
    if "role" not in have:
        conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN role TEXT NOT NULL DEFAULT ''")
    have = _columns(conn, INPUTS_TABLE)
    for column in ("numeric", "classes"):
        if column not in have:
            conn.execute(f"ALTER TABLE {INPUTS_TABLE} ADD COLUMN {column} TEXT")
    conn.execute(_CLIENT_INDEX)
    view = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'view' AND name = ?", (NAMED_VIEW,)
    ).fetchone()
    if view is None or "p.role" not in view[0]:  # none yet, or an older log's
        conn.execute(f"DROP VIEW IF EXISTS {NAMED_VIEW}")
        conn.execute(_VIEW)
    _key(conn)


def _key(conn: sqlite3.Connection) -> None:
    """``UNIQUE (request_id, role)``, replacing an older log's key unless older rows share
    request ids (then the old key stays; logged); an older key found beside it (recreated
    by an older process) is dropped: it would refuse a shadow's row."""
    indexes = {str(r[1]) for r in conn.execute(f"PRAGMA index_list({TABLE})")}
    if KEY_INDEX not in indexes:
        try:
            conn.execute(f"CREATE UNIQUE INDEX {KEY_INDEX} ON {TABLE} (request_id, role)")
        except sqlite3.IntegrityError:
            # Only UNIQUE (request_id, model, version) allows this: UNIQUE (request_id) would
            # have kept the rows apart.
            log.warning(
                "prediction log: older rows share request ids (one request logged for several "
                "versions); keeping the (request_id, model, version) key"
            )
            return
    for older in OLDER_KEY_INDEXES:
        if older in indexes:
            conn.execute(f"DROP INDEX {older}")


class SqliteStore:
    """A WAL-mode SQLite database file, ``synchronous=NORMAL``: durable at each checkpoint,
    never corrupt; an application crash (``kill -9``) loses nothing committed, a power cut
    may lose the last commits."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_s: float = 5.0,
        page_size: int = PAGE_SIZE,
        checkpoints: bool = True,
    ) -> None:
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
            self._conn.execute(f"PRAGMA page_size={int(page_size)}")
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(
                    f"journal_mode is {mode!r}, not 'wal' (is {path!r} on a network filesystem?)"
                )
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if not checkpoints:  # another connection checkpoints (see checkpoint())
                self._conn.execute("PRAGMA wal_autocheckpoint=0")
            limit = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._rows_per_insert = max(1, min(_ROWS_PER_INSERT, limit // len(COLUMNS)))
            with self._tx():
                for ddl in _TABLES:
                    self._conn.execute(ddl)
                _migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise

    def _tx(self) -> _SqliteTx:
        return _SqliteTx(self._conn)

    def write_predictions(self, rows: Sequence[Row]) -> int:
        conn, per = self._conn, self._rows_per_insert
        with self._tx():
            before = conn.total_changes
            width = len(COLUMNS)
            for i in range(0, len(rows), per):
                chunk = rows[i : i + per]
                params = list(chain.from_iterable(chunk))
                roles = params[_ROLE_AT::width].count(None) != len(chunk)
                if not roles:
                    del params[_ROLE_AT::width]
                conn.execute(_insert(len(chunk), roles), params)
            return conn.total_changes - before

    def add_feedback(self, rows: Sequence[FeedbackRow]) -> None:
        with self._tx():
            self._conn.executemany(
                f"INSERT INTO {FEEDBACK_TABLE} (request_id, label, received_at) VALUES (?, ?, ?)",
                rows,
            )

    def register_inputs(
        self, model: str, version: str, names: str, numeric: str | None, classes: str | None
    ) -> str:
        with self._tx():
            self._conn.execute(
                f"INSERT OR IGNORE INTO {INPUTS_TABLE} (model, version, names, numeric, classes) "
                "VALUES (?, ?, ?, ?, ?)",
                (model, version, names, numeric, classes),
            )
            row = self._conn.execute(
                f"SELECT names FROM {INPUTS_TABLE} WHERE model = ? AND version = ?",
                (model, version),
            ).fetchone()
            if str(row[0]) == names:  # same inputs: fill what an older server did not store
                self._conn.execute(
                    f"UPDATE {INPUTS_TABLE} SET numeric = coalesce(numeric, ?), "
                    "classes = coalesce(classes, ?) WHERE model = ? AND version = ?",
                    (numeric, classes, model, version),
                )
        return str(row[0])

    def versions(self, model: str | None = None) -> dict[tuple[str, str], VersionInfo]:
        sql = f"SELECT model, version, names, numeric, classes FROM {INPUTS_TABLE}"
        cur = self._conn.execute(*((sql + " WHERE model = ?", (model,)) if model else (sql,)))
        return {(m, v): VersionInfo(n, num, cls) for m, v, n, num, cls in cur}

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in chunks(ids):
            marks = ", ".join("?" * len(chunk))
            cur = self._conn.execute(
                f"SELECT request_id FROM {TABLE} WHERE request_id IN ({marks})", chunk
            )
            found.update(r[0] for r in cur)
        return found

    def client_matches(self, ids: Sequence[str]) -> dict[str, ClientMatch]:
        found: dict[str, ClientMatch] = {}
        for chunk in chunks(ids):
            marks = ", ".join("?" * len(chunk))
            cur = self._conn.execute(
                f"SELECT client_id, min(request_id), count(DISTINCT request_id) FROM {TABLE} "
                f"WHERE client_id IN ({marks}) GROUP BY client_id",
                chunk,
            )
            found.update((c, ClientMatch(r, int(n))) for c, r, n in cur)
        return found

    def read(
        self, since: float | None, limit: int | None, model: str | None, labelled_only: bool
    ) -> list[tuple[Any, ...]]:
        clause, params = where(since, model, labelled_only, "?")
        sql = SELECT_ROWS.format(cast="") + clause + " ORDER BY p.ts, p.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return list(self._conn.execute(sql, params))

    def arm_rows(
        self, model: str, since: float, until: float | None, chunk: int = 10_000
    ) -> Generator[list[tuple[str, str, str, str | None]], None, None]:
        params = [model, since] + ([] if until is None else [until])
        cur = self._conn.execute(arm_rows_sql("", "?", until), params)
        try:
            while rows := cur.fetchmany(chunk):
                yield rows
        finally:
            cur.close()

    def count(self) -> int:
        return int(self._conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    def label_mark(self) -> tuple[int, int]:
        cur = self._conn.execute(f"SELECT count(*), coalesce(max(id), 0) FROM {FEEDBACK_TABLE}")
        count, top = cur.fetchone()
        return int(count), int(top)

    def journal_mode(self) -> str:
        return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def checkpoint(self) -> None:
        """Copy the WAL back into the database file without waiting for readers or
        writers (``PASSIVE``): the writer thread runs it for the event loop's connection,
        which does not checkpoint, so no commit on the loop pays for one."""
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

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
