"""The rollout's automation: judge the step, then advance, promote, pause or roll back.

:func:`tick` is called by every serving replica's rollout agent about once a second (and
by ``flywheel rollout status``, read-only, to show the evidence). It reads the counts of
the current step summed over replicas, the labelled outcomes since the rollout began (from
the prediction log) and runs :func:`flywheel.rollout.guardrails.analyse`:

- a failed guardrail rolls back at once (all traffic to the champion), naming the check
  and by how much;
- a sample-ratio mismatch pauses (the experiment, not the challenger, is broken);
- canary: a passed step that has run ``interval`` advances to the next weight, and the last
  one promotes (``promote: auto``) or waits for ``rollout promote``;
- ab: the always-valid test on ``metric`` decides: the challenger wins -> promote, the
  champion wins -> roll back; no decision by ``max_requests`` per arm -> pause
  (inconclusive);
- shadow, bluegreen: a passed observation waits for a person (or promotes when ``auto``);
- ``step_deadline`` (when set): a step (a canary's, an A/B test, a shadow's or a switched
  blue-green's observation) that has neither passed nor failed that long after it began ends
  inconclusive and pauses, like Argo Rollouts' Inconclusive: a person resumes (the step's
  clock restarts), promotes or aborts. A blue-green waiting for its switch is not late.

Transitions are compare-and-set on the state's revision, so when several replicas tick at
once exactly one of them acts and audits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from flywheel.registry.dora import format_duration
from flywheel.rollout import actions, stats
from flywheel.rollout.guardrails import Analysis, analyse, metric_evidence
from flywheel.rollout.plan import RolloutPlan
from flywheel.rollout.store import ArmCounts, RolloutState

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = ["ab_evidence", "describe", "evaluate", "outcomes", "tick"]

log = logging.getLogger("flywheel.rollout")

SYSTEM = "flywheel-rollout"


# Reading the labelled outcomes scans the rollout's log rows (~0.7 s per 200k rows on
# SQLite): each process does it at most every OUTCOMES_TTL_S, and never more than 5% of
# its time (the wait grows to 20x the last read's duration as the rollout's rows grow).
# Between reads, a cheap mark of the log's labels (their count and newest id) says whether
# any label arrived: when none did and both arms were already seen, the counts are the
# same and the rows are not read again (the wait after a check stays the last read's).
OUTCOMES_TTL_S = 10.0
# (url, rollout id) -> (next check, outcomes, labels mark, seconds the last read of the rows took)
_outcomes_cache: dict[tuple[str, str], tuple[float, dict[Any, Any], tuple[int, int], float]] = {}


def outcomes(ws: Workspace, state: RolloutState) -> dict[str, dict[str, Any]] | None:
    """Labelled outcomes since the rollout began: ``champion`` and ``challenger`` (the
    challenger's answers, or its shadow rows), as dicts; None when the log cannot be read.
    Cached per rollout for ``OUTCOMES_TTL_S``, and for as long as no label arrives."""
    from flywheel.predlog.outcomes import arm_outcomes, labels_mark

    url = ws.settings.serving.prediction_log_url or ""
    key = (url, state.id)
    role = "shadow" if state.strategy == "shadow" else "challenger"
    arms = ((state.champion or "", "champion"), (state.challenger, role))
    cached = _outcomes_cache.get(key)
    if cached is not None and time.monotonic() < cached[0]:
        found = cached[1]
    else:
        began = time.monotonic()
        try:
            mark = labels_mark(url)
            if cached is not None and cached[2] == mark and all(a in cached[1] for a in arms):
                found, took = cached[1], cached[3]  # no new label: the counts are the same
            else:
                found = arm_outcomes(url, state.model, state.started_at)
                took = time.monotonic() - began
        except Exception as exc:  # labels are optional evidence: a broken log must not stop it
            log.warning("rollout %s: labelled outcomes unavailable (%s)", state.id, exc)
            return None
        if len(_outcomes_cache) > 16:
            _outcomes_cache.clear()
        now = time.monotonic()
        _outcomes_cache[key] = (now + max(OUTCOMES_TTL_S, 20 * took), found, mark, took)
    return {
        name: arm.to_dict()
        for name, arm in zip(("champion", "challenger"), (found.get(a) for a in arms), strict=True)
        if arm is not None
    }


def ab_evidence(
    plan: RolloutPlan,
    totals: dict[str, ArmCounts],
    labelled: dict[str, dict[str, Any]] | None,
    previous_p: float = 1.0,
) -> stats.Evidence | None:
    """The A/B test on ``plan.metric`` (always valid; ``previous_p`` keeps it monotone)."""
    a, b = totals.get("champion", ArmCounts()), totals.get("challenger", ArmCounts())
    if plan.metric == "error_rate":
        return stats.proportion_test(
            "error_rate",
            a.requests,
            a.errors,
            b.requests,
            b.errors,
            alpha=plan.alpha,
            higher_is_better=False,
            previous_p=previous_p,
        )
    if plan.metric == "latency":
        return stats.mean_test(
            "latency_ms",
            a.requests - a.errors,
            a.latency_sum,
            a.latency_sumsq,
            b.requests - b.errors,
            b.latency_sum,
            b.latency_sumsq,
            alpha=plan.alpha,
            higher_is_better=False,
            previous_p=previous_p,
        )
    labelled = labelled or {}
    ev = metric_evidence(
        plan.metric, labelled.get("champion"), labelled.get("challenger"), plan.alpha
    )
    if ev is None or previous_p >= 1.0:
        return ev
    # keep the always-valid p-value monotone across ticks (its running minimum)
    return stats.running(replace(ev, p_value=previous_p), ev)


def evaluate(ws: Workspace, state: RolloutState) -> tuple[Analysis, stats.Evidence | None]:
    """The current step's analysis and (A/B) the test's evidence, read-only."""
    from flywheel.rollout.actions import store_of

    plan = RolloutPlan.model_validate(state.plan)
    store = store_of(ws)
    step_counts = store.counts(state.id, state.step)
    if state.weight >= 100:  # the champion answers nothing now: judge against all its steps
        step_counts["champion"] = store.counts(state.id).get("champion", ArmCounts())
    labelled = (
        outcomes(ws, state) if plan.guardrails.metric != "none" or plan.strategy == "ab" else None
    )
    analysis = analyse(plan, state.weight, step_counts, labelled)
    test = None
    if plan.strategy == "ab":
        totals = store.counts(state.id)
        test = ab_evidence(plan, totals, labelled, float(state.evidence.get("p_min", 1.0)))
        if test is not None:
            analysis.test = test.to_dict()
    return analysis, test


def tick(ws: Workspace, state: RolloutState, now: float | None = None) -> RolloutState:
    """One judgement of an active rollout; returns its (possibly new) state."""
    now = time.time() if now is None else now
    if state.status == "promoting":
        return actions.finish_promotion(ws, state)
    if state.status == "waiting" and state.evidence.get("approval") == "pending":
        return actions.finish_promotion(ws, state)  # promoted once someone approves
    if state.status != "running":
        return state
    plan = RolloutPlan.model_validate(state.plan)
    analysis, test = evaluate(ws, state)
    evidence = {"step": state.step, "weight": state.weight, **analysis.to_dict()}
    if test is not None:
        evidence["p_min"] = test.p_value
    if actions.AB_RESUMED_AT in state.evidence:  # max_requests counts again from a resume
        evidence[actions.AB_RESUMED_AT] = state.evidence[actions.AB_RESUMED_AT]
    if analysis.verdict == "failed":
        failed = analysis.failed[0]
        why = f"guardrail {failed.name} failed at step {state.step + 1} ({state.weight:g}%): {failed.detail}"
        return actions.roll_back(ws, state, why, evidence) or state
    if analysis.verdict == "mismatch":
        return _move(ws, state, "rollout_pause", analysis.summary(), evidence, status="paused")
    elapsed = now - state.step_started_at
    late = _inconclusive(state, plan, analysis, test, elapsed)
    if late is not None:
        return _move(ws, state, "rollout_pause", late, evidence, status="paused")
    if plan.strategy == "ab":
        return _decide_ab(ws, state, plan, analysis, test, evidence)
    if analysis.verdict != "passed" or elapsed < plan.interval:
        return _note(ws, state, evidence, now)
    if plan.strategy == "canary" and state.step < plan.last_step:
        step = state.step + 1
        weight = plan.weight_at(step)
        return _move(
            ws,
            state,
            "rollout_step",
            f"step {state.step + 1} ({state.weight:g}%) passed: {analysis.summary()}; "
            f"now {weight:g}%",
            evidence,
            step=step,
            weight=weight,
            step_started_at=now,
        )
    if plan.strategy == "bluegreen" and state.weight < 100:
        return _note(ws, state, evidence, now)  # the green side waits for `rollout switch`
    return _finish(ws, state, plan, f"{plan.strategy} passed: {analysis.summary()}", evidence)


def _inconclusive(
    state: RolloutState,
    plan: RolloutPlan,
    analysis: Analysis,
    test: stats.Evidence | None,
    elapsed: float,
) -> str | None:
    """Why the step ends inconclusive (its ``step_deadline`` passed undecided), else None."""
    deadline = plan.step_deadline
    if deadline is None or elapsed < deadline:
        return None
    if plan.strategy == "bluegreen" and state.weight < 100:
        return None  # waiting for `rollout switch`, a person's call: not late
    if plan.strategy == "ab":
        if test is not None and test.decided:
            if analysis.verdict != "waiting":
                return None
            # the challenger won, a guardrail still waits (a champion's win rolls back)
            undecided = "the challenger wins the A/B test; " + analysis.summary()
        else:
            undecided = "the A/B test on " + plan.metric + " has not decided"
            if analysis.verdict == "waiting":
                undecided += "; " + analysis.summary()
    elif analysis.verdict == "waiting":
        undecided = analysis.summary()
    else:
        return None
    return (
        f"step {state.step + 1} ({state.weight:g}%) inconclusive after "
        f"{format_duration(elapsed)} (step_deadline {format_duration(deadline)}): {undecided}; "
        "paused at its weights: "
        "resume, promote or abort by hand"
    )


def _decide_ab(
    ws: Workspace,
    state: RolloutState,
    plan: RolloutPlan,
    analysis: Analysis,
    test: stats.Evidence | None,
    evidence: dict[str, Any],
) -> RolloutState:
    if test is not None and test.decided:
        text = (
            f"A/B on {test.metric}: challenger {test.challenger:.4g} vs champion "
            f"{test.champion:.4g} (difference {test.difference:+.4g}, always-valid "
            f"{1 - plan.alpha:.0%} interval [{test.low:.4g}, {test.high:.4g}], p = "
            f"{test.p_value:.3g}, n = {test.n_challenger}/{test.n_champion})"  # the words' order
        )
        if test.winner != "challenger":
            return actions.roll_back(ws, state, f"{text}: the champion wins", evidence) or state
        if analysis.verdict == "passed":
            return _finish(ws, state, plan, f"{text}: the challenger wins", evidence)
        # the test has decided, a guardrail has not yet (e.g. score drift short of
        # min_rows_psi): the plan promotes with the guardrails, so it waits for them, within
        # max_requests and step_deadline; the test's p-value never rises again (p_min), so
        # the win stands meanwhile
        evidence["summary"] = f"the challenger wins the A/B test; {analysis.summary()}"
    n = min(test.n_champion, test.n_challenger) if test is not None else 0
    base = int(state.evidence.get(actions.AB_RESUMED_AT, 0))
    if n - base >= plan.max_requests:
        since = f", {plan.max_requests} more since it was resumed at {base}" if base else ""
        what = "inconclusive" if test is None or not test.decided else evidence["summary"]
        return _move(
            ws,
            state,
            "rollout_pause",
            f"A/B {what} after {n} per arm (max_requests {plan.max_requests}{since}): "
            "paused; resume for max_requests more, promote or abort by hand",
            evidence,
            status="paused",
        )
    return _note(ws, state, evidence, time.time())


def _finish(
    ws: Workspace, state: RolloutState, plan: RolloutPlan, why: str, evidence: dict[str, Any]
) -> RolloutState:
    if plan.promote == "auto":
        evidence = {**evidence, actions.PROMOTE_BY: SYSTEM}  # an automatic promotion
        new = ws_transition(ws, state, status="promoting", reason=why, evidence=evidence)
        return actions.finish_promotion(ws, new) if new is not None else state
    if state.evidence.get("passed"):
        return state
    return _move(
        ws,
        state,
        "rollout_step",
        f"{why}; waiting for `flywheel rollout promote`",
        {**evidence, "passed": True},
        status="waiting",
    )


def _move(
    ws: Workspace,
    state: RolloutState,
    action: str,
    why: str,
    evidence: dict[str, Any],
    **changes: Any,
) -> RolloutState:
    new = ws_transition(ws, state, reason=why, evidence=evidence, **changes)
    if new is None:
        return state
    actions.audit(ws, action, new, why, evidence, who=SYSTEM)
    log.info("rollout %s: %s", state.id, why)
    return new


def _note(ws: Workspace, state: RolloutState, evidence: dict[str, Any], now: float) -> RolloutState:
    """Keep the latest evidence on the state (at most every 2 s: status shows it)."""
    if now - state.updated_at < 2.0:
        return state
    return ws_transition(ws, state, evidence=evidence) or state


def ws_transition(ws: Workspace, state: RolloutState, **changes: Any) -> RolloutState | None:
    return actions.store_of(ws).transition(state, **changes)


def silent_after(ws: Workspace) -> float:
    """Seconds without counts after which a replica no longer counts as serving a rollout."""
    return max(10.0, 5 * ws.settings.rollout.poll_s)


def describe(ws: Workspace, model: str | None = None) -> dict[str, Any]:
    """What ``flywheel rollout status`` shows: the active (or last) rollout, its weights,
    per-arm counts (this step and in all), the current step's checks and the test's
    evidence, read-only."""
    from flywheel.rollout.counters import as_dict

    name = model or ws.settings.registry.model_name
    store = actions.store_of(ws)
    state = store.latest(name)
    if state is None:
        return {"model": name, "rollout": None}
    out: dict[str, Any] = {"model": name, "rollout": state.to_dict()}
    weights = {"champion": 100.0 - state.weight, "challenger": state.weight}
    if state.strategy == "shadow":
        weights["shadow_mirror"] = float(state.plan.get("mirror", 100.0))
    out["weights"] = weights
    out["arms"] = {arm: as_dict(c) for arm, c in store.counts(state.id, state.step).items()}
    out["arms_total"] = {arm: as_dict(c) for arm, c in store.counts(state.id).items()}
    seen = store.replicas_seen(state.id)
    if state.active:  # the servers routing and judging it now: each writes every poll_s
        since = time.time() - silent_after(ws)
        out["replicas"] = sorted(r for r, at in seen.items() if at >= since)
        out["replicas_silent"] = sorted(r for r, at in seen.items() if at < since)
        out["analysis"] = evaluate(ws, state)[0].to_dict()
    else:
        out["replicas"] = sorted(seen)
        out["analysis"] = state.evidence or None
    return out
