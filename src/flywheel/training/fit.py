"""Fit a prepared job: optional Optuna search → k-fold CV → a binary classifier's decision
threshold (out-of-fold CV predictions, or an inner validation split when CV is off; never
the holdout) → the final pipeline on the whole training part.

Progress is reported through a plain callback ``(phase, done, total)``: ``"search"`` trials
and ``"cv"`` folds. Nothing here touches MLflow.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline

from flywheel._timing import timed
from flywheel.errors import TrainingError
from flywheel.training import metrics as M
from flywheel.training.features import Task, align_thresholds_to_float32, build_pipeline
from flywheel.training.prepare import Job, is_binary, split
from flywheel.training.search import SearchOutcome, run_search, study_name
from flywheel.training.threshold import ThresholdChoice, apply_threshold, choose_threshold

__all__ = [
    "THRESHOLD_KEY",
    "Progress",
    "Tuned",
    "best_trial",
    "check_fold_classes",
    "choose_job_threshold",
    "cross_validate",
    "effective_params",
    "fit_pipeline",
    "inputs_sha256",
    "predict",
    "tune_and_validate",
]

Progress = Callable[[str, int, int], None]  # (phase, done, total): "search" trials, "cv" folds
# The key under which cross_validate reports the threshold it chose, and the run's metric.
THRESHOLD_KEY = "decision_threshold"
_SEARCH_FOLDS = 3  # CV folds used by the search objective when params.cv_folds < 2


def _noop(phase: str, done: int, total: int) -> None:
    return None


@dataclass
class Tuned:
    """What the search and CV settled: the hyperparameters and their CV scores."""

    hyperparams: dict[str, Any]
    cv_metrics: dict[str, float]  # "<metric>_cv_mean", "<metric>_cv_std"
    outcome: SearchOutcome | None  # the search, when one ran
    cv_threshold: ThresholdChoice | None  # chosen on the out-of-fold predictions (binary)


# ---------------------------------------------------------------- pipelines


def _pipeline(job: Job, hyperparams: dict[str, Any]) -> Pipeline:
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


def fit_pipeline(job: Job, hyperparams: dict[str, Any], X: pd.DataFrame, y: np.ndarray) -> Pipeline:
    """A new pipeline of the job's family, fitted on ``X``/``y``."""
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


# ---------------------------------------------------------------- CV


def check_fold_classes(job: Job, y: np.ndarray, n_folds: int) -> None:
    """Stratified CV puts a class's rows in at most that many folds: with fewer rows of a
    class than folds, some folds validate without it (metrics undefined there) or train
    without it (the model then knows fewer classes). A :class:`TrainingError` naming the
    class, its rows and the fix, instead of scikit-learn's warning and a crash later."""
    classes = job.classes or []
    counts = np.bincount(y, minlength=len(classes))
    rarest = int(counts.argmin())
    rows = int(counts[rarest])
    if rows >= n_folds:
        return
    label = classes[rarest] if rarest < len(classes) else rarest
    if job.params.cv_folds >= 2:
        fix = (
            f"set cv_folds to {rows} or less in params.yaml (0 turns CV off)"
            if rows >= 2
            else "set cv_folds: 0 in params.yaml (CV off)"
        )
        folds = f"cv_folds={n_folds}"
    else:
        fix = "run without a search (0 trials)"
        folds = f"the search's {n_folds} CV folds"
    raise TrainingError(
        f"Class {label!r} of target {job.target!r} has {rows} row{'s' * (rows != 1)} in the "
        f"training part, fewer than {folds}: stratified CV needs a row of every class in "
        f"each fold. Fix: {fix}, or ingest more rows of class {label!r}.",
        target=job.target,
        cv_folds=n_folds,
        rows=rows,
    )


def _folds(job: Job, y: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter: KFold | StratifiedKFold
    if job.task == "classification":
        check_fold_classes(job, y, n_folds)
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
    job: Job,
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
    job: Job,
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
        model = fit_pipeline(job, hyperparams, X.iloc[tr], y[tr])
        outputs.append(predict(model, X.iloc[va], job.task))
        report("cv", i, len(folds))
    choice = None
    if is_binary(job):
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


# ---------------------------------------------------------------- search


def _search(
    job: Job, X: pd.DataFrame, y: np.ndarray, trials: int, storage: str | None, report: Progress
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


def tune_and_validate(
    job: Job,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    trials: int | None,
    storage: str | None,
    report: Progress,
    timings: dict[str, float],
) -> Tuned:
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
            outcome = _search(job, X, y, n_trials, storage, report)
            hyperparams.update(outcome.best_params)
    choice = None
    with timed(timings, "cv"):
        if outcome is not None:
            cv_metrics = dict(outcome.best_cv)
            chosen = cv_metrics.pop(THRESHOLD_KEY, None)
            if chosen is not None and is_binary(job):
                objective = job.params.threshold.objective
                choice = ThresholdChoice(chosen, objective, "cv_out_of_fold", len(y))
        elif job.params.cv_folds >= 2:
            cv_metrics, choice = _cv(
                job, hyperparams, X, y, n_folds=job.params.cv_folds, report=report
            )
        else:
            cv_metrics = {}
    return Tuned(hyperparams, cv_metrics, outcome, choice)


def best_trial(outcome: SearchOutcome | None) -> dict[str, Any] | None:
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


# ---------------------------------------------------------------- threshold and identity


def choose_job_threshold(
    job: Job,
    hyperparams: dict[str, Any],
    X: pd.DataFrame,
    y: np.ndarray,
    cv_choice: ThresholdChoice | None,
) -> ThresholdChoice | None:
    """The binary decision threshold: fixed, chosen by CV, or on an inner validation split
    of the training part when CV is off (one extra fit). None for other tasks."""
    if not is_binary(job):
        return None
    wanted = job.params.threshold
    if wanted.objective == "fixed":
        return choose_threshold(y, np.zeros(len(y)), wanted, source="fixed")
    if cv_choice is not None:
        return cv_choice
    try:
        inner_tr, inner_va = split(y, job.task, wanted.validation_size, job.seed)
    except TrainingError as exc:
        raise TrainingError(
            f"Cannot hold out threshold.validation_size={wanted.validation_size} of the "
            f"{len(y)} training rows to choose the decision threshold: {exc.message} Turn CV "
            "on (cv_folds >= 2), change threshold.validation_size, or fix threshold.value.",
        ) from exc
    model = fit_pipeline(job, hyperparams, X.iloc[inner_tr], y[inner_tr])
    _, proba = predict(model, X.iloc[inner_va], job.task)
    assert proba is not None  # classification
    return choose_threshold(y[inner_va], proba[:, 1], wanted, source="validation_split")


def effective_params(job: Job, hyperparams: dict[str, Any]) -> dict[str, Any]:
    """The params as trained: target, task and seed resolved, the search's best merged in."""
    update = {"target": job.target, "task": job.task, "seed": job.seed, "hyperparams": hyperparams}
    return job.params.model_copy(update=update).model_dump(mode="json")


def inputs_sha256(job: Job, hyperparams: dict[str, Any]) -> str:
    """sha256 of everything that determines the fitted model: the snapshot (id and content
    hash) and the effective params (seed, hyperparameters after a search, threshold, ...).
    Names the ONNX graph, so equal inputs give byte-identical exports (no random run id)."""
    inputs = {
        "snapshot_id": job.manifest.id,
        "snapshot_sha256": job.manifest.sha256,
        "params": effective_params(job, hyperparams),
    }
    if job.since is not None:  # a training window: fewer rows, another model
        inputs["since"] = job.since
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
