"""MLflow set-up shared by training and the registry: :func:`configure_mlflow` (URI and
experiment, for a new training run), :func:`use_tracking` (URI only, for existing runs and
models) and :func:`log_model` (``Model.log`` without MLflow's serving-input check).

MLflow 3 creates its SQLite schema on first use, and several processes creating a fresh
database at once fail on migrations; the first creation is serialised with a file lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from flywheel.config import Settings
from flywheel.errors import RegistryError

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

__all__ = [
    "TAG",
    "configure_mlflow",
    "git_commit",
    "log_model",
    "use_tracking",
]

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


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def configure_mlflow(settings: Settings) -> str:
    """Point MLflow at the configured tracking URI and experiment; returns the experiment id."""
    uri = _point_at(settings)
    try:
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            with _file_lock(db.with_name(db.name + ".lock")):
                return _ensure_experiment(settings)
        return _ensure_experiment(settings)
    except Exception as exc:  # MLflow raises many types; translate at the boundary
        if isinstance(exc, RegistryError):
            raise
        raise RegistryError(
            f"Cannot use the MLflow tracking store {uri!r}: {exc}. "
            "Check tracking.uri (FLYWHEEL_TRACKING__URI) and that the server is up.",
            uri=uri,
        ) from exc


def use_tracking(settings: Settings) -> None:
    """Point MLflow at the configured tracking URI, for work on runs and models that exist
    already (evaluation records, gate reports, the registry). Unlike
    :func:`configure_mlflow` it does not look the experiment up (two store round trips);
    a SQLite tracking database that does not exist yet is created the locked way."""
    uri = settings.tracking.uri or ""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        configure_mlflow(settings)
    else:
        _point_at(settings)


def _point_at(settings: Settings) -> str:
    """Set MLflow's tracking URI (and its quiet defaults); returns the URI."""
    import mlflow

    uri = settings.tracking.uri or ""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    mlflow.set_tracking_uri(uri)
    return uri


def _ensure_experiment(settings: Settings) -> str:
    import mlflow

    name = settings.tracking.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        exp_id = mlflow.create_experiment(
            name, artifact_location=settings.tracking.artifact_location
        )
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


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
