"""Holdout metrics, slices, champion comparison, plots.

INTERFACE STUB — implemented by the training work item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flywheel.config import Settings
from flywheel.training.features import Task

__all__ = ["ChampionModel", "Evaluation", "evaluate"]


@dataclass
class ChampionModel:
    """The current champion as a scorer: raw frame -> (labels or values, probabilities or None)."""

    version: str
    predict: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray | None]]


@dataclass
class Evaluation:
    run_id: str
    task: Task
    primary_metric: str  # "roc_auc" for classification, "rmse" for regression
    metrics: dict[str, float]
    slices: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    slice_gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None
    plots: list[str] = field(default_factory=list)  # artifact paths in the run


def evaluate(
    settings: Settings, run_id: str, *, champion: ChampionModel | None = None
) -> Evaluation:
    raise NotImplementedError
