"""``params.yaml``: model family, hyperparameters, split, seed, CV folds, search space.

INTERFACE STUB — implemented by the training work item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from flywheel.training.features import RatioFeature

__all__ = ["SearchParams", "TrainParams", "load_params"]


class SearchParams(BaseModel):
    trials: int = Field(0, ge=0, description="Optuna trials; 0 trains the given hyperparameters.")
    metric: str | None = Field(None, description="CV metric to optimise (default: the primary metric).")
    space: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="name -> {type: int|float|categorical, low, high, log, choices}",
    )
    timeout_s: float | None = None


class TrainParams(BaseModel):
    family: str = "hist_gb"
    task: Literal["classification", "regression"] | None = None  # inferred from the target
    target: str | None = None  # default: the snapshot's target
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    test_size: float = Field(0.2, gt=0, lt=1)
    cv_folds: int = Field(5, ge=0)  # 0 or 1: no CV
    seed: int | None = None  # default: settings.seed
    drop_columns: list[str] = Field(default_factory=list)
    ratios: list[RatioFeature] = Field(default_factory=list)
    search: SearchParams = Field(default_factory=SearchParams)


def load_params(path: Path | None) -> TrainParams:
    raise NotImplementedError
