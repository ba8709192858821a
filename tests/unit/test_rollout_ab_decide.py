"""The A/B decision against the plan's other rules: a winner is promoted with the guardrails
(not while one still waits), and a test paused undecided at ``max_requests`` gets
``max_requests`` more per arm when resumed (it was paused again at once)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from flywheel.config import load_settings
from flywheel.rollout import actions
from flywheel.rollout.controller import tick
from flywheel.rollout.counters import ArmCounter, ArmCounts
from flywheel.rollout.plan import RolloutPlan
from flywheel.rollout.store import RolloutState
from flywheel.workspace import Workspace


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace(load_settings(home=tmp_path / ".flywheel"))


def _arm(requests: int, errors: int, rng: np.random.Generator) -> ArmCounts:
    counter = ArmCounter()
    answered = requests - errors
    for i, ms in enumerate(rng.gamma(4.0, 0.5, answered)):
        counter.answered(float(ms), key=f"k{i}-{rng.integers(1 << 30)}")
    for _ in range(errors):
        counter.failed()
    counter.scored(rng.beta(2, 5, (answered, 2)).astype(np.float32))
    return counter.snapshot()


def _start(ws: Workspace, **plan: object) -> RolloutState:
    calm = {"metric": "none", "max_error_rate": 1.0, "max_error_rate_increase": 1.0}
    body = RolloutPlan.model_validate(
        {"challenger": "2", "strategy": "ab", "metric": "error_rate", "min_requests": 100,
         "guardrails": calm, **plan}
    )  # fmt: skip
    now = time.time()
    return actions.store_of(ws).create(
        RolloutState(
            id="", model="churn", status="running", strategy="ab", champion="1",
            challenger="2", step=0, weight=50.0, plan=body.to_dict(), started_at=now,
            step_started_at=now, updated_at=now - 10, revision=1, reason="test", evidence={},
            who="me",
        )
    )  # fmt: skip


def _counts(ws: Workspace, state: RolloutState, per_arm: tuple[int, int, int, int]) -> None:
    rng = np.random.default_rng(sum(per_arm))
    a_n, a_err, b_n, b_err = per_arm
    arms = {"champion": _arm(a_n, a_err, rng), "challenger": _arm(b_n, b_err, rng)}
    actions.store_of(ws).put_counts(state.id, "replica-a", state.step, arms)


def test_a_winner_waits_for_a_guardrail_still_waiting(ws: Workspace) -> None:
    state = _start(ws)
    # the champion fails 30% of 150 requests, the challenger none: the test decides, but
    # score drift has 150 of its 200 rows
    _counts(ws, state, (150, 45, 150, 0))
    after = tick(ws, state)
    assert after.status == "running", after.reason  # it promoted here before
    summary = after.evidence["summary"]
    assert summary.startswith("the challenger wins the A/B test; waiting for score_drift")
    assert after.evidence["test"]["winner"] == "challenger"


def test_resume_gives_an_undecided_test_max_requests_more(ws: Workspace) -> None:
    state = _start(ws, max_requests=200)
    _counts(ws, state, (300, 0, 300, 0))  # no difference to find: undecided
    paused = tick(ws, state)
    assert paused.status == "paused" and "A/B inconclusive after 300 per arm" in paused.reason
    resumed = actions.resume(ws, reason="more data")
    assert resumed.evidence[actions.AB_RESUMED_AT] == 300
    still = tick(ws, resumed)
    assert still.status == "running", still.reason  # paused again at once before
    _counts(ws, still, (520, 0, 520, 0))
    again = tick(ws, actions.store_of(ws).get(still.id) or still)
    assert again.status == "paused", again.reason
    assert "200 more since it was resumed at 300" in again.reason


def test_a_winner_waiting_for_a_guardrail_pauses_at_max_requests_or_its_deadline(
    ws: Workspace,
) -> None:
    """A guardrail that may never count (labels held for, none coming) must not keep an A/B
    running for ever: max_requests, then step_deadline, bound the wait as for an undecided
    test."""
    held = {"metric": "accuracy", "hold_for_labels": True, "max_error_rate": 1.0,
            "max_error_rate_increase": 1.0}  # fmt: skip
    state = _start(ws, max_requests=200, guardrails=held)
    _counts(ws, state, (300, 90, 300, 0))
    paused = tick(ws, state)
    assert paused.status == "paused", paused.reason
    assert paused.reason.startswith("A/B the challenger wins the A/B test; waiting for metric")
    actions.abort(ws, reason="next")
    state = _start(ws, step_deadline="10m", guardrails=held)
    _counts(ws, state, (150, 45, 150, 0))
    assert tick(ws, state, now=state.step_started_at + 60).status == "running"
    late = tick(ws, actions.store_of(ws).get(state.id) or state, now=state.step_started_at + 601)
    assert late.status == "paused" and "inconclusive after 10.0 min" in late.reason
    assert "the challenger wins the A/B test; waiting for score_drift, metric" in late.reason


def test_a_resume_after_a_pause_by_hand_does_not_extend_max_requests(ws: Workspace) -> None:
    state = _start(ws, max_requests=200)
    _counts(ws, state, (150, 0, 150, 0))
    state = tick(ws, state)
    actions.pause(ws, reason="look")
    resumed = actions.resume(ws, reason="go on")
    assert actions.AB_RESUMED_AT not in resumed.evidence
    _counts(ws, resumed, (300, 0, 300, 0))
    assert tick(ws, resumed).status == "paused"  # at 200, as planned


def test_the_ab_decision_gives_n_in_the_order_of_its_words(ws: Workspace) -> None:
    state = _start(ws)
    rng = np.random.default_rng(3)
    arms = {"champion": _arm(170, 0, rng), "challenger": _arm(200, 50, rng)}
    actions.store_of(ws).put_counts(state.id, "replica-a", state.step, arms)
    after = tick(ws, state)
    assert after.status == "rolled_back", after.reason
    assert after.reason.startswith("A/B on error_rate: challenger 0.25 vs champion 0 ")
    assert "n = 200/170)" in after.reason, after.reason  # challenger first, as the words
