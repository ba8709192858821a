"""Rollout state in the registry's database (``registry.audit_url``), not in memory.

Two tables, created idempotently on first use:

``rollouts``: one row per rollout; ``active`` is 1 until it ends, and a unique index on
``(model, active_key)`` allows one active rollout per model. Every change is a
compare-and-set on ``revision`` (:meth:`RolloutStore.transition`), so when several replicas
judge the same step only one of them advances, promotes or rolls back.

``rollout_counts``: each replica's cumulative per-arm counters for each step (requests,
errors, rows, latency and score histograms), upserted by the replica; the controller sums
them across replicas, so a decision sees all the traffic, wherever it was served.

``rollout_heals``: one row per promotion of a champion version the server rolled back by
itself (``VERSION#PROMOTION``; the unique key lets exactly one replica do it).

SQLAlchemy Core on SQLite (a 30 s busy timeout, the write lock taken up front) or
PostgreSQL, on the audit log's engine (:func:`flywheel.registry.audit.make_engine`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from flywheel.config import mask_url
from flywheel.errors import RegistryError
from flywheel.registry.audit import make_engine
from flywheel.rollout.counters import ArmCounts

__all__ = ["TERMINAL", "ArmCounts", "RolloutState", "RolloutStore"]


TERMINAL = ("promoted", "rolled_back", "aborted")

_md = sa.MetaData()
_rollouts = sa.Table(
    "rollouts",
    _md,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("active_key", sa.Integer, nullable=True),  # 1 while active, NULL after
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("strategy", sa.String(20), nullable=False),
    sa.Column("champion", sa.String(40), nullable=True),
    sa.Column("challenger", sa.String(40), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("plan", sa.Text, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("step_started_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.UniqueConstraint("model", "active_key", name="rollouts_one_active"),
)
_counts = sa.Table(
    "rollout_counts",
    _md,
    sa.Column("rollout_id", sa.String(32), primary_key=True),
    sa.Column("replica", sa.String(120), primary_key=True),
    sa.Column("arm", sa.String(20), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("counts", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
_heals = sa.Table(
    "rollout_heals",
    _md,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("version", sa.String(40), primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("replica", sa.String(120), nullable=False),
)


@dataclass
class RolloutState:
    """A rollout as stored: its plan (JSON), where it is and why."""

    id: str
    model: str
    status: str  # running | paused | waiting | promoted | rolled_back | aborted
    strategy: str
    champion: str | None
    challenger: str
    step: int
    weight: float  # the challenger's answering share now, percent
    plan: dict[str, Any]
    started_at: float
    step_started_at: float
    updated_at: float
    revision: int
    reason: str
    evidence: dict[str, Any]
    who: str

    @property
    def active(self) -> bool:
        return self.status not in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(r: Any) -> RolloutState:
    m = r._mapping
    return RolloutState(
        id=m["id"],
        model=m["model"],
        status=m["status"],
        strategy=m["strategy"],
        champion=m["champion"],
        challenger=m["challenger"],
        step=int(m["step"]),
        weight=float(m["weight"]),
        plan=json.loads(m["plan"]),
        started_at=float(m["started_at"]),
        step_started_at=float(m["step_started_at"]),
        updated_at=float(m["updated_at"]),
        revision=int(m["revision"]),
        reason=m["reason"],
        evidence=json.loads(m["evidence"]),
        who=m["who"],
    )


class RolloutStore:
    """Rollouts and their counters at ``url`` (the registry's audit database)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = make_engine(url)
        self._created = False

    def _error(self, what: str, exc: BaseException) -> RegistryError:
        return RegistryError(
            f"Cannot {what} in the rollout store {mask_url(self.url)!r}: {exc}. Check "
            "registry.audit_url and that the database is up.",
            url=mask_url(self.url),
        )

    @contextmanager
    def _tx(self, what: str) -> Iterator[Connection]:
        try:
            if not self._created:
                _md.create_all(self._engine, checkfirst=True)
                self._created = True
            with self._engine.begin() as conn:
                yield conn
        except (RegistryError, IntegrityError):
            raise
        except SQLAlchemyError as exc:
            raise self._error(what, exc) from exc

    def dispose(self) -> None:
        self._engine.dispose()

    # ------------------------------------------------------------------ rollouts
    def create(self, state: RolloutState) -> RolloutState:
        """Insert a new active rollout; RegistryError when the model already has one."""
        state.id = state.id or secrets.token_hex(6)
        values = state.to_dict()
        values["plan"] = json.dumps(state.plan, sort_keys=True)
        values["evidence"] = json.dumps(state.evidence, sort_keys=True, default=str)
        values["active_key"] = 1
        try:
            with self._tx("start a rollout") as conn:
                conn.execute(_rollouts.insert().values(**values))
        except IntegrityError as exc:
            current = self.active(state.model)
            raise RegistryError(
                f"{state.model} already has an active rollout"
                + (
                    f" ({current.id}: {current.strategy} of v{current.challenger}, "
                    f"{current.status})"
                    if current
                    else ""
                )
                + ". Abort or promote it first (`flywheel rollout abort --reason ...`).",
                model=state.model,
            ) from exc
        return state

    def get(self, rollout_id: str) -> RolloutState | None:
        with self._tx("read a rollout") as conn:
            row = conn.execute(sa.select(_rollouts).where(_rollouts.c.id == rollout_id)).first()
        return None if row is None else _row(row)

    def active(self, model: str) -> RolloutState | None:
        with self._tx("read the active rollout") as conn:
            row = conn.execute(
                sa.select(_rollouts).where(_rollouts.c.model == model, _rollouts.c.active_key == 1)
            ).first()
        return None if row is None else _row(row)

    def latest(self, model: str) -> RolloutState | None:
        """The active rollout, else the one that ended last."""
        with self._tx("read rollouts") as conn:
            row = conn.execute(
                sa.select(_rollouts)
                .where(_rollouts.c.model == model)
                .order_by(_rollouts.c.active_key.is_(None), _rollouts.c.updated_at.desc())
                .limit(1)
            ).first()
        return None if row is None else _row(row)

    def transition(self, state: RolloutState, **changes: Any) -> RolloutState | None:
        """Apply ``changes`` if nobody changed ``state`` since it was read (compare-and-set on
        its revision); returns the new state, or None when another writer won."""
        now = time.time()
        new = RolloutState(**{**state.to_dict(), **changes})
        new.revision, new.updated_at = state.revision + 1, now
        values: dict[str, Any] = {k: getattr(new, k) for k in changes}
        values.update(revision=new.revision, updated_at=now)
        if "evidence" in values:
            values["evidence"] = json.dumps(new.evidence, sort_keys=True, default=str)
        if "plan" in values:
            values["plan"] = json.dumps(new.plan, sort_keys=True)
        if "status" in values:
            values["active_key"] = None if new.status in TERMINAL else 1
        with self._tx("update a rollout") as conn:
            done = conn.execute(
                _rollouts.update()
                .where(_rollouts.c.id == state.id, _rollouts.c.revision == state.revision)
                .values(**values)
            ).rowcount
        return new if done == 1 else None

    # ------------------------------------------------------------------ counters
    def put_counts(
        self, rollout_id: str, replica: str, step: int, arms: dict[str, ArmCounts]
    ) -> None:
        """Replace this replica's cumulative counters for ``step`` (one row per arm)."""
        now = time.time()
        with self._tx("write rollout counters") as conn:
            for arm, counts in arms.items():
                key = (
                    (_counts.c.rollout_id == rollout_id)
                    & (_counts.c.replica == replica)
                    & (_counts.c.arm == arm)
                    & (_counts.c.step == step)
                )
                blob = json.dumps(counts.to_dict())
                if (
                    conn.execute(
                        _counts.update().where(key).values(counts=blob, updated_at=now)
                    ).rowcount
                    == 0
                ):
                    conn.execute(
                        _counts.insert().values(
                            rollout_id=rollout_id,
                            replica=replica,
                            arm=arm,
                            step=step,
                            counts=blob,
                            updated_at=now,
                        )
                    )

    def counts(self, rollout_id: str, step: int | None = None) -> dict[str, ArmCounts]:
        """Every replica's counters summed per arm (one step, or all steps)."""
        query = sa.select(_counts.c.arm, _counts.c.counts).where(_counts.c.rollout_id == rollout_id)
        if step is not None:
            query = query.where(_counts.c.step == step)
        with self._tx("read rollout counters") as conn:
            rows = conn.execute(query).all()
        out: dict[str, ArmCounts] = {}
        for arm, blob in rows:
            out[arm] = out.get(arm, ArmCounts()).add(ArmCounts.from_dict(json.loads(blob)))
        return out

    def replicas(self, rollout_id: str) -> list[str]:
        """The replicas that wrote counts for the rollout."""
        return sorted(self.replicas_seen(rollout_id))

    def replicas_seen(self, rollout_id: str) -> dict[str, float]:
        """Each replica that wrote counts for the rollout, and when it last did (each does
        every ``poll_s`` while it serves the rollout)."""
        query = (
            sa.select(_counts.c.replica, sa.func.max(_counts.c.updated_at))
            .where(_counts.c.rollout_id == rollout_id)
            .group_by(_counts.c.replica)
        )
        with self._tx("read rollout counters") as conn:
            return {replica: float(at) for replica, at in conn.execute(query).all()}

    # ------------------------------------------------------------------ self-healing
    def claim_heal(self, model: str, version: str, replica: str) -> bool:
        """True for exactly one caller per (model, version): that one rolls it back.
        Self-healing passes ``VERSION#PROMOTION`` (the promotion's ledger id), so each
        promotion of a version is healed at most once."""
        try:
            with self._tx("record a self-heal") as conn:
                conn.execute(
                    _heals.insert().values(
                        model=model, version=version, at=time.time(), replica=replica
                    )
                )
        except IntegrityError:
            return False
        return True
