"""Write exported ONNX bytes as an MLflow ``onnx`` model, without MLflow's re-serialisation
and environment checks.

``mlflow.onnx.save_model`` takes a parsed ``onnx.ModelProto`` and serialises it again, and
checks the model's pip requirements against every installed distribution (about 0.25 s the
first time in a process, for a list flywheel pins itself). This module is a flavor for
``mlflow.models.Model.log`` (through :func:`flywheel.tracking.log_model`, with
``flavor_name="mlflow.onnx"``) that writes the same directory as ``mlflow.onnx.save_model``
(``MLmodel`` with the ``onnx`` and ``python_function`` flavors, ``model.onnx``, the input
example, ``extra_files/``, ``requirements.txt``, ``conda.yaml``, ``python_env.yaml``) from
the exported bytes themselves, so the stored file is byte for byte what was exported and
hashed, and ``mlflow.onnx.load_model`` and ``mlflow.pyfunc.load_model`` read it as usual.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["MODEL_FILE", "save_model"]

MODEL_FILE = "model.onnx"  # mlflow.onnx's _MODEL_DATA_SUBPATH


def save_model(
    *,
    path: str,
    mlflow_model: Any,
    onnx_bytes: bytes,
    signature: Any = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
    extra_files: list[str] | None = None,
    onnx_execution_providers: list[str] | None = None,
) -> None:
    """Called through :func:`flywheel.tracking.log_model` (``flavor_name="mlflow.onnx"``)."""
    import mlflow
    import onnx
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
    from mlflow.utils.model_utils import _copy_extra_files

    folder = Path(path)
    folder.mkdir(parents=True)
    if signature is not None:
        mlflow_model.signature = signature
    _save_example(mlflow_model, input_example, path)
    (folder / MODEL_FILE).write_bytes(onnx_bytes)
    pyfunc.add_to_model(
        mlflow_model,
        loader_module="mlflow.onnx",
        data=MODEL_FILE,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        code=None,
    )
    mlflow_model.add_flavor(
        "onnx",
        onnx_version=onnx.__version__,
        data=MODEL_FILE,
        providers=onnx_execution_providers or ["CPUExecutionProvider"],
        onnx_session_options=None,
        code=None,
        **_copy_extra_files(extra_files, path),
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
