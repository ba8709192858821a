"""train(): target/task resolution, the deterministic stratified holdout, CV, search, MLflow run."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import FunctionTransformer

from flywheel import __version__
from flywheel.config import Settings, load_settings
from flywheel.data.snapshots import ingest
from flywheel.errors import ContractViolation, NotFound, TrainingError
from flywheel.tracking import TAG
from flywheel.training.features import FeatureSpec, RatioFeature, prepare_frame
from flywheel.training.params import SearchParams, ThresholdParams, TrainParams
from flywheel.training.train import (
    TrainResult,
    infer_task,
    load_holdout,
    load_pipeline,
    load_training_meta,
    train,
    trusted_types,
)
from flywheel.workspace import Workspace


def churn_frame(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """A small churn-like table with a learnable, imbalanced binary target ``y``."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "tenure_months": rng.integers(0, 60, n),
            "tickets_90d": rng.poisson(2, n),
            "monthly_fee": rng.normal(50, 10, n).round(2),
            "contract_type": rng.choice(["monthly", "annual", "two_year"], n),
            "region": rng.choice(["north", "south", "east", "west"], n),
        }
    )
    logit = 0.5 * df.tickets_90d - 0.06 * df.tenure_months + (df.contract_type == "monthly") - 0.5
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df


def make_snapshot(settings: Settings, df: pd.DataFrame, target: str = "y") -> str:
    path = settings.home.parent / f"data-{len(df)}-{target}.csv"
    settings.home.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return ingest(settings, file=path, target=target, dataset="t").manifest.id


SMALL = {"max_iter": 25, "max_leaf_nodes": 8}
PARAMS = TrainParams(
    hyperparams=SMALL,
    cv_folds=2,
    drop_columns=["customer_id"],
    ratios=[RatioFeature("tickets_per_month", "tickets_90d", "tenure_months")],
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, TrainResult]]:
    """One classification run shared by the tests that only read it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLYWHEEL_CONFIG", "/dev/null")
        settings = load_settings(home=tmp_path_factory.mktemp("train") / "fw")
        snapshot_id = make_snapshot(settings, churn_frame())
        with Workspace(settings) as ws:
            yield ws, train(ws, snapshot_id, PARAMS)


# ---------------------------------------------------------------- fast: pure functions


@pytest.mark.parametrize(
    ("values", "task"),
    [
        ([0, 1, 1, 0], "classification"),
        ([True, False, True], "classification"),
        (["a", "b", "a"], "classification"),
        ([1.0, 2.0, 3.0, None], "classification"),  # integral floats, few values
        (list(range(11)), "regression"),  # 11 distinct integers
        ([0.5, 1.5, 2.0], "regression"),
    ],
)
def test_infer_task(values: list, task: str) -> None:
    assert infer_task(pd.Series(values)) == task


def test_trusted_types_refuses_foreign_types() -> None:
    import skops.io

    data = skops.io.dumps(FunctionTransformer(func=operator.neg))
    with pytest.raises(TrainingError, match=r"_operator.neg"):
        trusted_types(data)


# ---------------------------------------------------------------- errors before any fitting


def test_unknown_snapshot_is_not_found(ws: Workspace) -> None:
    with pytest.raises(NotFound):
        train(ws, "snap-0000000000000000", PARAMS)


def test_target_must_exist(ws: Workspace) -> None:
    snapshot_id = make_snapshot(ws.settings, churn_frame(200))
    with pytest.raises(TrainingError, match=r"Target column 'nope' is not in snapshot"):
        train(ws, snapshot_id, PARAMS.model_copy(update={"target": "nope"}))


def test_family_must_fit_the_inferred_task(ws: Workspace) -> None:
    df = churn_frame(200).assign(spend=lambda d: d.monthly_fee * 3.7)
    snapshot_id = make_snapshot(ws.settings, df, target="spend")
    with pytest.raises(TrainingError, match=r"'logreg' cannot do regression"):
        train(ws, snapshot_id, PARAMS.model_copy(update={"family": "logreg"}))


def test_drop_columns_must_exist(ws: Workspace) -> None:
    snapshot_id = make_snapshot(ws.settings, churn_frame(200))
    with pytest.raises(TrainingError, match=r"drop_columns .* \['ghost'\]"):
        train(ws, snapshot_id, PARAMS.model_copy(update={"drop_columns": ["ghost"]}))


def test_search_without_space_is_refused(ws: Workspace) -> None:
    snapshot_id = make_snapshot(ws.settings, churn_frame(200))
    with pytest.raises(TrainingError, match=r"search.space is empty"):
        train(ws, snapshot_id, PARAMS, trials=2)


def test_snapshot_must_pass_the_current_contract(ws: Workspace) -> None:
    snapshot_id = make_snapshot(ws.settings, churn_frame(200))
    contract = ws.settings.contracts_dir / "t.yaml"
    contract.write_text(contract.read_text().replace("tenure_months:", "tenure_months_x:"))
    with pytest.raises(ContractViolation):
        train(ws, snapshot_id, PARAMS)


# ---------------------------------------------------------------- one shared run


@pytest.mark.slow
def test_result_describes_the_run(trained: tuple[Workspace, TrainResult]) -> None:
    _, result = trained
    assert (result.task, result.target, result.family) == ("classification", "y", "hist_gb")
    assert result.classes == [0, 1]
    names = [s.name for s in result.feature_specs]
    assert "customer_id" not in names and "y" not in names
    assert FeatureSpec("contract_type", "categorical") in result.feature_specs
    assert result.hyperparams == SMALL
    assert 0.6 < result.cv_metrics["roc_auc_cv_mean"] <= 1.0
    assert {"roc_auc_cv_std", "log_loss_cv_mean", "accuracy_cv_mean"} <= set(result.cv_metrics)
    assert set(result.timings) == {"load", "search", "cv", "threshold", "fit", "tracking"}
    assert result.best_trial is None and result.model_uri.startswith("models:/")


@pytest.mark.slow
def test_run_holds_params_tags_and_artifacts(trained: tuple[Workspace, TrainResult]) -> None:
    import mlflow

    ws, result = trained
    run = ws.client.get_run(result.run_id)
    tags, params = run.data.tags, run.data.params
    assert tags[TAG["snapshot_id"]] == result.snapshot_id
    assert len(tags[TAG["snapshot_sha256"]]) == 64
    assert tags[TAG["dataset"]] == "t" and tags[TAG["task"]] == "classification"
    assert tags[TAG["contract_version"]] and tags[TAG["package_version"]] == __version__
    assert params["family"] == "hist_gb" and params["max_iter"] == "25"
    assert params["seed"] == str(ws.settings.seed) and params["cv_folds"] == "2"
    assert "roc_auc_cv_mean" in run.data.metrics and "fit_time_s" in run.data.metrics
    artifacts = {a.path for a in ws.client.list_artifacts(result.run_id)}
    assert {"params.yaml", "feature_specs.json", "training.json"} <= artifacts
    specs = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/feature_specs.json")
    assert {"name": "region", "kind": "categorical"} in specs


@pytest.mark.slow
def test_holdout_is_stratified_and_rederived(trained: tuple[Workspace, TrainResult]) -> None:
    ws, result = trained
    X, y = load_holdout(ws, result.run_id)
    full = churn_frame()
    assert len(X) == 240 and "y" not in X.columns and "region" in X.columns
    assert abs(y.mean() - full.y.mean()) < 0.01  # stratified: same churn rate
    X2, y2 = load_holdout(ws, result.run_id)
    pd.testing.assert_frame_equal(X, X2)
    pd.testing.assert_series_equal(y, y2)
    meta = load_training_meta(ws, result.run_id)
    assert meta.test_size == 0.2 and meta.seed == ws.settings.seed


@pytest.mark.slow
def test_logged_pipeline_loads_and_predicts(trained: tuple[Workspace, TrainResult]) -> None:
    import mlflow.pyfunc
    import mlflow.sklearn

    ws, result = trained
    pipeline = load_pipeline(ws, result.run_id)
    X, _ = load_holdout(ws, result.run_id)
    frame = prepare_frame(X, result.feature_specs)
    proba = pipeline.predict_proba(frame)
    assert proba.shape == (len(X), 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    # flywheel writes the sklearn flavor from its own single skops dump: MLflow's loaders
    # read it, and every copy predicts exactly what the in-memory pipeline does
    assert result.pipeline is not None
    expected = result.pipeline.predict_proba(frame)
    assert np.array_equal(proba, expected)
    with ws.tracking():  # MLflow's own loaders resolve models:/ URIs with the global URI
        sklearn_copy = mlflow.sklearn.load_model(result.model_uri)
        pyfunc = mlflow.pyfunc.load_model(result.model_uri)
        logged = mlflow.get_logged_model(result.model_uri.removeprefix("models:/"))
    assert np.array_equal(sklearn_copy.predict_proba(frame), expected)
    # the MLflow copy labels at the run's decision threshold, as the ONNX graph does
    assert result.threshold is not None
    at_threshold = (expected[:, 1] >= result.threshold.value).astype(int)
    assert np.array_equal(pyfunc.predict(frame), at_threshold)
    assert np.array_equal(sklearn_copy.predict(frame), at_threshold)
    assert pyfunc.metadata.get_input_schema().input_names() == [
        s.name for s in result.feature_specs
    ]
    assert pyfunc.metadata.saved_input_example_info["artifact_path"] == "input_example.json"
    assert logged.source_run_id == result.run_id
    assert {m.key for m in logged.metrics or []} >= {"roc_auc_cv_mean", "fit_time_s"}


@pytest.mark.slow
def test_search_runs_trials_and_keeps_the_best(ws: Workspace) -> None:
    snapshot_id = make_snapshot(ws.settings, churn_frame(600))
    space = {"max_leaf_nodes": {"type": "int", "low": 4, "high": 16}}
    params = PARAMS.model_copy(update={"search": SearchParams(trials=3, space=space)})
    seen: list[tuple[str, int, int]] = []
    result = train(ws, snapshot_id, params, progress=lambda *a: seen.append(a))
    assert result.best_trial is not None
    assert result.best_trial["trials_run"] == 3
    assert result.hyperparams["max_leaf_nodes"] == result.best_trial["params"]["max_leaf_nodes"]
    assert result.cv_metrics["roc_auc_cv_mean"] == pytest.approx(result.best_trial["value"])
    assert ("search", 3, 3) in seen
    assert result.timings["search"] > 0
    # the best trial's CV chose the threshold; it is the run's, not one of its CV metrics
    assert result.threshold is not None and result.threshold.source == "cv_out_of_fold"
    assert "decision_threshold" not in result.cv_metrics
    assert 0 < result.threshold.value < 1


@pytest.mark.slow
def test_regression_with_progress_and_no_cv(ws: Workspace) -> None:
    df = churn_frame(500).assign(spend=lambda d: d.monthly_fee * 3.7 + d.tickets_90d)
    snapshot_id = make_snapshot(ws.settings, df.drop(columns=["y"]), target="spend")
    params = PARAMS.model_copy(update={"cv_folds": 0})
    result = train(ws, snapshot_id, params)
    assert result.task == "regression" and result.classes is None
    assert result.cv_metrics == {}
    params = PARAMS.model_copy(update={"cv_folds": 3})
    seen: list[tuple[str, int, int]] = []
    result = train(ws, snapshot_id, params, progress=lambda *a: seen.append(a))
    assert seen == [("cv", 1, 3), ("cv", 2, 3), ("cv", 3, 3)]
    assert {"rmse_cv_mean", "r2_cv_mean", "mae_cv_std"} <= set(result.cv_metrics)


@pytest.mark.slow
def test_training_json_records_the_split(trained: tuple[Workspace, TrainResult]) -> None:
    import mlflow

    ws, result = trained
    run = ws.client.get_run(result.run_id)
    meta = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/training.json")
    assert meta["snapshot_id"] == result.snapshot_id and meta["classes"] == [0, 1]
    assert len(meta["holdout_sha256"]) == 16
    assert json.loads(json.dumps(meta)) == meta


@pytest.mark.slow
def test_missing_run_is_not_found(ws: Workspace) -> None:
    with pytest.raises(NotFound, match=r"run 'abc' does not exist"):
        load_holdout(ws, "abc")


# ---------------------------------------------------------------- threshold and class weight


@pytest.mark.slow
def test_threshold_is_chosen_on_out_of_fold_training_predictions(
    trained: tuple[Workspace, TrainResult],
) -> None:
    """Chosen on every training row's out-of-fold prediction (never the holdout), and
    recorded in training.json, threshold.json, the run's params, metrics and tags."""
    import mlflow

    ws, result = trained
    choice = result.threshold
    assert choice is not None and (choice.objective, choice.source) == ("f1", "cv_out_of_fold")
    run = ws.client.get_run(result.run_id)
    assert choice.rows == int(run.data.params["train_rows"]) == 960  # 1200 minus the holdout
    assert choice.value == float(np.float32(choice.value))
    assert run.data.metrics["decision_threshold"] == choice.value
    assert run.data.params["threshold_objective"] == "f1"
    assert run.data.params["threshold_source"] == "cv_out_of_fold"
    assert float(run.data.tags[TAG["threshold"]]) == choice.value
    assert load_training_meta(ws, result.run_id).threshold == choice.value
    stored = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/threshold.json")
    assert stored["value"] == choice.value and stored["validation"]["f1"] == choice.validation["f1"]
    # the CV label metrics are scored at the threshold: pooled out-of-fold F1 is what it maximised
    assert result.cv_metrics["f1_cv_mean"] == pytest.approx(choice.validation["f1"], abs=0.05)
    assert {"precision_cv_mean", "recall_cv_mean"} <= set(result.cv_metrics)


@pytest.mark.slow
def test_without_cv_the_threshold_comes_from_an_inner_split(ws: Workspace) -> None:
    snapshot_id = make_snapshot(ws.settings, churn_frame())
    result = train(ws, snapshot_id, PARAMS.model_copy(update={"cv_folds": 0}))
    assert result.cv_metrics == {}
    assert result.threshold is not None and result.threshold.source == "validation_split"
    assert result.threshold.rows == 192  # 20% (threshold.validation_size) of 960 rows
    assert result.timings["threshold"] > 0  # its own fit


@pytest.mark.slow
def test_fixed_threshold_and_balanced_class_weight(
    ws: Workspace, trained: tuple[Workspace, TrainResult]
) -> None:
    snapshot_id = make_snapshot(ws.settings, churn_frame())
    params = PARAMS.model_copy(
        update={
            "class_weight": "balanced",
            "threshold": ThresholdParams(objective="fixed", value=0.3),
        }
    )
    result = train(ws, snapshot_id, params)
    assert result.threshold is not None
    assert (result.threshold.value, result.threshold.source) == (float(np.float32(0.3)), "fixed")
    assert result.pipeline is not None and trained[1].pipeline is not None
    assert result.pipeline.steps[-1][1].class_weight == "balanced"
    # reweighting the rarer class raises its predicted probability on the same rows
    X, _ = load_holdout(ws, result.run_id)
    frame = prepare_frame(X, result.feature_specs)
    weighted = result.pipeline.predict_proba(frame)[:, 1].mean()
    plain = trained[1].pipeline.predict_proba(frame)[:, 1].mean()
    assert weighted > plain + 0.02


def test_threshold_and_class_weight_refuse_the_wrong_target(ws: Workspace) -> None:
    df = churn_frame(300)
    df["plan"] = np.random.default_rng(1).integers(0, 3, len(df))  # three classes
    multiclass = make_snapshot(ws.settings, df.drop(columns=["y"]), target="plan")
    with pytest.raises(TrainingError, match=r"threshold applies to binary classification only"):
        fixed = ThresholdParams(objective="fixed", value=0.3)
        train(ws, multiclass, PARAMS.model_copy(update={"threshold": fixed}))
    other = load_settings(home=ws.settings.home.parent / "fw2")  # another dataset contract
    spend = churn_frame(300).assign(spend=lambda d: d.monthly_fee * 3.7)
    regression = make_snapshot(other, spend.drop(columns=["y"]), target="spend")
    with pytest.raises(TrainingError, match=r"class_weight applies to classification"):
        train(Workspace(other), regression, PARAMS.model_copy(update={"class_weight": "balanced"}))


def test_a_training_window_trains_and_holds_out_on_the_newest_rows_only(tmp_path: Path) -> None:
    """``retrain.window``: the rows of the last N days before the snapshot's newest row, for
    training and for the holdout, re-derived the same way later (evaluation, the gates)."""
    from types import SimpleNamespace

    from flywheel.errors import DataError
    from flywheel.training.prepare import window_start

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLYWHEEL_CONFIG", "/dev/null")
        settings = load_settings(home=tmp_path / "fw")
    df = churn_frame(2000)
    df["observed_at"] = pd.Timestamp("2025-01-01") + pd.to_timedelta(
        np.arange(len(df)) % 200, unit="D"
    )  # 10 rows a day over 200 days
    snapshot_id = make_snapshot(settings, df)
    with Workspace(settings) as ws:
        result = train(ws, snapshot_id, PARAMS, window_s=50 * 86400.0)
        assert result.meta is not None and result.meta.since == "2025-05-30T00:00:00"
        # 51 days of 10 rows (the window's first day included); a fifth held out
        assert len(result.holdout) == round(510 * 0.2)
        assert (pd.to_datetime(result.holdout["observed_at"]) >= "2025-05-30").all()
        X, _ = load_holdout(ws, result.run_id)  # re-derived from the snapshot: the same rows
        assert len(X) == len(result.holdout)
        whole = train(ws, snapshot_id, PARAMS)
        assert len(whole.holdout) == 400 and whole.meta is not None and whole.meta.since is None
        assert whole.inputs_sha256 != result.inputs_sha256
    untimed = SimpleNamespace(id="snap-x", timestamp_column=None, time_range=None)
    with pytest.raises(DataError, match=r"retrain\.window"):
        window_start(untimed, 86400.0)  # type: ignore[arg-type]
