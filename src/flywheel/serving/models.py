"""Loading ONNX models for serving, and where they come from (the registry, or files).

Serving never unpickles: a model is an ONNX file whose sha256 must equal the one recorded
at registration (tag ``flywheel.onnx_sha256``). The bytes are hashed and then handed to
ONNX Runtime from memory, so the file cannot change between the check and the load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from flywheel.errors import NotFound, RegistryError
from flywheel.serving.batching import BatchStats, MicroBatcher, ScoredFn
from flywheel.serving.decode import InputSchema
from flywheel.serving.errors import IntegrityError
from flywheel.training.features import FeatureSpec

if TYPE_CHECKING:
    import onnxruntime as ort

    from flywheel.config import Settings

__all__ = [
    "LoadedModel",
    "ModelFiles",
    "ModelSource",
    "RegistrySource",
    "StaticSource",
    "load_model",
]

log = logging.getLogger("flywheel.serving")
_META = "flywheel."


@dataclass
class LoadedModel:
    """One model version ready to score: its ONNX session, input schema and batcher."""

    name: str
    version: str
    sha256: str
    task: str
    classes: list[Any] | None
    schema: InputSchema
    session: ort.InferenceSession
    output_names: list[str]
    batcher: MicroBatcher = field(init=False, repr=False)
    # the prediction log that knows this version's input names (its rows then carry the
    # inputs as a JSON array of columns); set by the predictor when it loads the version
    columns_logged_to: Any = field(default=None, init=False, repr=False)

    def configure_batching(
        self,
        *,
        max_rows: int,
        max_wait_s: float,
        inline_max_rows: int,
        gather_turns: int,
        stats: BatchStats | None = None,
        on_scored: ScoredFn | None = None,
    ) -> None:
        self.batcher = MicroBatcher(
            self.run,
            self.schema.numeric,
            max_rows=max_rows,
            max_wait_s=max_wait_s,
            gather_turns=gather_turns,
            inline_max_rows=inline_max_rows,
            stats=stats,
            on_scored=on_scored,
        )

    def run(self, feeds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Score ``[n, 1]`` arrays given in input order (blocking). The batcher never
        sends a single row (see :func:`flywheel.serving.batching.assemble`)."""
        outputs = self.session.run(
            self.output_names, dict(zip(self.schema.names, feeds, strict=True))
        )
        labels = np.asarray(outputs[0]).reshape(-1)
        proba = np.asarray(outputs[1]) if len(outputs) > 1 else None
        return labels, proba

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "classes": self.classes,
            "sha256": self.sha256,
            "inputs": [{"name": s.name, "kind": s.kind} for s in self.schema.specs],
            "outputs": self.output_names,
        }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    props = session.get_modelmeta().custom_metadata_map or {}
    return {k.removeprefix(_META): v for k, v in props.items() if k.startswith(_META)}


def _specs_from_session(session: ort.InferenceSession) -> list[FeatureSpec]:
    return [
        FeatureSpec(i.name, "categorical" if i.type == "tensor(string)" else "numeric")
        for i in session.get_inputs()
    ]


def _check_inputs(session: ort.InferenceSession, specs: Sequence[FeatureSpec], where: str) -> None:
    onnx_inputs = {i.name: i.type for i in session.get_inputs()}
    names = [s.name for s in specs]
    if set(onnx_inputs) != set(names):
        raise RegistryError(
            f"{where}: the ONNX inputs {sorted(onnx_inputs)} do not match the feature specs "
            f"{sorted(names)}. Re-export the model with flywheel.registry.onnx_export.",
            where=where,
        )
    for spec in specs:
        want = "tensor(float)" if spec.kind == "numeric" else "tensor(string)"
        if onnx_inputs[spec.name] != want:
            raise RegistryError(
                f"{where}: ONNX input {spec.name!r} is {onnx_inputs[spec.name]} but the spec "
                f"says {spec.kind} ({want}). Re-export the model.",
                field=spec.name,
            )


def load_model(
    onnx_path: str | Path,
    specs: Sequence[FeatureSpec] | None = None,
    expected_sha256: str | None = None,
    *,
    name: str = "model",
    version: str = "0",
    task: str | None = None,
    classes: list[Any] | None = None,
    threads: int = 1,
    require_sha256: bool = True,
) -> LoadedModel:
    """Load ``onnx_path`` after checking its sha256; specs/task/classes default to the
    model's ``flywheel.*`` metadata, then to its ONNX inputs. Raises :class:`IntegrityError`
    on a sha256 mismatch (or a missing one, unless ``require_sha256=False``)."""
    import onnxruntime as ort

    data = Path(onnx_path).read_bytes()
    actual = _sha256(data)
    where = f"model {name!r} v{version}"
    if expected_sha256 is None and require_sha256:
        raise IntegrityError(
            f"{where}: no expected sha256 was given, so the file cannot be verified. "
            "Pass the registry's flywheel.onnx_sha256 tag.",
            model=name,
            version=version,
        )
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise IntegrityError(
            f"{where}: model.onnx has sha256 {actual} but {expected_sha256} was recorded at "
            "registration; the artifact changed. Refusing to load it.",
            model=name,
            version=version,
            expected=expected_sha256,
            actual=actual,
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise RegistryError(f"{where}: ONNX Runtime cannot load it: {exc}", model=name) from exc
    meta = _metadata(session)
    if specs is None:
        specs = (
            [FeatureSpec(f["name"], f["kind"]) for f in json.loads(meta["features"])]
            if "features" in meta
            else _specs_from_session(session)
        )
    _check_inputs(session, specs, where)
    outputs = [o.name for o in session.get_outputs()]
    task = (
        task
        or meta.get("task")
        or ("classification" if "probabilities" in outputs else "regression")
    )
    if classes is None and "classes" in meta:
        classes = json.loads(meta["classes"])
    wanted = ["label", "probabilities"] if task == "classification" else ["label"]
    if not set(wanted) <= set(outputs):
        raise RegistryError(f"{where}: ONNX outputs {outputs} lack {wanted}.", model=name)
    return LoadedModel(
        name=name,
        version=str(version),
        sha256=actual,
        task=task,
        classes=classes,
        schema=InputSchema(tuple(specs)),
        session=session,
        output_names=wanted,
    )


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class ModelFiles:
    """What a source hands over: the fields of ``registry.models.ModelArtifacts`` we use."""

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
    """Versions of ``registered_name`` in the MLflow registry configured by ``settings``."""

    def __init__(self, settings: Settings, registered_name: str | None = None) -> None:
        self.name = registered_name or settings.registry.model_name
        self.settings = settings.model_copy(
            update={"registry": settings.registry.model_copy(update={"model_name": self.name})}
        )

    def resolve(self, ref: str) -> str:
        if str(ref).isdigit():
            return str(ref)
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            client = MlflowClient(tracking_uri=self.settings.tracking.uri)
            aliases = client.get_registered_model(self.name).aliases or {}
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
        from flywheel.registry.models import fetch_model_artifacts

        return fetch_model_artifacts(self.settings, version)


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
