"""Train one pipeline on a snapshot as one MLflow run.

INTERFACE STUB — implemented by the training work item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from flywheel.config import Settings
from flywheel.training.features import FeatureSpec, Task
from flywheel.training.params import TrainParams

__all__ = ["TrainResult", "load_holdout", "train"]


@dataclass
class TrainResult:
    run_id: str
    snapshot_id: str
    dataset: str
    task: Task
    target: str
    family: str
    feature_specs: list[FeatureSpec]
    hyperparams: dict[str, Any]
    cv_metrics: dict[str, float]  # "<metric>_cv_mean", "<metric>_cv_std"
    model_uri: str  # the logged sklearn pipeline (skops), for lineage and retraining
    classes: list[Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    best_trial: dict[str, Any] | None = None


def train(
    settings: Settings,
    snapshot_id: str,
    params: TrainParams,
    *,
    trials: int | None = None,
    storage: str | None = None,
) -> TrainResult:
    raise NotImplementedError


def load_holdout(settings: Settings, run_id: str) -> tuple[pd.DataFrame, pd.Series]:
    """The run's holdout rows (raw columns, slice columns kept) and target, re-derived exactly."""
    raise NotImplementedError
