"""The contender of ``bench.train_register``: the same train → register written by hand
with MLflow, the way its documentation shows, as a user would without flywheel.

Training is flywheel's, step for step (same snapshot read, split, pipeline, folds and final
fit), so both sides train the same model in the same time and only the bookkeeping differs.
The ONNX graph and the parity check are flywheel's too (the user needs the same float32
and converter fixes to get an exact graph), so that part costs both sides the same. What is
written by hand is the MLflow part:

- ``mlflow.start_run`` with lineage tags, ``log_params``, the CV metrics;
- ``mlflow.sklearn.log_model(pipeline, input_example=..., skops_trusted_types=...)``:
  MLflow's defaults (skops, its requirement inference, its serving-input check);
- the holdout metrics and the parity figures with ``log_metrics``;
- ``mlflow.onnx.log_model(onnx_model, registered_model_name=...)``, the ONNX sha256 as a
  version tag, and the alias ``challenger``.

It writes no model card, evaluation records, gate report or audit entry, which flywheel
does; so it does less than flywheel, not more.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from typing import Any

from flywheel.config import Settings

__all__ = ["MODEL_NAME", "mlflow_round"]

MODEL_NAME = "churn-mlflow-by-hand"
EXPERIMENT = "mlflow-by-hand"


def _train(settings: Settings, snapshot_id: str, folds: int) -> dict[str, Any]:
    """flywheel's training steps without its tracking: the fitted pipeline and what the
    MLflow part logs, with the same timings as ``TrainResult.timings``."""
    from flywheel.training import fit, prepare
    from flywheel.training.params import TrainParams
    from flywheel.workspace import Workspace

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ws = Workspace(settings)
    manifest = ws.snapshot(snapshot_id)
    df = prepare.load_snapshot(ws, manifest)
    params = TrainParams(family="hist_gb", cv_folds=folds)
    job = prepare.resolve_job(manifest, df, params, seed=settings.seed)
    part = prepare.prepare(job, df)
    t1 = time.perf_counter()
    cv = fit.cross_validate(job, {}, part.X, part.y, n_folds=folds)
    threshold = cv.pop(fit.THRESHOLD_KEY, None)  # chosen on the out-of-fold predictions
    t2 = time.perf_counter()
    pipeline = fit.fit_pipeline(job, {}, part.X, part.y)
    t3 = time.perf_counter()
    timings.update(load=t1 - t0, cv=t2 - t1, fit=t3 - t2)
    holdout = part.holdout
    return {
        "job": job,
        "X": part.X,
        "pipeline": pipeline,
        "cv": cv,
        "holdout": holdout,
        "y_holdout": prepare.encode_target(holdout[job.target], job.task, job.classes),
        "threshold": threshold,
        "timings": timings,
    }


def _holdout_metrics(trained: dict[str, Any]) -> tuple[dict[str, float], float]:
    """Holdout scores (evaluation's own work, not overhead) and the seconds they took."""
    from flywheel.training import fit, prepare
    from flywheel.training import metrics as M

    start = time.perf_counter()
    job = trained["job"]
    Xh = prepare.features(trained["holdout"], job.specs)
    pred, proba = fit.predict(trained["pipeline"], Xh, job.task, threshold=trained["threshold"])
    scores = M.score(job.task, trained["y_holdout"], pred, proba, n_classes=len(job.classes or []))
    return {f"holdout_{k}": v for k, v in scores.items()}, time.perf_counter() - start


def mlflow_round(settings: Settings, snapshot_id: str, folds: int) -> dict[str, float]:
    """One train → register by hand; the keys ``bench.train_register`` tabulates."""
    start = time.perf_counter()
    trained = _train(settings, snapshot_id, folds)
    t_track = time.perf_counter()
    # MLflow prints "Registered model ... / Created version ..." to stderr: kept off the table
    with contextlib.redirect_stderr(io.StringIO()):
        timings = _by_hand(settings, snapshot_id, folds, trained)
    end = time.perf_counter()
    t = trained["timings"]
    return {
        "total_s": end - start,
        "imports_s": 0.0,  # inside tracking here: MLflow is imported when the run starts
        "load_s": t["load"],
        "cv_s": t["cv"],
        "fit_s": t["fit"],
        "tracking_s": timings["eval"] - t_track,
        "eval_tracking_s": timings["export"] - timings["eval"] - timings["scoring"],
        "gates_record_s": 0.0,
        "evaluate_s": timings["scoring"],
        "onnx_export_s": timings["parity"] - timings["export"],
        "parity_s": timings["publish"] - timings["parity"],
        "registry_s": end - timings["publish"],
        "register_s": end - timings["export"],
    }


def _by_hand(
    settings: Settings, snapshot_id: str, folds: int, trained: dict[str, Any]
) -> dict[str, float]:
    """The MLflow calls; returns the clock at the start of each part."""
    # the clock of the overhead starts here: imports (in a new process), every MLflow call
    import mlflow
    import mlflow.onnx
    import mlflow.sklearn
    import onnx
    import skops.io

    from flywheel.registry.onnx_export import check_parity, export_onnx

    job, pipeline, X = trained["job"], trained["pipeline"], trained["X"]
    mlflow.set_tracking_uri(settings.tracking.uri)
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(tags={"snapshot_id": snapshot_id, "family": job.params.family}):
        mlflow.log_params({"family": job.params.family, "seed": job.seed, "cv_folds": folds})
        mlflow.log_metrics(trained["cv"])
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
        mlflow.sklearn.log_model(
            pipeline, name="model", input_example=X.head(5), skops_trusted_types=trusted
        )
        t_eval = time.perf_counter()
        holdout_metrics, scoring_s = _holdout_metrics(trained)
        mlflow.log_metrics(holdout_metrics)
        t_export = time.perf_counter()
        threshold = trained["threshold"]
        onnx_bytes = export_onnx(pipeline, job.specs, task=job.task, threshold=threshold)
        t_parity = time.perf_counter()
        report = check_parity(
            pipeline,
            onnx_bytes,
            trained["holdout"],
            job.specs,
            task=job.task,
            threshold=threshold,
        )
        t_publish = time.perf_counter()
        mlflow.log_metrics({"parity_max_abs_diff": report.max_abs_diff, "parity_rows": report.rows})
        info = mlflow.onnx.log_model(
            onnx.load_from_string(onnx_bytes), name="onnx", registered_model_name=MODEL_NAME
        )
        client = mlflow.MlflowClient()
        version = str(info.registered_model_version)
        sha = hashlib.sha256(onnx_bytes).hexdigest()
        client.set_model_version_tag(MODEL_NAME, version, "onnx_sha256", sha)
        client.set_registered_model_alias(MODEL_NAME, "challenger", version)
    return {
        "eval": t_eval,
        "scoring": scoring_s,
        "export": t_export,
        "parity": t_parity,
        "publish": t_publish,
    }
