"""Building a :class:`Reference`: from a version's holdout at registration, a named
snapshot, or served traffic (a rolling reference).

The bins are cut on the reference rows; the score's bins also cut at the decision threshold
so that every bin predicts one class (what the label-free estimate needs). Calibration: per
score bin, how many reference rows it holds and how many were positive (binary) or
correctly predicted (multiclass).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from flywheel.monitoring.profile import (
    PREDICTION,
    SCORE,
    Bins,
    Reference,
    Task,
    as_text,
    categorical_bins,
    category_counts,
    numeric_bins,
    numeric_values,
    parallel,
)
from flywheel.monitoring.window import LABEL, count_window
from flywheel.schema import FeatureSpec

__all__ = ["as_text", "build_reference", "score_columns"]


def score_columns(
    task: Task,
    classes: Sequence[str] | None,
    predicted: np.ndarray,
    proba: np.ndarray | None,
) -> dict[str, pa.Array]:
    """``__score__`` and ``__prediction__`` from a model's outputs (labels, probabilities)."""
    if task == "regression":
        values = np.asarray(predicted, dtype=float)
        return {SCORE: pa.array(values), PREDICTION: pa.array(values)}
    cols: dict[str, pa.Array] = {PREDICTION: pa.array(as_text(predicted), pa.string())}
    if proba is not None and len(proba):
        p = np.asarray(proba, dtype=float).reshape(len(proba), -1)
        cols[SCORE] = pa.array(p[:, 1] if p.shape[1] == 2 else p.max(axis=1))
    return cols


def build_reference(
    *,
    model: str,
    version: str | None,
    source: str,
    frame: pa.Table,
    specs: Sequence[FeatureSpec],
    task: Task,
    classes: Sequence[Any] | None = None,
    threshold: float | None = None,
    target: str | None = None,
    metrics: Mapping[str, float] | None = None,
    primary_metric: str | None = None,
    importance: Mapping[str, float] | None = None,
) -> Reference:
    """The reference of ``frame``: feature columns, and ``__score__``/``__prediction__``
    (see :func:`score_columns`) and ``__label__`` (the truth) when known."""
    classes_text = as_text(classes) if classes is not None else None

    def feature_bins(spec: FeatureSpec) -> Bins:
        col = frame.column(spec.name) if spec.name in frame.column_names else pa.nulls(len(frame))
        if spec.kind == "numeric":
            return numeric_bins(spec.name, numeric_values(col)[0])
        return categorical_bins(spec.name, category_counts(col)[0])

    bins: list[Bins] = parallel(feature_bins, list(specs))
    names = frame.column_names
    if SCORE in names:
        extra = [threshold] if threshold is not None else []
        if task == "classification" and classes_text and len(classes_text) == 2 and not extra:
            extra = [0.5]
        bins.append(numeric_bins(SCORE, numeric_values(frame.column(SCORE))[0], extra))
    if PREDICTION in names and task == "classification":
        bins.append(categorical_bins(PREDICTION, category_counts(frame.column(PREDICTION))[0]))
    ref = Reference(
        model=model,
        version=version,
        source=source,
        task=task,
        features=[s.name for s in specs],
        bins=bins,
        # exact counts; no sketches (the reference's bins are what windows use)
        profile=count_window(
            _provisional(model, task, classes_text, bins), [frame], sketches=False
        ),
        classes=classes_text,
        threshold=threshold,
        target=target,
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        primary_metric=primary_metric,
        importance=_normalised(importance, [s.name for s in specs]),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    ref.calibration = _calibration(ref, frame)
    return ref


def _provisional(model: str, task: Task, classes: list[str] | None, bins: list[Bins]) -> Reference:
    from flywheel.monitoring.profile import WindowProfile

    return Reference(
        model=model,
        version=None,
        source="",
        task=task,
        features=[],
        bins=bins,
        profile=WindowProfile(rows=0, columns={}),
        classes=classes,
    )


def _normalised(importance: Mapping[str, float] | None, features: list[str]) -> dict[str, float]:
    """Importance >= 0 summing to 1 over the features (uniform when unknown)."""
    raw = np.array([max(0.0, float((importance or {}).get(f, 0.0))) for f in features])
    if raw.sum() <= 0:
        raw = np.ones(len(features))
    raw = raw / raw.sum()
    return {f: float(v) for f, v in zip(features, raw, strict=True)}


def _calibration(ref: Reference, frame: pa.Table) -> dict[str, list[int]] | None:
    """Per score bin: reference rows, and positives (binary) or correct answers (multiclass)."""
    names = frame.column_names
    if ref.task != "classification" or SCORE not in names or LABEL not in names:
        return None
    score_bins = ref.bins_of(SCORE)
    scores = numeric_values(frame.column(SCORE))[0]
    truth = np.asarray(as_text(frame.column(LABEL).to_pylist()), dtype=object)
    labelled = np.array([v is not None for v in frame.column(LABEL).to_pylist()])
    if ref.positive is not None:
        hit = truth == ref.positive
    elif PREDICTION in names:
        hit = truth == np.asarray(as_text(frame.column(PREDICTION).to_pylist()), dtype=object)
    else:
        return None
    ok = labelled & ~np.isnan(scores)
    idx = np.searchsorted(np.asarray(score_bins.edges), scores[ok], side="right")
    k = len(score_bins.edges) + 1
    rows = np.bincount(idx, minlength=k)
    hits = np.bincount(idx, weights=hit[ok].astype(float), minlength=k)
    return {"rows": rows.astype(int).tolist(), "hits": hits.astype(int).tolist()}
