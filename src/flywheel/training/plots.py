"""Evaluation plots as PNG files, drawn on ``matplotlib.figure.Figure`` (Agg, no pyplot state).

Each function writes one file and returns its path; evaluation logs them under ``plots/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, roc_curve

__all__ = [
    "calibration_plot",
    "confusion_matrix_plot",
    "importance_plot",
    "predicted_vs_actual_plot",
    "residuals_plot",
    "roc_plot",
]


def _figure(width: float = 5.0, height: float = 4.0) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def roc_plot(y: np.ndarray, proba: np.ndarray, classes: Sequence[object], path: Path) -> Path:
    """ROC curve (binary) or one-vs-rest curves (multiclass)."""
    fig, ax = _figure()
    columns = [1] if proba.shape[1] == 2 else range(proba.shape[1])
    for k in columns:
        if len(np.unique(y == k)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y == k, proba[:, k])
        ax.plot(fpr, tpr, label=f"class {classes[k]}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def calibration_plot(y: np.ndarray, proba: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Reliability diagram of the positive class (binary tasks)."""
    fig, ax = _figure()
    frac_pos, mean_pred = calibration_curve(y == 1, proba[:, 1], n_bins=bins, strategy="quantile")
    ax.plot(mean_pred, frac_pos, marker="o", label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed frequency",
        title="Calibration (holdout)",
    )
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def confusion_matrix_plot(
    y: np.ndarray, pred: np.ndarray, classes: Sequence[object], path: Path
) -> Path:
    """Counts of true (rows) against predicted (columns) classes."""
    k = len(classes)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    fig, ax = _figure(4.0 + 0.3 * k, 3.5 + 0.3 * k)
    ax.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        color = "white" if count > cm.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=color)
    labels = [str(c) for c in classes]
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix (holdout)")
    return _save(fig, path)


def importance_plot(
    names: Sequence[str],
    importances: np.ndarray,
    path: Path,
    stds: np.ndarray | None = None,
    top: int = 20,
) -> Path:
    """Horizontal bars of the ``top`` most important features."""
    order = np.argsort(importances)[::-1][:top][::-1]
    fig, ax = _figure(6.0, 1.5 + 0.3 * len(order))
    ax.barh(
        [names[i] for i in order],
        importances[order],
        xerr=None if stds is None else stds[order],
        color="tab:blue",
    )
    ax.set(xlabel="permutation importance (score drop)", title="Feature importance (holdout)")
    return _save(fig, path)


def predicted_vs_actual_plot(y: np.ndarray, pred: np.ndarray, path: Path) -> Path:
    """Scatter of predictions against true values with the identity line."""
    fig, ax = _figure()
    ax.scatter(y, pred, s=6, alpha=0.4)
    low, high = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (holdout)")
    return _save(fig, path)


def residuals_plot(y: np.ndarray, pred: np.ndarray, path: Path) -> Path:
    """Residuals (actual - predicted) against predictions."""
    fig, ax = _figure()
    ax.scatter(pred, y - pred, s=6, alpha=0.4)
    ax.axhline(0.0, linestyle="--", color="grey", linewidth=1)
    ax.set(xlabel="predicted", ylabel="residual (actual - predicted)", title="Residuals (holdout)")
    return _save(fig, path)
