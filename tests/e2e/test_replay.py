"""`flywheel replay` as a user runs it: the spine, then weeks of the churn world replayed on
the simulated clock, in a fresh folder with the embedded defaults (no FLYWHEEL_* variables).

The drift scenario and the world's own ageing make the monitor alarm; the trigger fires;
the retraining pipeline registers a challenger and starts a canary; the server's agent
promotes it while the replay's traffic flows. Everything that decides (the log's
timestamps, the windows, the triggers' evidence) is on the simulated clock.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import copy_folder, flywheel, replay_json

pytestmark = pytest.mark.slow

DAYS, PER_DAY = 70, 300


def _epoch(day: str) -> float:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tzinfo=dt.UTC).timestamp()


@pytest.fixture(scope="module")
def replayed(
    tmp_path_factory: pytest.TempPathFactory, churn_1500: Path
) -> tuple[Path, dict[str, Any]]:
    # `flywheel run --customers 1500` (a smaller world: faster retrains), copied
    cwd = copy_folder(churn_1500, tmp_path_factory.mktemp("replay") / "w")
    return cwd, replay_json(cwd, DAYS, PER_DAY, "ticket_churn@5")


def test_the_replay_retrains_and_promotes_on_the_simulated_clock(
    replayed: tuple[Path, dict[str, Any]],
) -> None:
    cwd, summary = replayed
    assert summary["days"] == DAYS and summary["requests"] == DAYS * PER_DAY
    assert summary["errors"] == 0
    assert summary["first_day"] == "2026-01-01"  # the day after the world's last (2025-12-31)
    assert summary["retrains"] >= 1 and summary["promotions"] >= 1
    assert summary["champion_before"] == "1"
    assert int(summary["champion_after"]) > 1
    # the whole chain is in the ledger, each trigger with its evidence on the data's clock
    history = json.loads(flywheel(cwd, "registry", "history", "--json").stdout)
    actions = [e["action"] for e in history]
    for action in ("retrain_triggered", "pipeline_started", "register", "rollout_start"):
        assert action in actions, actions
    assert "rollout_promote" in actions and "promote" in actions
    lo, hi = _epoch(summary["first_day"]), _epoch(summary["last_day"]) + 86400
    trigger = next(e for e in history if e["action"] == "retrain_triggered")
    evidence = json.loads(trigger["reason"].splitlines()[-1])
    assert lo <= float(evidence["at"]) <= hi, evidence  # simulated time, not the wall clock
    assert evidence["triggers"][0]["kind"] in ("drift", "prediction_drift", "performance")
    assert evidence["triggers"][0]["evidence"]["window"]


def test_the_log_and_the_labels_carry_simulated_time(replayed: tuple[Path, dict[str, Any]]) -> None:
    cwd, summary = replayed
    lo, hi = _epoch(summary["first_day"]), _epoch(summary["last_day"]) + 86400
    with sqlite3.connect(cwd / ".flywheel" / "predictions.db") as db:
        first, last, n = db.execute(
            "SELECT MIN(ts), MAX(ts), COUNT(*) FROM prediction_log"
        ).fetchone()
        labels = db.execute(
            "SELECT MIN(received_at), MAX(received_at), COUNT(*) FROM prediction_feedback"
        ).fetchone()
        versions = dict(
            db.execute("SELECT version, COUNT(*) FROM prediction_log GROUP BY 1").fetchall()
        )
    assert lo <= first and last < hi
    assert n >= DAYS * PER_DAY  # every answer (plus any shadow rows)
    # labels come back after a billing period closes plus the delay: the first in February
    assert labels[2] > 0 and _epoch("2026-02-08") <= labels[0] and labels[1] < hi
    assert len(versions) >= 2  # the canary's challenger answered too
    # one daily window per replayed day of the first champion, on the simulated calendar
    status = json.loads(flywheel(cwd, "monitor", "status", "--json").stdout)
    window = next(iter(status.values()))
    assert lo <= float(window["start"]) < hi


def test_the_timeline_and_the_lineage_of_the_new_champion(
    replayed: tuple[Path, dict[str, Any]],
) -> None:
    cwd, summary = replayed
    page = Path(summary["timeline"]).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1
    assert "retrain_triggered" in page and "rollout_promote" in page
    detail = json.loads(Path(summary["timeline"]).with_suffix(".json").read_text())
    assert len(detail["days"]) == DAYS
    assert sum(sum(d["versions"].values()) for d in detail["days"]) == DAYS * PER_DAY
    lineage = json.loads(flywheel(cwd, "lineage", summary["champion_after"], "--json").stdout)
    assert lineage["trigger"]["kind"] in ("drift", "prediction_drift", "performance")
    assert lineage["pipeline_run"]["status"] == "finished"
    assert lineage["snapshot"]["sha256"] and lineage["run"]["id"]
    assert any(
        r.get("outcome") == "promoted" or r.get("status") == "promoted" for r in lineage["rollouts"]
    ), lineage["rollouts"]
