"""The second scenario (`make demo-rollback`): a retrained challenger that is worse is rolled
back. Run as a user runs it: a fresh folder, its own ``flywheel.yaml``, no FLYWHEEL_*
variables.

``ticket_churn`` makes the monitor alarm; ``cancellation_tickets`` (source only) leaks the label
into the SQL source's ticket columns, so the retrain on the newest month (``retrain.window``)
learns the leak, beats the champion on its own holdout and passes the gates; live, the leak is
absent and the canary's guardrails roll it back at its first step. ``champion`` never moves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import copy_folder, flywheel, replay_json

pytestmark = pytest.mark.slow

DAYS, PER_DAY = 45, 300


@pytest.fixture(scope="module")
def replayed(
    tmp_path_factory: pytest.TempPathFactory, churn_1500: Path
) -> tuple[Path, dict[str, Any]]:
    # `flywheel run --customers 1500`, copied; then the user's flywheel.yaml
    cwd = copy_folder(churn_1500, tmp_path_factory.mktemp("rollback") / "w")
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump({"retrain": {"window": "30d"}}))
    return cwd, replay_json(cwd, DAYS, PER_DAY, "ticket_churn@0", "cancellation_tickets@0")


def test_the_leaky_challenger_passes_the_gates_and_is_rolled_back_live(
    replayed: tuple[Path, dict[str, Any]],
) -> None:
    cwd, summary = replayed
    assert summary["errors"] == 0
    assert summary["retrains"] >= 1
    assert summary["rollbacks"] >= 1 and summary["promotions"] == 0
    assert summary["champion_before"] == summary["champion_after"] == "1"
    history = json.loads(flywheel(cwd, "registry", "history", "--json").stdout)
    rollback = next(e for e in history if e["action"] == "rollout_rollback")
    assert rollback["reason"].startswith("guardrail "), rollback["reason"]
    assert "failed at step 1 (10%)" in rollback["reason"]  # the first step
    challenger = [e["to_version"] for e in history if e["action"] == "register"][-1]
    assert challenger == "2"
    # the offline gate could not tell: on the source's own holdout the challenger won
    lineage = json.loads(flywheel(cwd, "lineage", challenger, "--json").stdout)
    steps = lineage["pipeline_run"]["steps"]
    evaluate = steps["evaluate"]["output"]
    assert evaluate["passed"] is True and evaluate["champion_version"] == "1"
    assert evaluate["metrics"]["roc_auc"] > evaluate["champion_metrics"]["roc_auc"] + 0.05
    assert steps["train"]["output"]["window"] == "30d"
    assert [r["status"] for r in lineage["rollouts"]] == ["rolled_back"]
    assert lineage["promoted_at"] is None
    assert json.loads(flywheel(cwd, "lineage", "1", "--json").stdout)["aliases"] == ["champion"]


def test_the_timeline_shows_the_rollback(replayed: tuple[Path, dict[str, Any]]) -> None:
    _, summary = replayed
    page = Path(summary["timeline"]).read_text(encoding="utf-8")
    assert "rollout_rollback" in page
    detail = json.loads(Path(summary["timeline"]).with_suffix(".json").read_text())
    served = {v for d in detail["days"] for v in d["versions"]}
    assert served == {"1", "2"}  # the canary's challenger answered before it was rolled back
