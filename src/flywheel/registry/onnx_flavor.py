"""Write exported ONNX bytes as an MLflow ``onnx`` model (the ONNX twin of
:mod:`flywheel.training.skops_flavor`).

``mlflow.onnx.save_model`` parses the model, serialises it again and checks its pip
requirements against every installed distribution (~0.25 s the first time in a process).
Passed to :func:`flywheel.tracking.log_model` with ``flavor_name="mlflow.onnx"``, this
module writes the directory ``mlflow.onnx.save_model`` would (``MLmodel`` with the ``onnx``
and ``python_function`` flavors, ``model.onnx``, ``extra_files/``, the environment files)
from the exported bytes, so the stored file is exactly the hashed one; ``mlflow.onnx`` and
``mlflow.pyfunc`` load it as usual.
"""

from __future__ import annotations

from typing import Any

from flywheel.model_dir import finish_model_dir, start_model_dir

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
    import onnx
    from mlflow.utils.model_utils import _copy_extra_files

    start_model_dir(
        path,
        mlflow_model,
        MODEL_FILE,
        onnx_bytes,
        signature=signature,
        input_example=input_example,
        loader_module="mlflow.onnx",
        data=MODEL_FILE,
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
    finish_model_dir(path, mlflow_model, pip_requirements)
