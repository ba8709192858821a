"""Metric names and directions, without importing scikit-learn.

:mod:`flywheel.training.metrics` computes them; the settings (``gates.*``) and
``params.yaml`` (``search.metric``) check names against these sets, so a typo such as
``recal`` fails when the configuration is read instead of silently gating nothing.
"""

from __future__ import annotations

__all__ = [
    "CLASSIFICATION_METRICS",
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "METRIC_NAMES",
    "REGRESSION_METRICS",
    "THRESHOLD_METRICS",
]

CLASSIFICATION_METRICS = (
    "roc_auc",
    "pr_auc",
    "f1",
    "precision",
    "recall",
    "accuracy",
    "log_loss",
    "brier",
)
REGRESSION_METRICS = ("rmse", "mae", "r2")
# Computed from labels, so they depend on a binary classifier's decision threshold.
THRESHOLD_METRICS = frozenset({"f1", "precision", "recall", "accuracy"})
HIGHER_IS_BETTER = frozenset({"roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy", "r2"})
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "rmse", "mae"})
METRIC_NAMES = HIGHER_IS_BETTER | LOWER_IS_BETTER
