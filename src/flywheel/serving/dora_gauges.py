"""DORA figures of every model in the registry's audit ledger, on the server's ``/metrics``.

:class:`DoraGauges` reads the ledger (``registry.audit_url``, read-only, with SQLAlchemy) and
computes :func:`flywheel.registry.dora.compute_dora` per model over the last ``period``
(default 30 days), at most once per ``ttl_s`` (default 30 s), so scrapes stay cheap. It yields,
labelled ``model``:

- ``flywheel_dora_deployments_total``: a counter of deployments (promote/approve entries that
  moved ``champion``) in the whole ledger; append-only, so it only grows
  (``increase(...[7d])`` gives any window);
- ``flywheel_dora_deployment_frequency_per_day``: deployments per day over the period;
- ``flywheel_dora_lead_time_seconds``: the median lead time of the period's deployments;
- ``flywheel_dora_change_failure_rate``: rollbacks ÷ deployments over the period;
- ``flywheel_dora_time_to_restore_seconds``: the median time to restore over the period.

A figure without data (no deployment, no rollback in the period) has no sample. Lead times
start at the MLflow run's start time, read from MLflow's SQL tables directly
(:meth:`flywheel.registry.sqlstore.SqlRegistry.run_started`: this module imports no MLflow);
with a tracking server over HTTP, or a run that is gone, the version's ``register`` entry
stands in. A missing or unreadable ledger gives no samples, never a failed scrape. Nothing
is written: a SQLite ledger that does not exist yet is not created.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.pool import NullPool

from flywheel.config import mask_url, sqlalchemy_url
from flywheel.registry.audit import TABLE, AuditEntry
from flywheel.registry.dora import DEPLOY_ACTIONS, DoraReport, RunCreated, compute_dora
from flywheel.registry.sqlstore import SqlRegistry

if TYPE_CHECKING:
    from flywheel.config import Settings

__all__ = ["DoraGauges"]

log = logging.getLogger("flywheel.serving")

MAX_MODELS = 1000
PERIOD = timedelta(days=30)
TTL_S = 30.0
_COLUMNS = "id, at, who, action, model, from_version, to_version, reason, prev_hash, hash"

_COUNTER_DOC = "Deployments (promote/approve entries that moved champion) in the audit ledger."
_GAUGES = (
    ("deployment_frequency_per_day", "Deployments (champion moves) per day over the period."),
    ("lead_time_seconds", "Median lead time (run start to deployment) over the period."),
    ("change_failure_rate", "Rollbacks / deployments over the period."),
    ("time_to_restore_seconds", "Median time from a deployment to its rollback, the period."),
)


@dataclass(frozen=True)
class _Figures:
    report: DoraReport
    deployments_ever: int

    def gauges(self) -> dict[str, float | None]:
        r = self.report
        return {
            "deployment_frequency_per_day": r.deployments_per_day,
            "lead_time_seconds": r.lead_time_median_s,
            "change_failure_rate": r.change_failure_rate,
            "time_to_restore_seconds": r.time_to_restore_median_s,
        }


def _engine(url: str) -> sa.Engine | None:
    """A read-only engine on the ledger; None for a SQLite file that does not exist (yet)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:" or not Path(path).is_file():
            return None
        ro = f"sqlite:///file:{quote(path, safe='/')}?mode=ro&uri=true"
        return sa.create_engine(ro, poolclass=NullPool)
    return sa.create_engine(sqlalchemy_url(url), poolclass=NullPool)


class DoraGauges(Collector):
    """A custom collector over the audit ledger (see the module docstring)."""

    def __init__(
        self,
        audit_url: str | None,
        tracking_uri: str | None,
        *,
        period: timedelta = PERIOD,
        ttl_s: float = TTL_S,
    ) -> None:
        self.audit_url = audit_url
        self.period = period
        self.ttl_s = ttl_s
        # home is only used by SqlRegistry.local_copy, which this never calls
        self._sql = SqlRegistry(tracking_uri or "", Path("."))
        self._started: dict[tuple[str, str], datetime] = {}  # run start times never change
        self._lock = threading.Lock()
        self._at: float | None = None  # time.monotonic() of the last refresh
        self._figures: dict[str, _Figures] = {}
        self._failing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> DoraGauges:
        return cls(settings.registry.audit_url, settings.tracking.uri)

    # ------------------------------------------------------------------ reading
    def figures(self) -> dict[str, _Figures]:
        """``{model: figures}``, recomputed when older than ``ttl_s``."""
        with self._lock:
            if self._at is None or time.monotonic() - self._at >= self.ttl_s:
                self._figures = self._refresh()
                self._at = time.monotonic()
            return self._figures

    def _refresh(self) -> dict[str, _Figures]:
        try:
            entries = self._entries()
            figures = self._compute(entries)
        except Exception as exc:  # a scrape must never fail because the ledger is unreadable
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(
                level,
                "DORA gauges: the audit ledger at %s is unreadable (%s: %s)",
                mask_url(self.audit_url or ""),
                type(exc).__name__,
                exc,
            )
            self._failing = True
            return {}
        self._failing = False
        return figures

    def _entries(self) -> list[AuditEntry]:
        engine = _engine(self.audit_url) if self.audit_url else None
        if engine is None:
            return []
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text(f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY id"))
                return [AuditEntry(**dict(row)) for row in rows.mappings()]
        finally:
            engine.dispose()

    def _compute(self, entries: list[AuditEntry]) -> dict[str, _Figures]:
        until = datetime.now(UTC)
        by_model: dict[str, list[AuditEntry]] = {}
        for entry in entries:
            by_model.setdefault(entry.model, []).append(entry)
        out: dict[str, _Figures] = {}
        for model in sorted(by_model)[:MAX_MODELS]:
            ledger = by_model[model]
            report = compute_dora(
                ledger, self._run_created(model), since=until - self.period, until=until
            )
            ever = sum(1 for e in ledger if e.action in DEPLOY_ACTIONS and e.to_version)
            out[model] = _Figures(report, ever)
        return out

    def _run_created(self, model: str) -> RunCreated:
        def created(version: str) -> datetime | None:
            key = (model, version)
            if key not in self._started:
                started = self._sql.run_started(model, version)
                if started is None:
                    return None
                self._started[key] = datetime.fromtimestamp(started, UTC)
            return self._started[key]

        return created

    # ------------------------------------------------------------------ scrape
    def describe(self) -> Iterator[Metric]:
        """The families without reading the ledger (the registry asks when registering)."""
        yield CounterMetricFamily("flywheel_dora_deployments", _COUNTER_DOC, labels=("model",))
        for key, doc in _GAUGES:
            yield GaugeMetricFamily(f"flywheel_dora_{key}", doc, labels=("model",))

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        if not figures:
            return
        total = CounterMetricFamily("flywheel_dora_deployments", _COUNTER_DOC, labels=("model",))
        for model, f in figures.items():
            total.add_metric((model,), float(f.deployments_ever))
        yield total
        for key, doc in _GAUGES:
            family = GaugeMetricFamily(f"flywheel_dora_{key}", doc, labels=("model",))
            for model, f in figures.items():
                value = f.gauges()[key]
                if value is not None:
                    family.add_metric((model,), value)
            yield family
