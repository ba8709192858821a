"""Metric names, directions and one scoring function shared by CV, holdout, slices and gates.

Classification labels are the class *indices* ``0..k-1`` (training encodes the target and
records the original values as ``classes``), and probabilities are ``[n, k]`` in that order.
Binary tasks use the positive class (index 1); multiclass tasks use macro / one-vs-rest
variants, and the Brier score is the multiclass mean squared distance to the one-hot label.
The label metrics (``f1``, ``precision``, ``recall``, ``accuracy``) score the labels they are
given: for a binary classifier, those made at its decision threshold
(:mod:`flywheel.training.threshold`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from flywheel.training.features import Task
from flywheel.training.metric_names import (
    CLASSIFICATION_METRICS,
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    REGRESSION_METRICS,
    THRESHOLD_METRICS,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "REGRESSION_METRICS",
    "all_metrics",
    "as_probabilities",
    "higher_is_better",
    "primary_metric",
    "score",
]

log = logging.getLogger("flywheel.training")

# Rows whose probabilities sum to one within this are renormalised by as_probabilities
# (float32 rounding is ~1e-7 per class); anything further off is left for sklearn to flag.
_SUM_SLACK = 1e-4

_Metric = Callable[[np.ndarray, np.ndarray, np.ndarray | None, int], float]


def all_metrics(task: Task) -> tuple[str, ...]:
    """The metric names produced for a task."""
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def primary_metric(task: Task) -> str:
    """``roc_auc`` for classification, ``rmse`` for regression."""
    return "roc_auc" if task == "classification" else "rmse"


def higher_is_better(metric: str) -> bool:
    """Direction of a metric; unknown names are an error rather than a silent guess."""
    if metric in HIGHER_IS_BETTER:
        return True
    if metric in LOWER_IS_BETTER:
        return False
    known = sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER)
    raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(known)}")


def _roc_auc(y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, k: int) -> float:
    assert proba is not None
    if k == 2:
        return float(skm.roc_auc_score(y, proba[:, 1]))
    # one-vs-rest, macro over the classes these rows hold (as scikit-learn's ovr macro when
    # every class is present): a class absent from a holdout leaves the others' AUCs defined
    present = [c for c in range(k) if 0 < int(np.sum(y == c)) < len(y)]
    if not present:
        raise ValueError("fewer than two classes in y_true")
    return float(np.mean([skm.roc_auc_score(y == c, proba[:, c]) for c in present]))


def _pr_auc(y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, k: int) -> float:
    assert proba is not None
    if k == 2:
        if not np.any(y == 1):  # scikit-learn warns and answers 0: undefined
            raise ValueError("no positive rows")
        return float(skm.average_precision_score(y, proba[:, 1]))
    onehot = np.eye(k)[y]
    present = onehot.sum(axis=0) > 0  # AP of an absent class is undefined
    return float(
        skm.average_precision_score(onehot[:, present], proba[:, present], average="macro")
    )


def _per_label(fn: Callable[..., float]) -> _Metric:
    """An F1-like sklearn score: of the positive class (binary), else the macro mean."""

    def metric(y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, k: int) -> float:
        if k == 2:
            return float(fn(y, pred, pos_label=1, zero_division=0.0))
        return float(fn(y, pred, average="macro", labels=list(range(k)), zero_division=0.0))

    return metric


def _brier(y: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, k: int) -> float:
    assert proba is not None
    if k == 2:
        return float(skm.brier_score_loss(y, proba[:, 1], pos_label=1))
    return float(np.mean(np.sum((np.eye(k)[y] - proba) ** 2, axis=1)))


_CLASSIFICATION: dict[str, _Metric] = {
    "roc_auc": _roc_auc,
    "pr_auc": _pr_auc,
    "f1": _per_label(skm.f1_score),
    "precision": _per_label(skm.precision_score),
    "recall": _per_label(skm.recall_score),
    "accuracy": lambda y, pred, proba, k: float(skm.accuracy_score(y, pred)),
    "log_loss": lambda y, pred, proba, k: float(skm.log_loss(y, proba, labels=list(range(k)))),
    "brier": _brier,
}

_REGRESSION: dict[str, _Metric] = {
    "rmse": lambda y, pred, proba, k: float(skm.root_mean_squared_error(y, pred)),
    "mae": lambda y, pred, proba, k: float(skm.mean_absolute_error(y, pred)),
    "r2": lambda y, pred, proba, k: float(skm.r2_score(y, pred)),
}


def score(
    task: Task,
    y_true: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None = None,
    *,
    n_classes: int = 2,
) -> dict[str, float]:
    """Every metric of the task that is defined on these rows.

    A metric that is undefined here (one class only, no probabilities; scikit-learn raises
    or warns ``UndefinedMetricWarning``) is left out rather than reported as NaN or as
    scikit-learn's stand-in value, so callers and gates treat it as "not applicable".
    Probabilities are renormalised first (:func:`as_probabilities`): a float32 model's rows
    sum to one only within float32 rounding.
    """
    table = _CLASSIFICATION if task == "classification" else _REGRESSION
    y = np.asarray(y_true)
    if proba is not None:
        proba = as_probabilities(proba)
    out: dict[str, float] = {}
    for name, fn in table.items():
        if task == "classification" and proba is None and name not in THRESHOLD_METRICS:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UndefinedMetricWarning)
                value = fn(y, np.asarray(pred), proba, n_classes)
        except (ValueError, UndefinedMetricWarning) as exc:
            log.debug("metric %s undefined on %d rows: %s", name, len(y), exc)
            continue
        if math.isfinite(value):
            out[name] = value
    return out


def as_probabilities(proba: np.ndarray) -> np.ndarray:
    """Class probabilities as float64 rows that sum to one.

    ONNX Runtime returns float32 probabilities; cast to float64 their rows sum to one only
    within ~1e-7, and scikit-learn's ``log_loss`` then warns that "y_prob values do not sum
    to one" (a ``UserWarning``). Rows within ``1e-4`` of one are divided by their sum (in
    float64); rows further off are returned unchanged, so real garbage is still flagged.
    """
    out = np.asarray(proba, dtype="float64")
    if out.ndim != 2 or out.size == 0:
        return out
    sums = out.sum(axis=1, keepdims=True)
    close = np.abs(sums - 1.0) <= _SUM_SLACK
    return np.where(close, out / np.where(close, sums, 1.0), out)
