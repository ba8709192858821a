"""DORA figures of a registered model, read from the registry's audit ledger.

The four DORA measures, translated to a model registry (docs/registry.md#dora-figures):

- **deployment**: an entry that moves ``champion`` to a version, ``promote`` or ``approve``
  (with a ``to_version``); the frequency is deployments per day (and per week) over the period;
- **lead time for changes**: a deployment's ``at`` minus the start time of the MLflow run that
  produced the version; where that run cannot be found (deleted), the version's ``register``
  entry stands in and the deployment says so (``lead_time_from``); median and p90;
- **change failure rate**: ``rollback`` entries (self-heal's included) ÷ deployments;
- **time to restore**: a ``rollback``'s ``at`` minus the ``at`` of the deployment it undid (the
  latest promote/approve before it whose ``to_version`` is the version rolled back); median.

Challengers a rollout stopped before they became champion (``rollout_rollback``) are counted
apart (``rollouts_stopped``): they never reached users as the champion, so they are neither
deployments nor failures.

:func:`compute_dora` is pure: the ledger's entries and a ``run_created(version)`` look-up in,
a :class:`DoraReport` out, so it is tested without MLflow and shared by the CLI
(:func:`dora`: MLflow's SQL tables, else MLflow's client) and the server's gauges
(:mod:`flywheel.serving.dora_gauges`: MLflow's SQL tables only). Importing this module
imports neither MLflow nor SQLAlchemy.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flywheel.errors import RegistryError, UsageError

if TYPE_CHECKING:
    from flywheel.registry.audit import AuditEntry
    from flywheel.workspace import Workspace

__all__ = [
    "DEFAULT_SINCE",
    "DEPLOY_ACTIONS",
    "Deployment",
    "DoraReport",
    "Restore",
    "RunCreated",
    "compute_dora",
    "dora",
    "format_duration",
    "mlflow_run_created",
    "parse_since",
    "workspace_run_created",
]

DEPLOY_ACTIONS = ("promote", "approve")
ROLLBACK = "rollback"
ROLLOUT_STOPPED = "rollout_rollback"
SELF_HEAL = "self_heal"
DEFAULT_SINCE = "30d"

RunCreated = Callable[[str], datetime | None]
"""``run_created(version)``: when the MLflow run that produced ``version`` started (None:
not found)."""

_RELATIVE = re.compile(r"^(\d+)([dh])$")
_UNIT = {"d": timedelta(days=1), "h": timedelta(hours=1)}


@dataclass(frozen=True)
class Deployment:
    """A promote/approve entry in the period, with its lead time."""

    id: int
    at: str
    action: str  # "promote" | "approve"
    version: str
    from_version: str | None
    lead_time_s: float | None
    lead_time_from: str | None  # "run", "registration", or None: neither was found


@dataclass(frozen=True)
class Restore:
    """A rollback entry in the period and the deployment it undid."""

    id: int
    at: str
    from_version: str | None  # the version rolled back
    to_version: str | None
    deployment_id: int | None  # the promote/approve that had made it champion
    deployed_at: str | None
    restore_s: float | None


@dataclass(frozen=True)
class DoraReport:
    """The figures of one model over ``[since, until]``."""

    model: str | None
    since: datetime
    until: datetime
    deployments: list[Deployment] = field(default_factory=list)
    restores: list[Restore] = field(default_factory=list)
    rollouts_stopped: int = 0
    self_heals: int = 0

    @property
    def period_days(self) -> float:
        return (self.until - self.since).total_seconds() / 86400

    @property
    def deployments_per_day(self) -> float:
        days = self.period_days
        return len(self.deployments) / days if days > 0 else 0.0

    @property
    def lead_times(self) -> list[float]:
        return [d.lead_time_s for d in self.deployments if d.lead_time_s is not None]

    @property
    def lead_time_median_s(self) -> float | None:
        return _median(self.lead_times)

    @property
    def lead_time_p90_s(self) -> float | None:
        return _p90(self.lead_times)

    @property
    def change_failure_rate(self) -> float | None:
        """Rollbacks ÷ deployments in the period (None without deployments)."""
        return len(self.restores) / len(self.deployments) if self.deployments else None

    @property
    def time_to_restore_median_s(self) -> float | None:
        return _median([r.restore_s for r in self.restores if r.restore_s is not None])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "period_days": self.period_days,
            "deployments": {
                "count": len(self.deployments),
                "per_day": self.deployments_per_day,
                "per_week": self.deployments_per_day * 7,
                "list": [asdict(d) for d in self.deployments],
            },
            "lead_time_seconds": {
                "median": self.lead_time_median_s,
                "p90": self.lead_time_p90_s,
                "count": len(self.lead_times),
            },
            "change_failure_rate": self.change_failure_rate,
            "rollbacks": {
                "count": len(self.restores),
                "list": [asdict(r) for r in self.restores],
            },
            "time_to_restore_seconds": {"median": self.time_to_restore_median_s},
            "rollouts_stopped": self.rollouts_stopped,
            "self_heals": self.self_heals,
        }


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _p90(values: list[float]) -> float | None:
    """The 90th percentile, linearly interpolated between order statistics (numpy's default)."""
    if len(values) < 2:
        return float(values[0]) if values else None
    return float(statistics.quantiles(values, n=10, method="inclusive")[-1])


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _when(at: str) -> datetime:
    return _aware(datetime.fromisoformat(at))


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The period's start: ``Nd`` or ``Nh`` before ``now``, or an ISO date / date-time (UTC
    unless it names a zone). UsageError for anything else or a start not before ``now``."""
    now = now or datetime.now(UTC)
    value = text.strip()
    if m := _RELATIVE.match(value):
        start = now - int(m.group(1)) * _UNIT[m.group(2)]
    else:
        try:
            start = _when(value) if "T" in value or " " in value else _day(value)
        except ValueError as exc:
            raise UsageError(
                f"--since must be a number of days or hours (30d, 12h) or an ISO date "
                f"(2025-01-31), got {text!r}.",
                option="--since",
                value=text,
            ) from exc
    if start >= now:
        raise UsageError(
            f"--since must be before now ({now.isoformat(timespec='seconds')}), got {text!r} "
            f"({start.isoformat(timespec='seconds')}). Pass a past date or a positive 30d / 12h.",
            option="--since",
            value=text,
        )
    return start


def _day(value: str) -> datetime:
    return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)


def _of_model(entries: Sequence[AuditEntry], model: str | None) -> list[AuditEntry]:
    if model is not None:
        return [e for e in entries if e.model == model]
    models = sorted({e.model for e in entries})
    if len(models) > 1:
        raise RegistryError(
            f"compute_dora takes the entries of one model, got entries of {models}. Pass "
            "model= or AuditLog.entries(model).",
            models=models,
        )
    return list(entries)


def compute_dora(
    entries: Sequence[AuditEntry],
    run_created: RunCreated,
    *,
    since: datetime,
    until: datetime | None = None,
    model: str | None = None,
) -> DoraReport:
    """The DORA figures of ``model`` (default: the one model ``entries`` are of) over
    ``[since, until]`` (``until`` default now). ``entries``: the audit ledger in order; the
    whole of it, not only the period, so a rollback finds a deployment made before the period.
    ``run_created`` is asked once per deployed version in the period."""
    until = _aware(until or datetime.now(UTC))
    since = _aware(since)
    ledger = _of_model(entries, model)
    if model is None and ledger:
        model = ledger[0].model
    created: dict[str, datetime | None] = {}

    def started(version: str) -> datetime | None:
        if version not in created:
            created[version] = run_created(version)
        return created[version]

    deployments: list[Deployment] = []
    restores: list[Restore] = []
    counts = {ROLLOUT_STOPPED: 0, SELF_HEAL: 0}
    registered: dict[str, AuditEntry] = {}  # version -> its latest register entry so far
    deployed: dict[str, AuditEntry] = {}  # version -> the latest promote/approve to it so far
    for entry in ledger:
        deploys = entry.action in DEPLOY_ACTIONS and entry.to_version is not None
        if since <= _when(entry.at) <= until:
            if deploys:
                version = str(entry.to_version)
                deployments.append(_deployment(entry, registered.get(version), started))
            elif entry.action == ROLLBACK:
                undone = deployed.get(entry.from_version) if entry.from_version else None
                restores.append(_restore(entry, undone))
            elif entry.action in counts:
                counts[entry.action] += 1
        if entry.action == "register" and entry.to_version is not None:
            registered[entry.to_version] = entry
        elif deploys:
            deployed[str(entry.to_version)] = entry
    return DoraReport(
        model=model,
        since=since,
        until=until,
        deployments=deployments,
        restores=restores,
        rollouts_stopped=counts[ROLLOUT_STOPPED],
        self_heals=counts[SELF_HEAL],
    )


def _deployment(
    entry: AuditEntry,
    registration: AuditEntry | None,
    started: Callable[[str], datetime | None],
) -> Deployment:
    version = str(entry.to_version)
    origin, source = started(version), "run"
    if origin is None and registration is not None:
        origin, source = _when(registration.at), "registration"
    origin = None if origin is None else _aware(origin)
    return Deployment(
        id=entry.id,
        at=entry.at,
        action=entry.action,
        version=version,
        from_version=entry.from_version,
        lead_time_s=None if origin is None else (_when(entry.at) - origin).total_seconds(),
        lead_time_from=None if origin is None else source,
    )


def _restore(entry: AuditEntry, undone: AuditEntry | None) -> Restore:
    return Restore(
        id=entry.id,
        at=entry.at,
        from_version=entry.from_version,
        to_version=entry.to_version,
        deployment_id=None if undone is None else undone.id,
        deployed_at=None if undone is None else undone.at,
        restore_s=None if undone is None else (_when(entry.at) - _when(undone.at)).total_seconds(),
    )


def mlflow_run_created(ws: Workspace, name: str) -> RunCreated:
    """``run_created`` through MLflow's client: the start time of the run that produced
    version ``v`` of ``name``; None when the version or its run no longer exists."""
    from mlflow.exceptions import MlflowException

    from flywheel.registry._client import is_missing, mlflow_errors

    def created(version: str) -> datetime | None:
        with mlflow_errors(f"read the run of {name} v{version}", ws, name):
            try:
                run_id = ws.client.get_model_version(name, version).run_id
                start = ws.client.get_run(run_id).info.start_time if run_id else None
            except MlflowException as exc:
                if is_missing(exc):
                    return None
                raise
        return None if start is None else datetime.fromtimestamp(start / 1000, UTC)

    return created


def workspace_run_created(ws: Workspace, name: str) -> RunCreated:
    """``run_created`` read from MLflow's SQL tables where ``tracking.uri`` is a database
    (no MLflow import: the command takes ~1 s instead of ~5 s), else, or when they do not
    answer (a run deleted, a schema this code does not know), through MLflow's client."""
    from flywheel.registry.sqlstore import SqlRegistry

    sql = SqlRegistry(ws.tracking_uri, ws.settings.home)
    client: list[RunCreated] = []  # made on first need

    def created(version: str) -> datetime | None:
        started = sql.run_started(name, version)
        if started is not None:
            return datetime.fromtimestamp(started, UTC)
        if not client:
            client.append(mlflow_run_created(ws, name))
        return client[0](version)

    return created


def dora(
    ws: Workspace, since: str | datetime = DEFAULT_SINCE, *, now: datetime | None = None
) -> DoraReport:
    """The DORA figures of ``registry.model_name`` since ``since`` (``30d``, ``12h``, an ISO
    date, or a datetime); runs looked up only for the period's deployed versions
    (:func:`workspace_run_created`)."""
    until = now or datetime.now(UTC)
    start = since if isinstance(since, datetime) else parse_since(since, until)
    name = ws.settings.registry.model_name
    entries = ws.audit.entries(name)
    return compute_dora(
        entries, workspace_run_created(ws, name), since=start, until=until, model=name
    )


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``12.5 min``, ``3.2 h``, ``2.1 d``; ``-`` for None (for tables)."""
    if seconds is None:
        return "-"
    size = abs(seconds)
    if size < 60:
        return f"{seconds:.0f} s"
    if size < 3600:
        return f"{seconds / 60:.1f} min"
    if size < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
