"""The prediction log on PostgreSQL (psycopg 3; imported only when PostgreSQL is chosen).

Schema and migration: see :mod:`flywheel.predlog.stores`. First-time DDL and migrations run
under an advisory lock, so replicas starting together do not race.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from typing import Any

import psycopg

from flywheel.predlog.records import FeedbackRow, Row
from flywheel.predlog.stores import (
    COLS_SQL,
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
    where,
)

__all__ = ["PostgresStore"]

log = logging.getLogger("flywheel.predlog")

_NAMED_INPUTS = """CASE WHEN json_typeof(p.inputs) = 'array' AND i.names IS NOT NULL THEN
                (SELECT json_object_agg(n.name, e.value)
                 FROM json_array_elements_text(i.names) WITH ORDINALITY n(name, k)
                 JOIN json_array_elements(p.inputs) WITH ORDINALITY e(value, k) USING (k))
            ELSE p.inputs END"""
_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id text NOT NULL,
        ts double precision NOT NULL,
        model text NOT NULL,
        version text NOT NULL,
        protocol text NOT NULL,
        inputs json NOT NULL,
        outputs json NOT NULL,
        latency_ms double precision NOT NULL,
        client_id text,
        role text NOT NULL DEFAULT '')""",
    # An older log. A constant default: no table rewrite, old rows read it as ''.
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS client_id text",
    f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS role text NOT NULL DEFAULT ''",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts)",
    f"""CREATE INDEX IF NOT EXISTS {TABLE}_client ON {TABLE} (client_id)
        WHERE client_id IS NOT NULL""",
    f"""CREATE TABLE IF NOT EXISTS {FEEDBACK_TABLE} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id text NOT NULL,
        label json NOT NULL,
        received_at double precision NOT NULL)""",
    f"""CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_request
        ON {FEEDBACK_TABLE} (request_id, received_at)""",
    f"CREATE INDEX IF NOT EXISTS {FEEDBACK_TABLE}_received ON {FEEDBACK_TABLE} (received_at)",
    f"""CREATE TABLE IF NOT EXISTS {INPUTS_TABLE} (
        model text NOT NULL,
        version text NOT NULL,
        names json NOT NULL,
        numeric json,
        classes json,
        PRIMARY KEY (model, version))""",
    f"ALTER TABLE {INPUTS_TABLE} ADD COLUMN IF NOT EXISTS numeric json",
    f"ALTER TABLE {INPUTS_TABLE} ADD COLUMN IF NOT EXISTS classes json",
    # CREATE OR REPLACE may add columns at the end only: client_id, then role, are last.
    f"CREATE OR REPLACE VIEW {NAMED_VIEW} AS "
    + NAMED_VIEW_SELECT.format(inputs=_NAMED_INPUTS, table=TABLE, inputs_table=INPUTS_TABLE),
)
# Names the advisory lock that serialises first-time DDL when several replicas start at once.
_DDL_LOCK = 0x70_72_65_64
_STAGE = "prediction_log_stage"


def _exists(conn: psycopg.Connection[Any], index: str) -> bool:
    found = conn.execute("SELECT to_regclass(%s)", (index,)).fetchone()
    return found is not None and found[0] is not None


def _key(conn: psycopg.Connection[Any]) -> None:
    """``UNIQUE (request_id, role)``, replacing an older log's key unless older rows share
    request ids (then the old key stays; logged); an older key found beside it (recreated
    by an older process) is dropped: it would refuse a shadow's row."""
    if not _exists(conn, KEY_INDEX):
        try:
            with conn.transaction():  # a savepoint: a failure leaves the DDL transaction usable
                conn.execute(f"CREATE UNIQUE INDEX {KEY_INDEX} ON {TABLE} (request_id, role)")
        except psycopg.errors.UniqueViolation:
            # Only UNIQUE (request_id, model, version) allows this.
            log.warning(
                "prediction log: older rows share request ids (one request logged for several "
                "versions); keeping the (request_id, model, version) key"
            )
            return
    for older in OLDER_KEY_INDEXES:
        if _exists(conn, older):
            conn.execute(f"DROP INDEX {older}")


class PostgresStore:
    """PostgreSQL through psycopg 3. A batch is COPY'd into a session temp table and moved
    with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: COPY's speed, plus the
    idempotence COPY alone cannot give (COPY has no ON CONFLICT)."""

    def __init__(self, conninfo: str, *, connect_timeout_s: float = 5.0, name: str = "") -> None:
        self._conn = psycopg.connect(
            conninfo,
            connect_timeout=max(1, round(connect_timeout_s)),
            application_name=f"flywheel-predlog{'-' + name if name else ''}",
        )
        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                for ddl in _DDL:
                    self._conn.execute(ddl)
                _key(self._conn)
            self._conn.execute(
                f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
                    request_id text, ts double precision, model text, version text,
                    protocol text, inputs text, outputs text, latency_ms double precision,
                    client_id text, role text) ON COMMIT DELETE ROWS"""
            )
            self._conn.commit()
        except BaseException:
            self._conn.close()
            raise

    def write_predictions(self, rows: Sequence[Row]) -> int:
        with self._conn.transaction(), self._conn.cursor() as cur:
            with cur.copy(f"COPY {_STAGE} ({COLS_SQL}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            # No conflict target: whichever unique key the table has (an older log may keep
            # its old one) makes a retried batch idempotent.
            cur.execute(
                f"""INSERT INTO {TABLE} ({COLS_SQL})
                    SELECT request_id, ts, model, version, protocol, inputs::json, outputs::json,
                           latency_ms, client_id, {ROLE_VALUE.format("role")} FROM {_STAGE}
                    ON CONFLICT DO NOTHING"""
            )
            return int(cur.rowcount)

    def add_feedback(self, rows: Sequence[FeedbackRow]) -> None:
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {FEEDBACK_TABLE} (request_id, label, received_at) "
                "VALUES (%s, %s::json, %s)",
                rows,
            )

    def register_inputs(
        self, model: str, version: str, names: str, numeric: str | None, classes: str | None
    ) -> str:
        with self._conn.transaction():
            self._conn.execute(
                f"INSERT INTO {INPUTS_TABLE} (model, version, names, numeric, classes) "
                "VALUES (%s, %s, %s::json, %s::json, %s::json) "
                "ON CONFLICT (model, version) DO NOTHING",
                (model, version, names, numeric, classes),
            )
            row = self._conn.execute(
                f"SELECT names::text FROM {INPUTS_TABLE} WHERE model = %s AND version = %s",
                (model, version),
            ).fetchone()
            assert row is not None
            if str(row[0]) == names:  # same inputs: fill what an older server did not store
                self._conn.execute(
                    f"UPDATE {INPUTS_TABLE} SET numeric = coalesce(numeric, %s::json), "
                    "classes = coalesce(classes, %s::json) WHERE model = %s AND version = %s",
                    (numeric, classes, model, version),
                )
        return str(row[0])

    def versions(self, model: str | None = None) -> dict[tuple[str, str], VersionInfo]:
        sql = (
            f"SELECT model, version, names::text, numeric::text, classes::text FROM {INPUTS_TABLE}"
        )
        cur = self._conn.execute(
            *((sql + " WHERE model = %s", (model,)) if model else (sql,))  # type: ignore[arg-type]
        )
        found = {(m, v): VersionInfo(n, num, cls) for m, v, n, num, cls in cur}
        self._conn.commit()
        return found

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        cur = self._conn.execute(
            f"SELECT request_id FROM {TABLE} WHERE request_id = ANY(%s)", (list(ids),)
        )
        found = {r[0] for r in cur}
        self._conn.commit()
        return found

    def client_matches(self, ids: Sequence[str]) -> dict[str, ClientMatch]:
        cur = self._conn.execute(
            f"SELECT client_id, min(request_id), count(DISTINCT request_id) FROM {TABLE} "
            "WHERE client_id = ANY(%s) GROUP BY client_id",
            (list(ids),),
        )
        found = {c: ClientMatch(r, int(n)) for c, r, n in cur}
        self._conn.commit()
        return found

    def read(
        self, since: float | None, limit: int | None, model: str | None, labelled_only: bool
    ) -> list[tuple[Any, ...]]:
        clause, params = where(since, model, labelled_only, "%s")
        sql = SELECT_ROWS.format(cast="::text") + clause + " ORDER BY p.ts, p.id"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        rows = self._conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
        self._conn.commit()
        return rows

    def arm_rows(
        self, model: str, since: float, until: float | None, chunk: int = 10_000
    ) -> Generator[list[tuple[str, str, str, str | None]], None, None]:
        params = [model, since] + ([] if until is None else [until])
        # A server-side cursor: the rows stream, never all in memory at once.
        try:
            with self._conn.cursor(name="flywheel_arm_rows") as cur:
                cur.execute(arm_rows_sql("::text", "%s", until), params)  # type: ignore[arg-type]
                while rows := cur.fetchmany(chunk):
                    yield rows
        finally:
            self._conn.rollback()  # read only: end the cursor's transaction

    def count(self) -> int:
        row = self._conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        self._conn.commit()
        return int(row[0]) if row else 0

    def label_mark(self) -> tuple[int, int]:
        sql = f"SELECT count(*), coalesce(max(id), 0) FROM {FEEDBACK_TABLE}"
        row = self._conn.execute(sql).fetchone()
        self._conn.commit()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def journal_mode(self) -> str:
        return "postgresql"

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints on its own."""

    def close(self) -> None:
        self._conn.close()

    @staticmethod
    def is_data_error(exc: BaseException) -> bool:
        # DataError: bad JSON, NUL byte, out-of-range number; IntegrityError: NOT NULL.
        # Everything else (OperationalError: connection lost, admin shutdown, disk full)
        # is retried with a fresh connection.
        return isinstance(exc, psycopg.DataError | psycopg.IntegrityError)


# One statement, one round trip, its own transaction (autocommit): the group commit of the
# ``commit`` durability, run on the event loop by flywheel.predlog.commit.AsyncGroupCommit.
_INSERT_GROUP = f"""INSERT INTO {TABLE} ({COLS_SQL})
    SELECT request_id, ts, model, version, protocol, inputs, outputs, latency_ms, client_id,
           {ROLE_VALUE.format("role")}
    FROM unnest(%s::text[], %s::float8[], %s::text[], %s::text[], %s::text[],
                %s::text[]::json[], %s::text[]::json[], %s::float8[], %s::text[], %s::text[])
        AS r(request_id, ts, model, version, protocol, inputs, outputs, latency_ms, client_id,
             role)
    ON CONFLICT DO NOTHING"""


class AsyncPostgresWriter:
    """The event loop's connection for group commits (psycopg's asyncio connection): the
    loop keeps serving while a group's single ``INSERT ... SELECT FROM unnest(...)`` and its
    commit travel to the server and back."""

    def __init__(self, conninfo: str, *, connect_timeout_s: float = 5.0) -> None:
        self._conninfo = conninfo
        self._timeout = max(1, round(connect_timeout_s))
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def write(self, rows: Sequence[Row]) -> int:
        """Insert ``rows`` in one transaction; return how many were new."""
        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=self._timeout,
                application_name="flywheel-predlog-committer",
            )
        cur = await self._conn.execute(_INSERT_GROUP, [list(c) for c in zip(*rows, strict=True)])
        return int(cur.rowcount)

    def close(self) -> None:
        """Drop the connection (libpq's own close: callable from any thread, no loop)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pgconn.finish()
