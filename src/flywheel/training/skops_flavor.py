"""Write a fitted pipeline as an MLflow ``sklearn`` model (skops format) from one dump.

``mlflow.sklearn.save_model`` serialises the model itself and loads it straight back, and
flywheel must dump it once more beforehand to learn which types to trust: three passes over
a skops tree whose JSON is written by the pure-Python encoder (``indent=2``). This module
is a flavor for ``mlflow.models.Model.log`` that writes the same directory (``MLmodel``
with the ``sklearn`` and ``python_function`` flavors, ``model.skops``, the input example,
``requirements.txt``, ``conda.yaml``, ``python_env.yaml``) from the bytes flywheel already
made, so ``mlflow.sklearn.load_model`` and ``mlflow.pyfunc.load_model`` read it as usual.
"""

from __future__ import annotations

from typing import Any

from flywheel.model_dir import finish_model_dir, start_model_dir

__all__ = ["MODEL_FILE", "save_model"]

MODEL_FILE = "model.skops"  # mlflow.sklearn's _SKOPS_MODEL_DATA_SUBPATH


def save_model(
    *,
    path: str,
    mlflow_model: Any,
    skops_bytes: bytes,
    skops_trusted_types: list[str],
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
) -> None:
    """Called through :func:`flywheel.tracking.log_model` (``flavor_name="mlflow.sklearn"``)."""
    import sklearn

    start_model_dir(
        path,
        mlflow_model,
        MODEL_FILE,
        skops_bytes,
        signature=signature,
        input_example=input_example,
        loader_module="mlflow.sklearn",
        model_path=MODEL_FILE,
        predict_fn="predict",
    )
    mlflow_model.add_flavor(
        "sklearn",
        pickled_model=MODEL_FILE,
        sklearn_version=sklearn.__version__,
        serialization_format="skops",
        code=None,
        skops_trusted_types=skops_trusted_types,
    )
    finish_model_dir(path, mlflow_model, pip_requirements)
