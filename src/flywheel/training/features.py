"""Features and model as ONE scikit-learn pipeline, built so the ONNX export is exact.

INTERFACE STUB — implemented by the features/ONNX work item.

Conventions every module relies on:
- numeric inputs are cast to float32 *before* fitting (ONNX tree ensembles compare in
  float32; fitting on float64 puts rows on the other side of a split);
- a missing categorical value is the empty string ``""`` (ONNX has no string NaN);
- no scaler in front of tree models; preprocessing lives inside the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from sklearn.pipeline import Pipeline

__all__ = [
    "CLASSIFICATION_FAMILIES",
    "REGRESSION_FAMILIES",
    "FeatureSpec",
    "RatioFeature",
    "build_pipeline",
    "infer_feature_specs",
    "prepare_frame",
]

Task = Literal["classification", "regression"]

CLASSIFICATION_FAMILIES = ("logreg", "random_forest", "hist_gb", "lightgbm", "xgboost")
REGRESSION_FAMILIES = ("linear", "random_forest", "hist_gb", "lightgbm", "xgboost")


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: Literal["numeric", "categorical"]


@dataclass(frozen=True)
class RatioFeature:
    """An engineered feature ``numerator / max(denominator, 1)``, e.g. tickets per month of tenure."""

    name: str
    numerator: str
    denominator: str


def infer_feature_specs(df: pd.DataFrame, *, target: str, drop: list[str]) -> list[FeatureSpec]:
    raise NotImplementedError


def prepare_frame(df: pd.DataFrame, specs: list[FeatureSpec]) -> pd.DataFrame:
    raise NotImplementedError


def build_pipeline(
    specs: list[FeatureSpec],
    *,
    task: Task,
    family: str,
    hyperparams: dict[str, Any],
    ratios: list[RatioFeature],
    seed: int,
) -> Pipeline:
    raise NotImplementedError
