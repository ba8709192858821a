"""Register a trained run: gates and ONNX parity checked before anything is written, then a
new MLflow model version carrying ONNX + model card, with the alias ``challenger``.

A registered version is an MLflow ONNX model (``mlflow.onnx``) whose directory holds
``model.onnx`` and ``extra_files/{model_card.md, feature_specs.json, parity.json}``; the
version tags hold ``flywheel.onnx_sha256`` and lineage (see ``flywheel.tracking.TAG``).

Registration is atomic in spirit: gates and ONNX parity are checked before anything is
written to the registry; the version number is reserved first (so the card can name it),
and if any later step fails the version is deleted again, the previous ``challenger`` alias
is restored and nothing is appended to the audit log. A version only counts once it has the
``flywheel.onnx_sha256`` tag, which is written last but one (before the alias).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import flywheel
from flywheel._timing import timed
from flywheel.data.snapshots import Manifest
from flywheel.errors import FlywheelError, GateFailed, ParityError, RegistryError
from flywheel.registry._client import mlflow_errors, registered_aliases, sha256_file
from flywheel.registry.aliases import CHALLENGER
from flywheel.registry.audit import AuditEntry
from flywheel.registry.card import CardContext, render_model_card
from flywheel.registry.onnx_export import ParityReport, check_parity, export_onnx
from flywheel.schema import FeatureSpec
from flywheel.tracking import TAG, git_commit, log_model
from flywheel.training.evaluate import Evaluation
from flywheel.training.features import prepare_frame
from flywheel.training.gates import GateReport
from flywheel.training.runs import load_holdout, load_pipeline
from flywheel.training.train import TrainResult

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel
    from mlflow.models import ModelSignature
    from sklearn.pipeline import Pipeline

    from flywheel.monitoring.profile import Reference
    from flywheel.workspace import Workspace

__all__ = ["ONNX_NAME", "PARITY_TAGS", "RegisteredVersion", "graph_name", "register"]

log = logging.getLogger("flywheel.registry")

ONNX_NAME = "onnx"
PARITY_TAGS = {
    "max_abs_diff": "flywheel.parity.max_abs_diff",
    "rows_over_tolerance": "flywheel.parity.rows_over_tolerance",
    "label_mismatches": "flywheel.parity.label_mismatches",
    "tolerance": "flywheel.parity.tolerance",
}


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
    ws: Workspace,
    result: TrainResult,
    evaluation: Evaluation,
    pipeline: Pipeline,
    onnx_model: bytes,
) -> tuple[ParityReport, pd.DataFrame]:
    """ONNX vs native on the run's holdout; logged as run metrics; ParityError if it fails.

    Uses the holdout and native predictions the evaluation kept in memory when it scored
    this run, else the holdout training kept, else re-derives it from the snapshot.
    """
    from mlflow.entities import Metric

    held = evaluation.holdout if evaluation.run_id == result.run_id else None
    if held is not None:
        frame, native = held.frame, (held.labels, held.proba)
    elif result.holdout is not None:
        frame, native = result.holdout.drop(columns=[result.target]), None
    else:
        frame, native = load_holdout(ws, result.run_id)[0], None
    report = check_parity(
        pipeline,
        onnx_model,
        frame,
        result.feature_specs,
        task=result.task,
        tolerance=ws.settings.registry.parity_tolerance,
        relative=result.task == "regression",
        native=native,
        prepared=held is not None,
        threshold=_threshold_value(result),
        classes=result.classes,
    )
    if not report.passed:  # when it passes, they are logged with the ONNX model (_log_onnx)
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"onnx_parity_{k}", float(getattr(report, k)), now, 0) for k in _PARITY_METRICS
        ]
        ws.client.log_batch(result.run_id, metrics=metrics)
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


def _reference(
    ws: Workspace,
    result: TrainResult,
    evaluation: Evaluation,
    holdout: pd.DataFrame,
    onnx_model: bytes,
) -> Reference | None:
    """The monitoring reference of the holdout (as the ONNX model scores it); None
    (logged) when it cannot be built: monitoring then builds it from the run on demand."""
    from flywheel.monitoring.reference import score_columns
    from flywheel.monitoring.sources import reference_from_rows
    from flywheel.registry.onnx_export import make_session, onnx_predict

    try:
        # the raw holdout rows, as a client sends them (and as a reference built later from
        # the run is): not the prepared frame parity used
        if result.holdout is not None and len(result.holdout) == len(holdout):
            raw, truth = result.holdout, result.holdout[result.target].tolist()
        else:
            raw, target = load_holdout(ws, result.run_id)
            truth = target.tolist()
        session = make_session(onnx_model)
        specs, task = result.feature_specs, result.task
        classes = [str(c) for c in result.classes] if result.classes is not None else None

        def scorer(frame: pd.DataFrame) -> dict[str, Any]:
            labels, proba = onnx_predict(session, frame, specs, task=task)
            return score_columns(task, classes, labels, proba)

        ref = reference_from_rows(
            name=ws.settings.registry.model_name,
            version=None,
            task=task,
            classes=result.classes,
            threshold=_threshold_value(result),
            specs=specs,
            scorer=scorer,
            frame=raw,
            truth=truth,
            source=f"holdout of run {result.run_id}",
            target=result.target,
            importance=evaluation.importance,
        )
    except Exception:  # monitoring builds it later from the run; registration goes on
        log.warning(
            "could not build the monitoring reference of run %s", result.run_id, exc_info=True
        )
        return None
    return ref


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


def _manifest(ws: Workspace, result: TrainResult) -> Manifest | None:
    """The run's snapshot manifest for the card: the one training carried, else resolved."""
    if result.manifest is not None:
        return result.manifest
    try:
        return ws.snapshot(result.snapshot_id)
    except FlywheelError as exc:
        log.warning("snapshot %s unreadable for the model card: %s", result.snapshot_id, exc)
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
    reference: Reference | None = None  # the monitoring reference, when it could be built


def register(
    ws: Workspace,
    result: TrainResult,
    *,
    evaluation: Evaluation,
    gate_report: GateReport,
) -> RegisteredVersion:
    """Export the run's pipeline to ONNX, check parity, and register it as ``challenger``."""
    _require_gates(gate_report, result)
    timings: dict[str, float] = {}
    with mlflow_errors(f"register run {result.run_id}", ws):
        client = ws.client
        with timed(timings, "load_pipeline"):
            pipeline = result.pipeline
            if pipeline is None:  # not trained in this process: the logged copy
                pipeline = load_pipeline(ws, result.run_id)
        with timed(timings, "onnx_export"):
            onnx_model = export_onnx(
                pipeline,
                result.feature_specs,
                task=result.task,
                threshold=_threshold_value(result),
                graph_name=graph_name(ws.settings.registry.model_name, result),
                classes=result.classes,
            )
        with timed(timings, "parity"):
            parity, holdout = _parity(ws, result, evaluation, pipeline, onnx_model)
        with timed(timings, "reference"):
            reference = _reference(ws, result, evaluation, holdout, onnx_model)
        run = client.get_run(result.run_id)
        draft = _Draft(
            result=result,
            evaluation=evaluation,
            gate_report=gate_report,
            parity=parity,
            onnx_model=onnx_model,
            sha256=hashlib.sha256(onnx_model).hexdigest(),
            example=prepare_frame(holdout.head(3), result.feature_specs),
            manifest=_manifest(ws, result),
            run_tags=dict(run.data.tags),
            experiment_id=run.info.experiment_id,
            reference=reference,
        )
        with timed(timings, "publish"):
            registered = _publish(ws, draft)
    registered.timings = timings
    return registered


def _reserve_version(
    ws: Workspace, name: str, draft: _Draft, *, exists: bool
) -> tuple[str, LoggedModel]:
    """Create the (empty, pending) ONNX logged model and a version pointing at it, with all
    its tags in the same write (the version is reachable by no alias until publishing ends)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = ws.client
    if not exists:
        try:
            client.create_registered_model(name)
        except MlflowException as exc:  # made meanwhile by another process
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    # MLflow's fluent API (the logged model) and its check of a models:/ source both use
    # the global tracking URI: scoped to this block
    with ws.tracking():
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


def _publish(ws: Workspace, draft: _Draft) -> RegisteredVersion:
    client, name = ws.client, ws.settings.registry.model_name
    aliases = registered_aliases(client, name)
    previous_challenger = (aliases or {}).get(CHALLENGER)
    version, logged = _reserve_version(ws, name, draft, exists=aliases is not None)
    model_id = logged.model_id
    if draft.reference is not None:  # the version number is known now
        draft.reference.version = version
    try:
        card = _card(ws, draft, name, version)
        _log_onnx(ws, draft, logged, card)
        client.update_model_version(name, version, description=card)
        client.set_registered_model_alias(name, CHALLENGER, version)
        entry = ws.audit.append(
            who=ws.settings.user,
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


def _card(ws: Workspace, draft: _Draft, name: str, version: str) -> str:
    ctx = CardContext(
        name=name,
        version=version,
        onnx_sha256=draft.sha256,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        created_by=ws.settings.user,
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


def _log_onnx(ws: Workspace, draft: _Draft, logged: LoggedModel, card: str) -> None:
    """Log model.onnx + extra files into the reserved logged model of the training run."""
    import mlflow
    from mlflow.entities import LoggedModelOutput, Metric

    from flywheel.registry import onnx_flavor

    client, model_id = ws.client, logged.model_id
    with tempfile.TemporaryDirectory(prefix="fw-register-") as tmp, ws.tracking():
        files = {
            "model_card.md": card,
            "feature_specs.json": json.dumps(_specs_json(draft.result), indent=2),
            "parity.json": json.dumps(asdict(draft.parity), indent=2),
        }
        if draft.reference is not None:
            files["reference.json"] = json.dumps(draft.reference.to_dict())
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
    stored = Path(
        mlflow.artifacts.download_artifacts(
            f"{location}/model.onnx", tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri
        )
    )
    if sha256_file(stored) != draft.sha256:
        raise RegistryError(
            f"The stored model.onnx (sha256 {sha256_file(stored)}) differs from the exported bytes "
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
