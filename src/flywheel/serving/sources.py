"""Where served models come from: the registry (an alias or a version), a folder written by
``flywheel registry export`` (``--model-dir``), or files held in memory (tests)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flywheel.errors import NotFound, RegistryError
from flywheel.registry.export import BUNDLE_FILE
from flywheel.schema import FeatureSpec

if TYPE_CHECKING:
    from flywheel.config import Settings
    from flywheel.workspace import Workspace

__all__ = ["ModelDirSource", "ModelFiles", "ModelSource", "RegistrySource", "StaticSource"]


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ModelFiles:
    """What a source hands over: the fields of ``registry.artifacts.ModelArtifacts`` we use."""

    version: str
    model_path: Path
    feature_specs: list[FeatureSpec]
    task: str
    classes: list[Any] | None
    onnx_sha256: str


class ModelSource(Protocol):
    """Where a served model's versions come from. Both methods block (run in a thread)."""

    def resolve(self, ref: str) -> str:
        """The version ``ref`` (a version number or an alias) points at now."""
        ...

    def fetch(self, version: str) -> Any:
        """Local files of ``version``: an object with :class:`ModelFiles`' attributes."""
        ...


class RegistrySource:
    """Versions of ``registered_name`` in the MLflow registry of a workspace (the client,
    with its explicit tracking URI, is the workspace's)."""

    def __init__(self, ws: Workspace | Settings, registered_name: str | None = None) -> None:
        from flywheel.registry.sqlstore import SqlRegistry
        from flywheel.workspace import Workspace

        self.ws = Workspace.of(ws)
        self.name = registered_name or self.ws.settings.registry.model_name
        # SQL tracking stores: aliases and downloaded versions without importing MLflow
        self.sql = SqlRegistry(self.ws.tracking_uri, self.ws.settings.home)

    def resolve(self, ref: str) -> str:
        if str(ref).isdigit():
            return str(ref)
        fast = self.sql.alias_version(self.name, ref)
        if fast is not None:
            return fast
        from mlflow.exceptions import MlflowException

        try:
            aliases = self.ws.client.get_registered_model(self.name).aliases or {}
        except MlflowException as exc:
            cls = NotFound if exc.error_code == "RESOURCE_DOES_NOT_EXIST" else RegistryError
            raise cls(f"Cannot resolve {self.name}@{ref}: {exc.message}", model=self.name) from exc
        if ref not in aliases:
            raise NotFound(
                f"Model {self.name!r} has no alias {ref!r} (aliases: {sorted(aliases)}). "
                "Promote a version first (`flywheel promote`).",
                model=self.name,
                ref=ref,
            )
        return str(aliases[ref])

    def fetch(self, version: str) -> Any:
        from flywheel.registry.artifacts import fetch_model_artifacts
        from flywheel.tracking import TAG

        tags = (TAG["onnx_sha256"], TAG["run_id"])
        cached = self.sql.cached(self.name, version, *tags)
        if cached is None and self.sql.local_copy(self.name, version):  # a local artifact store
            cached = self.sql.cached(self.name, version, *tags)
        if cached is not None:  # sha-checked, without importing MLflow
            return cached
        return fetch_model_artifacts(self.ws, version, name=self.name)


class ModelDirSource:
    """One version in a folder written by ``flywheel registry export`` (``flywheel-model.json``
    beside the MLflow model): what a serving image bakes in. No registry, no MLflow import;
    the ONNX bytes are still checked against the sha256 the registry recorded."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()
        bundle = self.folder / BUNDLE_FILE
        try:
            meta = json.loads(bundle.read_text())
            self.name = str(meta["name"])
            self.files = ModelFiles(
                version=str(meta["version"]),
                model_path=self.folder / meta["model_file"],
                feature_specs=[FeatureSpec(f["name"], f["kind"]) for f in meta["feature_specs"]],
                task=str(meta["task"]),
                classes=meta.get("classes"),
                onnx_sha256=str(meta["onnx_sha256"]),
            )
        except FileNotFoundError:
            raise NotFound(
                f"{bundle} does not exist: --model-dir takes a folder written by "
                "`flywheel registry export NAME@ALIAS --out DIR`.",
                path=str(bundle),
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(
                f"{bundle} is not a flywheel model bundle ({type(exc).__name__}: {exc}); "
                "export it again with `flywheel registry export`.",
                path=str(bundle),
            ) from None

    def resolve(self, ref: str) -> str:
        version = self.files.version
        if str(ref).isdigit() and str(ref) != version:
            raise NotFound(
                f"{self.folder} holds version {version} of {self.name!r}, not {ref}.", ref=ref
            )
        return version  # an alias means "what this folder holds"

    def fetch(self, version: str) -> ModelFiles:
        return self.files


class StaticSource:
    """Versions held in memory (tests, files on disk): ``{version: ModelFiles}`` plus
    ``{alias: version}``; :meth:`set_alias` moves an alias as ``flywheel promote`` would."""

    def __init__(self, versions: dict[str, ModelFiles], aliases: dict[str, str] | None = None):
        self.versions = dict(versions)
        self.aliases = dict(aliases or {})
        self._lock = threading.Lock()

    def set_alias(self, alias: str, version: str) -> None:
        with self._lock:
            self.aliases[alias] = version

    def resolve(self, ref: str) -> str:
        with self._lock:
            version = ref if ref in self.versions else self.aliases.get(ref)
        if version is None:
            raise NotFound(f"No version or alias {ref!r}.", ref=ref)
        return version

    def fetch(self, version: str) -> ModelFiles:
        try:
            return self.versions[version]
        except KeyError:
            raise NotFound(f"No version {version!r}.", version=version) from None
