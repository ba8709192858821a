"""``step_deadline``: a step that neither passes nor fails in time ends inconclusive and the
rollout pauses (Argo Rollouts' Inconclusive); a resume gives the step a new clock."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from flywheel.config import load_settings
from flywheel.errors import DataError
from flywheel.rollout import actions
from flywheel.rollout.controller import tick
from flywheel.rollout.counters import ArmCounter, ArmCounts
from flywheel.rollout.plan import RolloutPlan, load_plan
from flywheel.rollout.store import RolloutState
from flywheel.workspace import Workspace


def test_the_deadline_is_a_duration_at_least_the_interval_or_none(tmp_path: Path) -> None:
    assert RolloutPlan(challenger="2").step_deadline is None  # by default a step waits
    assert RolloutPlan(challenger="2", step_deadline="30m").step_deadline == 1800.0
    assert RolloutPlan(challenger="2", step_deadline="none").step_deadline is None
    off = tmp_path / "plan.yaml"
    off.write_text('challenger: "2"\nstep_deadline: off\n')  # YAML reads a bare off as false
    assert load_plan(off).step_deadline is None
    with pytest.raises(DataError, match=r"steps: .*canary only"):
        load_plan({"challenger": "2", "strategy": "ab", "steps": []})
    with pytest.raises(DataError, match=r"step_deadline: .*at least the interval"):
        load_plan({"challenger": "2", "interval": "5m", "step_deadline": "2m"})
    with pytest.raises(DataError, match=r"step_deadline: .*duration like 30s"):
        load_plan({"challenger": "2", "step_deadline": "soon"})
    with pytest.raises(DataError, match=r"step_deadline: .*must be > 0"):
        load_plan({"challenger": "2", "step_deadline": 0})


def _arm(requests: int, rng: np.random.Generator) -> ArmCounts:
    counter = ArmCounter()
    for ms in rng.gamma(4.0, 0.5, requests):
        counter.answered(float(ms))
    counter.scored(rng.beta(2, 5, (requests, 2)).astype(np.float32))
    return counter.snapshot()


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace(load_settings(home=tmp_path / ".flywheel"))


def _start(ws: Workspace, strategy: str = "canary", weight: float = 5.0) -> RolloutState:
    plan = RolloutPlan(
        challenger="2",
        strategy=strategy,  # type: ignore[arg-type]
        interval=60,
        min_requests=100,
        step_deadline="10m",
        guardrails={"metric": "none"},
    )
    now = time.time()
    return actions.store_of(ws).create(
        RolloutState(
            id="", model="churn", status="running", strategy=strategy, champion="1",
            challenger="2", step=0, weight=weight, plan=plan.to_dict(), started_at=now,
            step_started_at=now, updated_at=now, revision=1, reason="test", evidence={},
            who="me",
        )
    )  # fmt: skip


def _counts(ws: Workspace, state: RolloutState, champion: int, challenger: int) -> None:
    rng = np.random.default_rng(3)
    arms = {"champion": _arm(champion, rng), "challenger": _arm(challenger, rng)}
    actions.store_of(ws).put_counts(state.id, "replica-a", state.step, arms)


def test_a_step_still_waiting_at_its_deadline_pauses_and_says_why(ws: Workspace) -> None:
    state = _start(ws)
    _counts(ws, state, 1520, 80)  # 5% of keys, but 80 of the 100 requests it needs: waiting
    t0 = state.step_started_at
    state = tick(ws, state, now=t0 + 599)  # the state it returns has the newest revision
    assert state.status == "running"
    paused = tick(ws, state, now=t0 + 601)
    assert paused.status == "paused" and paused.weight == 5.0  # held at its weights
    assert "step 1 (5%) inconclusive after 10.0 min (step_deadline 10.0 min)" in paused.reason
    assert "requests (80 of 100 per arm)" in paused.reason and "resume, promote" in paused.reason
    assert "metric" not in paused.reason  # it waits for labels but holds no step by default
    (entry,) = [e for e in ws.audit.entries("churn") if e.action == "rollout_pause"]
    assert entry.who == "flywheel-rollout" and "inconclusive" in entry.reason
    detail = json.loads(entry.reason.splitlines()[-1])
    assert detail["evidence"]["verdict"] == "waiting"

    resumed = actions.resume(ws, reason="more traffic tomorrow")  # the step's clock restarts
    again = tick(ws, resumed, now=resumed.step_started_at + 300)
    assert again.status == "running"
    assert tick(ws, again, now=resumed.step_started_at + 601).status == "paused"


def test_a_passed_step_advances_and_a_blue_green_before_its_switch_is_not_late(
    ws: Workspace,
) -> None:
    state = _start(ws)
    _counts(ws, state, 3800, 200)  # a like challenger with its requests: passes
    stepped = tick(ws, state, now=state.step_started_at + 3600)
    assert (stepped.status, stepped.step, stepped.weight) == ("running", 1, 25.0)
    actions.abort(ws, reason="next test")

    green = _start(ws, "bluegreen", weight=0.0)  # waits for `rollout switch`: a person's call
    assert tick(ws, green, now=green.step_started_at + 7200).status == "running"


def test_an_ab_test_undecided_at_its_deadline_pauses(ws: Workspace) -> None:
    state = _start(ws, "ab", weight=50.0)
    _counts(ws, state, 500, 500)  # no errors on either arm: the test cannot decide
    paused = tick(ws, state, now=state.step_started_at + 601)
    assert paused.status == "paused"
    assert "the A/B test on accuracy has not decided" in paused.reason, paused.reason


def test_status_tells_the_servers_reporting_from_the_silent_ones(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel.rollout import controller

    state = _start(ws)
    _counts(ws, state, 95, 5)  # replica-a wrote just now
    shown = controller.describe(ws, "churn")
    assert shown["replicas"] == ["replica-a"] and shown["replicas_silent"] == []
    monkeypatch.setattr(controller, "silent_after", lambda _ws: -1.0)  # as if long ago
    shown = controller.describe(ws, "churn")
    assert shown["replicas"] == [] and shown["replicas_silent"] == ["replica-a"]
