"""Read a training run back: its ``training.json``, its fitted pipeline (skops, with the
allow-list of :func:`~flywheel.training.skops_flavor.trusted_types`), and the rows it held out or
trained on, re-derived from its snapshot exactly as at training time.

A process that trained the run holds all of this already (``TrainResult.pipeline``,
``.meta``, ``.holdout``); these are for runs made elsewhere (``flywheel evaluate RUN``,
the champion's training rows).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline

from flywheel.config import mask_url
from flywheel.errors import DataError, NotFound, RegistryError
from flywheel.schema import FeatureSpec
from flywheel.training.prepare import TrainingMeta, frame_sha256, resplit
from flywheel.training.skops_flavor import trusted_types
from flywheel.training.track import META_ARTIFACT, MODEL_URI_TAG

if TYPE_CHECKING:
    from mlflow.entities import Run

    from flywheel.workspace import Workspace

__all__ = ["get_run", "load_holdout", "load_pipeline", "load_training_meta", "training_keys"]


def get_run(ws: Workspace, run_id: str) -> Run:
    """The MLflow run, or :class:`NotFound` naming the tracking store."""
    from mlflow.exceptions import MlflowException

    try:
        return ws.client.get_run(run_id)
    except MlflowException as exc:
        raise NotFound(
            f"MLflow run {run_id!r} does not exist in {mask_url(ws.tracking_uri)}. "
            "Use a run id printed by `flywheel train`.",
            run_id=run_id,
        ) from exc


def load_training_meta(ws: Workspace, run_id: str) -> TrainingMeta:
    """The run's ``training.json``: task, target, split, feature specs and classes."""
    get_run(ws, run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="flywheel-meta-") as tmp:
            local = ws.client.download_artifacts(run_id, META_ARTIFACT, tmp)
            data = json.loads(Path(local).read_text(encoding="utf-8"))
    except Exception as exc:
        raise NotFound(
            f"Run {run_id} has no {META_ARTIFACT}; it was not made by flywheel train. "
            "Evaluate a run created by `flywheel train`.",
            run_id=run_id,
        ) from exc
    data["feature_specs"] = [FeatureSpec(**s) for s in data["feature_specs"]]
    return TrainingMeta(**data)


def load_holdout(
    ws: Workspace, run_id: str, *, meta: TrainingMeta | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """The run's holdout rows (raw columns, slice columns kept) and target, re-derived exactly.

    ``meta`` is the run's :class:`TrainingMeta` when the caller has it (else it is read)."""
    meta = meta or load_training_meta(ws, run_id)
    df, _, holdout_idx = resplit(ws.read_snapshot(meta.snapshot_id), meta)
    holdout = df.iloc[holdout_idx]
    if frame_sha256(holdout) != meta.holdout_sha256:
        raise DataError(
            f"The holdout of run {run_id} re-derived from snapshot {meta.snapshot_id} differs "
            "from the one at training time (the snapshot's rows or order changed). "
            "Retrain on the snapshot as it is now.",
            run_id=run_id,
        )
    holdout = holdout.reset_index(drop=True)
    return holdout.drop(columns=[meta.target]), holdout[meta.target]


def training_keys(ws: Workspace, run_id: str) -> pd.DataFrame | None:
    """The key columns of the rows ``run_id`` was trained on (its snapshot minus its holdout),
    or None when the snapshot has no key columns. Used to keep a champion comparison fair:
    a challenger trained on a newer snapshot must not be scored against the champion on rows
    the champion learned from."""
    meta = load_training_meta(ws, run_id)
    manifest = ws.snapshot(meta.snapshot_id)
    keys = list(manifest.key_columns)
    if not keys:
        return None
    df, train_idx, _ = resplit(ws.read_snapshot(manifest), meta)
    return df.iloc[train_idx][keys].reset_index(drop=True)


def load_pipeline(ws: Workspace, run_id: str) -> Pipeline:
    """The run's fitted pipeline, loaded with skops and our allow-list (never unpickled).

    A binary classifier is stored inside a ``FixedThresholdClassifier`` (see
    :func:`~flywheel.training.track.with_threshold`); the pipeline is returned unwrapped,
    its threshold is in the run's ``training.json`` (:func:`load_training_meta`)."""
    import mlflow
    import skops.io

    run = get_run(ws, run_id)
    model_uri = run.data.tags.get(MODEL_URI_TAG)
    if model_uri is None:
        raise NotFound(
            f"Run {run_id} has no logged model (tag {MODEL_URI_TAG}); retrain it.", run_id=run_id
        )
    try:
        # a models:/ URI is resolved with MLflow's global URIs, whatever is passed: scoped
        with tempfile.TemporaryDirectory(prefix="flywheel-model-") as tmp, ws.tracking():
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
            data = (Path(local) / "model.skops").read_bytes()
    except Exception as exc:
        raise RegistryError(
            f"Cannot download model {model_uri} of run {run_id}: {exc}. Check the artifact store.",
            run_id=run_id,
        ) from exc
    model = skops.io.loads(data, trusted=trusted_types(data))
    return model.estimator if isinstance(model, FixedThresholdClassifier) else model
