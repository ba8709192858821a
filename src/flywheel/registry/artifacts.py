"""A registered version's files, for whoever loads it: the serving core (ONNX only, checked
against the sha256 recorded at registration) and evaluation (the champion as a scorer).
Importing it imports neither MLflow nor scikit-learn (they load when used).

A version is downloaded into a private folder, checked, then renamed into
``<home>/models/<name>/<version>``, so processes fetching one version at once (uvicorn
workers, a CLI beside a server) never see a half-written or half-deleted copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import Settings
from flywheel.errors import NotFound, RegistryError
from flywheel.registry._client import alias_version, get_version, mlflow_errors, sha256_file
from flywheel.registry.aliases import CHAMPION
from flywheel.schema import FeatureSpec
from flywheel.tracking import TAG
from flywheel.workspace import Workspace, is_artifact_store_failure

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from flywheel.training.evaluate import ChampionModel
    from flywheel.training.features import Task

__all__ = [
    "ModelArtifacts",
    "fetch_model_artifacts",
    "load_champion",
    "read_version_folder",
    "split_model_ref",
]


@dataclass(frozen=True)
class ModelArtifacts:
    """A version's serving files, downloaded and checked against its sha256 tag."""

    name: str
    version: str
    model_path: Path  # model.onnx
    card_path: Path
    specs_path: Path
    feature_specs: list[FeatureSpec]
    task: Task
    classes: list[Any] | None
    onnx_sha256: str
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None  # the training run
    threshold: float | None = None  # binary: the decision threshold baked into the graph


def split_model_ref(ref: str, default_name: str) -> tuple[str, str]:
    """``NAME@ALIAS`` / ``NAME/VERSION`` / ``NAME`` (its champion) / ``@ALIAS`` / ``VERSION``
    -> (name, alias or version)."""
    from flywheel.errors import UsageError

    ref = ref.strip()
    if "@" in ref:
        name, _, version_ref = ref.partition("@")
    elif "/" in ref:
        name, _, version_ref = ref.partition("/")
    elif ref.isdigit():
        name, version_ref = "", ref
    else:
        name, version_ref = ref, CHAMPION
    if not version_ref:
        raise UsageError(f"{ref!r} names no alias or version; e.g. churn@champion.", field="ref")
    return name or default_name, version_ref


def _resolve(client: MlflowClient, name: str, ref: str) -> ModelVersion:
    if str(ref).isdigit():
        return get_version(client, name, str(ref))
    version = alias_version(client, name, ref)
    if version is None:
        raise NotFound(
            f"Model {name!r} has no version with alias {ref!r}. Register a model "
            "(`flywheel train`) or promote one (`flywheel promote VERSION`).",
            model=name,
            alias=ref,
        )
    return get_version(client, name, version)


def fetch_model_artifacts(
    ws: Workspace | Settings,
    ref: str | int,
    *,
    name: str | None = None,
    dst: Path | None = None,
) -> ModelArtifacts:
    """Download a version's ONNX model, card and specs (``ref``: version or alias), sha-checked.

    ``name`` is the registered model (default ``registry.model_name``); ``dst`` the folder
    (default ``<home>/models/<name>/<version>``). Threads may fetch at once (their
    downloads take turns on MLflow's global URI, see :meth:`Workspace.tracking`).

    An artifact store that cannot be read (an S3 endpoint that does not answer, refused
    credentials, a missing local folder) is a :class:`~flywheel.errors.StoreError` naming
    the version's location and the endpoint; the registry's own failures are
    :class:`RegistryError` / :class:`NotFound`."""
    import mlflow

    ws = Workspace.of(ws)
    name = name or ws.settings.registry.model_name
    with mlflow_errors(f"fetch {name!r} {ref!r}", ws, name):
        mv = _resolve(ws.client, name, str(ref))
        expected = mv.tags.get(TAG["onnx_sha256"])
        if not expected:
            raise RegistryError(
                f"{name} v{mv.version} has no {TAG['onnx_sha256']} tag, so it was not fully "
                "registered. Register it again with `flywheel train`.",
                model=name,
                version=str(mv.version),
            )
        target = (dst or ws.settings.home / "models" / name / str(mv.version)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download into a private folder and check it before it takes the shared place.
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            # a models:/ URI is resolved with MLflow's global URIs, whatever is passed: scoped
            with ws.tracking():
                uri = f"models:/{name}/{mv.version}"
                try:
                    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp)))
                except Exception as exc:  # boto, OSError, MLflow's summary: translate here
                    if not is_artifact_store_failure(exc):
                        raise
                    where = _download_uri(ws, name, str(mv.version))
                    raise ws.artifact_store_error(
                        exc, f"download {name} v{mv.version}", where
                    ) from exc
            local = local.resolve()  # MLflow answers with an absolute path
            _checked_artifacts(name, mv, local, expected)
            _move_into_place(tmp, target, expected)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _checked_artifacts(name, mv, target / local.relative_to(tmp), expected)


def _download_uri(ws: Workspace, name: str, version: str) -> str | None:
    """Where the registry keeps a version's files (``s3://…``, a folder), for an error
    message; None when even that cannot be read."""
    try:
        return str(ws.client.get_model_version_download_uri(name, version))
    except Exception:  # the message falls back to tracking.artifact_location
        return None


def _move_into_place(folder: Path, target: Path, expected: str) -> None:
    """Rename ``folder`` (checked) to ``target``; a copy already there with the expected
    ONNX bytes is kept (another process won the race), any other is moved aside first."""
    for _ in range(5):
        try:
            folder.rename(target)  # atomic; fails while target exists and is not empty
            return
        except OSError:
            onnx_files = list(target.rglob("model.onnx")) if target.exists() else []
            if onnx_files and all(sha256_file(f) == expected for f in onnx_files):
                return
            aside = target.with_name(f".{target.name}-stale-{os.getpid()}-{time.time_ns()}")
            with contextlib.suppress(OSError):  # gone meanwhile: fine
                target.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
    raise RegistryError(f"Could not put the downloaded model in place at {target}.")


def _checked_artifacts(name: str, mv: ModelVersion, local: Path, expected: str) -> ModelArtifacts:
    return read_version_folder(
        name,
        str(mv.version),
        local,
        expected=expected,
        run_id=mv.run_id or mv.tags.get(TAG["run_id"]),
        aliases=sorted(mv.aliases or []),
    )


def read_version_folder(
    name: str,
    version: str,
    local: Path,
    *,
    expected: str,
    run_id: str | None = None,
    aliases: list[str] | None = None,
) -> ModelArtifacts:
    """A version's files in ``local`` (model.onnx + extra_files), its ONNX bytes checked
    against the sha256 the registry recorded (:class:`RegistryError` when they differ)."""
    model_path = local / "model.onnx"
    actual = sha256_file(model_path)
    if actual != expected:
        raise RegistryError(
            f"{name} v{version}: model.onnx has sha256 {actual} but the registry recorded "
            f"{expected}; the artifact was changed after registration. Refusing to load it; "
            "re-register the run or restore the artifact store.",
            model=name,
            version=version,
            expected=expected,
            actual=actual,
        )
    specs_path = local / "extra_files" / "feature_specs.json"
    specs = json.loads(specs_path.read_text(encoding="utf-8"))
    return ModelArtifacts(
        name=name,
        version=version,
        model_path=model_path,
        card_path=local / "extra_files" / "model_card.md",
        specs_path=specs_path,
        feature_specs=[FeatureSpec(f["name"], f["kind"]) for f in specs["features"]],
        task=specs["task"],
        classes=specs.get("classes"),
        onnx_sha256=actual,
        aliases=aliases or [],
        run_id=run_id,
        threshold=specs.get("threshold"),
    )


def load_champion(ws: Workspace, alias: str = CHAMPION) -> ChampionModel | None:
    """The version behind ``alias`` as an ONNX scorer, or None when the alias is unset."""
    from flywheel.registry.onnx_export import make_session, onnx_predict
    from flywheel.training.evaluate import ChampionModel

    try:
        artifacts = fetch_model_artifacts(ws, alias)
    except NotFound:
        return None
    session = make_session(artifacts.model_path.read_bytes())
    specs, task = artifacts.feature_specs, artifacts.task

    def predict(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        return onnx_predict(session, frame, specs, task=task)

    return ChampionModel(
        version=artifacts.version,
        predict=predict,
        run_id=artifacts.run_id,
        threshold=artifacts.threshold,
    )
