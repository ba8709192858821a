"""When to retrain: the triggers, a cooldown and a budget, all on the DATA clock.

``now`` is passed in: the simulation's clock during a replay, ``time.time()`` in production,
so a year can be replayed in minutes. :func:`decide` is pure (settings, signals, the times of
past retrains in, a :class:`TriggerDecision` out); :func:`gather` reads the signals from the
workspace; :func:`check` does both, writes the decision to the audit ledger and keeps the
last check's time in ``<home>/pipelines/triggers.json``.

Triggers (``retrain.*`` turns each on or off):

- ``schedule``: a tick of the cron ``retrain.schedule`` fell in ``(last_check, now]``.
- ``drift``: a window of the champion with an alarm whose importance-weighted share of
  drifted features reaches ``monitoring.drift_share`` (``on_drift``).
- ``prediction_drift``: a window with an alarm and drifted scores (``on_prediction_drift``).
- ``performance``: a window with an alarm and a performance breach as the monitor marks it
  (realised when the label completeness passes ``monitoring.min_label_completeness``, else
  the estimate's whole 95% interval) (``on_performance``); or, whatever the alarm, the
  primary metric worse than ``retrain.min_performance`` (below it; above it for errors:
  rmse, mae, log_loss), realised when the labels suffice, else the estimate's 95%
  interval wholly on the wrong side.
- ``volume``: at least ``retrain.new_labels`` labels received since the last retrain.
- ``manual``: by hand (``check(ws, manual="why")``).

Windows are those that ENDED in ``(last_check, now]``, plus the monitor's label horizon
(its last ``monitoring.label_horizon_windows`` windows), whose alarm may turn on late, when
their labels arrive. Each trigger has an idempotency ``key`` (a window's triggers
``drift:v3:<window>``, a tick ``schedule:<tick>``, ``volume:<now>``, ``manual:<now>``); a
key already in the ledger (fired or suppressed) never counts again, so two checks at the
same ``now`` fire at most once. Dagster's sensor uses :attr:`TriggerDecision.run_key`.

Holding back: no retrain within ``retrain.cooldown`` of the last one; at most
``retrain.budget`` in any trailing ``retrain.budget_period``. A manual trigger bypasses the
cooldown (a person asked) but counts toward the budget and is refused, with the reason and
the time the budget frees up, once it is spent. Every retrain (``retrain_triggered``) and
every trigger held back (``retrain_suppressed``) goes to the ledger: a first line in words,
then a JSON line with the evidence and ``"at"`` (data-clock epoch seconds, and ``at_iso``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import MonitoringSettings, RetrainSettings
from flywheel.errors import ConfigError, DataError

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = [
    "KINDS",
    "Signals",
    "Trigger",
    "TriggerDecision",
    "admit",
    "check",
    "decide",
    "gather",
    "history",
    "iso",
    "labelled_since",
    "owed",
    "state_path",
]

# in the order a decision lists them (the first names the retrain)
KINDS = ("manual", "drift", "prediction_drift", "performance", "volume", "schedule")
_ERROR_METRICS = ("rmse", "mae", "log_loss")


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC, to the second: ``2026-03-01T00:00:00Z``."""
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Trigger:
    kind: str  # one of KINDS
    at: float  # the data clock when it was seen
    reason: str
    evidence: dict[str, Any]
    key: str  # idempotency key: the same event gives the same key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"at_iso": iso(self.at)}


@dataclass
class Signals:
    """What a check sees at ``at`` (see the module docstring)."""

    at: float
    windows: list[dict[str, Any]]  # the champion's monitor windows (WindowResult.to_dict)
    labelled: int  # labels received since the last retrain (0: not counted)
    manual: str | None = None  # a reason: a retrain asked for by hand
    last_check: float | None = None
    seen: set[str] = field(default_factory=set)  # trigger keys already decided on
    version: str | None = None  # the champion's version


@dataclass
class TriggerDecision:
    at: float
    fire: bool  # retrain now
    triggers: list[Trigger]  # what fired (held back too, when suppressed)
    suppressed: str | None  # why triggers did not lead to a retrain
    evidence: dict[str, Any]
    # a trigger that fired before but whose run never started (see :func:`owed`), read by
    # :func:`check` with the rest of the ledger; None when there is none (or from decide)
    owed: Trigger | None = None

    @property
    def run_key(self) -> str | None:
        """A key unique to this retrain (an orchestrator's run key); None: no retrain."""
        return self.triggers[0].key if self.fire and self.triggers else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "at_iso": iso(self.at),
            "fire": self.fire,
            "suppressed": self.suppressed,
            "run_key": self.run_key,
            "triggers": [t.to_dict() for t in self.triggers],
            "evidence": self.evidence,
            "owed": None if self.owed is None else self.owed.key,
        }


# --------------------------------------------------------------------------- pure


def _duration(value: str, key: str) -> float:
    """A duration setting (``14d``, ``12h``, ``0d``) in seconds; ConfigError naming ``key``."""
    from flywheel.monitoring.sources import parse_every

    if re.fullmatch(r"0+[smhdw]", value.strip()):
        return 0.0
    try:
        return parse_every(value)
    except DataError as exc:
        raise ConfigError(
            f"{key} {value!r} is not a duration: use a number and s, m, h, d or w (e.g. 14d).",
            key=key,
            value=value,
        ) from exc


def decide(
    retrain: RetrainSettings,
    signals: Signals,
    history: Iterable[float],
    monitoring: MonitoringSettings | None = None,
    extra: Iterable[Trigger] = (),
) -> TriggerDecision:
    """Which triggers fire at ``signals.at``, and whether the cooldown or the budget holds
    them (``history``: the data-clock times of past retrains). ``monitoring`` gives the
    drift share and label completeness the monitor used (default: its defaults); ``extra``:
    triggers seen elsewhere (an orchestrator's own schedule tick), judged the same way."""
    monitoring = monitoring or MonitoringSettings()
    at = signals.at
    found = [*_found(retrain, signals, monitoring), *extra]
    found = [t for t in found if t.key not in signals.seen]
    found.sort(key=lambda t: KINDS.index(t.kind))
    past = sorted(h for h in history if h <= at)
    period = _duration(retrain.budget_period, "retrain.budget_period")
    evidence: dict[str, Any] = {
        "at": at,
        "at_iso": iso(at),
        "last_check": signals.last_check,
        "version": signals.version,
        "windows": len(signals.windows),
        "labelled": signals.labelled if retrain.new_labels is not None else None,
        "last_retrain": iso(past[-1]) if past else None,
        "retrains_in_period": [iso(h) for h in past if h > at - period],
        "cooldown": retrain.cooldown,
        "budget": f"{retrain.budget} per {retrain.budget_period}",
    }
    if not found:
        return TriggerDecision(at, False, [], None, evidence)
    held = _held(retrain, at, past, manual=found[0].kind == "manual")
    return TriggerDecision(at, held is None, found, held, evidence)


def _held(retrain: RetrainSettings, at: float, past: list[float], *, manual: bool) -> str | None:
    """Why no retrain now (cooldown, then budget), or None."""
    cooldown = _duration(retrain.cooldown, "retrain.cooldown")
    period = _duration(retrain.budget_period, "retrain.budget_period")
    if past and not manual and at - past[-1] < cooldown:
        return (
            f"cooldown: the last retrain was {_ago(at - past[-1])} ago ({iso(past[-1])}); "
            f"none within retrain.cooldown {retrain.cooldown}, so not before "
            f"{iso(past[-1] + cooldown)}"
        )
    recent = [h for h in past if h > at - period]
    if len(recent) >= retrain.budget:
        free = recent[len(recent) - retrain.budget] + period
        text = (
            f"budget: {len(recent)} retrain(s) in the last {retrain.budget_period} "
            f"(retrain.budget {retrain.budget} per retrain.budget_period "
            f"{retrain.budget_period}); the next is allowed from {iso(free)}"
        )
        return f"manual retrain refused: {text}" if manual else text
    return None


def _ago(s: float) -> str:
    return f"{s / 86400:.1f}d" if s >= 86400 else f"{s / 3600:.1f}h"


def _found(
    retrain: RetrainSettings, signals: Signals, monitoring: MonitoringSettings
) -> list[Trigger]:
    at = signals.at
    out: list[Trigger] = []
    if signals.manual is not None:
        reason = f"by hand: {signals.manual}" if signals.manual.strip() else "by hand"
        out.append(Trigger("manual", at, reason, {"reason": signals.manual}, f"manual:{iso(at)}"))
    for window in signals.windows:
        out += _window_triggers(retrain, window, monitoring, at)
    if retrain.new_labels is not None and signals.labelled >= retrain.new_labels:
        reason = (
            f"{signals.labelled} labels since the last retrain >= "
            f"retrain.new_labels {retrain.new_labels}"
        )
        counts = {"labelled": signals.labelled, "new_labels": retrain.new_labels}
        out.append(Trigger("volume", at, reason, counts, f"volume:{iso(at)}"))
    if retrain.schedule:  # parsed on every check, so a bad one fails the first
        from flywheel.pipelines.cron import parse

        cron = parse(retrain.schedule)
        last = signals.last_check
        tick = cron.last_tick(last, at) if last is not None else None
        if tick is not None:
            reason = f"schedule {retrain.schedule!r} ticked at {iso(tick)}"
            ticked = {"schedule": retrain.schedule, "tick": tick, "tick_iso": iso(tick)}
            out.append(Trigger("schedule", at, reason, ticked, f"schedule:{iso(tick)}"))
    return out


def _window_triggers(
    retrain: RetrainSettings, w: dict[str, Any], monitoring: MonitoringSettings, at: float
) -> list[Trigger]:
    end = w.get("end")
    if w.get("status") != "ok" or end is None or end > at:
        return []
    name, version, alarm = w.get("window", "?"), w.get("version"), bool(w.get("alarm"))
    perf = w.get("performance") or {}
    base = {"window": name, "version": version, "start": w.get("start"), "end": end}
    base |= {"alarm": alarm, "monitor_reason": w.get("reason", "")}
    found: list[tuple[str, str, dict[str, Any]]] = []
    share = float(w.get("drift_share") or 0.0)
    if alarm and retrain.on_drift and share >= monitoring.drift_share:
        feats = w.get("drifted_features") or []
        found.append(
            (
                "drift",
                f"drift alarm in window {name}: {', '.join(feats) or 'features'} "
                f"(importance-weighted share {share:.2f} >= {monitoring.drift_share:g})",
                {"drift_share": share, "drifted_features": feats},
            )
        )
    if alarm and retrain.on_prediction_drift and w.get("prediction_drift"):
        found.append(("prediction_drift", f"prediction drift alarm in window {name}", {}))
    reasons = []
    if alarm and retrain.on_performance and perf.get("breach"):
        reasons.append(f"performance alarm in window {name}: {perf.get('reason', '')}")
    below = _below_min(retrain.min_performance, perf, monitoring)
    if below:
        reasons.append(f"window {name}: {below}")
    if reasons:
        found.append(("performance", "; ".join(reasons), {"performance": _perf_brief(perf)}))
    return [
        Trigger(kind, at, reason, base | extra, f"{kind}:v{version}:{name}")
        for kind, reason, extra in found
    ]


def _below_min(
    minimum: float | None, perf: dict[str, Any], monitoring: MonitoringSettings
) -> str | None:
    """Why the primary metric is worse than ``minimum``, or None (also when unknown)."""
    primary = perf.get("primary_metric")
    if minimum is None or not primary:
        return None
    lower_better = primary.endswith(_ERROR_METRICS)
    realised = perf.get("realised") or {}
    completeness = float(perf.get("label_completeness") or 0.0)
    value = realised.get(primary)
    source = "realised"
    if value is None or completeness < monitoring.min_label_completeness:
        interval = ((perf.get("estimated") or {}).get(primary) or {}).get("ci95") or [None, None]
        value = interval[0] if lower_better else interval[1]
        source = "estimated (the 95% interval's best end)"
    if value is None or not math.isfinite(value):
        return None
    if (value > minimum) if lower_better else (value < minimum):
        side = "above" if lower_better else "below"
        return f"{source} {primary} {value:.4g} {side} retrain.min_performance {minimum:g}"
    return None


def _perf_brief(perf: dict[str, Any]) -> dict[str, Any]:
    keep = ("primary_metric", "label_completeness", "realised", "breach", "reason")
    out = {k: perf.get(k) for k in keep}
    est = perf.get("estimated") or {}
    out["estimated"] = {k: v.get("value") for k, v in est.items() if isinstance(v, dict)}
    return out


# --------------------------------------------------------------------------- the workspace


def _ledger(ws: Workspace) -> tuple[list[float], set[str]]:
    """Past retrains' data-clock times, and every trigger key already decided on."""
    times, keys, _ = _read_ledger(ws)
    return times, keys


_Owed = tuple[Trigger, str | None] | None  # a trigger owed, and the champion it was decided on


def _read_ledger(ws: Workspace) -> tuple[list[float], set[str], _Owed]:
    """Past retrains' data-clock times, every trigger key already decided on, and the
    retrain owed (see :func:`owed`). A retrain is a fired trigger whose pipeline run exists
    (not one skipped for want of new data: it spends no cooldown or budget) or is still
    owed, and a run started by hand (``flywheel retrain``, whose trigger no check fired); a
    fired trigger overtaken by a later run without one of its own is not."""
    from flywheel.pipelines.runner import all_runs

    name = ws.settings.registry.model_name
    runs = {r.key: r for r in all_runs(ws.settings.home) if r.model == name and r.key}
    newest_run = max((r.at for r in runs.values()), default=None)
    times: list[float] = []
    keys: set[str] = set()
    owed: _Owed = None
    for entry in ws.audit.entries(model=name):
        if entry.action not in ("retrain_triggered", "retrain_suppressed"):
            continue
        detail = _detail(entry.reason)
        fired = [t for t in detail.get("triggers", []) if isinstance(t, dict)]
        keys.update(t["key"] for t in fired)
        at = detail.get("at")
        if entry.action != "retrain_triggered" or not fired or not isinstance(at, int | float):
            continue
        run = runs.get(str(fired[0].get("key")))
        if run is not None:
            if run.status != "skipped":
                times.append(float(at))
        elif newest_run is None or newest_run < float(at):  # no run yet: owed
            times.append(float(at))
            first = fired[0]
            trigger = Trigger(first.get("kind", "manual"), float(at), str(first.get("reason", "")),
                              dict(first.get("evidence") or {}), str(first["key"]))  # fmt: skip
            owed = (trigger, entry.from_version)  # and the champion it was decided on
    times += [r.at for key, r in runs.items() if key not in keys and r.status != "skipped"]
    return sorted(times), keys, owed


def owed(ws: Workspace) -> Trigger | None:
    """The newest trigger that fired (``retrain_triggered``) but has no pipeline run, and
    no run was started after it: a `flywheel triggers check` by hand, or a worker killed
    between its decision and its run. The worker and the orchestrator's sensor run it, so
    a recorded decision is never lost; it counts toward the cooldown and budget meanwhile.
    One decided on another champion than today's is stale: not owed (its evidence was of
    a version no longer served)."""
    return _still_owed(ws, _read_ledger(ws)[2])


def _still_owed(ws: Workspace, found: _Owed) -> Trigger | None:
    if found is None:
        return None
    trigger, decided_on = found
    return trigger if decided_on is None or decided_on == _champion(ws) else None


def _detail(reason: str) -> dict[str, Any]:
    try:
        found = json.loads(reason.rsplit("\n", 1)[-1])
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def history(ws: Workspace) -> list[float]:
    """Data-clock times (unix seconds) of past retrains of the workspace's model, oldest
    first: the ``"at"`` of each ``retrain_triggered`` ledger entry."""
    return _ledger(ws)[0]


def _champion(ws: Workspace) -> str | None:
    from flywheel.registry.sqlstore import SqlRegistry

    name, uri = ws.settings.registry.model_name, ws.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None  # no registry yet, so no champion
    found = SqlRegistry(uri, ws.settings.home).alias_version(name, "champion")
    if found is not None:
        return found
    from flywheel.registry._client import alias_version, mlflow_errors

    with mlflow_errors("find the champion", ws):
        return alias_version(ws.client, name, "champion")


def _windows(
    ws: Workspace, version: str, now: float, last_check: float | None
) -> list[dict[str, Any]]:
    """The champion's windows that ended in ``(last_check, now]`` and those of the label
    horizon (the last ``label_horizon_windows`` ended by ``now``), oldest first."""
    import sqlalchemy as sa

    from flywheel.errors import StoreError
    from flywheel.monitoring.store import MonitorStore

    m = ws.settings.monitoring
    keys: dict[str, Any] = {"m": ws.settings.registry.model_name, "v": version, "now": now}
    mine = 'FROM monitor_windows WHERE model = :m AND version = :v AND "end" <= :now'
    store = MonitorStore(m.url or "")
    try:
        with store.engine.connect() as conn:
            cutoff = conn.execute(
                sa.text(f'SELECT "end" {mine} ORDER BY "end" DESC LIMIT 1 OFFSET :k'),
                keys | {"k": max(m.label_horizon_windows, 1) - 1},
            ).scalar()
            # fewer windows than the horizon: every one ended by now is in it
            recent = ["1 = 1"] if cutoff is None else ['"end" >= :lo']
            recent += ['"end" > :after'] if last_check is not None else []
            rows = conn.execute(
                sa.text(f'SELECT result {mine} AND ({" OR ".join(recent)}) ORDER BY "end", id'),
                keys | {"lo": cutoff, "after": last_check},
            )
            return [json.loads(r.result) for r in rows]
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"The monitor's database failed: {exc}", url=store.url) from exc
    finally:
        store.dispose()


_LABELS_SQL = """SELECT COALESCE(SUM(CASE WHEN {kind}(f.label) = 'array'
        THEN json_array_length(f.label) ELSE 1 END), 0)
    FROM prediction_feedback f
    WHERE f.received_at <= :hi {since}
    AND EXISTS (SELECT 1 FROM prediction_log p
                WHERE p.request_id = f.request_id AND p.model = :m)"""


def labelled_since(ws: Workspace, since: float | None, now: float) -> int:
    """Labels received (the log's feedback time) in ``(since, now]`` for the model's
    predictions; a label list for a request of n rows counts n. 0 when there is no log."""
    import sqlalchemy as sa

    from flywheel.config import sqlalchemy_url
    from flywheel.errors import StoreError

    url = ws.settings.serving.prediction_log_url or ""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return 0
    sqlite = url.startswith("sqlite")
    sql = _LABELS_SQL.format(
        kind="json_type" if sqlite else "json_typeof",
        since="AND f.received_at > :lo" if since is not None else "",
    )
    params = {"hi": now, "m": ws.settings.registry.model_name, "lo": since}
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("prediction_feedback"):
                return 0
            return int(conn.execute(sa.text(sql), params).scalar() or 0)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(
            f"Could not count the labels in the prediction log: {exc}. "
            "Check serving.prediction_log_url.",
        ) from exc
    finally:
        engine.dispose()


def gather(ws: Workspace, *, now: float, last_check: float | None) -> Signals:
    """The signals at ``now``: the champion's windows that ended in ``(last_check, now]``
    and those of the monitor's label horizon, and the labels received since the last
    retrain in the ledger (counted only when ``retrain.new_labels`` is set; else 0)."""
    past, seen = _ledger(ws)
    return _gather(ws, now, last_check, past, seen)


def _gather(
    ws: Workspace, now: float, last_check: float | None, past: list[float], seen: set[str]
) -> Signals:
    earlier = [h for h in past if h <= now]
    counted = ws.settings.retrain.new_labels is not None  # the count reads the whole range
    version = _champion(ws)
    windows = _windows(ws, version, now, last_check) if version is not None else []
    return Signals(
        at=now,
        windows=windows,
        labelled=labelled_since(ws, earlier[-1] if earlier else None, now) if counted else 0,
        last_check=last_check,
        seen=seen,
        version=version,
    )


# --------------------------------------------------------------------------- check


def state_path(ws: Workspace) -> Path:
    """``<home>/pipelines/triggers.json``: the last check's data-clock time per model."""
    return ws.settings.home / "pipelines" / "triggers.json"


def _read_state(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def check(
    ws: Workspace, *, now: float | None = None, manual: str | None = None, record: bool = True
) -> TriggerDecision:
    """Gather the signals at ``now`` (default: the wall clock) and decide. With ``record``,
    the decision goes to the ledger (``retrain_triggered`` or ``retrain_suppressed``; nothing
    when no trigger fired) and ``now`` becomes the last check. A second check at the same
    ``now`` does not fire again."""
    now = time.time() if now is None else float(now)
    name = ws.settings.registry.model_name
    path = state_path(ws)
    state = _read_state(path)
    last_check = (state.get("models", {}).get(name) or {}).get("last_check")
    past, seen, owed_before = _read_ledger(ws)
    signals = replace(_gather(ws, now, last_check, past, seen), manual=manual)
    decision = decide(ws.settings.retrain, signals, past, ws.settings.monitoring)
    if not decision.fire:  # (a decision that does not fire adds no owed trigger)
        decision.owed = _still_owed(ws, owed_before)
    if record:
        if decision.triggers:
            _audit(ws, decision)
        models = state.setdefault("models", {})
        models[name] = {
            "last_check": max(now, last_check) if last_check is not None else now,
            "last_check_iso": iso(now if last_check is None else max(now, last_check)),
        }
        _write_state(path, state)
    return decision


def admit(ws: Workspace, trigger: Trigger, *, record: bool = True) -> TriggerDecision:
    """Judge a trigger found outside :func:`check` (an orchestrator's schedule tick) by the
    same rules: its key decided once, the cooldown and the budget, the decision in the
    ledger. The last check's time is left alone (the sensor's checks own it)."""
    past, seen = _ledger(ws)
    retrain = ws.settings.retrain.model_copy(update={"schedule": None})
    signals = Signals(trigger.at, [], 0, seen=seen, version=_champion(ws))
    decision = decide(retrain, signals, past, ws.settings.monitoring, extra=[trigger])
    if record and decision.triggers:
        _audit(ws, decision)
    return decision


def _audit(ws: Workspace, decision: TriggerDecision) -> None:
    first = "; ".join(t.reason for t in decision.triggers)
    if decision.fire:
        action, line = "retrain_triggered", f"retrain: {first}"
    else:
        action, line = "retrain_suppressed", f"retrain suppressed ({decision.suppressed}): {first}"
    detail = {
        "at": decision.at,
        "at_iso": iso(decision.at),
        "suppressed": decision.suppressed,
        "triggers": [
            {"kind": t.kind, "key": t.key, "reason": t.reason, "evidence": t.evidence}
            for t in decision.triggers
        ],
        "evidence": decision.evidence,
    }
    ws.audit.append(
        who=ws.settings.user,
        action=action,
        model=ws.settings.registry.model_name,
        from_version=decision.evidence.get("version"),
        to_version=None,
        reason=f"{line.replace(chr(10), ' ')[:1000]}\n{json.dumps(detail, default=str)}",
    )
