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

import os
from pathlib import Path
from typing import Any

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
    import mlflow
    import sklearn
    import yaml
    from mlflow import pyfunc
    from mlflow.models.utils import _save_example
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _mlflow_conda_env,
        _PythonEnv,
    )
    from mlflow.utils.file_utils import get_total_file_size

    folder = Path(path)
    folder.mkdir(parents=True)
    _save_example(mlflow_model, input_example, path)
    if signature is not None:
        mlflow_model.signature = signature
    (folder / MODEL_FILE).write_bytes(skops_bytes)
    pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow.sklearn",
        model_path=MODEL_FILE,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        code=None,
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
    if size := get_total_file_size(path):
        mlflow_model.model_size_bytes = size
    mlflow_model.save(os.path.join(path, "MLmodel"))
    # pins of the installed versions (no need for MLflow's installed-version check)
    requirements = [f"mlflow=={mlflow.__version__}", *(pip_requirements or [])]
    conda_env = _mlflow_conda_env(additional_pip_deps=requirements, install_mlflow=False)
    with open(folder / _CONDA_ENV_FILE_NAME, "w") as fh:
        yaml.safe_dump(conda_env, stream=fh, default_flow_style=False)
    (folder / _REQUIREMENTS_FILE_NAME).write_text("\n".join(requirements))
    _PythonEnv.current().to_yaml(str(folder / _PYTHON_ENV_FILE_NAME))
