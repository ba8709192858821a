"""Retrain triggers: the pure decision (each kind, cooldown, budget, manual) and check()
against a real workspace (SQLite audit ledger, monitor store, prediction log, MLflow)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flywheel.config import MonitoringSettings, RetrainSettings, load_settings
from flywheel.errors import ConfigError
from flywheel.pipelines import triggers
from flywheel.pipelines.triggers import Signals, decide, iso
from flywheel.workspace import Workspace

DAY = 86400.0
T0 = datetime(2026, 1, 5, tzinfo=UTC).timestamp()  # a Monday


def perf(
    *,
    realised: float | None = None,
    completeness: float = 1.0,
    estimated: tuple[float, float, float] | None = None,
    breach: bool = False,
) -> dict[str, Any]:
    est = None
    if estimated is not None:
        value, lo, hi = estimated
        est = {"roc_auc": {"value": value, "ci95": [lo, hi]}}
    return {
        "rows": 500,
        "labelled": int(500 * completeness),
        "label_completeness": completeness,
        "realised": {"roc_auc": realised} if realised is not None else None,
        "estimated": est,
        "reference": {"roc_auc": 0.85},
        "primary_metric": "roc_auc",
        "breach": breach,
        "reason": "realised roc_auc 0.70 vs 0.85 on the reference" if breach else "",
    }


def window(
    end: float,
    *,
    alarm: bool = True,
    share: float = 0.0,
    prediction_drift: bool = False,
    performance: dict[str, Any] | None = None,
    status: str = "ok",
    version: str = "1",
) -> dict[str, Any]:
    """A stored window result, as WindowResult.to_dict() writes it."""
    return {
        "window": f"{iso(end - DAY)}/{iso(end)}",
        "rows": 500,
        "model": "churn",
        "version": version,
        "reference": "holdout",
        "start": end - DAY,
        "end": end,
        "status": status,
        "alarm": alarm,
        "verdict": alarm,
        "drift": share >= 0.1 or prediction_drift,
        "prediction_drift": prediction_drift,
        "drift_share": share,
        "reason": "drift in tenure" if share else "no drift",
        "drifted_features": ["tenure"] if share else [],
        "features": [],
        "performance": performance,
    }


def signals(at: float, *windows: dict[str, Any], **kw: Any) -> Signals:
    kw.setdefault("last_check", at - DAY)
    return Signals(at=at, windows=list(windows), labelled=kw.pop("labelled", 0), **kw)


def kinds(decision: triggers.TriggerDecision) -> list[str]:
    return [t.kind for t in decision.triggers]


# --------------------------------------------------------------------------- each kind


def test_a_drift_alarm_fires_with_its_evidence_and_key() -> None:
    at = T0 + 10 * DAY
    d = decide(RetrainSettings(), signals(at, window(at, share=0.4)), [])
    assert d.fire and d.suppressed is None and kinds(d) == ["drift"]
    t = d.triggers[0]
    assert t.key == f"drift:v1:{iso(at - DAY)}/{iso(at)}"
    assert t.evidence["drifted_features"] == ["tenure"] and t.evidence["drift_share"] == 0.4
    assert "importance-weighted share 0.40 >= 0.1" in t.reason
    assert d.run_key == t.key
    assert json.loads(json.dumps(d.to_dict()))["triggers"][0]["kind"] == "drift"


def test_drift_needs_the_alarm_the_setting_and_the_weighted_share() -> None:
    at = T0 + 10 * DAY
    not_persistent = window(at, alarm=False, share=0.4)
    assert not decide(RetrainSettings(), signals(at, not_persistent), []).triggers
    off = RetrainSettings(on_drift=False)
    assert not decide(off, signals(at, window(at, share=0.4)), []).triggers
    light = window(at, share=0.05)  # below monitoring.drift_share
    assert not decide(RetrainSettings(), signals(at, light), []).triggers
    strict = MonitoringSettings(drift_share=0.5)
    assert not decide(RetrainSettings(), signals(at, window(at, share=0.4)), [], strict).fire
    no_verdict = window(at, share=0.4, status="insufficient data")
    assert not decide(RetrainSettings(), signals(at, no_verdict), []).triggers
    later = window(at + DAY, share=0.4)  # ends after the check's clock: not yet
    assert not decide(RetrainSettings(), signals(at, later), []).triggers


def test_prediction_drift_alone_is_its_own_kind() -> None:
    at = T0 + 10 * DAY
    w = window(at, prediction_drift=True)
    assert kinds(decide(RetrainSettings(), signals(at, w), [])) == ["prediction_drift"]
    off = RetrainSettings(on_prediction_drift=False)
    assert not decide(off, signals(at, w), []).triggers


def test_a_performance_breach_fires_and_min_performance_reads_realised_or_estimate() -> None:
    at = T0 + 10 * DAY
    breach = window(at, performance=perf(realised=0.70, breach=True))
    d = decide(RetrainSettings(), signals(at, breach), [])
    assert kinds(d) == ["performance"] and "performance alarm" in d.triggers[0].reason
    assert d.triggers[0].evidence["performance"]["realised"] == {"roc_auc": 0.70}
    assert not decide(RetrainSettings(on_performance=False), signals(at, breach), []).triggers

    floor = RetrainSettings(on_performance=False, min_performance=0.8)
    low = window(at, alarm=False, performance=perf(realised=0.75))  # no alarm needed
    d = decide(floor, signals(at, low), [])
    assert kinds(d) == ["performance"]
    assert "realised roc_auc 0.75 below retrain.min_performance 0.8" in d.triggers[0].reason
    ok = window(at, alarm=False, performance=perf(realised=0.82))
    assert not decide(floor, signals(at, ok), []).triggers
    # too few labels: the realised value is not trusted, the estimate's interval decides
    sparse = perf(realised=0.5, completeness=0.2, estimated=(0.78, 0.74, 0.83))
    assert not decide(floor, signals(at, window(at, alarm=False, performance=sparse)), []).fire
    sparse = perf(realised=0.9, completeness=0.2, estimated=(0.70, 0.66, 0.75))
    d = decide(floor, signals(at, window(at, alarm=False, performance=sparse)), [])
    assert kinds(d) == ["performance"] and "estimated" in d.triggers[0].reason


def test_volume_schedule_and_manual_fire() -> None:
    at = T0 + 10 * DAY
    volume = RetrainSettings(new_labels=1000)
    assert not decide(volume, signals(at, labelled=999), []).triggers
    d = decide(volume, signals(at, labelled=1000), [])
    assert kinds(d) == ["volume"] and d.triggers[0].key == f"volume:{iso(at)}"

    weekly = RetrainSettings(schedule="0 3 * * 1")  # Mondays 03:00; T0 + 7d is a Monday
    monday = T0 + 7 * DAY + 3 * 3600
    d = decide(weekly, signals(monday + 60, last_check=monday - 60), [])
    assert kinds(d) == ["schedule"] and d.triggers[0].key == f"schedule:{iso(monday)}"
    assert not decide(weekly, signals(monday + 120, last_check=monday + 60), []).triggers
    assert not decide(weekly, signals(monday + 60, last_check=None), []).triggers  # no past

    with pytest.raises(ConfigError, match=r"retrain.schedule '0 3 \* \*' is not a cron"):
        decide(RetrainSettings(schedule="0 3 * *"), signals(at, last_check=None), [])

    d = decide(RetrainSettings(), signals(at, manual="new features"), [])
    assert d.fire and kinds(d) == ["manual"] and d.triggers[0].reason == "by hand: new features"


def test_keys_already_decided_on_do_not_count_again() -> None:
    at = T0 + 10 * DAY
    w = window(at, share=0.4)
    first = decide(RetrainSettings(), signals(at, w), [])
    again = decide(RetrainSettings(), signals(at, w, seen={first.triggers[0].key}), [])
    assert first.fire and not again.fire and not again.triggers


# --------------------------------------------------------------------------- holding back


def test_cooldown_suppresses_with_the_reason_and_manual_bypasses_it() -> None:
    at = T0 + 20 * DAY
    last = at - 5 * DAY
    d = decide(RetrainSettings(cooldown="14d"), signals(at, window(at, share=0.4)), [last])
    assert not d.fire and kinds(d) == ["drift"]
    assert d.suppressed is not None and d.suppressed.startswith("cooldown:")
    assert "5.0d ago" in d.suppressed and iso(last + 14 * DAY) in d.suppressed
    assert d.run_key is None
    # exactly the cooldown later: allowed
    fortnight = RetrainSettings(cooldown="14d")
    assert decide(fortnight, signals(last + 14 * DAY), [last], None).triggers == []
    d = decide(fortnight, signals(last + 14 * DAY, window(last + 14 * DAY, share=0.4)), [last])
    assert d.fire
    both = signals(at, window(at, share=0.4), manual="hotfix")
    d = decide(RetrainSettings(), both, [last])
    assert d.fire and kinds(d) == ["manual", "drift"] and d.triggers[0].kind == "manual"


def test_budget_over_a_year_of_daily_alarms() -> None:
    """A drift alarm every day for a year, cooldown 14d, at most 4 per 90d."""
    retrain = RetrainSettings(cooldown="14d", budget=4, budget_period="90d")
    history: list[float] = []
    reasons = []
    for day in range(365):
        at = T0 + day * DAY
        d = decide(retrain, signals(at, window(at, share=0.5)), history)
        if d.fire:
            history.append(at)
        else:
            reasons.append(d.suppressed or "")
    days = [round((h - T0) / DAY) for h in history]
    assert days == [0, 14, 28, 42, 90, 104, 118, 132, 180, 194, 208, 222, 270, 284, 298, 312, 360]
    for h in history:  # no trailing 90 days holds more than 4
        assert sum(1 for g in history if h - 90 * DAY < g <= h) <= 4
    assert any(r.startswith("budget: 4 retrain(s) in the last 90d") for r in reasons)
    assert any(r.startswith("cooldown:") for r in reasons)


def test_a_manual_retrain_past_the_budget_is_refused_clearly() -> None:
    retrain = RetrainSettings(budget=2, budget_period="30d", cooldown="1d")
    at = T0 + 40 * DAY
    history = [at - 20 * DAY, at - 10 * DAY]
    d = decide(retrain, signals(at, manual="please"), history)
    assert not d.fire and kinds(d) == ["manual"]
    assert d.suppressed == (
        "manual retrain refused: budget: 2 retrain(s) in the last 30d (retrain.budget 2 per "
        f"retrain.budget_period 30d); the next is allowed from {iso(at - 20 * DAY + 30 * DAY)}"
    )
    assert decide(retrain, signals(at + 10 * DAY, manual="please"), history).fire


# --------------------------------------------------------------------------- check()


@pytest.fixture(scope="module")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow database, made once (the schema takes seconds)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", str(folder / "artifacts")).engine.dispose()
    return db


@pytest.fixture
def champion_ws(tmp_path: Path, migrated_mlflow_db: Path) -> Iterator[Workspace]:
    """A workspace whose registry holds churn v1 as the champion (no training needed)."""
    settings = load_settings(home=tmp_path / "fw", retrain={"cooldown": "14d"})
    settings.home.mkdir(parents=True)
    shutil.copyfile(migrated_mlflow_db, settings.home / "mlflow.db")
    with Workspace(settings) as ws:
        client = ws.client
        client.create_registered_model("churn")
        (tmp_path / "model").mkdir()
        mv = client.create_model_version("churn", source=str(tmp_path / "model"))
        client.set_registered_model_alias("churn", "champion", mv.version)
        yield ws


def _save(ws: Workspace, *windows: dict[str, Any]) -> None:
    from flywheel.monitoring.store import MonitorStore

    store = MonitorStore(ws.settings.monitoring.url or "")
    try:
        for w in windows:
            store.save(w)
    finally:
        store.dispose()


def _ledger(ws: Workspace) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.action, json.loads(e.reason.splitlines()[-1]))
        for e in ws.audit.entries()
        if e.action.startswith("retrain_")
    ]


def test_check_records_once_then_suppresses_then_obeys_a_person(champion_ws: Workspace) -> None:
    ws = champion_ws
    day1, day2, day3 = T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY
    _save(ws, window(day1, alarm=False), window(day2, share=0.6))
    first = triggers.check(ws, now=day2)
    assert first.fire and kinds(first) == ["drift"]
    assert first.evidence["version"] == "1" and first.evidence["windows"] == 2

    [(action, detail)] = _ledger(ws)
    entry = next(e for e in ws.audit.entries() if e.action == action)
    assert action == "retrain_triggered" and entry.from_version == "1"
    assert entry.reason.splitlines()[0].startswith("retrain: drift alarm in window")
    assert detail["at"] == day2 and detail["at_iso"] == iso(day2) == "2026-01-07T00:00:00Z"
    assert detail["triggers"][0]["key"] == first.triggers[0].key
    assert triggers.history(ws) == [day2]
    state = json.loads(triggers.state_path(ws).read_text())
    assert state["models"]["churn"]["last_check"] == day2

    again = triggers.check(ws, now=day2)  # the same data clock: nothing new
    assert not again.fire and not again.triggers and len(_ledger(ws)) == 1

    # the state file lost: the ledger still knows the window was acted on
    triggers.state_path(ws).unlink()
    assert not triggers.check(ws, now=day2).triggers and len(_ledger(ws)) == 1

    _save(ws, window(day3, share=0.7))  # drift persists: held by the cooldown
    held = triggers.check(ws, now=day3)
    assert not held.fire and held.suppressed and held.suppressed.startswith("cooldown:")
    assert [a for a, _ in _ledger(ws)] == ["retrain_triggered", "retrain_suppressed"]
    assert _ledger(ws)[1][1]["suppressed"] == held.suppressed
    assert not triggers.check(ws, now=day3).triggers  # suppressed keys count as decided

    asked = triggers.check(ws, now=day3 + 3600, manual="new source table")
    assert asked.fire and kinds(asked) == ["manual"]
    assert triggers.history(ws) == [day2, day3 + 3600]
    assert not triggers.check(ws, now=day3 + 3600, manual="new source table").fire
    assert len(_ledger(ws)) == 3
    assert ws.audit.verify() == []


def test_a_fired_trigger_without_a_run_is_owed_until_a_run_starts(champion_ws: Workspace) -> None:
    """A decision recorded with no retrain after it (`triggers check` by hand, a worker
    killed between the two) is owed: counted by the cooldown, handed to the next tick; a
    run of its own settles it, a later run overtakes it; a run by hand counts too."""
    from flywheel.pipelines.runner import PipelineRun

    ws = champion_ws
    day1, day2 = T0 + DAY, T0 + 2 * DAY
    _save(ws, window(day1, share=0.6))
    fired = triggers.check(ws, now=day1)
    assert fired.fire and triggers.owed(ws) == fired.triggers[0]
    assert triggers.history(ws) == [day1]  # owed: the cooldown holds the next one
    quiet = triggers.check(ws, now=day1 + 60)  # what the worker's tick reads it from
    assert not quiet.fire and quiet.owed == fired.triggers[0]
    # decided on v1's windows: once another version is the champion, it is stale
    mv = ws.client.create_model_version(
        "churn", source=ws.client.get_model_version("churn", "1").source
    )
    ws.client.set_registered_model_alias("churn", "champion", mv.version)
    assert triggers.owed(ws) is None
    ws.client.set_registered_model_alias("churn", "champion", "1")
    asked = triggers.check(ws, now=day2, manual="a person asked")
    assert triggers.owed(ws) == asked.triggers[0]  # the newest

    def run(rid: str, trigger: dict[str, Any], at: float) -> None:
        PipelineRun(rid, "churn", trigger, created_at=at, at=at, status="finished").save(
            ws.settings.home
        )

    run("pr-1", asked.triggers[0].to_dict(), day2)
    assert triggers.owed(ws) is None
    assert triggers.history(ws) == [day2]  # day1's decision was overtaken, never run
    by_hand = {"kind": "manual", "key": "manual:by-hand", "reason": "by hand"}
    run("pr-2", by_hand, day2 + DAY)  # `flywheel retrain`: no check fired it
    assert triggers.history(ws) == [day2, day2 + DAY]
    _save(ws, window(day2 + 2 * DAY, share=0.7))
    held = triggers.check(ws, now=day2 + 2 * DAY)  # the run by hand holds it (14d cooldown)
    assert not held.fire and held.suppressed and iso(day2 + DAY) in held.suppressed


def test_an_orchestrators_tick_is_admitted_by_the_same_rules(champion_ws: Workspace) -> None:
    ws = champion_ws

    def tick(at: float) -> triggers.Trigger:
        return triggers.Trigger("schedule", at, f"tick {iso(at)}", {}, f"schedule:{iso(at)}")

    first = triggers.admit(ws, tick(T0 + DAY))
    assert first.fire and first.evidence["version"] == "1"
    assert [a for a, _ in _ledger(ws)] == ["retrain_triggered"]
    assert triggers.history(ws) == [T0 + DAY]
    assert not triggers.admit(ws, tick(T0 + DAY)).triggers  # a tick is decided once
    held = triggers.admit(ws, tick(T0 + 2 * DAY))  # inside the 14d cooldown
    assert not held.fire and held.suppressed and held.suppressed.startswith("cooldown:")
    assert [a for a, _ in _ledger(ws)] == ["retrain_triggered", "retrain_suppressed"]
    assert triggers.admit(ws, tick(T0 + 20 * DAY)).fire
    assert not triggers.state_path(ws).exists()  # the sensor's last check is left alone


def test_check_without_record_writes_nothing(champion_ws: Workspace) -> None:
    _save(champion_ws, window(T0 + DAY, share=0.6))
    d = triggers.check(champion_ws, now=T0 + DAY, record=False)
    assert d.fire and _ledger(champion_ws) == []
    assert not triggers.state_path(champion_ws).exists()


def test_a_window_whose_alarm_comes_with_late_labels_fires(champion_ws: Workspace) -> None:
    """Windows of the monitor's label horizon are read again: an alarm that late labels
    turn on fires once; one older than the horizon does not."""
    ws = champion_ws
    ws.settings.monitoring.label_horizon_windows = 2
    days = [T0 + i * DAY for i in (1, 2, 3, 4)]
    _save(ws, *(window(d, alarm=False, performance=perf(completeness=0.0)) for d in days))
    first = triggers.check(ws, now=days[-1])  # a first check: the horizon's 2 windows
    assert not first.triggers and first.evidence["windows"] == 2
    # labels arrive: the monitor refreshes old windows, which now breach
    late = perf(realised=0.7, breach=True)
    _save(ws, window(days[0], performance=late), window(days[2], performance=late))
    d = triggers.check(ws, now=days[-1] + DAY)
    assert d.fire and kinds(d) == ["performance"] and d.evidence["windows"] == 2
    assert d.triggers[0].evidence["end"] == days[2]  # days[0] is past the horizon
    assert not triggers.check(ws, now=days[-1] + 2 * DAY).triggers


def test_no_champion_means_no_window_triggers(ws: Workspace) -> None:
    d = triggers.check(ws, now=T0)
    assert not d.triggers and d.evidence["version"] is None
    assert d.evidence["labelled"] is None  # retrain.new_labels unset: not counted


def _log_labels(plog: Any, n: int, at: float, rows: int = 1) -> None:
    from flywheel.predlog import PredictionRecord

    ids = [f"r{uuid.uuid4().hex[:10]}" for _ in range(n)]
    for rid in ids:
        inputs = {"tenure": [1.0] * rows}
        plog.append(PredictionRecord(rid, at - DAY, "churn", "1", "rest", inputs, {}, 0.5))
    plog.flush()
    label: Any = [1] * rows if rows > 1 else 1
    assert plog.feedback_many([(rid, label) for rid in ids], ts=at) == n


def test_volume_counts_labels_since_the_last_retrain_on_sqlite(ws: Workspace) -> None:
    ws.settings.retrain.new_labels = 10
    _log_labels(ws.predlog, 6, T0 + DAY)
    _log_labels(ws.predlog, 1, T0 + 2 * DAY, rows=3)  # a 3-row request: 3 labels
    assert triggers.labelled_since(ws, None, T0 + DAY) == 6
    assert triggers.labelled_since(ws, T0 + DAY, T0 + 2 * DAY) == 3
    assert not triggers.check(ws, now=T0 + 2 * DAY).triggers  # 9 < 10
    _log_labels(ws.predlog, 1, T0 + 3 * DAY)
    d = triggers.check(ws, now=T0 + 3 * DAY)
    assert d.fire and kinds(d) == ["volume"] and d.triggers[0].evidence["labelled"] == 10
    _log_labels(ws.predlog, 2, T0 + 4 * DAY)  # counted again from the retrain: 2
    assert triggers.check(ws, now=T0 + 20 * DAY).evidence["labelled"] == 2


@pytest.mark.integration
def test_labels_are_counted_on_postgresql(tmp_path: Path) -> None:
    import psycopg

    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"fw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        settings = load_settings(home=tmp_path / "fw", serving={"prediction_log_url": url})
        with Workspace(settings) as ws:
            assert triggers.labelled_since(ws, None, T0) == 0  # no tables yet
            _log_labels(ws.predlog, 4, T0 + DAY)
            _log_labels(ws.predlog, 2, T0 + 2 * DAY, rows=5)
            assert triggers.labelled_since(ws, None, T0 + 2 * DAY) == 14
            assert triggers.labelled_since(ws, T0 + DAY, T0 + 2 * DAY) == 10
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
