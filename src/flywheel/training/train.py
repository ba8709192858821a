"""Train one pipeline on a snapshot as one MLflow run: the orchestration of

- :mod:`flywheel.training.prepare`: load the snapshot (it must have passed its contract) →
  resolve target, task and features → the stratified holdout split (deterministic,
  re-derived later by :func:`~flywheel.training.runs.load_holdout`);
- :mod:`flywheel.training.fit`: optional Optuna search over CV scores → k-fold CV → a
  binary classifier's decision threshold, chosen on the out-of-fold CV predictions (or an
  inner validation split when CV is off; never the holdout) → the final pipeline, fitted on
  the whole training part;
- :mod:`flywheel.training.track`: log everything to ONE MLflow run.

Nothing is written to MLflow until the model is fitted, so a failed training leaves no
half-logged run behind. Reading a run back is :mod:`flywheel.training.runs`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
from sklearn.pipeline import Pipeline

from flywheel._timing import timed
from flywheel.schema import FeatureSpec
from flywheel.training.features import Task
from flywheel.training.fit import (
    THRESHOLD_KEY,
    Progress,
    best_trial,
    choose_job_threshold,
    fit_pipeline,
    inputs_sha256,
    predict,
    tune_and_validate,
)
from flywheel.training.params import TrainParams
from flywheel.training.prepare import (
    TrainingMeta,
    check_label_options,
    encode_target,
    infer_task,
    load_snapshot,
    prepare,
    resolve_job,
    window_start,
)
from flywheel.training.runs import load_holdout, load_pipeline, load_training_meta, training_keys
from flywheel.training.skops_flavor import trusted_types
from flywheel.training.threshold import ThresholdChoice
from flywheel.training.track import (
    HOLDOUT_TAG,
    INPUTS_TAG,
    MODEL_URI_TAG,
    track_run,
    with_threshold,
)

if TYPE_CHECKING:
    from flywheel.data.snapshots import Manifest
    from flywheel.workspace import Workspace

# Besides train and TrainResult, the names callers have always imported from here
# (each lives in the module that does its job: prepare, fit, track, runs, skops_flavor).
__all__ = [
    "HOLDOUT_TAG",
    "INPUTS_TAG",
    "MODEL_URI_TAG",
    "THRESHOLD_KEY",
    "Progress",
    "TrainResult",
    "TrainingMeta",
    "encode_target",
    "infer_task",
    "load_holdout",
    "load_pipeline",
    "load_training_meta",
    "predict",
    "train",
    "training_keys",
    "trusted_types",
    "with_threshold",
]

log = logging.getLogger("flywheel.training")


@dataclass
class TrainResult:
    run_id: str
    snapshot_id: str
    dataset: str
    task: Task
    target: str
    family: str
    feature_specs: list[FeatureSpec]
    hyperparams: dict[str, Any]
    cv_metrics: dict[str, float]  # "<metric>_cv_mean", "<metric>_cv_std"
    model_uri: str  # the logged sklearn pipeline (skops), for lineage and retraining
    classes: list[Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    best_trial: dict[str, Any] | None = None
    # Binary classification: the decision threshold labels are made at (None: argmax).
    threshold: ThresholdChoice | None = None
    # sha256 of the snapshot and the effective params: equal inputs, equal model (and ONNX).
    inputs_sha256: str = ""
    # What this process holds after training; evaluation and registration use it instead
    # of reading it back (the logged pipeline, training.json, the holdout, the manifest).
    # Not part of the record.
    pipeline: Pipeline | None = field(default=None, repr=False, compare=False)
    meta: TrainingMeta | None = field(default=None, repr=False, compare=False)  # training.json
    holdout: pd.DataFrame | None = field(default=None, repr=False, compare=False)  # raw rows
    manifest: Manifest | None = field(default=None, repr=False, compare=False)


def _noop(phase: str, done: int, total: int) -> None:
    return None


def train(
    ws: Workspace,
    snapshot: str | Manifest,
    params: TrainParams,
    *,
    trials: int | None = None,
    storage: str | None = None,
    progress: Progress | None = None,
    window_s: float | None = None,
) -> TrainResult:
    """Train ``params`` on a snapshot; one MLflow run holds params, metrics, lineage and model.

    ``snapshot`` is an id (or unique prefix) or the manifest the caller resolved already.
    ``trials`` overrides ``params.search.trials``; ``storage`` (or
    ``settings.training.optuna_storage``) shares the Optuna study between workers.
    ``progress`` is a ``(phase, done, total)`` callback: ``"search"`` trials, ``"cv"`` folds.
    ``window_s``: train (and hold out) only on the rows of the last ``window_s`` seconds
    before the snapshot's newest row (``retrain.window``); recorded in ``training.json``.
    """
    report = progress or _noop
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        manifest = ws.snapshot(snapshot)
        df = load_snapshot(ws, manifest)
        job = resolve_job(manifest, df, params, seed=ws.settings.seed)
        if window_s is not None:
            job.since = window_start(manifest, window_s)
        part = prepare(job, df)
        check_label_options(job)
    tuned = tune_and_validate(
        job,
        part.X,
        part.y,
        trials=trials,
        storage=storage or ws.settings.training.optuna_storage,
        report=report,
        timings=timings,
    )
    with timed(timings, "threshold"):  # a fit of its own only when CV is off
        job.threshold = choose_job_threshold(
            job, tuned.hyperparams, part.X, part.y, tuned.cv_threshold
        )
    with timed(timings, "fit"):
        pipeline = fit_pipeline(job, tuned.hyperparams, part.X, part.y)
    log.info("fitted %s on %d rows in %.2fs", job.params.family, len(part.X), timings["fit"])
    job.inputs_sha256 = inputs_sha256(job, tuned.hyperparams)
    with timed(timings, "tracking"):
        logged = track_run(ws, job, pipeline, part.X, tuned, timings, part.holdout_sha256)
    return TrainResult(
        run_id=logged.run_id,
        snapshot_id=manifest.id,
        dataset=manifest.dataset,
        task=job.task,
        target=job.target,
        family=job.params.family,
        feature_specs=job.specs,
        hyperparams=tuned.hyperparams,
        cv_metrics=tuned.cv_metrics,
        model_uri=logged.model_uri,
        classes=job.classes,
        timings=timings,
        best_trial=best_trial(tuned.outcome),
        threshold=job.threshold,
        inputs_sha256=job.inputs_sha256,
        pipeline=pipeline,
        meta=job.meta(part.holdout_sha256),
        holdout=part.holdout,
        manifest=manifest,
    )
