"""A step's analysis: each guardrail's check, and the A/B test's evidence.

Like Flagger's and Argo Rollouts' analyses, every check ends ``ok`` (passed), ``failed``
(with the value, the limit and by how much) or ``waiting`` (not enough samples yet); the
step's verdict is ``failed`` when any check failed, ``passed`` when every check that can be
made passed and the step has its requests, else ``waiting``. Comparisons that are tests use
the always-valid statistics of :mod:`flywheel.rollout.stats`, so judging a step after every
batch does not inflate false rollbacks.

Checks (challenger against the champion, on the current step's counts unless noted):

- ``error_rate``: the challenger's error rate above the champion's by more than
  ``max_error_rate`` (once it has 20 requests), or the always-valid interval of the difference wholly above
  ``max_error_rate_increase``;
- ``latency_p99``: challenger p99 > champion p99 x ``max_p99_ratio`` + ``p99_slack_ms``
  (each arm with ``min_requests`` answered requests), and more than 1% of its answers
  slower than that limit by an always-valid test (until then it waits: on 30 answers p99
  is the slowest one, and one stall must not roll back a good challenger);
- ``score_drift``: PSI of the challenger's scores against the champion's above
  ``max_score_psi`` plus the PSI that sampling alone adds at these sizes (the 99.9%
  quantile of its null, ~ chi2(k-1) x (1/n_a + 1/n_b)), once each arm has ``min_rows_psi``
  scored rows (not checked for a regressor: no class scores; a multiclass model's score is
  its predicted class); n counts independent draws: at most the distinct sticky keys'
  rows, and at most the distinct input rows when the champion's traffic had fewer than 20;
- ``metric`` (when labels arrive; all steps so far): the always-valid interval of
  challenger − champion (accuracy, recall, precision; abs_error reversed) wholly below
  ``-max_metric_drop``; it holds a step until it counts only with ``hold_for_labels``;
- ``sample_ratio``: the observed split differs from the configured one (a sequential test at
  ``srm_alpha``): not a breach of the challenger but of the experiment, so it pauses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from flywheel.rollout import stats
from flywheel.rollout.counters import (
    DISTINCT_INPUTS,
    SLOW_SHARE,
    percentile,
    psi,
    slow_beyond_chance,
)
from flywheel.rollout.plan import RolloutPlan
from flywheel.rollout.store import ArmCounts

__all__ = ["Analysis", "Check", "analyse", "metric_evidence"]


@dataclass
class Check:
    name: str
    status: str  # ok | failed | waiting
    value: float | None = None
    limit: float | None = None
    detail: str = ""
    holds: bool = True  # its waiting holds the step (the metric: only with hold_for_labels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Analysis:
    verdict: str  # passed | failed | waiting | mismatch
    checks: list[Check]
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    test: dict[str, Any] | None = None  # the A/B test's (or the metric's) evidence
    requests: str = ""  # the step's requests, when too few hold it: "150 of 200 per arm"

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "failed"]

    def summary(self) -> str:
        if self.verdict == "failed":
            return "; ".join(f"{c.name}: {c.detail}" for c in self.failed)
        if self.verdict == "mismatch":
            return next(c.detail for c in self.checks if c.name == "sample_ratio")
        waiting = [c.name for c in self.checks if c.status == "waiting" and c.holds]
        if self.verdict == "waiting" and self.requests:
            waiting.append(f"requests ({self.requests})")
        return "all checks passed" if not waiting else f"waiting for {', '.join(waiting)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "summary": self.summary(),
            "checks": [c.to_dict() for c in self.checks],
            "arms": self.arms,
            "test": self.test,
        }


def _fmt(x: float | None, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.4g}{unit}"


def _error_rate(plan: RolloutPlan, a: ArmCounts, b: ArmCounts) -> Check:
    g = plan.guardrails
    if b.requests < 20:
        return Check("error_rate", "waiting", detail=f"{b.requests} of 20 challenger requests")
    rate = b.errors / b.requests
    base = a.errors / a.requests if a.requests else 0.0
    if rate - base > g.max_error_rate:
        return Check(
            "error_rate",
            "failed",
            rate,
            base + g.max_error_rate,
            f"challenger error rate {rate:.2%} ({b.errors} of {b.requests} requests) > "
            f"champion's {base:.2%} + {g.max_error_rate:.2%}, by "
            f"{rate - base - g.max_error_rate:.2%}",
        )
    if a.requests >= 20:
        ev = stats.proportion_test(
            "error_rate",
            a.requests,
            a.errors,
            b.requests,
            b.errors,
            alpha=plan.alpha,
            higher_is_better=False,
        )
        if ev.low > g.max_error_rate_increase:
            return Check(
                "error_rate",
                "failed",
                ev.difference,
                g.max_error_rate_increase,
                f"challenger error rate {ev.challenger:.2%} vs champion {ev.champion:.2%}: "
                f"higher by at least {ev.low:.2%} (always-valid {1 - plan.alpha:.0%} interval)",
            )
    return Check(
        "error_rate", "ok", rate, base + g.max_error_rate, f"{rate:.2%} (champion {base:.2%})"
    )


def _latency(plan: RolloutPlan, a: ArmCounts, b: ArmCounts) -> Check:
    g = plan.guardrails
    need = min(plan.min_requests, 100)
    done_a, done_b = a.requests - a.errors, b.requests - b.errors
    if done_a < need or done_b < need:
        return Check("latency_p99", "waiting", detail=f"{min(done_a, done_b)} of {need} answers")
    pa, pb = percentile(a.latency_hist, 0.99), percentile(b.latency_hist, 0.99)
    assert pa is not None and pb is not None
    limit = pa * g.max_p99_ratio + g.p99_slack_ms
    if pb <= limit:
        return Check("latency_p99", "ok", pb, limit, f"{pb:.1f} ms (champion {pa:.1f} ms)")
    # on a few dozen answers p99 is the slowest one: a loaded box's one stall must wait
    breach, slow, n, p_value = slow_beyond_chance(b.latency_hist, limit, plan.alpha)
    over = (
        f"challenger p99 {pb:.1f} ms > {limit:.1f} ms (champion {pa:.1f} ms x "
        f"{g.max_p99_ratio:g} + {g.p99_slack_ms:g} ms)"
    )
    if breach:
        return Check(
            "latency_p99",
            "failed",
            pb,
            limit,
            f"{over}, by {pb - limit:.1f} ms: {slow} of {n} answers slower than the limit "
            f"(always-valid p = {p_value:.2g} against {SLOW_SHARE:.0%})",
        )
    return Check(
        "latency_p99",
        "waiting",
        pb,
        limit,
        f"{over} on {slow} slow of {n} answers: not yet more than {SLOW_SHARE:.0%} beyond "
        f"chance (always-valid p = {p_value:.2g}); more answers decide",
    )


def chi2_quantile(df: int, z: float = 3.09) -> float:
    """The chi-squared quantile at the normal quantile ``z`` (3.09: 99.9%), by
    Wilson-Hilferty (within 1% for df >= 3; no scipy in the serving install)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def _independent(arm: ArmCounts, inputs: int = 0) -> float:
    """The rows that count as independent draws: a key sending the same rows again adds
    none, so with sticky keys counted, at most (distinct keys x rows per request); and at
    most ``inputs`` (> 0: the few distinct inputs both arms answered over and again)."""
    rows = float(sum(arm.score_hist))
    if arm.units and arm.requests:
        rows = min(rows, arm.units * rows / max(arm.requests - arm.errors, 1))
    if inputs:
        rows = min(rows, float(inputs))
    return max(rows, 1.0)


def _few_inputs(champion: ArmCounts) -> int:
    """How many distinct input rows the traffic had, when they were few (fewer than
    DISTINCT_INPUTS: the same rows sent again and again); else 0. The rows, not the scores:
    a model with coarse scores (a 5-nearest-neighbours' six values) on varied traffic is
    judged on every row. The champion's arm: its traffic is the reference."""
    n = len(champion.inputs)
    return n if 0 < n < DISTINCT_INPUTS else 0


def _drift(plan: RolloutPlan, a: ArmCounts, b: ArmCounts) -> Check:
    g = plan.guardrails
    rows_a, rows_b = sum(a.score_hist), sum(b.score_hist)
    if not (a.rows or b.rows) and a.requests > a.errors and b.requests > b.errors:
        # both arms answered and neither scored a row: a regressor, whose predictions have
        # no [0, 1] score to bin (this check waited for them for ever, so a regression
        # canary never passed a step); the metric (abs_error, with labels) judges it
        return Check("score_drift", "ok", detail="not checked: a regressor has no class scores")
    if rows_a < g.min_rows_psi or rows_b < g.min_rows_psi:
        return Check(
            "score_drift", "waiting", detail=f"{min(rows_a, rows_b)} of {g.min_rows_psi} rows"
        )
    value = psi(a.score_hist, b.score_hist)
    # PSI of two samples of one distribution is ~ chi2(k-1) x (1/n_a + 1/n_b): sampling
    # alone adds that much to the true PSI (a bias and its noise), so on a few hundred rows
    # a challenger whose true PSI is half the limit would pass it at some peek. Breach only
    # past the limit plus that null's 99.9% quantile (the allowance shrinks as 1/n).
    bins = sum(1 for x, y in zip(a.score_hist, b.score_hist, strict=True) if x or y)
    few = _few_inputs(a)
    n_a, n_b = _independent(a, few), _independent(b, few)
    null = chi2_quantile(max(bins - 1, 1)) * (1.0 / n_a + 1.0 / n_b)
    limit = g.max_score_psi + null
    inputs = (
        f"; the champion answered {few} distinct inputs again and again, so each arm "
        f"counts as {few} draws"
        if few
        else ""
    )
    if value is not None and value > limit:
        return Check(
            "score_drift",
            "failed",
            value,
            limit,
            f"score PSI against the champion {value:.3f} > {limit:.3f} (max_score_psi "
            f"{g.max_score_psi:g} + {null:.3f} that chance alone adds at these sizes), "
            f"by {value - limit:.3f}{inputs}",
        )
    return Check(
        "score_drift", "ok", value, limit, f"PSI {_fmt(value)} (limit {limit:.3f}){inputs}"
    )


def metric_evidence(
    metric: str,
    champion: Mapping[str, Any] | None,
    challenger: Mapping[str, Any] | None,
    alpha: float,
) -> stats.Evidence | None:
    """The always-valid test of ``metric`` between two arms' labelled outcomes (dicts of
    :class:`flywheel.predlog.outcomes.Outcome` fields); None without outcomes."""
    if champion is None or challenger is None:
        return None
    a, b = champion, challenger
    if metric == "accuracy":
        return stats.proportion_test(
            metric, a["labelled"], a["correct"], b["labelled"], b["correct"], alpha=alpha
        )
    if metric == "recall":
        return stats.proportion_test(
            metric, a["positives"], a["caught"], b["positives"], b["caught"], alpha=alpha
        )
    if metric == "precision":
        return stats.proportion_test(
            metric,
            a["predicted_positive"],
            a["caught"],
            b["predicted_positive"],
            b["caught"],
            alpha=alpha,
        )
    if metric == "abs_error":
        return stats.mean_test(
            metric,
            a["labelled"],
            a["abs_error_sum"],
            a["sq_error_sum"],
            b["labelled"],
            b["abs_error_sum"],
            b["sq_error_sum"],
            alpha=alpha,
            higher_is_better=False,
        )
    return None


def _metric(
    plan: RolloutPlan, outcomes: Mapping[str, Mapping[str, Any]] | None
) -> tuple[Check, stats.Evidence | None]:
    g = plan.guardrails
    if g.metric == "none":
        return Check("metric", "ok", detail="not checked (guardrails.metric: none)"), None
    a = (outcomes or {}).get("champion")
    b = (outcomes or {}).get("challenger")
    labelled = min(a["labelled"] if a else 0, b["labelled"] if b else 0)
    if labelled < g.min_labels:
        return Check("metric", "waiting", detail=f"{labelled} of {g.min_labels} labels"), None
    ev = metric_evidence(g.metric, a, b, plan.alpha)
    if ev is None or ev.n_champion < 2 or ev.n_challenger < 2:
        detail = f"too few rows for {g.metric}"
        if g.metric in ("recall", "precision"):
            detail += (
                f" among {labelled} labelled per arm: it counts rows of the positive class "
                "(or predicted positive), which only a binary classifier has"
            )
        return Check("metric", "waiting", detail=detail), ev
    worse_by = -ev.high if g.metric != "abs_error" else ev.low
    if worse_by > g.max_metric_drop:
        return (
            Check(
                "metric",
                "failed",
                ev.difference,
                -g.max_metric_drop,
                f"{g.metric} {ev.challenger:.4g} vs champion {ev.champion:.4g}: worse by at "
                f"least {worse_by:.4g} (always-valid {1 - plan.alpha:.0%} interval "
                f"[{ev.low:.4g}, {ev.high:.4g}])",
            ),
            ev,
        )
    return Check(
        "metric",
        "ok",
        ev.difference,
        -g.max_metric_drop,
        f"{g.metric} {ev.challenger:.4g} vs {ev.champion:.4g}",
    ), ev


def _srm(plan: RolloutPlan, weight: float, a: ArmCounts, b: ArmCounts) -> Check:
    if plan.strategy not in ("canary", "ab") or not 0 < weight < 100:
        return Check("sample_ratio", "ok", detail="not applicable")
    # units of assignment: distinct sticky keys when counted (one customer's requests are
    # not independent draws), else requests
    n_a, n_b = (a.units, b.units) if a.units + b.units else (a.requests, b.requests)
    if n_a + n_b < 100:
        return Check("sample_ratio", "waiting", detail=f"{n_a + n_b} of 100 keys")
    ev = stats.srm_test(n_a, n_b, weight / 100.0, alpha=plan.srm_alpha)
    share = n_b / (n_a + n_b)
    if ev.decided:
        return Check(
            "sample_ratio",
            "failed",
            share,
            weight / 100.0,
            f"the challenger got {share:.2%} of keys, configured {weight:g}% "
            f"(always-valid p = {ev.p_value:.2g}): the split is not what was asked; paused",
        )
    return Check("sample_ratio", "ok", share, weight / 100.0, f"{share:.2%} of {weight:g}%")


def analyse(
    plan: RolloutPlan,
    weight: float,
    step_counts: Mapping[str, ArmCounts],
    outcomes: Mapping[str, Mapping[str, Any]] | None = None,
) -> Analysis:
    """Judge the current step. ``step_counts``: "champion" and "challenger" (for shadow:
    the mirrored scoring, counted as the challenger) summed over replicas; ``outcomes``:
    "champion" and "challenger" labelled outcomes since the rollout began."""
    from flywheel.rollout.counters import as_dict

    a = step_counts.get("champion", ArmCounts())
    b = step_counts.get("challenger", ArmCounts())
    checks = [_error_rate(plan, a, b), _latency(plan, a, b), _drift(plan, a, b)]
    metric, evidence = _metric(plan, outcomes)
    metric.holds = plan.guardrails.hold_for_labels
    checks.append(metric)
    srm = _srm(plan, weight, a, b)
    checks.append(srm)
    arms = {"champion": as_dict(a), "challenger": as_dict(b)}
    test = evidence.to_dict() if evidence is not None else None
    fewest = min(a.requests, b.requests)
    few = f"{fewest} of {plan.min_requests} per arm" if fewest < plan.min_requests else ""
    if any(c.status == "failed" for c in checks if c.name != "sample_ratio"):
        verdict = "failed"
    elif srm.status == "failed":
        verdict = "mismatch"
    elif any(c.status == "waiting" and c.holds for c in checks) or few:
        verdict = "waiting"
    else:
        verdict = "passed"  # the metric may still wait for labels: it holds a step only
        # with guardrails.hold_for_labels
    return Analysis(verdict, checks, arms, test, few)
