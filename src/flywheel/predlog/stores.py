"""The prediction log's database backends behind one small interface.

Each :class:`Store` wraps ONE connection and is used by one thread at a time (the log's
writer thread owns one; feedback and reads share another behind a lock). Stores raise the
driver's own exceptions; the log translates them at its boundary and decides, with
:meth:`Store.is_data_error`, whether a failed batch is retried as a whole (connection, lock,
disk: transient) or record by record (a record the database refuses: deterministic).

Backends: :mod:`flywheel.predlog.sqlite` (stdlib ``sqlite3``, WAL; the embedded default)
and :mod:`flywheel.predlog.postgres` (psycopg 3, imported only when a PostgreSQL URL is
opened). Both are written on the raw drivers rather than SQLAlchemy because the batch write
is the hot loop of the log: multi-row ``INSERT`` on sqlite3 and ``COPY`` on psycopg are the
fastest paths each driver has, and SQLAlchemy Core adds ~2x per-row overhead there.

Schema (both databases; created idempotently on connect, older logs migrated)::

    prediction_log(id, request_id, ts, model, version, protocol, inputs, outputs,
                   latency_ms, client_id, role)
        UNIQUE (request_id, role)         -- the key: one row per request and rollout role
        INDEX (ts)
        INDEX (client_id) WHERE client_id IS NOT NULL
    prediction_feedback(id, request_id, label, received_at)
        INDEX (request_id, received_at), INDEX (received_at)
    prediction_inputs(model, version, names, numeric, classes)   -- PRIMARY KEY (model, version)
    VIEW prediction_log_named             -- prediction_log, inputs always named

``request_id`` is the id the server gave the request; ``client_id`` the id the client sent
(``X-Request-ID``, the v2/gRPC ``id``), kept beside it and never a key, so a client reusing
its ids cannot suppress or hide rows. ``role`` is the version's part in a rollout:
``champion``, ``challenger`` or ``shadow``, and ``''`` (TEXT NOT NULL DEFAULT '') when no
rollout is active; it is stored as ``''`` rather than NULL because NULLs are distinct in a
unique index, and a retried batch of no-rollout rows must still collide. A request a
champion answers and a shadow scores too is two rows with one ``request_id``; labels are
keyed by ``request_id`` alone, so a label reaches every row of its request. Rows carry
``None`` for no role (:data:`~flywheel.predlog.records.Row`); the INSERTs store it as
``''`` in SQL (``coalesce(role, '')``, or, for a SQLite statement of rows that all have
None, the column's default), never in Python per row; reads give ``''`` back as NULL. ``inputs`` is a JSON
object (name -> values) or, for the serving core's rows, a JSON array of columns in the
order of the names registered for the row's (model, version) in ``prediction_inputs``
(with, for the read API, which inputs are numeric and the classifier's classes).

Migration (an older log opened by this code, in the schema transaction: SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's advisory lock, so processes opening it together do not
race): ``client_id``, ``role`` (``''`` for old rows), ``numeric`` and ``classes`` are added
with ``ALTER TABLE ... ADD COLUMN``; the view is recreated with them (on PostgreSQL new
columns go at its end); the key becomes ``UNIQUE (request_id, role)``, replacing the
``UNIQUE (request_id)`` of the logs before roles and the ``UNIQUE (request_id, model,
version)`` of the logs before client ids. When old rows share a request id (one request
logged for several versions, before roles) the new key cannot be built: the old index is
kept, with a warning, which keeps every row and still makes retried batches idempotent.
An older key an older process recreates after the migration is dropped again at the next
open, since it would refuse a shadow's row.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from flywheel.config import mask_url
from flywheel.errors import ConfigError
from flywheel.predlog.records import FeedbackRow, Row

__all__ = [
    "COLUMNS",
    "FEEDBACK_TABLE",
    "INPUTS_TABLE",
    "NAMED_VIEW",
    "TABLE",
    "ClientMatch",
    "Store",
    "VersionInfo",
    "open_store",
    "parse_url",
]

log = logging.getLogger("flywheel.predlog")

TABLE = "prediction_log"
FEEDBACK_TABLE = "prediction_feedback"
INPUTS_TABLE = "prediction_inputs"
NAMED_VIEW = "prediction_log_named"
# The row's columns, in :data:`flywheel.predlog.records.Row` order.
COLUMNS = (
    "request_id",
    "ts",
    "model",
    "version",
    "protocol",
    "inputs",
    "outputs",
    "latency_ms",
    "client_id",
    "role",
)
COLS_SQL = ", ".join(COLUMNS)
KEY_INDEX = f"{TABLE}_request_role"  # UNIQUE (request_id, role)
# Keys of older logs, replaced by KEY_INDEX: UNIQUE (request_id), before roles, and
# UNIQUE (request_id, model, version), before client ids.
OLDER_KEY_INDEXES = (f"{TABLE}_request_id", f"{TABLE}_request")
# The role of a row as stored ('' for none: see the module docstring), from a bound value.
ROLE_VALUE = "coalesce({}, '')"

# Latest label per request: the feedback row with the greatest (received_at, id). A correlated
# subquery (portable, served by the (request_id, received_at) index) rather than a window
# over the whole feedback table.
LATEST_LABEL = f"""
LEFT JOIN {FEEDBACK_TABLE} f ON f.id = (
    SELECT f2.id FROM {FEEDBACK_TABLE} f2 WHERE f2.request_id = p.request_id
    ORDER BY f2.received_at DESC, f2.id DESC LIMIT 1)"""

SELECT_ROWS = f"""
SELECT p.request_id, p.ts, p.model, p.version, p.protocol, p.inputs{{cast}},
       p.outputs{{cast}}, p.latency_ms, f.label{{cast}}, f.received_at, p.client_id,
       NULLIF(p.role, '')
FROM {TABLE} p {LATEST_LABEL}
"""

# Per logged row of a model in a time range: what a rollout's outcomes count (outcomes.py).
ARM_ROWS = f"""
SELECT p.version, p.role, p.outputs{{cast}}, f.label{{cast}}
FROM {TABLE} p {LATEST_LABEL}
WHERE p.model = {{mark}} AND p.ts >= {{mark}}"""

NAMED_VIEW_SELECT = """SELECT p.id, p.request_id, p.ts, p.model, p.version, p.protocol,
            {inputs} AS inputs, p.outputs, p.latency_ms, p.client_id, p.role
        FROM {table} p LEFT JOIN {inputs_table} i
            ON i.model = p.model AND i.version = p.version"""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What the log knows about a served (model, version): its input names in column order,
    which inputs are numeric (None: unknown), and a classifier's classes (None: unknown or
    a regressor). All JSON text as stored."""

    names: str
    numeric: str | None
    classes: str | None


@dataclass(frozen=True, slots=True)
class ClientMatch:
    """The predictions carrying one client id: one of their server ids, and how many."""

    request_id: str
    count: int


class Store(Protocol):
    """One connection to the log's database."""

    def write_predictions(self, rows: Sequence[Row]) -> int:
        """Insert ``rows`` in one transaction; return how many were new (not duplicates)."""
        ...

    def add_feedback(self, rows: Sequence[FeedbackRow]) -> None: ...
    def register_inputs(
        self, model: str, version: str, names: str, numeric: str | None, classes: str | None
    ) -> str:
        """Store the input names (JSON) of (model, version) unless some are stored, filling
        ``numeric``/``classes`` where unknown; return the stored names (JSON text)."""
        ...

    def versions(self, model: str | None = None) -> dict[tuple[str, str], VersionInfo]: ...
    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """The server request ids among ``ids`` that have a row."""
        ...

    def client_matches(self, ids: Sequence[str]) -> dict[str, ClientMatch]:
        """For each of ``ids`` some rows carry as ``client_id``: a server id and the count."""
        ...

    def read(
        self, since: float | None, limit: int | None, model: str | None, labelled_only: bool
    ) -> list[tuple[Any, ...]]: ...
    def arm_rows(
        self, model: str, since: float, until: float | None, chunk: int = 10_000
    ) -> Generator[list[tuple[str, str, str, str | None]], None, None]:
        """The rows of ``model`` logged in ``[since, until)``, in lists of at most ``chunk``:
        ``(version, role as stored, outputs JSON, latest label JSON or None)``."""
        ...

    def count(self) -> int: ...
    def label_mark(self) -> tuple[int, int]:
        """``(count, max id)`` of the feedback table: it changes whenever a label is stored
        (the count too, for ids committed out of order)."""
        ...

    def journal_mode(self) -> str: ...
    def checkpoint(self) -> None:
        """SQLite: copy the WAL back into the database (PASSIVE); PostgreSQL: nothing."""
        ...

    def close(self) -> None: ...
    @staticmethod
    def is_data_error(exc: BaseException) -> bool: ...


def where(
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


def arm_rows_sql(cast: str, mark: str, until: float | None) -> str:
    return ARM_ROWS.format(cast=cast, mark=mark) + (
        f" AND p.ts < {mark}" if until is not None else ""
    )


def chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def parse_url(url: str) -> tuple[str, str]:
    """``(kind, target)``: ("sqlite", path) or ("postgresql", libpq conninfo)."""
    if not isinstance(url, str) or not url:
        raise ConfigError(
            f"The prediction log URL is empty ({url!r}); use sqlite:///path/to/predictions.db "
            "or postgresql://user@host/db.",
            url=repr(url),
        )
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:" or "?" in path:
            raise ConfigError(
                f"The prediction log needs a database file, got {url!r}; use "
                "sqlite:///relative/path.db or sqlite:////absolute/path.db (no :memory:, "
                "no query string).",
                url=url,
            )
        return "sqlite", path
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql", "postgresql://" + url.removeprefix(prefix)
    raise ConfigError(
        f"Unsupported prediction log URL {mask_url(url)!r}; use sqlite:///path/to/predictions.db "
        "(embedded default) or postgresql://user@host:5432/db.",
        url=mask_url(url),
    )


def open_store(
    kind: str,
    target: str,
    *,
    timeout_s: float = 5.0,
    name: str = "",
    small_pages: bool = False,
    checkpoints: bool = True,
) -> Store:
    """A connection to the log's database (schema created or migrated). ``timeout_s``:
    SQLite's busy timeout, PostgreSQL's connect timeout; ``name`` tags the PostgreSQL
    connection (``application_name``); ``small_pages``: a new SQLite file gets 4 KiB pages
    (small, frequent commits) instead of 16 KiB (large batches); ``checkpoints=False``: this
    SQLite connection's commits never checkpoint (another one calls ``checkpoint()``)."""
    if kind == "sqlite":
        from flywheel.predlog.sqlite import PAGE_SIZE, SMALL_PAGE_SIZE, SqliteStore

        page_size = SMALL_PAGE_SIZE if small_pages else PAGE_SIZE
        return SqliteStore(
            target, busy_timeout_s=timeout_s, page_size=page_size, checkpoints=checkpoints
        )
    from flywheel.predlog.postgres import PostgresStore

    return PostgresStore(target, connect_timeout_s=timeout_s, name=name)
