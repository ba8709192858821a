"""The registry's MLflow boundary, shared by register, aliases and artifacts: MLflow's
exceptions translated to ours, and the version and alias look-ups they all make."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.errors import DataError, NotFound, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from flywheel.workspace import Workspace

__all__ = [
    "alias_version",
    "aliases_of",
    "get_version",
    "is_missing",
    "mlflow_errors",
    "registered_aliases",
    "sha256_file",
    "versions_of",
]


@contextmanager
def mlflow_errors(what: str, ws: Workspace, name: str | None = None) -> Iterator[None]:
    """Translate MLflow's exceptions into RegistryError/NotFound at the boundary."""
    from mlflow.exceptions import MlflowException

    model = name or ws.settings.registry.model_name
    try:
        yield
    except MlflowException as exc:
        text = exc.message.rstrip(".")
        if getattr(exc, "error_code", None) == "INVALID_PARAMETER_VALUE":
            # the value asked for (a version "abc"), not the registry: no tracking hint
            raise DataError(f"Cannot {what}: {text}.", model=model, rule="value") from exc
        cls = NotFound if is_missing(exc) else RegistryError
        raise cls(
            f"Cannot {what}: {text}. Check tracking.uri ({ws.tracking_uri!r}) "
            "and the model name (registry.model_name).",
            model=model,
        ) from exc


def is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def aliases_of(client: MlflowClient, name: str) -> dict[str, str]:
    """``{alias: version}`` of the registered model (empty when the model does not exist)."""
    return registered_aliases(client, name) or {}


def registered_aliases(client: MlflowClient, name: str) -> dict[str, str] | None:
    """``{alias: version}``, or None when the registered model does not exist.

    Read from the registered model rather than ``get_model_version_by_alias``, whose
    "alias not found" error code differs between the SQL and REST stores."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise
    return {alias: str(version) for alias, version in aliases.items()}


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    return aliases_of(client, name).get(alias)


def versions_of(client: MlflowClient, name: str) -> list[ModelVersion]:
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The version, or NotFound naming the model and the versions that exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not is_missing(exc):
            raise
        existing = [str(v.version) for v in versions_of(client, name)]
        raise NotFound(
            f"Model {name!r} has no version {version!r}; existing versions: {existing or 'none'}. "
            "Pass one of those (see `flywheel registry list`).",
            model=name,
            version=str(version),
            existing=existing,
        ) from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
