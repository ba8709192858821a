"""MLflow helpers shared by training and the registry: the tag names written on runs and
versions (:data:`TAG`), :func:`git_commit`, and :func:`log_model` (``Model.log`` without
MLflow's serving-input check).

The MLflow client, the experiment and the scoped tracking URI the fluent API needs come
from the :class:`~flywheel.workspace.Workspace` (``ws.client``, ``ws.experiment_id``,
``with ws.tracking():``); nothing here sets MLflow's process-global tracking URI.
"""

from __future__ import annotations

import logging
import subprocess
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

__all__ = ["TAG", "git_commit", "log_model"]

log = logging.getLogger("flywheel.tracking")

# Tag names written on runs and model versions, in one place.
TAG = {
    "snapshot_id": "flywheel.snapshot_id",
    "snapshot_sha256": "flywheel.snapshot_sha256",
    "dataset": "flywheel.dataset",
    "contract_version": "flywheel.contract_version",
    "task": "flywheel.task",
    "target": "flywheel.target",
    "family": "flywheel.family",
    "package_version": "flywheel.version",
    "git_commit": "mlflow.source.git.commit",
    "gates": "flywheel.gates",
    "onnx_sha256": "flywheel.onnx_sha256",
    "run_id": "flywheel.run_id",
    "threshold": "flywheel.threshold",
    "threshold_objective": "flywheel.threshold_objective",
    "inputs_sha256": "flywheel.inputs_sha256",
}


def git_commit() -> str | None:
    """The current git commit of the working directory, if any."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class _UncheckedFlavor:
    """A flavor module for ``mlflow.models.Model.log`` that drops ``validate_serving_input``.

    ``Model.log`` reads that keyword to decide whether to reload the model it just wrote
    and predict its input example, and also forwards it to the flavor's ``save_model``, which
    rejects it; so the check cannot be switched off through ``mlflow.<flavor>.log_model``.
    """

    def __init__(self, module: ModuleType) -> None:
        self.__name__ = module.__name__
        self._module = module

    def save_model(self, *, validate_serving_input: bool = True, **kwargs: Any) -> Any:
        return self._module.save_model(**kwargs)


def log_model(flavor: ModuleType, *, name: str, **kwargs: Any) -> ModelInfo:
    """``mlflow.<flavor>.log_model`` without MLflow's serving-input check.

    The check reloads the model just written and predicts the input example; for ONNX it
    always fails on flywheel's ``[None, 1]`` inputs. flywheel checks what it serves itself:
    the parity check runs ONNX Runtime on the whole holdout before a version is registered,
    and tests load the logged pipeline back through ``mlflow.sklearn`` and ``mlflow.pyfunc``.
    ``flavor`` is an MLflow flavor module or one of flywheel's (``flavor_name`` then names
    the MLflow flavor it writes).
    """
    from mlflow.models import Model

    return Model.log(
        artifact_path=None,
        flavor=_UncheckedFlavor(flavor),
        name=name,
        validate_serving_input=False,
        **kwargs,
    )
