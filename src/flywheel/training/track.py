"""Record a fitted training job as ONE MLflow run: params, metrics, lineage tags, the run's
text artifacts and the fitted pipeline as an MLflow ``sklearn`` model (skops, never pickle;
the types a dump may hold and its pinned requirements: :mod:`flywheel.training.skops_flavor`).

Called once the model is fitted, so a failed training leaves no half-logged run behind; and
when recording itself fails (the tracking store or the artifact store cannot be written), the
run is removed again (:func:`discard_run`): deleted for good from a SQL or file tracking
store, marked deleted on a tracking server (whose REST API cannot delete for good).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline

import flywheel
from flywheel.config import mask_url
from flywheel.errors import FlywheelError, RegistryError
from flywheel.tracking import TAG, git_commit, log_model
from flywheel.training import skops_flavor
from flywheel.training.fit import THRESHOLD_KEY, Tuned, effective_params
from flywheel.training.prepare import Job
from flywheel.training.skops_flavor import trusted_types
from flywheel.workspace import is_artifact_store_failure

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = [
    "HOLDOUT_TAG",
    "INPUTS_TAG",
    "META_ARTIFACT",
    "MODEL_URI_TAG",
    "STUDY_TAG",
    "LoggedRun",
    "discard_run",
    "track_run",
    "with_threshold",
]

log = logging.getLogger("flywheel.training")

MODEL_URI_TAG = "flywheel.model_uri"
HOLDOUT_TAG = "flywheel.holdout_sha256"
STUDY_TAG = "flywheel.optuna_study"
# sha256 of what determines the fitted model: snapshot, effective params (seed included).
INPUTS_TAG = TAG["inputs_sha256"]
META_ARTIFACT = "training.json"


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str  # the logged sklearn pipeline (skops)


def with_threshold(pipeline: Pipeline, threshold: float | None) -> Any:
    """The pipeline as the MLflow model holds it: a binary classifier wrapped in
    scikit-learn's ``FixedThresholdClassifier`` (the fitted pipeline itself, not refitted),
    so ``predict`` of ``mlflow.sklearn``/``pyfunc`` gives the labels serving gives."""
    if threshold is None:
        return pipeline
    return FixedThresholdClassifier(pipeline, threshold=threshold, response_method="predict_proba")


def _log_pipeline(pipeline: Pipeline, X: pd.DataFrame, job: Job) -> Any:
    """Log the fitted pipeline (skops, dumped once) as the run's MLflow ``sklearn`` model;
    returns MLflow's ``ModelInfo``. Runs inside the active run (MLflow's fluent API)."""
    import skops.io
    from mlflow.models import infer_signature

    sample = X.head(100)
    model = with_threshold(pipeline, job.threshold.value if job.threshold else None)
    data = skops.io.dumps(model)
    return log_model(
        skops_flavor,
        name="model",
        flavor_name="mlflow.sklearn",
        skops_bytes=data,
        skops_trusted_types=trusted_types(data),
        signature=infer_signature(sample, model.predict(sample)),
        input_example=X.head(5),
        pip_requirements=skops_flavor.pip_requirements(job.params.family),
    )


def _run_params(job: Job, tuned: Tuned, n_train: int) -> dict[str, Any]:
    params: dict[str, Any] = {k: str(v)[:500] for k, v in tuned.hyperparams.items()}
    outcome = tuned.outcome
    params.update(
        {
            "family": job.params.family,
            "task": job.task,
            "target": job.target,
            "seed": job.seed,
            "test_size": job.params.test_size,
            "cv_folds": job.params.cv_folds,
            "train_rows": n_train,
            "n_features": len(job.specs),
            "search_trials": outcome.trials_run if outcome else 0,
            "ratios": ",".join(r.name for r in job.params.ratios) or "-",
            "class_weight": job.params.class_weight or "-",
            "threshold_objective": job.threshold.objective if job.threshold else "-",
            "threshold_source": job.threshold.source if job.threshold else "-",
        }
    )
    return params


def _run_tags(job: Job, holdout_sha: str, tuned: Tuned) -> dict[str, str]:
    m = job.manifest
    tags = {
        TAG["snapshot_id"]: m.id,
        TAG["snapshot_sha256"]: m.sha256,
        TAG["dataset"]: m.dataset,
        TAG["contract_version"]: m.contract_version or "",
        TAG["task"]: job.task,
        TAG["target"]: job.target,
        TAG["family"]: job.params.family,
        TAG["package_version"]: flywheel.__version__,
        HOLDOUT_TAG: holdout_sha,
        INPUTS_TAG: job.inputs_sha256,
    }
    if job.threshold is not None:
        tags[TAG["threshold"]] = repr(job.threshold.value)
    commit = git_commit()
    if commit:
        tags[TAG["git_commit"]] = commit
    if tuned.outcome is not None:
        tags[STUDY_TAG] = tuned.outcome.study_name
    return tags


def track_run(
    ws: Workspace,
    job: Job,
    pipeline: Pipeline,
    X: pd.DataFrame,
    tuned: Tuned,
    timings: dict[str, float],
    holdout_sha: str,
) -> LoggedRun:
    """Log the fitted job as one run of ``tracking.experiment``."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    experiment_id = ws.experiment_id
    metrics = {**tuned.cv_metrics, **{f"{k}_time_s": v for k, v in timings.items()}}
    if job.threshold is not None:
        metrics[THRESHOLD_KEY] = job.threshold.value
    params = _run_params(job, tuned, len(X))
    run_id: str | None = None
    try:
        with (
            ws.tracking() as client,  # start_run and Model.log use the global tracking URI
            mlflow.start_run(
                experiment_id=experiment_id,
                run_name=f"{job.manifest.dataset}-{job.params.family}",
                tags=_run_tags(job, holdout_sha, tuned),
            ) as run,
        ):
            run_id = run.info.run_id
            # params first (the logged model copies the run's params), then the model, then
            # the metrics, linked to the model, and the model's URI in one write
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            _log_texts(ws, run_id, effective_params(job, tuned.hyperparams), job, holdout_sha)
            info = _log_pipeline(pipeline, X, job)
            model_uri = str(info.model_uri)
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, now, 0, model_id=info.model_id) for k, v in metrics.items()],
                tags=[RunTag(MODEL_URI_TAG, model_uri)],
            )
    except Exception as exc:  # MLflow raises many types; translate at the boundary
        store_failed = is_artifact_store_failure(exc)
        if run_id is not None:
            discard_run(ws, run_id, artifacts=not store_failed)
        if isinstance(exc, FlywheelError):
            raise
        if store_failed:
            raise ws.artifact_store_error(exc, "write the training run") from exc
        raise RegistryError(
            f"Could not record the training run in MLflow ({mask_url(ws.tracking_uri)}): {exc}. "
            "Check tracking.uri and that the tracking server and artifact store are reachable.",
        ) from exc
    log.info("run %s logged model %s", run_id, model_uri)
    return LoggedRun(run_id, model_uri)


def discard_run(ws: Workspace, run_id: str, *, artifacts: bool = True) -> None:
    """Remove a run whose recording failed, so no half-logged run is left: its logged
    models and the run itself, deleted for good where the tracking store allows it (a SQL
    database or a folder, as ``mlflow gc`` does) and otherwise marked deleted (a tracking
    server: hidden from the UI and searches until its ``mlflow gc``). ``artifacts``: also
    delete what was uploaded (skipped when the artifact store is what failed). Best effort:
    a failure here is logged, and the error that led here is what the caller reports."""
    client = ws.client
    store: Any = getattr(getattr(client, "_tracking_client", None), "store", None)
    try:
        run = client.get_run(run_id)
        models = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
    except Exception as exc:  # the tracking store may be what failed
        log.warning("could not look up the failed run %s to remove it: %s", run_id, exc)
        return
    if artifacts:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        with ws.tracking():  # a proxied (mlflow-artifacts:) URI resolves through it
            for uri in [run.info.artifact_uri, *(m.artifact_location for m in models)]:
                try:
                    get_artifact_repository(uri).delete_artifacts()
                except Exception as exc:  # e.g. nothing was written there
                    log.debug("could not delete the artifacts at %s: %s", uri, exc)
    try:
        for model in models:
            if hasattr(store, "_hard_delete_logged_model"):
                store._hard_delete_logged_model(model.model_id)
            else:
                client.delete_logged_model(model.model_id)
        if hasattr(store, "_hard_delete_run"):
            store._hard_delete_run(run_id)
        else:
            client.delete_run(run_id)
    except Exception as exc:
        log.warning("could not remove the failed run %s: %s", run_id, exc)
        return
    log.info("removed the failed run %s (%d logged models)", run_id, len(models))


def _log_texts(
    ws: Workspace, run_id: str, params: dict[str, Any], job: Job, holdout_sha: str
) -> None:
    """params.yaml, feature_specs.json, training.json (and threshold.json for a binary
    classifier) as run artifacts, in one upload."""
    with tempfile.TemporaryDirectory(prefix="flywheel-run-") as tmp:
        folder = Path(tmp)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        specs = json.dumps([asdict(s) for s in job.specs], indent=2)
        (folder / "feature_specs.json").write_text(specs)
        meta = json.dumps(asdict(job.meta(holdout_sha)), indent=2)
        (folder / META_ARTIFACT).write_text(meta)
        if job.threshold is not None:
            (folder / "threshold.json").write_text(json.dumps(job.threshold.to_dict(), indent=2))
        ws.client.log_artifacts(run_id, tmp)
