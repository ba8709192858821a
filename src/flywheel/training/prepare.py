"""Prepare a training job: the snapshot's rows → target, task and feature specs → the
deterministic holdout split.

The split is a pure function of the labelled rows, the task, ``test_size`` and ``seed``, so
:func:`resplit` re-derives exactly the rows a run held out (``flywheel.training.runs``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype
from sklearn.model_selection import train_test_split

from flywheel.errors import DataError, TrainingError
from flywheel.training.features import (
    CLASSIFICATION_FAMILIES,
    REGRESSION_FAMILIES,
    FeatureSpec,
    Task,
    infer_feature_specs,
    prepare_frame,
)
from flywheel.training.params import TrainParams
from flywheel.training.threshold import ThresholdChoice

if TYPE_CHECKING:
    from flywheel.data.snapshots import Manifest
    from flywheel.workspace import Workspace

__all__ = [
    "Job",
    "Prepared",
    "TrainingMeta",
    "check_classes",
    "check_label_options",
    "encode_target",
    "features",
    "frame_sha256",
    "infer_task",
    "is_binary",
    "labelled",
    "load_snapshot",
    "prepare",
    "resolve_job",
    "resplit",
    "split",
    "window_start",
    "windowed",
]

log = logging.getLogger("flywheel.training")


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
    since: str | None = None  # a training window: only rows whose timestamp_column >= this
    timestamp_column: str | None = None


@dataclass
class Job:
    """The resolved inputs of one training run."""

    manifest: Manifest
    params: TrainParams
    target: str
    task: Task
    seed: int
    specs: list[FeatureSpec]
    classes: list[Any] | None = None
    threshold: ThresholdChoice | None = None  # binary classification, once chosen
    inputs_sha256: str = ""  # once the params are final (fit.inputs_sha256)
    since: str | None = None  # a training window's first timestamp (ISO), see windowed()

    def meta(self, holdout_sha256: str) -> TrainingMeta:
        """The run's ``training.json``."""
        return TrainingMeta(
            self.manifest.id,
            self.task,
            self.target,
            self.seed,
            self.params.test_size,
            self.specs,
            self.classes,
            holdout_sha256,
            self.threshold.value if self.threshold else None,
            self.since,
            self.manifest.timestamp_column if self.since else None,
        )


@dataclass
class Prepared:
    """A job's training part and holdout, split once and carried to evaluation."""

    X: pd.DataFrame  # the training part's pipeline input (spec columns, float32 numerics)
    y: np.ndarray  # its encoded target
    holdout: pd.DataFrame  # the holdout rows as in the snapshot (target included), index reset
    holdout_sha256: str  # content hash of the holdout rows (checked when re-derived)


# ---------------------------------------------------------------- snapshot rows


def load_snapshot(ws: Workspace, manifest: Manifest) -> pd.DataFrame:
    """The snapshot's rows; it must have passed its contract and have rows."""
    from flywheel.data import snapshots

    snapshots.require_valid(ws.settings, manifest)  # ContractViolation unless it passed
    df = ws.read_snapshot(manifest)
    if df.empty:
        raise DataError(
            f"Snapshot {manifest.id} has no rows; ingest data before training.",
            snapshot_id=manifest.id,
        )
    return df


# ---------------------------------------------------------------- target, task, features


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
            "names one (a snapshot's target is set when it is first ingested, with --target). "
            "Set 'target: <column>' in params.yaml.",
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


def resolve_job(manifest: Manifest, df: pd.DataFrame, params: TrainParams, *, seed: int) -> Job:
    """Target, task and feature specs of ``params`` on the snapshot's rows; ``seed`` is the
    default seed (``settings.seed``) when ``params.seed`` is not set."""
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
    return Job(manifest, params, target, task, seed if params.seed is None else params.seed, specs)


def is_binary(job: Job) -> bool:
    return job.task == "classification" and len(job.classes or []) == 2


def check_label_options(job: Job) -> None:
    """``class_weight`` needs a classifier; an explicit ``threshold`` a binary one."""
    if job.params.class_weight is not None and job.task != "classification":
        raise TrainingError(
            f"class_weight applies to classification, but the task is {job.task}. "
            "Remove 'class_weight' from params.yaml.",
            task=job.task,
        )
    if "threshold" in job.params.model_fields_set and not is_binary(job):
        kind = "regression" if job.task == "regression" else f"{len(job.classes or [])} classes"
        raise TrainingError(
            f"threshold applies to binary classification only, but this target has {kind} "
            "(multiclass labels are the most probable class). Remove 'threshold' from "
            "params.yaml.",
            task=job.task,
        )


# ---------------------------------------------------------------- encoding and the split


def window_start(manifest: Manifest, window_s: float) -> str:
    """The first timestamp (ISO) of a training window ``window_s`` seconds long that ends at
    the snapshot's newest row; DataError when the snapshot has no timestamp column."""
    if manifest.timestamp_column is None or manifest.time_range is None:
        raise DataError(
            f"A training window needs a timestamp: snapshot {manifest.id} has no "
            "source.timestamp_column. Fix: set source.timestamp_column, or unset "
            "retrain.window.",
            field="retrain.window",
        )
    newest = pd.Timestamp(manifest.time_range[1])
    return (newest - pd.Timedelta(seconds=window_s)).isoformat()


def windowed(df: pd.DataFrame, since: str | None, column: str | None) -> pd.DataFrame:
    """The rows inside a training window (all rows without one); the same rule in training
    and when a holdout is re-derived."""
    if since is None or column is None:
        return df
    ts = df[column]
    if not pd.api.types.is_datetime64_any_dtype(ts):
        ts = pd.to_datetime(ts, utc=True, format="ISO8601")
    cut = pd.Timestamp(since)
    tz = getattr(ts.dt, "tz", None)
    if tz is None and cut.tzinfo is not None:
        cut = cut.tz_convert(None)
    elif tz is not None and cut.tzinfo is None:
        cut = cut.tz_localize(tz)
    kept = df[(ts >= cut).to_numpy()].reset_index(drop=True)
    log.info("training window from %s: %d of %d rows", since, len(kept), len(df))
    return kept


def labelled(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """Rows with a target value; the same rule in training and when a holdout is re-derived."""
    kept = df[df[target].notna()].reset_index(drop=True)
    if len(kept) < len(df):
        log.info("dropped %d rows without a %s value", len(df) - len(kept), target)
    return kept


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


def split(y: np.ndarray, task: Task, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def frame_sha256(df: pd.DataFrame) -> str:
    hashed = pd.util.hash_pandas_object(df, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def features(df: pd.DataFrame, specs: list[FeatureSpec]) -> pd.DataFrame:
    """The pipeline input: spec columns only, numerics float32, missing categories ``""``."""
    return prepare_frame(df[[s.name for s in specs]], specs)


def check_classes(target: str, y: pd.Series, snapshot_id: str) -> None:
    """A classifier's target, before any split: at least two classes, and at least two rows
    of each (one for the training part, one for the stratified holdout); a
    :class:`TrainingError` naming the classes and their row counts otherwise."""
    counts = y.value_counts()
    shown = ", ".join(f"{_plain(v)!r}: {n}" for v, n in counts.head(10).items())
    if len(counts) < 2:
        raise TrainingError(
            f"Target {target!r} has only one class in the {len(y)} labelled rows of snapshot "
            f"{snapshot_id} ({shown} rows): a classifier needs at least two classes. Fix: "
            "ingest rows of another class, or pick another target ('target' in params.yaml, "
            "--target at ingest).",
            target=target,
            snapshot_id=snapshot_id,
            classes={str(_plain(v)): int(n) for v, n in counts.items()},
        )
    rare = counts[counts < 2]
    if len(rare):
        names = ", ".join(repr(_plain(v)) for v in rare.index[:10])
        plural = len(rare) > 1
        which = f"Class{'es' * plural} {names} of target {target!r} {'have' if plural else 'has'}"
        raise TrainingError(
            f"{which} only 1 row in snapshot {snapshot_id} "
            f"(rows per class: {shown}): the stratified holdout needs at least 2 rows of every "
            "class (one to train on, one to hold out). Fix: ingest more rows of that class, "
            "or leave its rows out of the data.",
            target=target,
            snapshot_id=snapshot_id,
            classes={str(_plain(v)): int(n) for v, n in rare.items()},
        )


def prepare(job: Job, df: pd.DataFrame) -> Prepared:
    """Split the labelled rows once: the training part's features and encoded target, and
    the holdout rows (kept for evaluation) with their content hash. Sets ``job.classes``.

    A :class:`TrainingError` when there are no labelled rows, or a classifier's target has
    one class or a class of one row (:func:`check_classes`)."""
    df = labelled(windowed(df, job.since, job.manifest.timestamp_column), job.target)
    if df.empty:
        raise TrainingError(
            f"No rows of snapshot {job.manifest.id} have a {job.target!r} value"
            f"{' inside the training window' if job.since else ''}: nothing to train on. "
            "Fix: ingest labelled rows, or pick another target ('target' in params.yaml).",
            snapshot_id=job.manifest.id,
            target=job.target,
        )
    if job.task == "classification":
        check_classes(job.target, df[job.target], job.manifest.id)
        job.classes = _classes(df[job.target])
    y_all = encode_target(df[job.target], job.task, job.classes)
    train_idx, holdout_idx = split(y_all, job.task, job.params.test_size, job.seed)
    X = features(df.iloc[train_idx].reset_index(drop=True), job.specs)
    holdout = df.iloc[holdout_idx]
    return Prepared(X, y_all[train_idx], holdout.reset_index(drop=True), frame_sha256(holdout))


def resplit(df: pd.DataFrame, meta: TrainingMeta) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A run's labelled snapshot rows and its (training, holdout) positions, as at training."""
    df = labelled(windowed(df, meta.since, meta.timestamp_column), meta.target)
    y_all = encode_target(df[meta.target], meta.task, meta.classes)
    train_idx, holdout_idx = split(y_all, meta.task, meta.test_size, meta.seed)
    return df, train_idx, holdout_idx
