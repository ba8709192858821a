"""The registry: MLflow model versions carrying ONNX + model card, aliases, approvals, rollback.

A registered version is an MLflow ONNX model (``mlflow.onnx``) whose directory holds
``model.onnx`` and ``extra_files/{model_card.md, feature_specs.json, parity.json}``; the
version tags hold ``flywheel.onnx_sha256`` and lineage (see ``flywheel.tracking.TAG``).
New versions get the alias ``challenger``; ``champion`` moves by promote/approve/rollback.

Registration is atomic in spirit: gates and ONNX parity are checked before anything is
written to the registry; the version number is reserved first (so the card can name it),
and if any later step fails the version is deleted again, the previous ``challenger`` alias
is restored and nothing is appended to the audit log. A version only counts once it has the
``flywheel.onnx_sha256`` tag, which is written last but one (before the alias).

Champion history lives in the audit log (append-only, hash-chained): rollback pops the
champion stack that promote/approve/rollback entries describe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import flywheel
from flywheel._timing import timed
from flywheel.config import Settings
from flywheel.data.snapshots import Manifest, get_snapshot
from flywheel.errors import FlywheelError, GateFailed, NotFound, ParityError, RegistryError
from flywheel.registry.audit import AuditEntry, AuditLog
from flywheel.registry.card import CardContext, render_model_card
from flywheel.registry.onnx_export import (
    ParityReport,
    check_parity,
    export_onnx,
    make_session,
    onnx_predict,
)
from flywheel.tracking import TAG, git_commit, log_model, use_tracking
from flywheel.training.evaluate import ChampionModel, Evaluation
from flywheel.training.features import FeatureSpec, Task, prepare_frame
from flywheel.training.gates import GateReport
from flywheel.training.train import TrainResult, load_holdout, load_pipeline

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import ModelSignature
    from sklearn.pipeline import Pipeline

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "ModelArtifacts",
    "ModelVersionInfo",
    "PromotionOutcome",
    "RegisteredVersion",
    "approve",
    "fetch_model_artifacts",
    "graph_name",
    "history",
    "list_versions",
    "load_champion",
    "promote",
    "register",
    "rollback",
]

log = logging.getLogger("flywheel.registry")

CHALLENGER = "challenger"
CHAMPION = "champion"
ONNX_NAME = "onnx"
APPROVAL_TAG = "flywheel.approval"
PARITY_TAGS = {
    "max_abs_diff": "flywheel.parity.max_abs_diff",
    "rows_over_tolerance": "flywheel.parity.rows_over_tolerance",
    "label_mismatches": "flywheel.parity.label_mismatches",
    "tolerance": "flywheel.parity.tolerance",
}
CHAMPION_MOVES = ("promote", "approve", "rollback")


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    onnx_sha256: str
    parity: ParityReport
    model_uri: str  # models:/<name>/<version>
    card_markdown: str
    aliases: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    audit_entry: AuditEntry | None = None


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    aliases: list[str]
    tags: dict[str, str]
    created_at: str


@dataclass
class PromotionOutcome:
    entry: AuditEntry
    pending: bool  # True when the promotion waits for approval
    extra: dict[str, Any] = field(default_factory=dict)


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


# --------------------------------------------------------------------------- MLflow boundary


@contextmanager
def _mlflow_errors(what: str, settings: Settings) -> Iterator[None]:
    """Translate MLflow's exceptions into RegistryError/NotFound at the boundary."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        cls = NotFound if _is_missing(exc) else RegistryError
        raise cls(
            f"Cannot {what}: {exc.message}. Check tracking.uri ({settings.tracking.uri!r}) "
            "and the model name (registry.model_name).",
            model=settings.registry.model_name,
        ) from exc


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def _client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    use_tracking(settings)
    return MlflowClient()


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """``{alias: version}`` of the registered model (empty when the model does not exist)."""
    return _registered_aliases(client, name) or {}


def _registered_aliases(client: MlflowClient, name: str) -> dict[str, str] | None:
    """``{alias: version}``, or None when the registered model does not exist.

    Read from the registered model rather than ``get_model_version_by_alias``, whose
    "alias not found" error code differs between the SQL and REST stores."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    return {alias: str(version) for alias, version in aliases.items()}


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    return _aliases(client, name).get(alias)


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def _get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The version, or NotFound naming the model and the versions that exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        existing = [str(v.version) for v in _versions(client, name)]
        raise NotFound(
            f"Model {name!r} has no version {version!r}; existing versions: {existing or 'none'}. "
            "Pass one of those (see `flywheel registry list`).",
            model=name,
            version=str(version),
            existing=existing,
        ) from exc


def _audit(settings: Settings) -> AuditLog:
    return AuditLog(settings.registry.audit_url or "")


# --------------------------------------------------------------------------- register


def _require_gates(gate_report: GateReport, result: TrainResult) -> None:
    if gate_report.passed:
        return
    failed = [f"{r.gate}({r.metric}): {r.detail}" for r in gate_report.failures]
    raise GateFailed(
        f"Run {result.run_id} failed {len(failed)} quality gate(s): {'; '.join(failed)}. "
        "The registry is unchanged; improve the model or adjust `gates.*` deliberately.",
        run_id=result.run_id,
        failed=[asdict(r) for r in gate_report.failures],
    )


_PARITY_METRICS = ("max_abs_diff", "rows_over_tolerance", "label_mismatches")


def _parity(
    settings: Settings,
    result: TrainResult,
    evaluation: Evaluation,
    pipeline: Pipeline,
    onnx_model: bytes,
) -> tuple[ParityReport, pd.DataFrame]:
    """ONNX vs native on the run's holdout; logged as run metrics; ParityError if it fails.

    Uses the holdout and native predictions the evaluation kept in memory when it scored
    this run, else re-derives the holdout from the snapshot.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    held = evaluation.holdout if evaluation.run_id == result.run_id else None
    if held is not None:
        frame, native = held.frame, (held.labels, held.proba)
    else:
        frame, native = load_holdout(settings, result.run_id)[0], None
    report = check_parity(
        pipeline,
        onnx_model,
        frame,
        result.feature_specs,
        task=result.task,
        tolerance=settings.registry.parity_tolerance,
        relative=result.task == "regression",
        native=native,
        prepared=held is not None,
        threshold=_threshold_value(result),
    )
    if not report.passed:  # when it passes, they are logged with the ONNX model (_log_onnx)
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"onnx_parity_{k}", float(getattr(report, k)), now, 0) for k in _PARITY_METRICS
        ]
        MlflowClient().log_batch(result.run_id, metrics=metrics)
        raise ParityError(
            f"ONNX export of run {result.run_id} disagrees with the native pipeline: max |Δ| "
            f"{report.max_abs_diff:.3g} (tolerance {report.tolerance:g}), "
            f"{report.rows_over_tolerance} of {report.rows} rows over tolerance, "
            f"{report.label_mismatches} label mismatches. Nothing was registered; check the "
            "float32 casting of the features (docs/onnx.md) or raise registry.parity_tolerance.",
            run_id=result.run_id,
            parity=asdict(report),
        )
    return report, frame


def _signature(specs: list[FeatureSpec]) -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema, TensorSpec

    cols: list[ColSpec | TensorSpec] = [
        ColSpec(DataType.float if s.kind == "numeric" else DataType.string, s.name) for s in specs
    ]
    return ModelSignature(inputs=Schema(cols))


def _specs_json(result: TrainResult) -> dict[str, Any]:
    classes = [c.item() if isinstance(c, np.generic) else c for c in result.classes or []]
    return {
        "features": [{"name": s.name, "kind": s.kind} for s in result.feature_specs],
        "task": result.task,
        "target": result.target,
        "classes": classes if result.task == "classification" else None,
        "threshold": _threshold_value(result),
    }


def _threshold_value(result: TrainResult) -> float | None:
    return None if result.threshold is None else result.threshold.value


def graph_name(model_name: str, result: TrainResult) -> str:
    """The ONNX graph's name: the registered model's name and the sha256 of the run's
    inputs (snapshot, effective params, seed), never a random id, so retraining the same
    inputs exports byte-identical ONNX."""
    return f"{model_name}-{result.inputs_sha256[:16] or 'unknown-inputs'}"


def _snapshot(settings: Settings, snapshot_id: str) -> Manifest | None:
    try:
        return get_snapshot(settings, snapshot_id)
    except FlywheelError as exc:
        log.warning("snapshot %s unreadable for the model card: %s", snapshot_id, exc)
        return None


@dataclass
class _Draft:
    """What registration has computed before it touches the registry."""

    result: TrainResult
    evaluation: Evaluation
    gate_report: GateReport
    parity: ParityReport
    onnx_model: bytes
    sha256: str
    example: pd.DataFrame
    manifest: Manifest | None
    run_tags: dict[str, str]
    experiment_id: str


def register(
    settings: Settings,
    result: TrainResult,
    *,
    evaluation: Evaluation,
    gate_report: GateReport,
) -> RegisteredVersion:
    """Export the run's pipeline to ONNX, check parity, and register it as ``challenger``."""
    _require_gates(gate_report, result)
    client = _client(settings)
    timings: dict[str, float] = {}
    with _mlflow_errors(f"register run {result.run_id}", settings):
        with timed(timings, "load_pipeline"):
            pipeline = result.pipeline
            if pipeline is None:  # not trained in this process: the logged copy
                pipeline = load_pipeline(settings, result.run_id)
        with timed(timings, "onnx_export"):
            onnx_model = export_onnx(
                pipeline,
                result.feature_specs,
                task=result.task,
                threshold=_threshold_value(result),
                graph_name=graph_name(settings.registry.model_name, result),
            )
        with timed(timings, "parity"):
            parity, holdout = _parity(settings, result, evaluation, pipeline, onnx_model)
        run = client.get_run(result.run_id)
        draft = _Draft(
            result=result,
            evaluation=evaluation,
            gate_report=gate_report,
            parity=parity,
            onnx_model=onnx_model,
            sha256=hashlib.sha256(onnx_model).hexdigest(),
            example=prepare_frame(holdout.head(3), result.feature_specs),
            manifest=_snapshot(settings, result.snapshot_id),
            run_tags=dict(run.data.tags),
            experiment_id=run.info.experiment_id,
        )
        with timed(timings, "publish"):
            registered = _publish(settings, client, draft)
    registered.timings = timings
    return registered


def _reserve_version(
    client: MlflowClient, name: str, draft: _Draft, *, exists: bool
) -> tuple[str, LoggedModel]:
    """Create the (empty, pending) ONNX logged model and a version pointing at it, with all
    its tags in the same write (the version is reachable by no alias until publishing ends)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not exists:
        try:
            client.create_registered_model(name)
        except MlflowException as exc:  # made meanwhile by another process
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    logged = mlflow.initialize_logged_model(
        name=ONNX_NAME,
        source_run_id=draft.result.run_id,
        model_type="onnx",
        experiment_id=draft.experiment_id,
    )
    mv = client.create_model_version(
        name,
        source=f"models:/{logged.model_id}",
        run_id=draft.result.run_id,
        tags=_version_tags(draft),
        model_id=logged.model_id,
        await_creation_for=0,
    )
    return str(mv.version), logged


def _publish(settings: Settings, client: MlflowClient, draft: _Draft) -> RegisteredVersion:
    name = settings.registry.model_name
    aliases = _registered_aliases(client, name)
    previous_challenger = (aliases or {}).get(CHALLENGER)
    version, logged = _reserve_version(client, name, draft, exists=aliases is not None)
    model_id = logged.model_id
    try:
        card = _card(settings, draft, name, version)
        _log_onnx(client, draft, logged, card)
        client.update_model_version(name, version, description=card)
        client.set_registered_model_alias(name, CHALLENGER, version)
        entry = _audit(settings).append(
            who=settings.user,
            action="register",
            model=name,
            from_version=previous_challenger,
            to_version=version,
            reason=f"run {draft.result.run_id} passed gates and parity",
        )
    except BaseException:
        _undo(client, name, version, model_id, previous_challenger)
        raise
    log.info("registered %s v%s (run %s) as %s", name, version, draft.result.run_id, CHALLENGER)
    return RegisteredVersion(
        name=name,
        version=version,
        run_id=draft.result.run_id,
        onnx_sha256=draft.sha256,
        parity=draft.parity,
        model_uri=f"models:/{name}/{version}",
        card_markdown=card,
        aliases=[CHALLENGER],
        audit_entry=entry,
    )


def _undo(
    client: MlflowClient, name: str, version: str, model_id: str, challenger: str | None
) -> None:
    """Best effort: delete the half-made version, restore the alias, drop the logged model."""
    steps: list[tuple[str, Any]] = [
        ("delete version", lambda: client.delete_model_version(name, version)),
        ("delete logged model", lambda: client.delete_logged_model(model_id)),
    ]
    if challenger is not None:
        restore = lambda: client.set_registered_model_alias(name, CHALLENGER, challenger)  # noqa: E731
        steps.append(("restore alias", restore))
    for what, step in steps:
        try:
            step()
        except Exception:  # keep undoing; the original error is what the caller sees
            log.exception("could not %s while undoing registration of %s v%s", what, name, version)
    log.warning("registration of %s v%s failed; version removed", name, version)


def _card(settings: Settings, draft: _Draft, name: str, version: str) -> str:
    ctx = CardContext(
        name=name,
        version=version,
        onnx_sha256=draft.sha256,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        created_by=settings.user,
        git_commit=draft.run_tags.get(TAG["git_commit"]) or git_commit(),
        package_version=draft.run_tags.get(TAG["package_version"]) or flywheel.__version__,
        snapshot_sha256=draft.run_tags.get(TAG["snapshot_sha256"]),
    )
    return render_model_card(
        ctx,
        result=draft.result,
        evaluation=draft.evaluation,
        gate_report=draft.gate_report,
        parity=draft.parity,
        manifest=draft.manifest,
    )


def _pip_requirements() -> list[str]:
    import onnx
    import onnxruntime

    return [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"]


def _log_onnx(client: MlflowClient, draft: _Draft, logged: LoggedModel, card: str) -> None:
    """Log model.onnx + extra files into the reserved logged model of the training run."""
    import mlflow
    from mlflow.entities import LoggedModelOutput, Metric

    from flywheel.registry import onnx_flavor

    model_id = logged.model_id
    with tempfile.TemporaryDirectory(prefix="fw-register-") as tmp:
        files = {
            "model_card.md": card,
            "feature_specs.json": json.dumps(_specs_json(draft.result), indent=2),
            "parity.json": json.dumps(asdict(draft.parity), indent=2),
        }
        for fname, text in files.items():
            (Path(tmp) / fname).write_text(text, encoding="utf-8")
        # No run_id: MLflow would then re-read every metric's history of the run to copy
        # it onto the model; the output link and the holdout metrics are written below.
        log_model(
            onnx_flavor,
            name=ONNX_NAME,
            flavor_name="mlflow.onnx",
            onnx_bytes=draft.onnx_model,
            model_id=model_id,
            signature=_signature(draft.result.feature_specs),
            input_example=draft.example,
            pip_requirements=_pip_requirements(),
            extra_files=[str(Path(tmp) / f) for f in files],
            onnx_execution_providers=["CPUExecutionProvider"],
        )
    run_id = draft.result.run_id
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
    now = int(time.time() * 1000)
    metrics = {f"holdout_{k}": v for k, v in draft.evaluation.metrics.items()}
    metrics.update({f"onnx_parity_{k}": float(getattr(draft.parity, k)) for k in _PARITY_METRICS})
    client.log_batch(run_id, [Metric(k, v, now, 0, model_id=model_id) for k, v in metrics.items()])
    location = logged.artifact_location
    stored = Path(mlflow.artifacts.download_artifacts(f"{location}/model.onnx"))
    if _sha256(stored) != draft.sha256:
        raise RegistryError(
            f"The stored model.onnx (sha256 {_sha256(stored)}) differs from the exported bytes "
            f"({draft.sha256}). Nothing was registered; report this as a bug.",
        )


def _version_tags(draft: _Draft) -> dict[str, str]:
    result, parity = draft.result, draft.parity
    snapshot_sha = (
        draft.manifest.sha256 if draft.manifest else draft.run_tags.get(TAG["snapshot_sha256"], "")
    )
    tags = {
        TAG["snapshot_id"]: result.snapshot_id,
        TAG["snapshot_sha256"]: snapshot_sha,
        TAG["dataset"]: result.dataset,
        TAG["run_id"]: result.run_id,
        TAG["task"]: result.task,
        TAG["target"]: result.target,
        TAG["family"]: result.family,
        TAG["gates"]: "passed",
        **{tag: str(getattr(parity, key)) for key, tag in PARITY_TAGS.items()},
        TAG["onnx_sha256"]: draft.sha256,
    }
    if result.inputs_sha256:
        tags[TAG["inputs_sha256"]] = result.inputs_sha256
    if result.threshold is not None:
        tags[TAG["threshold"]] = repr(result.threshold.value)
        tags[TAG["threshold_objective"]] = result.threshold.objective
    return tags


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- load


def _resolve(client: MlflowClient, name: str, ref: str) -> ModelVersion:
    if str(ref).isdigit():
        return _get_version(client, name, str(ref))
    version = _alias_version(client, name, ref)
    if version is None:
        raise NotFound(
            f"Model {name!r} has no version with alias {ref!r}. Register a model "
            "(`flywheel train`) or promote one (`flywheel promote VERSION`).",
            model=name,
            alias=ref,
        )
    return _get_version(client, name, version)


def fetch_model_artifacts(
    settings: Settings, ref: str | int, *, dst: Path | None = None
) -> ModelArtifacts:
    """Download a version's ONNX model, card and specs (``ref``: version or alias), sha-checked."""
    import mlflow

    name = settings.registry.model_name
    client = _client(settings)
    with _mlflow_errors(f"fetch {name!r} {ref!r}", settings):
        mv = _resolve(client, name, str(ref))
        expected = mv.tags.get(TAG["onnx_sha256"])
        if not expected:
            raise RegistryError(
                f"{name} v{mv.version} has no {TAG['onnx_sha256']} tag, so it was not fully "
                "registered. Register it again with `flywheel train`.",
                model=name,
                version=str(mv.version),
            )
        target = (dst or settings.home / "models" / name / str(mv.version)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download into a private folder and check it before it takes the shared place:
        # several processes (uvicorn workers, a CLI beside a server) may fetch one version
        # at once, and none may see another's half-written or half-deleted folder.
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    f"models:/{name}/{mv.version}", dst_path=str(tmp)
                )
            ).resolve()  # MLflow answers with an absolute path
            _checked_artifacts(name, mv, local, expected)
            _move_into_place(tmp, target, expected)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _checked_artifacts(name, mv, target / local.relative_to(tmp), expected)


def _move_into_place(folder: Path, target: Path, expected: str) -> None:
    """Rename ``folder`` (checked) to ``target``; a copy already there with the expected
    ONNX bytes is kept (another process won the race), any other is moved aside first."""
    for _ in range(5):
        try:
            folder.rename(target)  # atomic; fails while target exists and is not empty
            return
        except OSError:
            onnx_files = list(target.rglob("model.onnx")) if target.exists() else []
            if onnx_files and all(_sha256(f) == expected for f in onnx_files):
                return
            aside = target.with_name(f".{target.name}-stale-{os.getpid()}-{time.time_ns()}")
            with contextlib.suppress(OSError):  # gone meanwhile: fine
                target.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
    raise RegistryError(f"Could not put the downloaded model in place at {target}.")


def _checked_artifacts(name: str, mv: ModelVersion, local: Path, expected: str) -> ModelArtifacts:
    model_path = local / "model.onnx"
    actual = _sha256(model_path)
    if actual != expected:
        raise RegistryError(
            f"{name} v{mv.version}: model.onnx has sha256 {actual} but the registry recorded "
            f"{expected}; the artifact was changed after registration. Refusing to load it; "
            "re-register the run or restore the artifact store.",
            model=name,
            version=str(mv.version),
            expected=expected,
            actual=actual,
        )
    specs_path = local / "extra_files" / "feature_specs.json"
    specs = json.loads(specs_path.read_text(encoding="utf-8"))
    return ModelArtifacts(
        name=name,
        version=str(mv.version),
        model_path=model_path,
        card_path=local / "extra_files" / "model_card.md",
        specs_path=specs_path,
        feature_specs=[FeatureSpec(f["name"], f["kind"]) for f in specs["features"]],
        task=specs["task"],
        classes=specs.get("classes"),
        onnx_sha256=actual,
        aliases=sorted(mv.aliases or []),
        run_id=mv.run_id or mv.tags.get(TAG["run_id"]),
        threshold=specs.get("threshold"),
    )


def load_champion(settings: Settings, alias: str = CHAMPION) -> ChampionModel | None:
    """The version behind ``alias`` as an ONNX scorer, or None when the alias is unset."""
    try:
        artifacts = fetch_model_artifacts(settings, alias)
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


# --------------------------------------------------------------------------- aliases


def _require_reason(reason: str, command: str) -> str:
    if not reason or not reason.strip():
        raise RegistryError(
            f"A reason is required to {command} (got {reason!r}): every registry change is "
            f'audited. Pass --reason "why".',
            command=command,
        )
    return reason.strip()


def _settle_approval_tag(client: MlflowClient, name: str, version: str, action: str) -> None:
    """Mirror of the audit state for the MLflow UI: approved, or no longer pending."""
    if action == "approve":
        client.set_model_version_tag(name, version, APPROVAL_TAG, "approved")
    elif client.get_model_version(name, version).tags.get(APPROVAL_TAG) == "pending":
        client.delete_model_version_tag(name, version, APPROVAL_TAG)


def _move_champion(
    settings: Settings, client: MlflowClient, version: str, action: str, reason: str
) -> AuditEntry:
    name = settings.registry.model_name
    current = _alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    _settle_approval_tag(client, name, version, action)
    try:
        return _audit(settings).append(
            who=settings.user,
            action=action,
            model=name,
            from_version=current,
            to_version=version,
            reason=reason,
        )
    except BaseException:  # no unaudited change: put the alias back
        if current is None:
            client.delete_registered_model_alias(name, CHAMPION)
        else:
            client.set_registered_model_alias(name, CHAMPION, current)
        raise


def _pending_request(entries: list[AuditEntry], version: str) -> AuditEntry | None:
    """The open promotion request for ``version``: requested, not yet approved or superseded."""
    pending: AuditEntry | None = None
    for entry in entries:
        if entry.action == "promote_requested" and entry.to_version == version:
            pending = entry
        elif entry.action in ("approve", "promote") and entry.to_version == version:
            pending = None
    return pending


def promote(settings: Settings, version: str, *, reason: str) -> PromotionOutcome:
    """Move ``champion`` to ``version``, or record a request when approval is required."""
    reason = _require_reason(reason, "promote")
    name, version = settings.registry.model_name, str(version)
    client = _client(settings)
    with _mlflow_errors(f"promote {name} v{version}", settings):
        _get_version(client, name, version)
        current = _alias_version(client, name, CHAMPION)
        if current == version:
            raise RegistryError(
                f"{name} v{version} is already the champion; nothing to promote. "
                "Pick another version (see `flywheel registry list`).",
                model=name,
                version=version,
            )
        if not settings.registry.require_approval:
            return PromotionOutcome(
                _move_champion(settings, client, version, "promote", reason), pending=False
            )
        return _request(settings, client, version, current, reason)


def _request(
    settings: Settings, client: MlflowClient, version: str, current: str | None, reason: str
) -> PromotionOutcome:
    name = settings.registry.model_name
    audit = _audit(settings)
    if (open_request := _pending_request(audit.entries(name), version)) is not None:
        raise RegistryError(
            f"Promotion of {name} v{version} is already waiting for approval (requested by "
            f"{open_request.who} at {open_request.at}). Another user runs `flywheel approve "
            f"{version} --reason ...`.",
            model=name,
            version=version,
        )
    entry = audit.append(
        who=settings.user,
        action="promote_requested",
        model=name,
        from_version=current,
        to_version=version,
        reason=reason,
    )
    client.set_model_version_tag(name, version, APPROVAL_TAG, "pending")
    return PromotionOutcome(entry, pending=True, extra={"requested_by": settings.user})


def approve(settings: Settings, version: str, *, reason: str) -> PromotionOutcome:
    """Approve a pending promotion (by someone other than the requester) and move champion."""
    reason = _require_reason(reason, "approve")
    name, version = settings.registry.model_name, str(version)
    client = _client(settings)
    with _mlflow_errors(f"approve {name} v{version}", settings):
        _get_version(client, name, version)
        request = _pending_request(_audit(settings).entries(name), version)
        if request is None:
            raise RegistryError(
                f"No pending promotion of {name} v{version} to approve. Request one with "
                f"`flywheel promote {version} --reason ...` (with registry.require_approval on).",
                model=name,
                version=version,
            )
        if request.who == settings.user:
            raise RegistryError(
                f"{settings.user!r} requested the promotion of {name} v{version} and cannot also "
                "approve it (four-eyes rule). Ask another user to run `flywheel approve`.",
                model=name,
                version=version,
                requester=request.who,
            )
        entry = _move_champion(settings, client, version, "approve", reason)
    return PromotionOutcome(entry, pending=False, extra={"requested_by": request.who})


def champion_stack(entries: list[AuditEntry]) -> list[str | None]:
    """Previous champions, oldest first, as promote/approve push and rollback pops."""
    stack: list[str | None] = []
    for entry in entries:
        if entry.action in ("promote", "approve"):
            stack.append(entry.from_version)
        elif entry.action == "rollback" and stack:
            stack.pop()
    return stack


def rollback(settings: Settings, *, reason: str) -> PromotionOutcome:
    """Return ``champion`` to the champion before it (repeatable, like popping a stack)."""
    reason = _require_reason(reason, "rollback")
    name = settings.registry.model_name
    client = _client(settings)
    with _mlflow_errors(f"roll back {name}", settings):
        stack = champion_stack(_audit(settings).entries(name))
        if not stack or stack[-1] is None:
            current = _alias_version(client, name, CHAMPION)
            raise RegistryError(
                f"Nothing to roll back to for {name}: the champion (v{current}) has no earlier "
                "champion in the audit log. Promote a version explicitly instead.",
                model=name,
                champion=current,
            )
        target = str(stack[-1])
        _get_version(client, name, target)
        entry = _move_champion(settings, client, target, "rollback", reason)
    return PromotionOutcome(entry, pending=False)


# --------------------------------------------------------------------------- listing


def list_versions(settings: Settings) -> list[ModelVersionInfo]:
    """Every version of the registered model, oldest first (empty if there is none)."""
    name = settings.registry.model_name
    client = _client(settings)
    with _mlflow_errors(f"list versions of {name!r}", settings):
        versions = _versions(client, name)
        aliases = _aliases(client, name)
    return [
        ModelVersionInfo(
            name=name,
            version=str(v.version),
            run_id=v.run_id,
            aliases=sorted(a for a, ver in aliases.items() if ver == str(v.version)),
            tags=dict(v.tags or {}),
            created_at=datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(),
        )
        for v in versions
    ]


def history(settings: Settings) -> list[AuditEntry]:
    """The audit entries of the registered model, oldest first."""
    return _audit(settings).entries(settings.registry.model_name)
