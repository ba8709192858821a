"""``xgboost``: XGBoost's XGBClassifier (label-encoding subclass) / XGBRegressor, exported by
onnxmltools.

XGBoost is imported only when an XGBoost model is made or exported; the classifier lives in
:mod:`flywheel.training.families._xgboost_classifier` because defining it imports XGBoost.
XGBClassifier takes no ``class_weight`` (``hyperparams.scale_pos_weight`` does the same for
a binary target).
"""

from __future__ import annotations

from typing import Any

from flywheel.training.families import N_JOBS, Family, Task

__all__ = ["FAMILY"]


def make(task: Task, seed: int) -> Any:
    settings: dict[str, Any] = {
        "random_state": seed,
        "n_jobs": N_JOBS,
        "tree_method": "hist",
        "verbosity": 0,
    }
    if task == "classification":
        from flywheel.training.families._xgboost_classifier import EncodedXGBClassifier

        return EncodedXGBClassifier(**settings)
    from xgboost import XGBRegressor

    return XGBRegressor(**settings)


def register_onnx() -> None:
    """onnxmltools' XGBoost converter for flywheel's classifier and XGBRegressor, registered
    with skl2onnx."""
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBRegressor

    from flywheel.training.families._xgboost_classifier import EncodedXGBClassifier

    update_registered_converter(
        EncodedXGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        XGBRegressor,
        "XGBoostXGBRegressor",
        calculate_linear_regressor_output_shapes,
        convert_xgboost,
    )


FAMILY = Family(
    name="xgboost",
    tasks=("classification", "regression"),
    make=make,
    requirements=("xgboost",),
    trusted_prefixes=("xgboost.",),
    register_onnx=register_onnx,
)
