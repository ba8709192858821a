"""The model card: one Markdown page per registered version, written at registration.

It travels inside the registered model (``extra_files/model_card.md``) and is also the
version's description in MLflow, so whoever looks at a version (UI, ``flywheel`` CLI, a
reviewer approving a promotion) sees the data, the numbers and the lineage behind it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flywheel.data.snapshots import Manifest
from flywheel.registry.onnx_export import ParityReport
from flywheel.training.evaluate import Evaluation
from flywheel.training.gates import GateReport
from flywheel.training.train import TrainResult

__all__ = ["CardContext", "render_model_card"]

_TOP_SLICE_GAPS = 5


@dataclass(frozen=True)
class CardContext:
    """Everything about a version that is not in the training result or the evaluation."""

    name: str
    version: str
    onnx_sha256: str
    created_at: str
    created_by: str
    git_commit: str | None = None
    package_version: str | None = None
    snapshot_sha256: str | None = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    return str(value)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _overview(ctx: CardContext, result: TrainResult) -> list[str]:
    return [
        f"# Model card: {ctx.name} v{ctx.version}",
        "",
        f"- **Task:** {result.task} of `{result.target}`"
        + (f" (classes: {', '.join(map(str, result.classes))})" if result.classes else ""),
        f"- **Family:** {result.family}",
        f"- **Registered:** {ctx.created_at} by {ctx.created_by}",
        f"- **ONNX sha256:** `{ctx.onnx_sha256}`",
        "",
    ]


def _data(result: TrainResult, manifest: Manifest | None, snapshot_sha: str | None) -> list[str]:
    lines = ["## Training data", ""]
    lines.append(f"- **Dataset:** {result.dataset}")
    lines.append(f"- **Snapshot:** `{result.snapshot_id}`")
    sha = manifest.sha256 if manifest else snapshot_sha
    lines.append(f"- **Snapshot sha256:** `{sha or 'unknown'}`")
    if manifest is None:
        return [*lines, "- Manifest not readable at registration time.", ""]
    lines.append(f"- **Rows:** {manifest.rows}")
    if manifest.time_range:
        start, end = manifest.time_range
        lines.append(f"- **Time range** ({manifest.timestamp_column}): {start} → {end}")
    if manifest.contract_version:
        lines.append(f"- **Data contract:** {manifest.contract_version}")
    features = ", ".join(f"{s.name} ({s.kind})" for s in result.feature_specs)
    return [*lines, f"- **Features ({len(result.feature_specs)}):** {features}", ""]


def _hyperparams(result: TrainResult) -> list[str]:
    if not result.hyperparams:
        return ["## Hyperparameters", "", "Estimator defaults.", ""]
    rows = sorted((k, json.dumps(v, default=str)) for k, v in result.hyperparams.items())
    return ["## Hyperparameters", "", *_table(["name", "value"], rows), ""]


def _metrics(result: TrainResult, evaluation: Evaluation) -> list[str]:
    lines = ["## Metrics", "", f"Primary metric: **{evaluation.primary_metric}**.", ""]
    names = sorted(evaluation.metrics)
    champion = evaluation.champion_metrics or {}
    rows = []
    for name in names:
        mean = result.cv_metrics.get(f"{name}_cv_mean")
        std = result.cv_metrics.get(f"{name}_cv_std")
        cv = f"{mean:.4g} ± {std:.2g}" if mean is not None and std is not None else None
        rows.append((name, evaluation.metrics[name], cv, champion.get(name)))
    champ_head = (
        f"champion v{evaluation.champion_version}" if evaluation.champion_version else ("champion")
    )
    return [*lines, *_table(["metric", "holdout", "CV mean ± std", champ_head], rows), ""]


_SOURCES = {
    "cv_out_of_fold": "the out-of-fold CV predictions of the training part",
    "validation_split": "an inner validation split of the training part (CV was off)",
    "fixed": "params.yaml (a fixed value)",
    "default": "no tuning (the default)",
}
_OBJECTIVES = {
    "f1": "maximise F1",
    "cost": "minimise the expected cost",
    "recall": "the highest precision at the minimum recall",
    "fixed": "fixed",
}


def _threshold(result: TrainResult, evaluation: Evaluation) -> list[str]:
    lines = ["## Decision threshold", ""]
    choice = result.threshold
    if choice is None:
        if result.task == "classification":
            return [*lines, "Labels are the most probable class (argmax).", ""]
        return []
    lines.append(
        f"A row is labelled `{result.classes[1] if result.classes else 1}` (the positive "
        f"class) where its probability is >= **{choice.value:.4g}**, in the ONNX graph "
        "itself, so every consumer of the model gets the same labels. Objective: "
        f"{_OBJECTIVES.get(choice.objective, choice.objective)}; chosen on "
        f"{_SOURCES.get(choice.source, choice.source)}"
        + (f", {choice.rows} rows" if choice.rows else "")
        + ". The holdout was not used; its metrics above are at this threshold."
    )
    if choice.note:
        lines.append(f"Note: {choice.note}.")
    if choice.validation:
        rows = sorted(choice.validation.items())
        lines += ["", *_table(["validation metric at the threshold", "value"], rows)]
    if evaluation.champion_threshold is not None:
        lines += [
            "",
            f"The champion was scored at its own threshold, {_fmt(evaluation.champion_threshold)}.",
        ]
    return [*lines, ""]


def _slices(evaluation: Evaluation) -> list[str]:
    gaps = [
        (column, metric, gap)
        for column, by_metric in evaluation.slice_gaps.items()
        for metric, gap in by_metric.items()
    ]
    if not gaps:
        return ["## Slices", "", "No slice columns were evaluated.", ""]
    gaps.sort(key=lambda g: -g[2])
    rows = [(c, m, g) for c, m, g in gaps[:_TOP_SLICE_GAPS]]
    return [
        "## Slices (largest gaps)",
        "",
        *_table(["column", "metric", "gap (max − min over values)"], rows),
        "",
    ]


def _gates(report: GateReport) -> list[str]:
    verdict = "passed" if report.passed else "FAILED"
    rows = [
        (r.gate, r.metric, "pass" if r.passed else "FAIL", r.value, r.threshold, r.detail)
        for r in report.results
    ]
    header = ["gate", "metric", "result", "value", "threshold", "detail"]
    return [f"## Quality gates: {verdict}", "", *_table(header, rows), ""]


def _champion(evaluation: Evaluation) -> list[str]:
    lines = ["## Compared with the champion", ""]
    if not evaluation.champion_version or not evaluation.champion_metrics:
        return [*lines, "No champion existed at evaluation time.", ""]
    metric = evaluation.primary_metric
    mine = evaluation.metrics.get(metric)
    theirs = evaluation.champion_metrics.get(metric)
    delta = f"{mine - theirs:+.4g}" if mine is not None and theirs is not None else "—"
    return [
        *lines,
        f"On the same holdout, {metric} is {_fmt(mine)} against champion "
        f"v{evaluation.champion_version}'s {_fmt(theirs)} (Δ {delta}).",
        "",
    ]


def _parity(parity: ParityReport) -> list[str]:
    kind = "relative" if parity.relative else "absolute"
    return [
        "## ONNX parity",
        "",
        f"ONNX Runtime vs the native pipeline on {parity.rows} holdout rows: max {kind} "
        f"|Δ| {parity.max_abs_diff:.3g} (tolerance {parity.tolerance:g}), "
        f"{parity.rows_over_tolerance} rows over tolerance, "
        f"{parity.label_mismatches} label mismatches.",
        "",
    ]


def _use_and_limits(result: TrainResult) -> list[str]:
    return [
        "## Intended use",
        "",
        f"Scoring rows shaped like dataset `{result.dataset}` ({result.task} of "
        f"`{result.target}`) through flywheel serving, which loads only this ONNX file after "
        "checking its sha256. Decisions about individual people should keep a human in the loop.",
        "",
        "## Limitations",
        "",
        "- Trained on one snapshot: quality holds only while live data resembles it; watch the "
        "drift monitor.",
        "- Slices with few rows have noisy metrics; gaps above are estimates.",
        "- Categories unseen in training are encoded as all-zero (treated as unknown).",
        "",
    ]


def _lineage(ctx: CardContext, result: TrainResult) -> list[str]:
    return [
        "## Lineage",
        "",
        f"- **MLflow run:** `{result.run_id}`",
        f"- **Training pipeline:** `{result.model_uri}`",
        f"- **Git commit:** `{ctx.git_commit or 'unknown'}`",
        f"- **flywheel version:** {ctx.package_version or 'unknown'}",
        "",
    ]


def render_model_card(
    ctx: CardContext,
    *,
    result: TrainResult,
    evaluation: Evaluation,
    gate_report: GateReport,
    parity: ParityReport,
    manifest: Manifest | None,
) -> str:
    """The card for one version as Markdown."""
    sections = [
        _overview(ctx, result),
        _data(result, manifest, ctx.snapshot_sha256),
        _hyperparams(result),
        _metrics(result, evaluation),
        _threshold(result, evaluation),
        _slices(evaluation),
        _gates(gate_report),
        _champion(evaluation),
        _parity(parity),
        _use_and_limits(result),
        _lineage(ctx, result),
    ]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"
