"""DORA figures from hand-built audit ledgers (the pure function), and the server's gauges over
a real SQLite ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from flywheel.errors import RegistryError, UsageError
from flywheel.registry.audit import AuditEntry, AuditLog
from flywheel.registry.dora import (
    DoraReport,
    compute_dora,
    dora,
    format_duration,
    parse_since,
)
from flywheel.serving.dora_gauges import DoraGauges
from flywheel.workspace import Workspace

T0 = datetime(2025, 3, 1, tzinfo=UTC)
HOUR = 3600.0

Row = tuple[float, str, str | None, str | None] | tuple[float, str, str | None, str | None, str]


def ledger(*rows: Row) -> list[AuditEntry]:
    """Entries from ``(hours after T0, action, from_version, to_version[, model])``."""
    return [
        AuditEntry(
            id=i,
            at=(T0 + timedelta(hours=row[0])).isoformat(timespec="microseconds"),
            who="alice",
            action=row[1],
            model=row[4] if len(row) == 5 else "churn",
            from_version=row[2],
            to_version=row[3],
            reason="why",
            prev_hash="",
            hash="",
        )
        for i, row in enumerate(rows, start=1)
    ]


def runs(**hours: float) -> Callable[[str], datetime | None]:
    """``run_created`` answering ``v<N>=hours after T0`` (negative: before T0); None otherwise."""
    starts = {k.removeprefix("v"): T0 + timedelta(hours=h) for k, h in hours.items()}
    return lambda version: starts.get(version)


def figures(
    entries: list[AuditEntry],
    created: Callable[[str], datetime | None] | None = None,
    *,
    days: float = 10,
    model: str | None = None,
) -> DoraReport:
    """compute_dora over the ``days`` from a day before T0."""
    since = T0 - timedelta(hours=24)
    return compute_dora(
        entries, created or runs(), since=since, until=since + timedelta(days=days), model=model
    )


# --------------------------------------------------------------------------- deployments


def test_deployments_are_promote_and_approve_moves_per_day_and_week() -> None:
    entries = ledger(
        (0, "register", None, "1"),
        (1, "promote", None, "1"),
        (2, "register", "1", "2"),
        (3, "promote_requested", "1", "2"),
        (4, "approve", "1", "2"),
        (5, "rollback", "2", "1"),
        (6, "register", "2", "3"),
        (7, "promote", "1", "3"),
        (8, "monitor", None, "3"),
    )
    report = figures(entries, runs(), days=10)
    assert [(d.action, d.version, d.from_version) for d in report.deployments] == [
        ("promote", "1", None),
        ("approve", "2", "1"),
        ("promote", "3", "1"),
    ]
    assert report.period_days == pytest.approx(10)
    assert report.deployments_per_day == pytest.approx(3 / 10)
    assert report.to_dict()["deployments"]["per_week"] == pytest.approx(3 / 10 * 7)
    assert report.to_dict()["deployments"]["count"] == 3
    assert report.model == "churn"


def test_lead_time_runs_from_the_run_start_median_and_p90() -> None:
    entries = ledger(
        (0, "register", None, "1"),
        (1, "promote", None, "1"),
        (2, "register", None, "2"),
        (4, "promote", "1", "2"),
        (5, "register", None, "3"),
        (9, "promote", "2", "3"),
        (10, "register", None, "4"),
        (30, "promote", "3", "4"),
    )
    starts = {"v1": -2.0, "v2": 1.5, "v3": 4.0, "v4": 8.0}
    report = figures(entries, runs(**starts))
    expected = [1 - starts["v1"], 4 - starts["v2"], 9 - starts["v3"], 30 - starts["v4"]]
    assert [d.lead_time_s for d in report.deployments] == pytest.approx(
        [h * HOUR for h in expected]
    )
    assert {d.lead_time_from for d in report.deployments} == {"run"}
    assert report.lead_time_median_s == pytest.approx(float(np.median(expected)) * HOUR)
    assert report.lead_time_p90_s == pytest.approx(float(np.percentile(expected, 90)) * HOUR)
    lead = report.to_dict()["lead_time_seconds"]
    assert lead["count"] == 4 and lead["p90"] == report.lead_time_p90_s


def test_lead_time_falls_back_to_the_registration_when_the_run_is_gone() -> None:
    entries = ledger(
        (0, "register", None, "1"),
        (2, "register", None, "2"),
        (5, "promote", None, "2"),  # run of v2 gone: from its registration (3 h)
        (6, "promote", "2", "1"),  # run of v1 found: 6 h - (-1 h)
        (7, "promote", "1", "9"),  # v9: neither a run nor a registration
    )
    report = figures(entries, runs(v1=-1))
    by_version = {d.version: d for d in report.deployments}
    assert by_version["2"].lead_time_from == "registration"
    assert by_version["2"].lead_time_s == pytest.approx(3 * HOUR)
    assert by_version["1"].lead_time_from == "run"
    assert by_version["1"].lead_time_s == pytest.approx(7 * HOUR)
    assert by_version["9"].lead_time_s is None and by_version["9"].lead_time_from is None
    assert report.lead_time_median_s == pytest.approx(5 * HOUR)  # of the two known
    listed = report.to_dict()["deployments"]["list"]
    assert [d["lead_time_from"] for d in listed] == ["registration", "run", None]


def test_the_run_of_a_version_is_looked_up_once() -> None:
    asked: list[str] = []

    def created(version: str) -> datetime | None:
        asked.append(version)
        return T0

    entries = ledger(
        (1, "promote", None, "1"),
        (2, "promote", "1", "2"),
        (3, "rollback", "2", "1"),
        (4, "promote", "1", "2"),
    )
    figures(entries, created)
    assert sorted(asked) == ["1", "2"]


# --------------------------------------------------------------------------- failures


def test_change_failure_rate_and_time_to_restore() -> None:
    entries = ledger(
        (0, "promote", None, "1"),
        (10, "promote", "1", "2"),
        (13, "rollback", "2", "1"),  # undoes the promote at 10: 3 h
        (20, "promote", "1", "2"),  # v2 again
        (21, "promote", "2", "3"),
        (22.5, "rollback", "3", "2"),  # undoes the promote of v3 at 21: 1.5 h
        (30, "rollback", "2", "1"),  # undoes the latest promote of v2 (at 20): 10 h
    )
    report = figures(entries, runs())
    assert len(report.deployments) == 4
    assert report.change_failure_rate == pytest.approx(3 / 4)
    assert [(r.from_version, r.deployment_id) for r in report.restores] == [
        ("2", 2),
        ("3", 5),
        ("2", 4),
    ]
    restores = [3.0, 1.5, 10.0]
    assert [r.restore_s for r in report.restores] == pytest.approx([h * HOUR for h in restores])
    assert report.time_to_restore_median_s == pytest.approx(float(np.median(restores)) * HOUR)
    assert report.to_dict()["rollbacks"]["count"] == 3


def test_rollouts_stopped_are_counted_apart_and_self_heal_counts_its_rollback() -> None:
    entries = ledger(
        (0, "promote", None, "1"),
        (1, "rollout_start", "1", "2"),
        (2, "rollout_step", "1", "2"),
        (3, "rollout_rollback", "1", "2"),  # v2 stopped before it became champion
        (4, "rollout_start", "1", "3"),
        (4.5, "rollout_pause", "1", "3"),
        (5, "rollout_resume", "1", "3"),
        (6, "rollout_promote", "1", "3"),
        (6, "promote", "1", "3"),  # the champion move itself
        (7, "self_heal", "3", "1"),
        (7, "rollback", "3", "1"),  # the alias move self-heal made
        (8, "rollout_start", "1", "4"),
        (9, "rollout_abort", "1", "4"),
        (10, "rollout_rollback", "1", "4"),
    )
    report = figures(entries, runs())
    assert [d.version for d in report.deployments] == ["1", "3"]
    assert report.rollouts_stopped == 2
    assert report.self_heals == 1
    assert report.change_failure_rate == pytest.approx(1 / 2)
    assert report.time_to_restore_median_s == pytest.approx(1 * HOUR)


def test_a_rollback_without_its_deployment_has_no_restore_time() -> None:
    entries = ledger((5, "rollback", "7", "6"), (6, "promote", "6", "8"))
    report = figures(entries, runs())
    assert report.restores[0].deployment_id is None and report.restores[0].restore_s is None
    assert report.time_to_restore_median_s is None
    assert report.change_failure_rate == pytest.approx(1.0)


# --------------------------------------------------------------------------- period


def test_the_period_keeps_its_entries_and_finds_deployments_before_it() -> None:
    entries = ledger(
        (0, "register", None, "1"),
        (1, "promote", None, "1"),  # before the period
        (2, "promote", "1", "2"),  # before the period
        (50, "rollback", "2", "1"),  # in it: undoes the promote at 2
        (60, "promote", "1", "3"),  # in it
        (61, "rollout_rollback", "3", "4"),  # in it
        (400, "promote", "3", "5"),  # after it
    )
    asked: list[str] = []

    def created(version: str) -> datetime | None:
        asked.append(version)
        return None

    report = compute_dora(
        entries, created, since=T0 + timedelta(hours=24), until=T0 + timedelta(days=10)
    )
    assert [d.version for d in report.deployments] == ["3"]
    assert asked == ["3"]  # only deployments in the period are looked up
    assert report.restores[0].restore_s == pytest.approx(48 * HOUR)
    assert report.rollouts_stopped == 1
    assert report.change_failure_rate == pytest.approx(1.0)
    assert report.deployments_per_day == pytest.approx(1 / 9)


def test_an_empty_ledger_gives_zero_deployments_and_no_figures() -> None:
    report = figures([], runs(), days=30)
    out = report.to_dict()
    assert out["deployments"]["count"] == 0 and out["deployments"]["per_day"] == 0
    assert out["lead_time_seconds"] == {"median": None, "p90": None, "count": 0}
    assert out["change_failure_rate"] is None
    assert out["time_to_restore_seconds"] == {"median": None}
    assert out["rollouts_stopped"] == 0
    assert out["model"] is None
    json.dumps(out)  # plain JSON


def test_entries_of_several_models_need_a_model() -> None:
    entries = ledger((1, "promote", None, "1"), (2, "promote", None, "1", "price"))
    with pytest.raises(RegistryError, match="one model"):
        figures(entries, runs())
    report = figures(entries, model="price")
    assert report.model == "price" and [d.id for d in report.deployments] == [2]


def test_since_accepts_days_hours_and_iso_dates() -> None:
    now = datetime(2025, 3, 31, 12, tzinfo=UTC)
    assert parse_since("30d", now) == now - timedelta(days=30)
    assert parse_since(" 12h ", now) == now - timedelta(hours=12)
    assert parse_since("2025-03-01", now) == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_since("2025-03-01T06:00:00+02:00", now) == datetime(2025, 3, 1, 4, tzinfo=UTC)
    for bad in ("30", "3w", "yesterday", "2025-02-30", "-1d"):
        with pytest.raises(UsageError, match="--since") as caught:
            parse_since(bad, now)
        assert bad in caught.value.message
    for future in ("0d", "2025-04-01"):
        with pytest.raises(UsageError, match="before now"):
            parse_since(future, now)


def test_durations_read_in_their_unit() -> None:
    assert format_duration(None) == "-"
    assert format_duration(42) == "42 s"
    assert format_duration(90) == "1.5 min"
    assert format_duration(3 * HOUR) == "3.0 h"
    assert format_duration(36 * HOUR) == "1.5 d"


# --------------------------------------------------------------------------- through the workspace


@pytest.mark.slow  # MLflow's client makes its database
def test_dora_of_a_workspace_falls_back_to_registration_for_a_version_mlflow_lacks(
    ws: Workspace,
) -> None:
    name = ws.settings.registry.model_name
    ws.audit.append(
        who="alice", action="register", model=name, from_version=None, to_version="1", reason="r"
    )
    promoted = ws.audit.append(
        who="alice", action="promote", model=name, from_version=None, to_version="1", reason="r"
    )
    ws.audit.append(
        who="bob", action="promote", model="other", from_version=None, to_version="1", reason="r"
    )
    report = dora(ws, "1d")
    assert [d.id for d in report.deployments] == [promoted.id]  # the configured model only
    assert report.deployments[0].lead_time_from == "registration"
    assert report.model == name


def test_dora_of_an_empty_workspace_does_not_touch_mlflow(ws: Workspace) -> None:
    report = dora(ws, "7d")
    assert report.deployments == [] and report.period_days == pytest.approx(7)
    assert not (ws.settings.home / "mlflow.db").exists()


# --------------------------------------------------------------------------- gauges


def _scrape(collector: DoraGauges) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def _fill(audit: AuditLog, model: str, moves: list[tuple[str, str | None, str]]) -> None:
    for action, old, new in moves:
        audit.append(
            who="alice", action=action, model=model, from_version=old, to_version=new, reason="r"
        )


def test_gauges_match_the_report_per_model(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    audit = AuditLog(url)
    _fill(audit, "churn", [("register", None, "1"), ("promote", None, "1")])
    _fill(audit, "churn", [("register", "1", "2"), ("promote", "1", "2"), ("rollback", "2", "1")])
    _fill(audit, "price", [("register", None, "1"), ("promote", None, "1")])
    gauges = DoraGauges(url, f"sqlite:///{tmp_path / 'no-mlflow.db'}")
    samples = _scrape(gauges)
    for model in ("churn", "price"):
        report = compute_dora(audit.entries(model), lambda v: None, since=T0, model=model)
        label = f'{{model="{model}"}}'
        assert samples[f"flywheel_dora_deployments_total{label}"] == len(report.deployments)
        assert report.lead_time_median_s is not None
        assert samples[f"flywheel_dora_lead_time_seconds{label}"] == pytest.approx(
            report.lead_time_median_s
        )
    churn = '{model="churn"}'
    assert samples[f"flywheel_dora_change_failure_rate{churn}"] == pytest.approx(0.5)
    assert samples[f"flywheel_dora_deployment_frequency_per_day{churn}"] == pytest.approx(2 / 30)
    assert samples[f"flywheel_dora_time_to_restore_seconds{churn}"] > 0
    assert 'flywheel_dora_time_to_restore_seconds{model="price"}' not in samples  # no rollback
    audit.dispose()


def test_gauges_are_cached_for_their_ttl(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    audit = AuditLog(url)
    _fill(audit, "churn", [("promote", None, "1")])
    gauges = DoraGauges(url, None, ttl_s=3600)
    key = 'flywheel_dora_deployments_total{model="churn"}'
    assert _scrape(gauges)[key] == 1
    _fill(audit, "churn", [("promote", "1", "2")])
    assert _scrape(gauges)[key] == 1  # within the ttl: the cached figures
    gauges.ttl_s = 0
    assert _scrape(gauges)[key] == 2
    audit.dispose()


def test_gauges_without_a_ledger_give_no_samples_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "audit.db"
    assert _scrape(DoraGauges(f"sqlite:///{missing}", None)) == {}
    assert not missing.parent.exists()
    (tmp_path / "junk.db").write_text("not a database")
    assert _scrape(DoraGauges(f"sqlite:///{tmp_path / 'junk.db'}", None)) == {}


def test_the_gauges_module_imports_no_mlflow() -> None:
    code = "import sys, flywheel.serving.dora_gauges; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
