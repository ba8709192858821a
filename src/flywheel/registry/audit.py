"""Append-only, hash-chained audit log of every registry change.

Stored in a SQL database (SQLite by default, PostgreSQL in production) whose table refuses
UPDATE and DELETE (triggers); each entry carries the sha256 of the previous one, so
``verify()`` detects edits made behind flywheel's back. No CLI command edits it.

Written by hand on SQLAlchemy Core because no well-kept library offers a tamper-evident
log on a plain SQL database; the hash chain and the triggers are a few dozen lines.

Appends are serialised so the chain stays linear under concurrent writers: SQLite takes
the write lock up front (``BEGIN IMMEDIATE``), PostgreSQL locks the table in EXCLUSIVE mode
(readers still read). The table, its triggers and the PostgreSQL trigger function are
created idempotently on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from flywheel.config import mask_url, sqlalchemy_url
from flywheel.errors import RegistryError

__all__ = ["ACTIONS", "GENESIS_HASH", "AuditEntry", "AuditLog", "entry_hash", "make_engine"]

log = logging.getLogger("flywheel.registry.audit")

ACTIONS = (
    "register",
    "promote_requested",
    "approve",
    "promote",
    "rollback",
    "monitor",
    # rollouts (flywheel.rollout): each transition with its evidence in ``reason``
    "rollout_start",
    "rollout_step",
    "rollout_pause",
    "rollout_resume",
    "rollout_switch",
    "rollout_abort",
    "rollout_rollback",
    "rollout_promote",
    "self_heal",
    # continuous training (flywheel.pipelines): triggers with their evidence, pipeline runs
    "retrain_triggered",
    "retrain_suppressed",
    "pipeline_started",
    "pipeline_failed",
    "pipeline_finished",
)
GENESIS_HASH = "0" * 64
TABLE = "registry_audit"

_metadata = sa.MetaData()
_table = sa.Table(
    TABLE,
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("from_version", sa.String(40), nullable=True),
    sa.Column("to_version", sa.String(40), nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
)

_REFUSAL = "registry_audit is append-only: UPDATE and DELETE are refused"

_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END""",
]

_PG_TRIGGERS = [
    f"""CREATE OR REPLACE FUNCTION {TABLE}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{_REFUSAL} (%% attempted)', TG_OP; END $$""",
    f"""CREATE OR REPLACE TRIGGER {TABLE}_no_update BEFORE UPDATE OR DELETE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION {TABLE}_refuse()""",
    f"""CREATE OR REPLACE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_refuse()""",
]

# Any constant works; it names the advisory lock that serialises first-time DDL on PostgreSQL.
_PG_DDL_LOCK = 0x66_6C_79_77


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str  # ISO 8601 UTC
    who: str
    action: str  # one of ACTIONS
    model: str
    from_version: str | None
    to_version: str | None
    reason: str
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def entry_hash(fields: dict[str, Any]) -> str:
    """sha256 over the entry's fields (everything but ``hash``) as canonical JSON."""
    keys = ("id", "at", "who", "action", "model", "from_version", "to_version", "reason")
    payload = {k: fields[k] for k in keys} | {"prev_hash": fields["prev_hash"]}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def make_engine(url: str) -> Engine:
    """An engine on the registry's database whose every transaction holds the write lock
    from its start on SQLite (the rollout store shares it)."""
    if not url.startswith("sqlite"):
        return sa.create_engine(sqlalchemy_url(url), pool_pre_ping=True)
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    # pysqlite's own transaction handling defers BEGIN; take it over so every transaction
    # starts with the write lock held (the SQLAlchemy-documented recipe).
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class AuditLog:
    """The audit log at ``url`` (``sqlite:///...`` or ``postgresql://...``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pg = not url.startswith("sqlite")
        try:
            self._engine = make_engine(url)
            self._create()
        except (SQLAlchemyError, OSError) as exc:
            raise self._error("open", exc) from exc

    def _error(self, what: str, exc: BaseException) -> RegistryError:
        return RegistryError(
            f"Cannot {what} the audit log at {mask_url(self.url)!r}: {exc}. "
            "Check registry.audit_url (FLYWHEEL_REGISTRY__AUDIT_URL) and that the database is up.",
            url=mask_url(self.url),
        )

    def _create(self) -> None:
        with self._engine.begin() as conn:
            if self._pg:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_DDL_LOCK})
            _metadata.create_all(conn, checkfirst=True)
            for ddl in _PG_TRIGGERS if self._pg else _SQLITE_TRIGGERS:
                conn.exec_driver_sql(ddl)

    @contextmanager
    def _locked(self) -> Iterator[Connection]:
        """A transaction that holds the table's write lock until it ends."""
        with self._engine.begin() as conn:
            if self._pg:
                conn.exec_driver_sql(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
            yield conn

    def append(
        self,
        *,
        who: str,
        action: str,
        model: str,
        from_version: str | None,
        to_version: str | None,
        reason: str,
    ) -> AuditEntry:
        """Add one entry at the end of the chain and return it."""
        if action not in ACTIONS:
            raise RegistryError(
                f"Unknown audit action {action!r}; use one of {', '.join(ACTIONS)}.", action=action
            )
        try:
            with self._locked() as conn:
                last = conn.execute(
                    sa.select(_table.c.id, _table.c.hash).order_by(_table.c.id.desc()).limit(1)
                ).first()
                fields: dict[str, Any] = {
                    "id": (last.id + 1) if last else 1,
                    "at": datetime.now(UTC).isoformat(timespec="microseconds"),
                    "who": who,
                    "action": action,
                    "model": model,
                    "from_version": from_version,
                    "to_version": to_version,
                    "reason": reason,
                    "prev_hash": last.hash if last else GENESIS_HASH,
                }
                fields["hash"] = entry_hash(fields)
                conn.execute(_table.insert().values(**fields))
        except SQLAlchemyError as exc:
            raise self._error("append to", exc) from exc
        log.info("audit: %s %s %s -> %s by %s", action, model, from_version, to_version, who)
        return AuditEntry(**fields)

    def entries(self, model: str | None = None) -> list[AuditEntry]:
        """Entries in order, optionally only those of one registered model."""
        query = sa.select(_table).order_by(_table.c.id)
        if model is not None:
            query = query.where(_table.c.model == model)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise self._error("read", exc) from exc
        return [AuditEntry(**dict(row)) for row in rows]

    def verify(self) -> list[str]:
        """Problems found in the hash chain (empty when intact)."""
        problems: list[str] = []
        prev_hash, expected_id = GENESIS_HASH, 1
        for entry in self.entries():
            if entry.id != expected_id:
                problems.append(f"entry {entry.id}: expected id {expected_id} (entries missing)")
            if entry.prev_hash != prev_hash:
                problems.append(
                    f"entry {entry.id}: prev_hash does not match the hash of the entry before it "
                    "(an entry was removed or replaced)"
                )
            if entry_hash(asdict(entry)) != entry.hash:
                problems.append(
                    f"entry {entry.id}: hash does not match its contents (edited after writing)"
                )
            prev_hash, expected_id = entry.hash, entry.id + 1
        return problems

    def dispose(self) -> None:
        """Close pooled connections (tests, short-lived CLI calls)."""
        self._engine.dispose()
