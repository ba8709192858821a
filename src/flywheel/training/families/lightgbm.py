"""``lightgbm``: LightGBM's LGBMClassifier / LGBMRegressor, exported by onnxmltools.

LightGBM is imported only when a LightGBM model is made or exported.
"""

from __future__ import annotations

from typing import Any

from flywheel.training.families import N_JOBS, Family, Task

__all__ = ["FAMILY"]


def make(task: Task, seed: int) -> Any:
    import lightgbm

    model = lightgbm.LGBMClassifier if task == "classification" else lightgbm.LGBMRegressor
    return model(random_state=seed, n_jobs=N_JOBS, verbose=-1)


def register_onnx() -> None:
    """onnxmltools' LightGBM converter for both estimators, registered with skl2onnx (it
    handles string classes: LightGBM encodes them itself)."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        LGBMClassifier,
        "LgbmClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        LGBMRegressor, "LgbmRegressor", calculate_linear_regressor_output_shapes, convert_lightgbm
    )


FAMILY = Family(
    name="lightgbm",
    tasks=("classification", "regression"),
    make=make,
    class_weight=True,
    requirements=("lightgbm",),
    trusted_prefixes=("lightgbm.",),
    register_onnx=register_onnx,
)
