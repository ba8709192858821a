"""Quality gates: metric floors/ceilings, slice gaps, not worse than the champion.

A gate on a metric the task does not produce (``r2`` for a classifier) is not applicable
and is left out of the report. Every result says what was checked and, when it failed, by
how much.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from flywheel.config import GateSettings
from flywheel.errors import FlywheelError, RegistryError
from flywheel.tracking import TAG
from flywheel.training.evaluate import Evaluation
from flywheel.training.metrics import higher_is_better

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = ["GateReport", "GateResult", "check_gates", "record_gates"]

log = logging.getLogger("flywheel.training")


@dataclass(frozen=True)
class GateResult:
    gate: str  # "min_metric" | "max_metric" | "max_slice_gap" | "vs_champion"
    metric: str
    passed: bool
    value: float
    threshold: float
    detail: str  # human sentence incl. by how much it failed


@dataclass
class GateReport:
    passed: bool
    results: list[GateResult]

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        """One line per gate, failures first, headed by the verdict."""
        head = "gates passed" if self.passed else f"gates FAILED ({len(self.failures)} failed)"
        ordered = sorted(self.results, key=lambda r: r.passed)
        lines = [f"  [{'ok' if r.passed else 'FAIL'}] {r.detail}" for r in ordered]
        return "\n".join([f"{head}: {len(self.results)} checked", *lines])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``gate_report.json`` holds)."""
        results = [
            {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(r).items()
            }
            for r in self.results
        ]
        return {"passed": self.passed, "results": results}


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _floor(metric: str, value: float, floor: float) -> GateResult:
    passed = value >= floor
    detail = (
        f"holdout {metric} {_fmt(value)} is at or above the minimum {_fmt(floor)}"
        if passed
        else f"holdout {metric} {_fmt(value)} is below the minimum {_fmt(floor)} "
        f"by {_fmt(floor - value)}"
    )
    return GateResult("min_metric", metric, passed, value, floor, detail)


def _ceiling(metric: str, value: float, ceiling: float) -> GateResult:
    passed = value <= ceiling
    detail = (
        f"holdout {metric} {_fmt(value)} is at or below the maximum {_fmt(ceiling)}"
        if passed
        else f"holdout {metric} {_fmt(value)} is above the maximum {_fmt(ceiling)} "
        f"by {_fmt(value - ceiling)}"
    )
    return GateResult("max_metric", metric, passed, value, ceiling, detail)


def _slice_gap(column: str, metric: str, gap: float, limit: float) -> GateResult:
    passed = gap <= limit
    detail = (
        f"{metric} gap between {column} slices {_fmt(gap)} is within {_fmt(limit)}"
        if passed
        else f"{metric} gap between {column} slices {_fmt(gap)} exceeds the maximum "
        f"{_fmt(limit)} by {_fmt(gap - limit)}"
    )
    return GateResult("max_slice_gap", f"{column}:{metric}", passed, gap, limit, detail)


def _on(ev: Evaluation) -> str:
    if ev.comparison_rows is None:
        return ""
    return f" (on the {ev.comparison_rows} holdout rows the champion did not train on)"


def _vs_champion(ev: Evaluation, margin: float) -> GateResult | None:
    metric = ev.primary_metric
    if ev.champion_error is not None:
        return GateResult(
            "vs_champion",
            metric,
            False,
            float("nan"),
            float("nan"),
            f"champion {ev.champion_version} could not score the holdout "
            f"({ev.champion_error}); compare by hand or promote explicitly",
        )
    champ = (ev.champion_metrics or {}).get(metric)
    # Same rows for both: the holdout rows the champion never trained on.
    value = (ev.comparison_metrics if ev.comparison_metrics is not None else ev.metrics).get(metric)
    if champ is None or value is None:
        if ev.champion_version is not None and ev.comparison_rows is not None:
            return GateResult(
                "vs_champion",
                metric,
                True,
                float("nan"),
                float("nan"),
                f"not compared with champion {ev.champion_version}: {ev.comparison_rows} holdout "
                f"rows it did not train on, too few to score {metric}",
            )
        return None
    higher = higher_is_better(metric)
    threshold = champ - margin if higher else champ + margin
    worse_by = (champ - value) if higher else (value - champ)
    passed = value >= threshold if higher else value <= threshold
    verb = "below" if higher else "above"
    detail = (
        f"holdout {metric} {_fmt(value)} vs champion {ev.champion_version} "
        f"{_fmt(champ)} is within the margin {_fmt(margin)}{_on(ev)}"
        if passed
        else f"holdout {metric} {_fmt(value)} is {verb} champion {ev.champion_version}'s "
        f"{_fmt(champ)} by {_fmt(worse_by)}, more than the margin {_fmt(margin)}{_on(ev)}"
    )
    return GateResult("vs_champion", metric, passed, value, threshold, detail)


def check_gates(gates: GateSettings, evaluation: Evaluation) -> GateReport:
    """Apply every applicable gate to an evaluation."""
    results: list[GateResult] = []
    for metric, floor in gates.min_metrics.items():
        if metric in evaluation.metrics:
            results.append(_floor(metric, evaluation.metrics[metric], floor))
    for metric, ceiling in gates.max_metrics.items():
        if metric in evaluation.metrics:
            results.append(_ceiling(metric, evaluation.metrics[metric], ceiling))
    for metric, limit in gates.max_slice_gap.items():
        for column, gaps in evaluation.slice_gaps.items():
            if metric in gaps:
                results.append(_slice_gap(column, metric, gaps[metric], limit))
    champion = _vs_champion(evaluation, gates.champion_margin)
    if champion is not None:
        results.append(champion)
    report = GateReport(passed=all(r.passed for r in results), results=results)
    log.info("run %s: %s", evaluation.run_id, report.summary())
    return report


def record_gates(ws: Workspace, run_id: str, report: GateReport) -> None:
    """Log ``gate_report.json`` and the tag ``flywheel.gates`` = passed|failed on the run."""
    try:
        client = ws.client
        client.log_text(run_id, json.dumps(report.to_dict(), indent=2), "gate_report.json")
        client.set_tag(run_id, TAG["gates"], "passed" if report.passed else "failed")
    except FlywheelError:
        raise
    except Exception as exc:  # MLflow raises many types; translate at the boundary
        raise RegistryError(
            f"Could not record the gate report on run {run_id}: {exc}. "
            "Check tracking.uri and the artifact store.",
            run_id=run_id,
        ) from exc
