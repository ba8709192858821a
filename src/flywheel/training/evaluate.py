"""Holdout metrics, slices, champion comparison, plots.

Evaluation takes the run's holdout from the training result that holds it (or, for a run
made elsewhere, re-derives it from its snapshot: :func:`load_holdout`), scores the run's
pipeline and, when given, the current champion on exactly those rows, and records the
result on the same MLflow run: metrics ``holdout_<metric>`` and ``champion_<metric>``, the
artifact ``evaluation.json`` (slices, gaps, champion) and PNG plots under ``plots/``.
A binary classifier's labels (and so f1, precision, recall, accuracy) are made at its own
decision threshold: the run's, chosen at training time, and the champion's, recorded with
its version.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from flywheel._timing import timed
from flywheel.errors import FlywheelError, RegistryError
from flywheel.training.features import Task, prepare_frame
from flywheel.training.fit import predict
from flywheel.training.metrics import all_metrics, as_probabilities, primary_metric, score
from flywheel.training.prepare import TrainingMeta, encode_target
from flywheel.training.runs import load_holdout, load_pipeline, load_training_meta, training_keys
from flywheel.training.threshold import apply_threshold
from flywheel.training.train import TrainResult

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = [
    "MIN_SLICE_ROWS",
    "ChampionModel",
    "Evaluation",
    "HoldoutPredictions",
    "evaluate",
    "score_slices",
]

log = logging.getLogger("flywheel.training")

MIN_SLICE_ROWS = 30  # smaller slices are too noisy to gate on; recorded as skipped
IMPORTANCE_ROWS = 2_000  # permutation importance runs on a sample this large at most
MISSING = "<missing>"  # slice label for rows without a value


@dataclass
class ChampionModel:
    """The current champion as a scorer: raw frame -> (labels or values, probabilities or None)."""

    version: str
    predict: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray | None]]
    run_id: str | None = None  # its training run: lets the comparison skip rows it trained on
    # Its own decision threshold (binary): its labels are p(positive) >= threshold. None: the
    # labels ``predict`` returns are used as they are.
    threshold: float | None = None


@dataclass
class HoldoutPredictions:
    """The run's native predictions on its holdout, kept in memory for the parity check."""

    frame: pd.DataFrame  # prepared features (prepare_frame), the rows in holdout order
    labels: np.ndarray  # class indices, or regression values
    proba: np.ndarray | None


@dataclass
class Evaluation:
    run_id: str
    task: Task
    primary_metric: str  # "roc_auc" for classification, "rmse" for regression
    metrics: dict[str, float]
    slices: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    slice_gaps: dict[str, dict[str, float]] = field(default_factory=dict)
    champion_version: str | None = None
    champion_metrics: dict[str, float] | None = None
    plots: list[str] = field(default_factory=list)  # artifact paths in the run
    rows: int = 0  # holdout rows
    classes: list[Any] | None = None
    skipped_slices: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # column -> value -> why
    champion_error: str | None = None  # set when the champion could not score the holdout
    # The champion is compared on the holdout rows it never trained on (a newer snapshot's
    # holdout contains rows of the champion's training set); the challenger's metrics on
    # exactly those rows are ``comparison_metrics``.
    comparison_rows: int | None = None
    comparison_metrics: dict[str, float] | None = None
    champion_seen_rows: int = 0  # holdout rows left out because the champion trained on them
    threshold: float | None = None  # binary: the run's decision threshold (None: argmax)
    champion_threshold: float | None = None  # the champion's own, when it has one
    # permutation importance per feature on the holdout (monitoring weighs drift by it)
    importance: dict[str, float] = field(default_factory=dict)
    # In memory only (not in evaluation.json): lets registration skip re-deriving the holdout.
    holdout: HoldoutPredictions | None = field(
        default=None, repr=False, compare=False, metadata={"record": False}
    )
    timings: dict[str, float] = field(  # seconds per phase ("tracking": the MLflow writes)
        default_factory=dict, repr=False, compare=False, metadata={"record": False}
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``evaluation.json`` holds)."""
        return {
            f.name: copy.deepcopy(getattr(self, f.name))
            for f in fields(self)
            if f.metadata.get("record", True)
        }


def evaluate(
    ws: Workspace, run: str | TrainResult, *, champion: ChampionModel | None = None
) -> Evaluation:
    """Score the run's pipeline (and the champion) on the run's holdout; record it on the run.

    ``run`` is a run id, or the :class:`TrainResult` just returned by ``train``: its
    in-memory pipeline and holdout are then used instead of downloading the logged pipeline
    and re-deriving the holdout from the snapshot.
    """
    if isinstance(run, str):
        run_id, meta, pipeline, held = run, None, None, None
    else:
        run_id, meta, pipeline, held = run.run_id, run.meta, run.pipeline, run.holdout
    timings: dict[str, float] = {}
    with timed(timings, "tracking"):  # MLflow reads, when this process does not hold them
        if meta is None:
            meta = load_training_meta(ws, run_id)
        if pipeline is None:
            pipeline = load_pipeline(ws, run_id)
    if held is not None:
        X_raw, y_raw = held.drop(columns=[meta.target]), held[meta.target]
    else:
        X_raw, y_raw = load_holdout(ws, run_id, meta=meta)
    y = encode_target(y_raw, meta.task, meta.classes)
    X = prepare_frame(X_raw[[s.name for s in meta.feature_specs]], meta.feature_specs)
    pred, proba = predict(pipeline, X, meta.task, threshold=meta.threshold)
    k = len(meta.classes or [])
    ev = Evaluation(
        run_id=run_id,
        task=meta.task,
        primary_metric=primary_metric(meta.task),
        metrics=score(meta.task, y, pred, proba, n_classes=k),
        rows=len(y),
        classes=meta.classes,
        threshold=meta.threshold,
        holdout=HoldoutPredictions(frame=X, labels=pred, proba=proba),
        timings=timings,
    )
    for column in ws.settings.training.slice_columns:
        if column in X_raw.columns:
            done, skipped = score_slices(meta.task, X_raw[column], y, pred, proba, n_classes=k)
            ev.slices[column], ev.skipped_slices[column] = done, skipped
            ev.slice_gaps[column] = _gaps(meta.task, done)
    if champion is not None:
        unseen = _unseen_by(ws, champion, X_raw)
        _score_champion(ev, champion, X_raw[unseen].reset_index(drop=True), y[unseen], meta)
        ev.champion_seen_rows = int((~unseen).sum())
        ev.comparison_rows = int(unseen.sum())
        part = None if proba is None else proba[unseen]
        ev.comparison_metrics = score(meta.task, y[unseen], pred[unseen], part, n_classes=k)
    ev.plots = _plot_and_record(ws, ev, pipeline, X, y, pred, proba, meta)
    log.info("run %s holdout %s", run_id, {k: round(v, 4) for k, v in ev.metrics.items()})
    return ev


def score_slices(
    task: Task,
    column: pd.Series,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
    *,
    n_classes: int = 2,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Metrics per value of ``column`` (plus ``rows``), and the values skipped with the reason."""
    keys = column.astype("string").fillna(MISSING).to_numpy()
    done: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    for value in sorted(set(keys)):
        mask = keys == value
        n = int(mask.sum())
        if n < MIN_SLICE_ROWS:
            skipped[value] = f"{n} rows, fewer than {MIN_SLICE_ROWS}"
            continue
        if task == "classification" and len(np.unique(y[mask])) < 2:
            skipped[value] = f"{n} rows of a single class"
            continue
        part = None if proba is None else proba[mask]
        done[value] = {
            **score(task, y[mask], pred[mask], part, n_classes=n_classes),
            "rows": float(n),
        }
    return done, skipped


def _gaps(task: Task, slices: dict[str, dict[str, float]]) -> dict[str, float]:
    """Largest minus smallest value of each metric over the scored slices (≥ 2 needed)."""
    gaps: dict[str, float] = {}
    for metric in all_metrics(task):
        values = [s[metric] for s in slices.values() if metric in s]
        if len(values) >= 2:
            gaps[metric] = float(max(values) - min(values))
    return gaps


def _champion_labels(labels: np.ndarray, classes: list[Any] | None) -> np.ndarray:
    """Champion labels as class indices; accepts indices or the original class values."""
    if classes is None:
        return np.asarray(labels, dtype="float64")
    if classes == list(range(len(classes))):
        return np.asarray(labels).astype("int64")
    lookup = {c: i for i, c in enumerate(classes)}
    values = list(np.asarray(labels).tolist())
    if all(v in lookup for v in values):
        return np.asarray([lookup[v] for v in values], dtype="int64")
    return np.asarray(labels).astype("int64")


def _unseen_by(ws: Workspace, champion: ChampionModel, X_raw: pd.DataFrame) -> np.ndarray:
    """Mask of holdout rows the champion did not train on (all rows when that is unknown)."""
    everything = np.ones(len(X_raw), dtype=bool)
    if champion.run_id is None:
        return everything
    try:
        seen = training_keys(ws, champion.run_id)
    except FlywheelError as exc:  # e.g. its snapshot is gone: compare on everything, say so
        log.warning("cannot tell which rows champion %s trained on: %s", champion.version, exc)
        return everything
    if seen is None or not set(seen.columns) <= set(X_raw.columns):
        return everything
    keys = list(seen.columns)
    index = pd.MultiIndex.from_frame(seen.astype(str))
    mine = pd.MultiIndex.from_frame(X_raw[keys].astype(str))
    return ~mine.isin(index)


def _score_champion(
    ev: Evaluation, champion: ChampionModel, X_raw: pd.DataFrame, y: np.ndarray, meta: TrainingMeta
) -> None:
    ev.champion_version = champion.version
    ev.champion_threshold = champion.threshold
    try:
        labels, raw = champion.predict(X_raw)
        if champion.threshold is not None and raw is not None and np.shape(raw)[1] == 2:
            pred = apply_threshold(raw, champion.threshold)  # as its ONNX graph compares
        else:
            pred = _champion_labels(labels, meta.classes)
        # ONNX probabilities are float32: renormalised in float64 so sklearn's log_loss does
        # not warn that they "do not sum to one"
        proba = None if raw is None else as_probabilities(raw)
        k = len(meta.classes or [])
        ev.champion_metrics = score(meta.task, y, pred, proba, n_classes=k)
    except Exception as exc:  # any failure of the champion is recorded and fails its gate
        log.warning("champion %s could not score the holdout: %s", champion.version, exc)
        ev.champion_error = f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- plots and recording


def _importance(
    pipeline: Pipeline, X: pd.DataFrame, y: np.ndarray, task: Task, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    from sklearn.inspection import permutation_importance

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(X), size=min(len(X), IMPORTANCE_ROWS), replace=False))
    scoring = "neg_root_mean_squared_error"
    if task == "classification":
        scoring = "roc_auc" if k == 2 else "roc_auc_ovr"
    try:
        result = permutation_importance(
            pipeline,
            X.iloc[rows],
            y[rows],
            scoring=scoring,
            n_repeats=3,
            random_state=seed,
            n_jobs=1,
        )
    except ValueError as exc:
        log.info("skipped permutation importance: %s", exc)
        return None
    return np.asarray(result.importances_mean), np.asarray(result.importances_std)


def _draw(
    folder: Path,
    ev: Evaluation,
    pipeline: Pipeline,
    X: pd.DataFrame,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
    meta: TrainingMeta,
) -> list[Path]:
    from flywheel.training import plots  # matplotlib: loaded when plotting, not on import

    files: list[Path] = []
    classes = meta.classes or []
    if ev.task == "classification":
        files.append(plots.confusion_matrix_plot(y, pred, classes, folder / "confusion_matrix.png"))
        if proba is not None and len(np.unique(y)) > 1:
            files.append(plots.roc_plot(y, proba, classes, folder / "roc.png"))
            if len(classes) == 2:
                files.append(plots.calibration_plot(y, proba, folder / "calibration.png"))
    else:
        files.append(plots.predicted_vs_actual_plot(y, pred, folder / "predicted_vs_actual.png"))
        files.append(plots.residuals_plot(y, pred, folder / "residuals.png"))
    imp = _importance(pipeline, X, y, ev.task, len(classes), meta.seed)
    if imp is not None:
        ev.importance = {str(c): float(v) for c, v in zip(X.columns, imp[0], strict=True)}
        files.append(
            plots.importance_plot(list(X.columns), imp[0], folder / "importance.png", stds=imp[1])
        )
    return files


def _plot_and_record(
    ws: Workspace,
    ev: Evaluation,
    pipeline: Pipeline,
    X: pd.DataFrame,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
    meta: TrainingMeta,
) -> list[str]:
    from mlflow.entities import Metric

    with timed(ev.timings, "tracking"):
        client = ws.client
    with tempfile.TemporaryDirectory(prefix="flywheel-eval-") as tmp:
        files = _draw(Path(tmp), ev, pipeline, X, y, pred, proba, meta)
        ev.plots = [f"plots/{f.name}" for f in files]
        now = int(time.time() * 1000)
        values = {f"holdout_{k}": v for k, v in ev.metrics.items()}
        values.update({f"champion_{k}": v for k, v in (ev.champion_metrics or {}).items()})
        try:
            with timed(ev.timings, "tracking"):
                metrics = [Metric(k, v, now, 0) for k, v in values.items()]
                client.log_batch(ev.run_id, metrics=metrics)
                client.log_dict(ev.run_id, ev.to_dict(), "evaluation.json")
                client.log_artifacts(ev.run_id, tmp, "plots")
        except FlywheelError:
            raise
        except Exception as exc:  # MLflow raises many types; translate at the boundary
            raise RegistryError(
                f"Could not record the evaluation of run {ev.run_id} in MLflow: {exc}. "
                "Check tracking.uri and the artifact store.",
                run_id=ev.run_id,
            ) from exc
    return ev.plots
