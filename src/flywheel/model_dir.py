"""The MLflow model directory that flywheel's flavor writers share
(:mod:`flywheel.training.skops_flavor`, :mod:`flywheel.registry.onnx_flavor`).

Each writes the directory MLflow's own ``save_model`` would, from bytes flywheel already
made: :func:`start_model_dir` (folder, input example, signature, model file,
``python_function`` flavor), then the flavor's own entry, then :func:`finish_model_dir`
(size, ``MLmodel``, environment files pinned to the versions flywheel passes, without
MLflow's check of them against every installed distribution, ~0.25 s the first time in a
process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["finish_model_dir", "start_model_dir"]


def start_model_dir(
    path: str,
    mlflow_model: Any,
    model_file: str,
    model_bytes: bytes,
    *,
    signature: Any,
    input_example: Any,
    **pyfunc_conf: Any,
) -> None:
    """The folder, the input example, the signature, the model file itself (the bytes
    flywheel already made and, for ONNX, hashed) and the ``python_function`` flavor
    (``pyfunc_conf``: its loader module and where the data is)."""
    from mlflow import pyfunc
    from mlflow.models.utils import _save_example
    from mlflow.utils.environment import _CONDA_ENV_FILE_NAME, _PYTHON_ENV_FILE_NAME

    folder = Path(path)
    folder.mkdir(parents=True)
    _save_example(mlflow_model, input_example, path)
    if signature is not None:
        mlflow_model.signature = signature
    (folder / model_file).write_bytes(model_bytes)
    pyfunc.add_to_model(
        mlflow_model,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        code=None,
        **pyfunc_conf,
    )


def finish_model_dir(path: str, mlflow_model: Any, pip_requirements: list[str] | None) -> None:
    """The model size, ``MLmodel``, and ``requirements.txt`` / ``conda.yaml`` /
    ``python_env.yaml`` pinned to ``pip_requirements`` plus MLflow's own version."""
    import mlflow
    import yaml
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _mlflow_conda_env,
        _PythonEnv,
    )
    from mlflow.utils.file_utils import get_total_file_size

    folder = Path(path)
    if size := get_total_file_size(path):
        mlflow_model.model_size_bytes = size
    mlflow_model.save(str(folder / "MLmodel"))
    requirements = [f"mlflow=={mlflow.__version__}", *(pip_requirements or [])]
    conda_env = _mlflow_conda_env(additional_pip_deps=requirements, install_mlflow=False)
    with open(folder / _CONDA_ENV_FILE_NAME, "w") as fh:
        yaml.safe_dump(conda_env, stream=fh, default_flow_style=False)
    (folder / _REQUIREMENTS_FILE_NAME).write_text("\n".join(requirements))
    _PythonEnv.current().to_yaml(str(folder / _PYTHON_ENV_FILE_NAME))
