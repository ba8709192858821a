"""Train one pipeline on a snapshot as one MLflow run.

The flow: load the snapshot (it must have passed its contract) → resolve target, task and
features → stratified holdout split (deterministic, re-derived later by
:func:`load_holdout`) → optional Optuna search over CV scores → k-fold CV → a binary
classifier's decision threshold, chosen on the out-of-fold CV predictions (or an inner
validation split when CV is off; never the holdout) → fit the final pipeline on the whole
training part → log everything to ONE MLflow run.

Nothing is written to MLflow until the model is fitted, so a failed training leaves no
half-logged run behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from sklearn.model_selection import (
    FixedThresholdClassifier,
    KFold,
    StratifiedKFold,
    train_test_split,
)
from sklearn.pipeline import Pipeline

import flywheel
from flywheel._timing import timed
from flywheel.config import Settings
from flywheel.errors import DataError, FlywheelError, NotFound, RegistryError, TrainingError
from flywheel.tracking import TAG, configure_mlflow, git_commit, log_model, use_tracking
from flywheel.training import metrics as M
from flywheel.training.features import (
    CLASSIFICATION_FAMILIES,
    REGRESSION_FAMILIES,
    FeatureSpec,
    Task,
    align_thresholds_to_float32,
    build_pipeline,
    infer_feature_specs,
    prepare_frame,
)
from flywheel.training.params import TrainParams
from flywheel.training.search import SearchOutcome, run_search, study_name
from flywheel.training.threshold import ThresholdChoice, apply_threshold, choose_threshold

if TYPE_CHECKING:
    from mlflow.entities import Run
    from rich.progress import Progress as RichProgress

    from flywheel.data.snapshots import Manifest

__all__ = [
    "HOLDOUT_TAG",
    "INPUTS_TAG",
    "MODEL_URI_TAG",
    "THRESHOLD_KEY",
    "Progress",
    "TrainResult",
    "TrainingMeta",
    "console_progress",
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

Progress = Callable[[str, int, int], None]  # (phase, done, total): "search" trials, "cv" folds
MODEL_URI_TAG = "flywheel.model_uri"
HOLDOUT_TAG = "flywheel.holdout_sha256"
STUDY_TAG = "flywheel.optuna_study"
# sha256 of what determines the fitted model: snapshot, effective params (seed included).
INPUTS_TAG = TAG["inputs_sha256"]
# The key under which cross_validate reports the threshold it chose, and the run's metric.
THRESHOLD_KEY = "decision_threshold"
_META_ARTIFACT = "training.json"
_SEARCH_FOLDS = 3  # CV folds used by the search objective when params.cv_folds < 2


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
    # The fitted pipeline while this process holds it: evaluation and registration use it
    # instead of downloading the logged copy again. Not part of the record.
    pipeline: Pipeline | None = field(default=None, repr=False, compare=False)
    meta: TrainingMeta | None = field(default=None, repr=False, compare=False)  # training.json


@dataclass(frozen=True)
class TrainingMeta:
    """What evaluation needs to re-derive the holdout and read predictions (``training.json``)."""

    snapshot_id: str
    task: Task
    target: str
    seed: int
    test_size: float
    feature_specs: list[FeatureSpec]
    classes: list[Any] | None
    holdout_sha256: str
    threshold: float | None = None  # binary classification: p(positive) >= threshold


@dataclass
class _Job:
    """The resolved inputs of one training run."""

    settings: Settings
    manifest: Manifest
    params: TrainParams
    target: str
    task: Task
    seed: int
    specs: list[FeatureSpec]
    classes: list[Any] | None = None
    threshold: ThresholdChoice | None = None  # binary classification, once chosen
    inputs_sha256: str = ""  # once the params are final (see _inputs_sha256)


# ---------------------------------------------------------------- progress and timing


def _noop(phase: str, done: int, total: int) -> None:
    return None


def _as_callback(progress: Progress | RichProgress | None) -> Progress:
    if progress is None:
        return _noop
    from rich.progress import Progress as RichProgress

    if isinstance(progress, RichProgress):
        bar = progress
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        return update
    return progress


@contextmanager
def console_progress() -> Iterator[RichProgress | None]:
    """A rich progress display while stderr is a terminal, else ``None`` (library stays quiet)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress as RichProgress

    with RichProgress(console=Console(stderr=True), transient=True) as bar:
        yield bar


# ---------------------------------------------------------------- data, target, split


def _load_snapshot(settings: Settings, snapshot_id: str) -> tuple[Manifest, pd.DataFrame]:
    from flywheel.data import snapshots

    manifest = snapshots.get_snapshot(settings, snapshot_id)
    snapshots.require_valid(settings, manifest)  # ContractViolation unless it passed its contract
    df = snapshots.read_snapshot(settings, manifest)
    if df.empty:
        raise DataError(
            f"Snapshot {snapshot_id} has no rows; ingest data before training.",
            snapshot_id=snapshot_id,
        )
    return manifest, df


def infer_task(y: pd.Series) -> Task:
    """Non-numeric (or bool) target, or ≤ 10 distinct integer values → classification."""
    values = y.dropna()
    if is_bool_dtype(values) or not is_numeric_dtype(values):
        return "classification"
    distinct = values.unique()
    integral = bool(np.all(np.mod(distinct.astype("float64"), 1) == 0))
    return "classification" if integral and len(distinct) <= 10 else "regression"


def _resolve_target(params: TrainParams, manifest: Manifest, df: pd.DataFrame) -> str:
    target = params.target or manifest.target
    if target is None:
        raise TrainingError(
            f"No target for snapshot {manifest.id}: neither params.target nor the snapshot "
            "names one. Set 'target: <column>' in params.yaml or ingest with --target.",
            snapshot_id=manifest.id,
        )
    if target not in df.columns:
        raise TrainingError(
            f"Target column {target!r} is not in snapshot {manifest.id} "
            f"(columns: {', '.join(map(str, df.columns))}). Fix 'target' in params.yaml.",
            target=target,
        )
    return target


def _check_family(family: str, task: Task) -> None:
    allowed = CLASSIFICATION_FAMILIES if task == "classification" else REGRESSION_FAMILIES
    if family not in allowed:
        raise TrainingError(
            f"Model family {family!r} cannot do {task}; use one of {', '.join(allowed)} "
            "(set 'family' in params.yaml).",
            family=family,
            task=task,
        )


def _drop_list(params: TrainParams, manifest: Manifest, df: pd.DataFrame) -> list[str]:
    missing = [c for c in params.drop_columns if c not in df.columns]
    if missing:
        raise TrainingError(
            f"drop_columns names columns that are not in snapshot {manifest.id}: {missing}. "
            "Remove them from params.yaml.",
            columns=missing,
        )
    candidates = [*manifest.key_columns, manifest.timestamp_column, *params.drop_columns]
    return [c for c in dict.fromkeys(candidates) if c is not None and c in df.columns]


def _labelled(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """Rows with a target value; the same rule in training and :func:`load_holdout`."""
    kept = df[df[target].notna()].reset_index(drop=True)
    if len(kept) < len(df):
        log.info("dropped %d rows without a %s value", len(df) - len(kept), target)
    return kept


def _resolve(settings: Settings, manifest: Manifest, df: pd.DataFrame, params: TrainParams) -> _Job:
    target = _resolve_target(params, manifest, df)
    task: Task = params.task or infer_task(df[target])
    _check_family(params.family, task)
    specs = infer_feature_specs(df, target=target, drop=_drop_list(params, manifest, df))
    if not specs:
        raise TrainingError(
            f"No feature columns left in snapshot {manifest.id} after dropping keys, timestamp "
            "and drop_columns. Check 'drop_columns' in params.yaml.",
            snapshot_id=manifest.id,
        )
    seed = settings.seed if params.seed is None else params.seed
    return _Job(settings, manifest, params, target, task, seed, specs)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def encode_target(y: pd.Series, task: Task, classes: list[Any] | None) -> np.ndarray:
    """Class indices ``0..k-1`` (classification, in ``classes`` order) or float64 values."""
    if task == "regression":
        return y.astype("float64").to_numpy()
    assert classes is not None
    codes = pd.Categorical(y, categories=classes).codes
    if (codes < 0).any():
        unknown = sorted({str(v) for v in pd.Series(y)[codes < 0]})[:5]
        raise DataError(f"Target values {unknown} are not among the run's classes {classes}.")
    return np.asarray(codes, dtype="int64")


def _classes(y: pd.Series) -> list[Any]:
    values = [_plain(v) for v in y.unique()]
    try:
        return sorted(values)
    except TypeError:  # mixed types: order by text, still deterministic
        return sorted(values, key=str)


def _split(y: np.ndarray, task: Task, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of the training part and the holdout (stratified for classification)."""
    rows = np.arange(len(y))
    try:
        train_idx, holdout_idx = train_test_split(
            rows,
            test_size=test_size,
            random_state=seed,
            stratify=y if task == "classification" else None,
        )
    except ValueError as exc:
        raise TrainingError(
            f"Cannot split {len(y)} rows with test_size={test_size}: {exc}. Use more data, "
            "a larger test_size, or drop classes with fewer than 2 rows.",
            rows=len(y),
        ) from exc
    return np.sort(train_idx), np.sort(holdout_idx)


def _frame_sha256(df: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def _features(df: pd.DataFrame, specs: list[FeatureSpec]) -> pd.DataFrame:
    """The pipeline input: spec columns only, numerics float32, missing categories ``""``."""
    return prepare_frame(df[[s.name for s in specs]], specs)


# ---------------------------------------------------------------- pipelines and CV


def _pipeline(job: _Job, hyperparams: dict[str, Any]) -> Pipeline:
    try:
        return build_pipeline(
            job.specs,
            task=job.task,
            family=job.params.family,
            hyperparams=hyperparams,
            ratios=list(job.params.ratios),
            seed=job.seed,
            class_weight=job.params.class_weight,
        )
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"Family {job.params.family!r} rejected hyperparams {hyperparams}: {exc}. "
            "Fix 'hyperparams' (or the search space) in params.yaml.",
            family=job.params.family,
        ) from exc


def _fit(job: _Job, hyperparams: dict[str, Any], X: pd.DataFrame, y: np.ndarray) -> Pipeline:
    pipeline = _pipeline(job, hyperparams)
    try:
        return align_thresholds_to_float32(pipeline.fit(X, y))
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"Fitting {job.params.family!r} failed: {exc}. Check hyperparams and the data.",
            family=job.params.family,
        ) from exc


def predict(
    pipeline: Pipeline, X: pd.DataFrame, task: Task, *, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (class indices) and probabilities, or values and ``None`` for regression.

    Labels are the argmax of the probabilities, or for a binary classifier with a
    ``threshold``, the positive class where its probability is ``>= threshold``."""
    if task == "regression":
        return np.asarray(pipeline.predict(X), dtype="float64"), None
    proba = np.asarray(pipeline.predict_proba(X), dtype="float64")
    if threshold is not None and proba.shape[1] == 2:
        return np.asarray(pipeline.classes_)[apply_threshold(proba, threshold)], proba
    return np.asarray(pipeline.classes_)[proba.argmax(axis=1)], proba


def _binary(job: _Job) -> bool:
    return job.task == "classification" and len(job.classes or []) == 2


def _folds(job: _Job, y: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter: KFold | StratifiedKFold
    if job.task == "classification":
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=job.seed)
    else:
        splitter = KFold(n_splits=n_folds, shuffle=True, random_state=job.seed)
    try:
        return list(splitter.split(np.zeros(len(y)), y))
    except ValueError as exc:
        raise TrainingError(
            f"Cannot make {n_folds} CV folds from {len(y)} training rows: {exc}. "
            "Lower cv_folds in params.yaml.",
            cv_folds=n_folds,
        ) from exc


def cross_validate(
    job: _Job,
    hyperparams: dict[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    n_folds: int,
    report: Progress = _noop,
) -> dict[str, float]:
    """``<metric>_cv_mean`` and ``<metric>_cv_std`` of every metric over ``n_folds`` folds;
    for a binary target also the decision threshold (``THRESHOLD_KEY``), see :func:`_cv`."""
    scores, choice = _cv(job, hyperparams, X, y, n_folds=n_folds, report=report)
    return scores if choice is None else {**scores, THRESHOLD_KEY: choice.value}


def _cv(
    job: _Job,
    hyperparams: dict[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    n_folds: int,
    report: Progress = _noop,
) -> tuple[dict[str, float], ThresholdChoice | None]:
    """CV scores and, for a binary target, the threshold chosen on the pooled out-of-fold
    probabilities; every fold's label metrics (f1, precision, recall, accuracy) are scored
    at that threshold. (One number tuned on the same predictions it is scored on: the CV
    label metrics are slightly optimistic; the holdout's are not.)"""
    folds = _folds(job, y, n_folds)
    outputs = []
    for i, (tr, va) in enumerate(folds, start=1):
        model = _fit(job, hyperparams, X.iloc[tr], y[tr])
        outputs.append(predict(model, X.iloc[va], job.task))
        report("cv", i, len(folds))
    choice = None
    if _binary(job):
        y_oof = np.concatenate([y[va] for _, va in folds])
        p_oof = np.concatenate([proba[:, 1] for _, proba in outputs if proba is not None])
        choice = choose_threshold(y_oof, p_oof, job.params.threshold, source="cv_out_of_fold")
    scores: dict[str, list[float]] = defaultdict(list)
    n_classes = len(job.classes or [])
    for (_, va), (pred, proba) in zip(folds, outputs, strict=True):
        if choice is not None and proba is not None:
            pred = apply_threshold(proba, choice.value)
        for name, value in M.score(job.task, y[va], pred, proba, n_classes=n_classes).items():
            scores[name].append(value)
    out: dict[str, float] = {}
    for name, values in scores.items():
        out[f"{name}_cv_mean"] = float(np.mean(values))
        out[f"{name}_cv_std"] = float(np.std(values))
    return out, choice


def _search(
    job: _Job, X: pd.DataFrame, y: np.ndarray, trials: int, storage: str | None, report: Progress
) -> SearchOutcome:
    search = job.params.search
    metric = search.metric or M.primary_metric(job.task)
    n_folds = job.params.cv_folds if job.params.cv_folds >= 2 else _SEARCH_FOLDS
    config = {
        "target": job.target,
        "task": job.task,
        "metric": metric,
        "space": search.space,
        "hyperparams": job.params.hyperparams,
        "folds": n_folds,
        "seed": job.seed,
        "test_size": job.params.test_size,
        "ratios": [asdict(r) for r in job.params.ratios],
        "class_weight": job.params.class_weight,
        "threshold": job.params.threshold.model_dump(mode="json"),
    }
    name = study_name(job.manifest.dataset, job.params.family, job.manifest.id, config)

    def objective(point: dict[str, Any]) -> dict[str, float]:
        return cross_validate(job, {**job.params.hyperparams, **point}, X, y, n_folds=n_folds)

    return run_search(
        objective,
        search,
        name=name,
        metric=metric,
        higher_is_better=M.higher_is_better(metric),
        trials=trials,
        seed=job.seed,
        storage=storage,
        progress=lambda done, total: report("search", done, total),
    )


# ---------------------------------------------------------------- train


def train(
    settings: Settings,
    snapshot_id: str,
    params: TrainParams,
    *,
    trials: int | None = None,
    storage: str | None = None,
    progress: Progress | RichProgress | None = None,
) -> TrainResult:
    """Train ``params`` on a snapshot; one MLflow run holds params, metrics, lineage and model.

    ``trials`` overrides ``params.search.trials``; ``storage`` (or
    ``settings.training.optuna_storage``) shares the Optuna study between workers.
    ``progress`` is a ``(phase, done, total)`` callback or a ``rich.progress.Progress``.
    """
    report = _as_callback(progress)
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        manifest, df = _load_snapshot(settings, snapshot_id)
        job = _resolve(settings, manifest, df, params)
        X, y, holdout_sha = _training_part(job, df)
        _check_label_options(job)
    hyperparams, cv_metrics, outcome, cv_choice = _tune_and_validate(
        job, X, y, trials, storage, report, timings
    )
    with timed(timings, "threshold"):  # a fit of its own only when CV is off
        job.threshold = _threshold(job, hyperparams, X, y, cv_choice)
    with timed(timings, "fit"):
        pipeline = _fit(job, hyperparams, X, y)
    log.info("fitted %s on %d rows in %.2fs", job.params.family, len(X), timings["fit"])
    job.inputs_sha256 = _inputs_sha256(job, hyperparams)
    with timed(timings, "tracking"):
        run_id, model_uri = _track(
            job, pipeline, X, hyperparams, cv_metrics, timings, outcome, holdout_sha
        )
    return TrainResult(
        run_id=run_id,
        snapshot_id=manifest.id,
        dataset=manifest.dataset,
        task=job.task,
        target=job.target,
        family=job.params.family,
        feature_specs=job.specs,
        hyperparams=hyperparams,
        cv_metrics=cv_metrics,
        model_uri=model_uri,
        classes=job.classes,
        timings=timings,
        best_trial=_best_trial(outcome),
        threshold=job.threshold,
        inputs_sha256=job.inputs_sha256,
        pipeline=pipeline,
        meta=_meta(job, holdout_sha),
    )


def _check_label_options(job: _Job) -> None:
    """``class_weight`` needs a classifier; an explicit ``threshold`` a binary one."""
    if job.params.class_weight is not None and job.task != "classification":
        raise TrainingError(
            f"class_weight applies to classification, but the task is {job.task}. "
            "Remove 'class_weight' from params.yaml.",
            task=job.task,
        )
    if "threshold" in job.params.model_fields_set and not _binary(job):
        kind = "regression" if job.task == "regression" else f"{len(job.classes or [])} classes"
        raise TrainingError(
            f"threshold applies to binary classification only, but this target has {kind} "
            "(multiclass labels are the most probable class). Remove 'threshold' from "
            "params.yaml.",
            task=job.task,
        )


def _threshold(
    job: _Job,
    hyperparams: dict[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    cv_choice: ThresholdChoice | None,
) -> ThresholdChoice | None:
    """The binary decision threshold: fixed, chosen by CV, or on an inner validation split
    of the training part when CV is off (one extra fit). None for other tasks."""
    if not _binary(job):
        return None
    wanted = job.params.threshold
    if wanted.objective == "fixed":
        return choose_threshold(y, np.zeros(len(y)), wanted, source="fixed")
    if cv_choice is not None:
        return cv_choice
    try:
        inner_tr, inner_va = _split(y, job.task, wanted.validation_size, job.seed)
    except TrainingError as exc:
        raise TrainingError(
            f"Cannot hold out threshold.validation_size={wanted.validation_size} of the "
            f"{len(y)} training rows to choose the decision threshold: {exc.message} Turn CV "
            "on (cv_folds >= 2), change threshold.validation_size, or fix threshold.value.",
        ) from exc
    model = _fit(job, hyperparams, X.iloc[inner_tr], y[inner_tr])
    _, proba = predict(model, X.iloc[inner_va], job.task)
    assert proba is not None  # classification
    return choose_threshold(y[inner_va], proba[:, 1], wanted, source="validation_split")


def _inputs_sha256(job: _Job, hyperparams: dict[str, Any]) -> str:
    """sha256 of everything that determines the fitted model: the snapshot (id and content
    hash) and the effective params (seed, hyperparameters after a search, threshold, ...).
    Names the ONNX graph, so equal inputs give byte-identical exports (no random run id)."""
    inputs = {
        "snapshot_id": job.manifest.id,
        "snapshot_sha256": job.manifest.sha256,
        "params": _effective_params(job, hyperparams),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _effective_params(job: _Job, hyperparams: dict[str, Any]) -> dict[str, Any]:
    """The params as trained: target, task and seed resolved, the search's best merged in."""
    update = {"target": job.target, "task": job.task, "seed": job.seed, "hyperparams": hyperparams}
    return job.params.model_copy(update=update).model_dump(mode="json")


def _training_part(job: _Job, df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, str]:
    """Prepared training features, encoded target, and the holdout's content hash."""
    df = _labelled(df, job.target)
    if job.task == "classification":
        job.classes = _classes(df[job.target])
    y_all = encode_target(df[job.target], job.task, job.classes)
    train_idx, holdout_idx = _split(y_all, job.task, job.params.test_size, job.seed)
    X = _features(df.iloc[train_idx].reset_index(drop=True), job.specs)
    return X, y_all[train_idx], _frame_sha256(df.iloc[holdout_idx])


def _tune_and_validate(
    job: _Job,
    X: pd.DataFrame,
    y: np.ndarray,
    trials: int | None,
    storage: str | None,
    report: Progress,
    timings: dict[str, float],
) -> tuple[dict[str, Any], dict[str, float], SearchOutcome | None, ThresholdChoice | None]:
    """Search (when trials > 0) then CV; the best trial's CV scores are reused, not recomputed.
    Also the threshold the CV chose on its out-of-fold predictions (binary targets)."""
    n_trials = job.params.search.trials if trials is None else trials
    hyperparams = dict(job.params.hyperparams)
    outcome = None
    with timed(timings, "search"):
        if n_trials > 0:
            if not job.params.search.space:
                raise TrainingError(
                    f"{n_trials} search trials asked but search.space is empty. "
                    "Add dimensions under 'search: space:' in params.yaml, or use 0 trials."
                )
            outcome = _search(
                job, X, y, n_trials, storage or job.settings.training.optuna_storage, report
            )
            hyperparams.update(outcome.best_params)
    choice = None
    with timed(timings, "cv"):
        if outcome is not None:
            cv_metrics = dict(outcome.best_cv)
            chosen = cv_metrics.pop(THRESHOLD_KEY, None)
            if chosen is not None and _binary(job):
                objective = job.params.threshold.objective
                choice = ThresholdChoice(chosen, objective, "cv_out_of_fold", len(y))
        elif job.params.cv_folds >= 2:
            cv_metrics, choice = _cv(
                job, hyperparams, X, y, n_folds=job.params.cv_folds, report=report
            )
        else:
            cv_metrics = {}
    return hyperparams, cv_metrics, outcome, choice


def _best_trial(outcome: SearchOutcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    return {
        "study": outcome.study_name,
        "value": outcome.best_value,
        "number": outcome.best_number,
        "params": outcome.best_params,
        "trials_run": outcome.trials_run,
        "trials_total": outcome.trials_total,
    }


# ---------------------------------------------------------------- MLflow


# skops refuses to load types outside its default allow-list (HistGradientBoosting's
# TreePredictor, LightGBM/XGBoost boosters, our own transformers). We compute the types a
# dumped pipeline needs with skops.io.get_untrusted_types and accept them only from these
# packages, both when saving and when loading (the list stored in MLmodel is never trusted).
_TRUSTED_PREFIXES = ("sklearn.", "lightgbm.", "xgboost.", "numpy.", "scipy.", "flywheel.")
_TRUSTED_EXACT = frozenset({"collections.OrderedDict", "collections.defaultdict"})


def trusted_types(data: bytes) -> list[str]:
    """The non-default types in a skops dump, refusing any outside the allowed packages."""
    import skops.io

    needed = list(skops.io.get_untrusted_types(data=data))
    refused = [t for t in needed if not (t.startswith(_TRUSTED_PREFIXES) or t in _TRUSTED_EXACT)]
    if refused:
        raise TrainingError(
            f"The pipeline contains types skops will not load safely: {refused}. Only "
            f"scikit-learn, LightGBM, XGBoost, NumPy, SciPy and flywheel types are accepted.",
            types=refused,
        )
    return needed


@cache
def _requirements(family: str) -> list[str]:
    """Pinned pip requirements, passed explicitly (MLflow's inference costs ~10 s)."""
    names = ["scikit-learn", "skops", "numpy", "pandas", "scipy"]
    names += [n for n in ("lightgbm", "xgboost") if n == family]
    out = []
    for name in names:
        try:
            out.append(f"{name}=={pkg_version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def with_threshold(pipeline: Pipeline, threshold: float | None) -> Any:
    """The pipeline as the MLflow model holds it: a binary classifier wrapped in
    scikit-learn's ``FixedThresholdClassifier`` (the fitted pipeline itself, not refitted),
    so ``predict`` of ``mlflow.sklearn``/``pyfunc`` gives the labels serving gives."""
    if threshold is None:
        return pipeline
    return FixedThresholdClassifier(pipeline, threshold=threshold, response_method="predict_proba")


def _log_pipeline(pipeline: Pipeline, X: pd.DataFrame, job: _Job) -> Any:
    """Log the fitted pipeline (skops, dumped once) as the run's MLflow ``sklearn`` model;
    returns MLflow's ``ModelInfo``."""
    import skops.io
    from mlflow.models import infer_signature

    from flywheel.training import skops_flavor

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
        pip_requirements=_requirements(job.params.family),
    )


def _run_params(
    job: _Job, hyperparams: dict[str, Any], n_train: int, outcome: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {k: str(v)[:500] for k, v in hyperparams.items()}
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


def _run_tags(job: _Job, holdout_sha: str, outcome: SearchOutcome | None) -> dict[str, str]:
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
    if outcome is not None:
        tags[STUDY_TAG] = outcome.study_name
    return tags


def _meta(job: _Job, holdout_sha: str) -> TrainingMeta:
    return TrainingMeta(
        job.manifest.id,
        job.task,
        job.target,
        job.seed,
        job.params.test_size,
        job.specs,
        job.classes,
        holdout_sha,
        job.threshold.value if job.threshold else None,
    )


def _track(
    job: _Job,
    pipeline: Pipeline,
    X: pd.DataFrame,
    hyperparams: dict[str, Any],
    cv_metrics: dict[str, float],
    timings: dict[str, float],
    outcome: SearchOutcome | None,
    holdout_sha: str,
) -> tuple[str, str]:
    import mlflow

    experiment_id = configure_mlflow(job.settings)
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    metrics = {**cv_metrics, **{f"{k}_time_s": v for k, v in timings.items()}}
    if job.threshold is not None:
        metrics[THRESHOLD_KEY] = job.threshold.value
    params = _run_params(job, hyperparams, len(X), outcome)
    try:
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{job.manifest.dataset}-{job.params.family}",
            tags=_run_tags(job, holdout_sha, outcome),
        ) as run:
            run_id = run.info.run_id
            client = MlflowClient()
            # params first (the logged model copies the run's params), then the model, then
            # the metrics, linked to the model, and the model's URI in one write
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            _log_texts(run_id, _effective_params(job, hyperparams), job, holdout_sha)
            info = _log_pipeline(pipeline, X, job)
            model_uri = str(info.model_uri)
            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, now, 0, model_id=info.model_id) for k, v in metrics.items()],
                tags=[RunTag(MODEL_URI_TAG, model_uri)],
            )
    except FlywheelError:
        raise
    except Exception as exc:  # MLflow raises many types; translate at the boundary
        raise RegistryError(
            f"Could not record the training run in MLflow ({job.settings.tracking.uri}): {exc}. "
            "Check tracking.uri and that the tracking server and artifact store are reachable.",
        ) from exc
    log.info("run %s logged model %s", run_id, model_uri)
    return run_id, model_uri


def _log_texts(run_id: str, params: dict[str, Any], job: _Job, holdout_sha: str) -> None:
    """params.yaml, feature_specs.json, training.json (and threshold.json for a binary
    classifier) as run artifacts, in one upload."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="flywheel-run-") as tmp:
        folder = Path(tmp)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        specs = json.dumps([asdict(s) for s in job.specs], indent=2)
        (folder / "feature_specs.json").write_text(specs)
        (folder / _META_ARTIFACT).write_text(json.dumps(asdict(_meta(job, holdout_sha)), indent=2))
        if job.threshold is not None:
            (folder / "threshold.json").write_text(json.dumps(job.threshold.to_dict(), indent=2))
        MlflowClient().log_artifacts(run_id, tmp)


# ---------------------------------------------------------------- reading a run back


def _get_run(settings: Settings, run_id: str) -> Run:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    use_tracking(settings)
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as exc:
        raise NotFound(
            f"MLflow run {run_id!r} does not exist in {settings.tracking.uri}. "
            "Use a run id printed by `flywheel train`.",
            run_id=run_id,
        ) from exc


def load_training_meta(settings: Settings, run_id: str) -> TrainingMeta:
    """The run's ``training.json``: task, target, split, feature specs and classes."""
    import mlflow

    run = _get_run(settings, run_id)
    try:
        data = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{_META_ARTIFACT}")
    except Exception as exc:
        raise NotFound(
            f"Run {run_id} has no {_META_ARTIFACT}; it was not made by flywheel train. "
            "Evaluate a run created by `flywheel train`.",
            run_id=run_id,
        ) from exc
    data["feature_specs"] = [FeatureSpec(**s) for s in data["feature_specs"]]
    return TrainingMeta(**data)


def load_holdout(
    settings: Settings, run_id: str, *, meta: TrainingMeta | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """The run's holdout rows (raw columns, slice columns kept) and target, re-derived exactly.

    ``meta`` is the run's :class:`TrainingMeta` when the caller has it (else it is read)."""
    from flywheel.data.snapshots import get_snapshot

    meta = meta or load_training_meta(settings, run_id)
    df, _, holdout_idx = _resplit(settings, meta, get_snapshot(settings, meta.snapshot_id))
    holdout = df.iloc[holdout_idx]
    if _frame_sha256(holdout) != meta.holdout_sha256:
        raise DataError(
            f"The holdout of run {run_id} re-derived from snapshot {meta.snapshot_id} differs "
            "from the one at training time (the snapshot's rows or order changed). "
            "Retrain on the snapshot as it is now.",
            run_id=run_id,
        )
    holdout = holdout.reset_index(drop=True)
    return holdout.drop(columns=[meta.target]), holdout[meta.target]


def training_keys(settings: Settings, run_id: str) -> pd.DataFrame | None:
    """The key columns of the rows ``run_id`` was trained on (its snapshot minus its holdout),
    or None when the snapshot has no key columns. Used to keep a champion comparison fair:
    a challenger trained on a newer snapshot must not be scored against the champion on rows
    the champion learned from."""
    from flywheel.data.snapshots import get_snapshot

    meta = load_training_meta(settings, run_id)
    manifest = get_snapshot(settings, meta.snapshot_id)
    keys = list(manifest.key_columns)
    if not keys:
        return None
    df, train_idx, _ = _resplit(settings, meta, manifest)
    return df.iloc[train_idx][keys].reset_index(drop=True)


def _resplit(
    settings: Settings, meta: TrainingMeta, manifest: Manifest
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The run's labelled snapshot rows and its (training, holdout) positions, as at training."""
    from flywheel.data.snapshots import read_snapshot

    df = _labelled(read_snapshot(settings, manifest), meta.target)
    y_all = encode_target(df[meta.target], meta.task, meta.classes)
    train_idx, holdout_idx = _split(y_all, meta.task, meta.test_size, meta.seed)
    return df, train_idx, holdout_idx


def load_pipeline(settings: Settings, run_id: str) -> Pipeline:
    """The run's fitted pipeline, loaded with skops and our allow-list (never unpickled).

    A binary classifier is stored inside a ``FixedThresholdClassifier`` (see
    :func:`with_threshold`); the pipeline is returned unwrapped, its threshold is in the
    run's ``training.json`` (:func:`load_training_meta`)."""
    import mlflow
    import skops.io

    run = _get_run(settings, run_id)
    model_uri = run.data.tags.get(MODEL_URI_TAG)
    if model_uri is None:
        raise NotFound(
            f"Run {run_id} has no logged model (tag {MODEL_URI_TAG}); retrain it.", run_id=run_id
        )
    try:
        with tempfile.TemporaryDirectory(prefix="flywheel-model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
            data = (local / "model.skops").read_bytes()
    except Exception as exc:
        raise RegistryError(
            f"Cannot download model {model_uri} of run {run_id}: {exc}. Check the artifact store.",
            run_id=run_id,
        ) from exc
    model = skops.io.loads(data, trusted=trusted_types(data))
    return model.estimator if isinstance(model, FixedThresholdClassifier) else model
