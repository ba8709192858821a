"""ONNX export of a whole fitted pipeline, and the parity check against native predictions.

INTERFACE STUB — implemented by the features/ONNX work item.

The ONNX graph has one input per feature, named as the feature, shape ``[None, 1]``:
float32 for numeric, string for categorical. Outputs: ``label`` (int64 class or float
value) and, for classifiers, ``probabilities`` ``[None, n_classes]`` (no ZipMap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pandas as pd
from sklearn.pipeline import Pipeline

from flywheel.training.features import FeatureSpec, Task

__all__ = ["ParityReport", "check_parity", "export_onnx", "onnx_feeds", "onnx_predict"]


@dataclass(frozen=True)
class ParityReport:
    rows: int
    max_abs_diff: float
    rows_over_tolerance: int
    label_mismatches: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.rows_over_tolerance == 0 and self.label_mismatches == 0


def export_onnx(pipeline: Pipeline, specs: list[FeatureSpec], *, task: Task) -> bytes:
    raise NotImplementedError


def onnx_feeds(df: pd.DataFrame, specs: list[FeatureSpec]) -> dict[str, np.ndarray]:
    raise NotImplementedError


def onnx_predict(
    session: ort.InferenceSession, df: pd.DataFrame, specs: list[FeatureSpec], *, task: Task
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (or regression values) and class probabilities (None for regression)."""
    raise NotImplementedError


def check_parity(
    pipeline: Pipeline,
    onnx_model: bytes,
    df: pd.DataFrame,
    specs: list[FeatureSpec],
    *,
    task: Task,
    tolerance: float = 1e-4,
) -> ParityReport:
    raise NotImplementedError
