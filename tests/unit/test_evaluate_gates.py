"""Metrics, slices, evaluation of a run (with a champion), and the quality gates."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from flywheel.config import GateSettings, Settings, load_settings
from flywheel.data.snapshots import ingest
from flywheel.errors import ConfigError
from flywheel.tracking import TAG
from flywheel.training.evaluate import ChampionModel, Evaluation, evaluate, score_slices
from flywheel.training.features import prepare_frame
from flywheel.training.gates import GateReport, check_gates, record_gates
from flywheel.training.metrics import higher_is_better, score
from flywheel.training.params import TrainParams
from flywheel.training.train import TrainResult, load_pipeline, train
from flywheel.workspace import Workspace

# ---------------------------------------------------------------- metrics


def test_binary_metrics_of_a_perfect_and_a_useless_model() -> None:
    y = np.array([0, 0, 1, 1])
    perfect = score("classification", y, y, np.array([[1, 0], [0.9, 0.1], [0.2, 0.8], [0, 1.0]]))
    assert perfect["roc_auc"] == 1.0 and perfect["accuracy"] == 1.0 and perfect["f1"] == 1.0
    assert perfect["brier"] == pytest.approx((0.01 + 0.04) / 4)
    flat = score("classification", y, np.zeros(4, int), np.full((4, 2), 0.5))
    assert flat["roc_auc"] == 0.5 and flat["f1"] == 0.0
    assert flat["log_loss"] == pytest.approx(np.log(2))


def test_multiclass_uses_macro_variants() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    proba = np.eye(3)[y] * 0.7 + 0.1
    m = score("classification", y, y, proba, n_classes=3)
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0 and m["f1"] == 1.0
    assert m["brier"] == pytest.approx(0.2**2 + 0.1**2 + 0.1**2)


def test_undefined_metrics_are_left_out() -> None:
    y = np.array([1, 1, 1])
    m = score("classification", y, y, np.array([[0.2, 0.8]] * 3))
    assert "roc_auc" not in m and "pr_auc" in m and m["accuracy"] == 1.0
    assert set(score("classification", y, y, None)) == {"f1", "precision", "recall", "accuracy"}


def test_regression_metrics() -> None:
    y, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0])
    m = score("regression", y, pred)
    assert m["rmse"] == pytest.approx(1.0) and m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 4 / 5)


def test_directions() -> None:
    assert higher_is_better("roc_auc") and higher_is_better("r2")
    assert not higher_is_better("rmse") and not higher_is_better("brier")
    with pytest.raises(ValueError, match=r"unknown metric 'auc'"):
        higher_is_better("auc")


# ---------------------------------------------------------------- slices


def test_slices_skip_small_and_single_class_values() -> None:
    rng = np.random.default_rng(1)
    column = pd.Series(["a"] * 100 + ["b"] * 60 + ["c"] * 10 + [None] * 40)
    y = np.r_[rng.integers(0, 2, 100), np.ones(60, int), rng.integers(0, 2, 50)]
    proba1 = np.clip(y * 0.6 + rng.random(210) * 0.4, 0, 1)
    proba = np.c_[1 - proba1, proba1]
    done, skipped = score_slices("classification", column, y, (proba1 > 0.5).astype(int), proba)
    assert set(done) == {"a", "<missing>"}
    assert done["a"]["rows"] == 100.0 and "roc_auc" in done["a"]
    assert skipped == {"b": "60 rows of a single class", "c": "10 rows, fewer than 30"}


# ---------------------------------------------------------------- gates (pure)


def _evaluation(**overrides: object) -> Evaluation:
    base: dict = {
        "run_id": "r1",
        "task": "classification",
        "primary_metric": "roc_auc",
        "metrics": {"roc_auc": 0.612, "log_loss": 0.52, "accuracy": 0.8},
        "slice_gaps": {"region": {"roc_auc": 0.30}, "contract_type": {"roc_auc": 0.05}},
    }
    base.update(overrides)
    return Evaluation(**base)


def test_floor_failure_says_by_how_much() -> None:
    report = check_gates(
        GateSettings(min_metrics={"roc_auc": 0.7}, max_slice_gap={}), _evaluation()
    )
    assert not report.passed
    (failure,) = report.failures
    assert failure.detail == "holdout roc_auc 0.612 is below the minimum 0.700 by 0.088"
    assert (failure.gate, failure.value, failure.threshold) == ("min_metric", 0.612, 0.7)


def test_metrics_of_another_task_are_not_applicable() -> None:
    gates = GateSettings(
        min_metrics={"roc_auc": 0.5, "r2": 0.9},
        max_metrics={"rmse": 1.0, "log_loss": 0.6},
        max_slice_gap={},
    )
    report = check_gates(gates, _evaluation())
    assert report.passed
    assert [(r.gate, r.metric) for r in report.results] == [
        ("min_metric", "roc_auc"),
        ("max_metric", "log_loss"),
    ]


def test_ceiling_and_slice_gap() -> None:
    gates = GateSettings(
        min_metrics={}, max_metrics={"log_loss": 0.5}, max_slice_gap={"roc_auc": 0.25}
    )
    report = check_gates(gates, _evaluation())
    details = [f.detail for f in report.failures]
    assert details == [
        "holdout log_loss 0.520 is above the maximum 0.500 by 0.020",
        "roc_auc gap between region slices 0.300 exceeds the maximum 0.250 by 0.050",
    ]
    assert len(report.results) == 3  # contract_type's gap passed


def test_gates_on_threshold_metrics() -> None:
    ev = _evaluation(
        metrics={"roc_auc": 0.8, "f1": 0.28, "precision": 0.22, "recall": 0.39}, slice_gaps={}
    )
    gates = GateSettings(min_metrics={"f1": 0.25, "precision": 0.3, "recall": 0.35})
    report = check_gates(gates, ev)
    assert [(r.metric, r.passed) for r in report.results] == [
        ("f1", True),
        ("precision", False),
        ("recall", True),
    ]
    assert (
        report.failures[0].detail == "holdout precision 0.220 is below the minimum 0.300 by 0.080"
    )


@pytest.mark.parametrize("key", ["min_metrics", "max_metrics", "max_slice_gap"])
def test_gate_on_an_unknown_metric_is_a_config_error(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"gates.{key} names unknown metric\(s\) \['recal'\]"):
        load_settings(gates={key: {"recal": 0.5}})


@pytest.mark.parametrize(
    ("task", "metric", "value", "champion", "passed"),
    [
        ("classification", "roc_auc", 0.80, 0.805, True),  # worse, within the margin
        ("classification", "roc_auc", 0.80, 0.85, False),
        ("classification", "roc_auc", 0.90, 0.85, True),
        ("regression", "rmse", 10.0, 10.005, True),
        ("regression", "rmse", 10.5, 10.0, False),  # lower is better
        ("regression", "rmse", 9.0, 10.0, True),
    ],
)
def test_vs_champion_is_direction_aware(
    task: str, metric: str, value: float, champion: float, passed: bool
) -> None:
    ev = _evaluation(
        task=task,
        primary_metric=metric,
        metrics={metric: value},
        slice_gaps={},
        champion_version="3",
        champion_metrics={metric: champion},
    )
    report = check_gates(GateSettings(min_metrics={}, max_slice_gap={}, champion_margin=0.01), ev)
    (result,) = report.results
    assert result.gate == "vs_champion" and result.passed is passed
    if not passed:
        assert f"champion 3's {champion:.3f} by {abs(value - champion):.3f}" in result.detail


def test_a_champion_that_cannot_score_fails_its_gate() -> None:
    ev = _evaluation(slice_gaps={}, champion_version="2", champion_error="DataError: no column x")
    report = check_gates(GateSettings(min_metrics={}, max_slice_gap={}), ev)
    assert not report.passed
    assert "champion 2 could not score the holdout" in report.failures[0].detail
    assert json.loads(json.dumps(report.to_dict()))["results"][0]["value"] is None


def test_summary_and_dict() -> None:
    report = check_gates(GateSettings(), _evaluation())
    text = report.summary()
    assert text.startswith("gates FAILED (2 failed): 3 checked")
    assert text.index("[FAIL]") < text.index("[ok]")
    data = report.to_dict()
    assert data["passed"] is False and len(data["results"]) == 3
    assert GateReport(passed=True, results=[]).summary() == "gates passed: 0 checked"


# ---------------------------------------------------------------- evaluate a real run


def _churn(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "tenure_months": rng.integers(0, 60, n),
            "tickets_90d": rng.poisson(2, n),
            "contract_type": rng.choice(["monthly", "annual"], n),
            "region": rng.choice(["north", "south", "east"], n),
        }
    )
    logit = 0.6 * df.tickets_90d - 0.07 * df.tenure_months + (df.contract_type == "monthly")
    df["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df


def _snapshot(settings: Settings, df: pd.DataFrame, target: str) -> str:
    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home.parent / f"{target}.csv"
    df.to_csv(path, index=False)
    return ingest(settings, file=path, target=target, dataset="t").manifest.id


PARAMS = TrainParams(
    hyperparams={"max_iter": 25, "max_leaf_nodes": 8}, cv_folds=2, drop_columns=["customer_id"]
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, str, TrainResult]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLYWHEEL_CONFIG", "/dev/null")
        settings = load_settings(home=tmp_path_factory.mktemp("eval") / "fw")
        snapshot_id = _snapshot(settings, _churn(1500), "y")
        with Workspace(settings) as ws:
            yield ws, snapshot_id, train(ws, snapshot_id, PARAMS)


@pytest.mark.slow
def test_evaluate_scores_the_holdout_and_records_it(
    run: tuple[Workspace, str, TrainResult],
) -> None:
    import mlflow

    ws, _, result = run
    pipeline = load_pipeline(ws, result.run_id)

    def same_model(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        proba = pipeline.predict_proba(prepare_frame(frame, result.feature_specs))
        return proba.argmax(axis=1), proba

    assert result.threshold is not None
    threshold = result.threshold.value
    champion = ChampionModel("7", same_model, threshold=threshold)
    ev = evaluate(ws, result.run_id, champion=champion)
    assert ev.primary_metric == "roc_auc" and ev.rows == 300
    assert set(ev.metrics) == {
        "roc_auc",
        "pr_auc",
        "f1",
        "precision",
        "recall",
        "accuracy",
        "log_loss",
        "brier",
    }
    assert ev.metrics["roc_auc"] > 0.65
    # same model, same holdout, same threshold: the same numbers
    assert ev.champion_metrics == pytest.approx(ev.metrics)
    assert ev.threshold == ev.champion_threshold == threshold
    assert set(ev.slices) == {"contract_type", "region"}
    assert set(ev.slices["region"]) == {"north", "south", "east"}
    assert ev.slice_gaps["region"]["roc_auc"] == pytest.approx(
        max(s["roc_auc"] for s in ev.slices["region"].values())
        - min(s["roc_auc"] for s in ev.slices["region"].values())
    )
    assert set(ev.plots) == {
        "plots/roc.png",
        "plots/calibration.png",
        "plots/confusion_matrix.png",
        "plots/importance.png",
    }

    client = ws.client
    logged = client.get_run(result.run_id).data.metrics
    assert logged["holdout_roc_auc"] == pytest.approx(ev.metrics["roc_auc"])
    assert logged["champion_roc_auc"] == pytest.approx(ev.metrics["roc_auc"])
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert artifacts == set(ev.plots)
    uri = client.get_run(result.run_id).info.artifact_uri
    stored = mlflow.artifacts.load_dict(f"{uri}/evaluation.json")
    assert stored["slice_gaps"] == ev.slice_gaps

    report = check_gates(ws.settings.gates, ev)
    assert any(r.gate == "vs_champion" and r.passed for r in report.results)
    record_gates(ws, result.run_id, report)
    run_data = client.get_run(result.run_id).data
    assert run_data.tags[TAG["gates"]] == ("passed" if report.passed else "failed")
    assert mlflow.artifacts.load_dict(f"{uri}/gate_report.json") == report.to_dict()


@pytest.mark.slow
def test_a_fresh_result_is_evaluated_on_the_holdout_training_holds(
    run: tuple[Workspace, str, TrainResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after training, evaluation neither downloads the pipeline nor re-reads and
    re-splits the snapshot: it scores the holdout the TrainResult holds, which is exactly
    the holdout a run id re-derives."""
    from flywheel.training import evaluate as evaluation

    ws, _, result = run
    by_id = evaluate(ws, result.run_id)  # re-derived from the snapshot, pipeline downloaded
    assert result.holdout is not None and len(result.holdout) == by_id.rows == 300

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluation re-read what training holds")

    for name in ("load_holdout", "load_pipeline", "load_training_meta"):
        monkeypatch.setattr(evaluation, name, refuse)
    held = evaluate(ws, result)
    assert held.metrics == by_id.metrics and held.slices == by_id.slices
    assert held.rows == by_id.rows


@pytest.mark.slow
def test_a_worse_champion_and_a_broken_one(run: tuple[Workspace, str, TrainResult]) -> None:
    ws, _, result = run
    rng = np.random.default_rng(0)

    def coin(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        p = rng.random(len(frame))
        return (p > 0.5).astype(int), np.c_[1 - p, p]

    better = check_gates(
        ws.settings.gates, evaluate(ws, result.run_id, champion=ChampionModel("1", coin))
    )
    (vs,) = [r for r in better.results if r.gate == "vs_champion"]
    assert vs.passed

    def broken(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        raise KeyError("tenure")

    ev = evaluate(ws, result.run_id, champion=ChampionModel("2", broken))
    assert ev.champion_metrics is None and "KeyError" in (ev.champion_error or "")
    assert not check_gates(ws.settings.gates, ev).passed


@pytest.mark.slow
def test_same_snapshot_params_and_seed_reproduce_the_holdout_metrics(
    run: tuple[Workspace, str, TrainResult],
) -> None:
    ws, snapshot_id, first = run
    second = train(ws, snapshot_id, PARAMS)
    assert second.run_id != first.run_id
    assert second.cv_metrics == first.cv_metrics
    assert evaluate(ws, second.run_id).metrics == evaluate(ws, first.run_id).metrics


@pytest.mark.slow
def test_evaluate_a_regression_run(ws: Workspace) -> None:
    df = _churn(600).drop(columns=["y"])
    df["spend"] = (
        df.tenure_months * 2.5 + df.tickets_90d * 4 + np.random.default_rng(3).normal(0, 5, len(df))
    )
    snapshot_id = _snapshot(ws.settings, df, "spend")
    result = train(ws, snapshot_id, PARAMS.model_copy(update={"cv_folds": 0}))
    ev = evaluate(ws, result.run_id)
    assert ev.task == "regression" and ev.primary_metric == "rmse"
    assert set(ev.metrics) == {"rmse", "mae", "r2"} and ev.metrics["r2"] > 0.5
    assert set(ev.plots) == {
        "plots/predicted_vs_actual.png",
        "plots/residuals.png",
        "plots/importance.png",
    }
    report = check_gates(ws.settings.gates, ev)  # default gates: r2 >= 0.10, no roc_auc gate
    assert [r.metric for r in report.results if r.gate == "min_metric"] == ["r2"]


@pytest.mark.slow
def test_champion_is_compared_only_on_rows_it_did_not_train_on(tmp_path: object) -> None:
    """A challenger trained on a newer snapshot has a holdout that overlaps the champion's
    training rows; scoring the champion there flatters it (seen in the churn loop: 0.90 vs
    0.74). Both are compared on the holdout rows the champion never saw."""
    from flywheel.training.train import training_keys

    settings = load_settings(home=tmp_path / "fw")  # type: ignore[operator]
    ws = Workspace(settings)
    first = _churn(1500)
    a = train(ws, _snapshot(ws.settings, first, "y"), PARAMS)
    newer = pd.concat([first, _churn(1000, seed=1).assign(customer_id=np.arange(1500, 2500))])
    b = train(ws, _snapshot(ws.settings, newer, "y"), PARAMS)
    pipeline = load_pipeline(ws, a.run_id)

    def champion_predict(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        proba = pipeline.predict_proba(prepare_frame(frame, a.feature_specs))
        return proba.argmax(axis=1), proba

    ev = evaluate(ws, b.run_id, champion=ChampionModel("1", champion_predict, run_id=a.run_id))
    seen_by_a = set(training_keys(ws, a.run_id)["customer_id"].astype(str))  # type: ignore[index]
    from flywheel.training.train import load_holdout

    holdout_ids = load_holdout(ws, b.run_id)[0]["customer_id"].astype(str)
    expected_seen = int(holdout_ids.isin(seen_by_a).sum())
    assert expected_seen > 0
    assert ev.champion_seen_rows == expected_seen
    assert ev.comparison_rows == ev.rows - expected_seen
    assert ev.comparison_metrics is not None and ev.comparison_metrics != ev.metrics
    gate = next(r for r in check_gates(ws.settings.gates, ev).results if r.gate == "vs_champion")
    assert f"on the {ev.comparison_rows} holdout rows the champion did not train on" in gate.detail
    assert gate.value == pytest.approx(ev.comparison_metrics["roc_auc"])


@pytest.mark.slow
def test_labels_are_made_at_each_models_own_threshold(tmp_path: object) -> None:
    """The run's holdout label metrics are at its threshold; the champion's at its own."""
    from sklearn import metrics as skm

    from flywheel.training.params import ThresholdParams
    from flywheel.training.train import encode_target, load_holdout

    settings = load_settings(home=tmp_path / "fw")  # type: ignore[operator]
    ws = Workspace(settings)
    fixed = ThresholdParams(objective="fixed", value=0.25)
    result = train(
        ws,
        _snapshot(ws.settings, _churn(1500), "y"),
        PARAMS.model_copy(update={"threshold": fixed}),
    )
    assert result.pipeline is not None
    pipeline = result.pipeline
    X_raw, y_raw = load_holdout(ws, result.run_id)
    y = encode_target(y_raw, "classification", [0, 1])
    p = pipeline.predict_proba(prepare_frame(X_raw, result.feature_specs))[:, 1]

    def same_model(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        proba = pipeline.predict_proba(prepare_frame(frame, result.feature_specs))
        return proba.argmax(axis=1), proba

    ev = evaluate(ws, result, champion=ChampionModel("1", same_model, threshold=0.7))
    at = {t: skm.f1_score(y, (p >= t).astype(int)) for t in (float(np.float32(0.25)), 0.5, 0.7)}
    assert len({round(v, 6) for v in at.values()}) == 3  # the thresholds matter on this data
    assert ev.threshold == float(np.float32(0.25))
    assert ev.metrics["f1"] == pytest.approx(at[float(np.float32(0.25))])
    assert ev.metrics["recall"] == pytest.approx(skm.recall_score(y, (p >= 0.25).astype(int)))
    assert ev.champion_threshold == 0.7
    assert ev.champion_metrics is not None
    assert ev.champion_metrics["f1"] == pytest.approx(at[0.7])  # not its argmax labels (0.5)
    assert ev.champion_metrics["roc_auc"] == pytest.approx(ev.metrics["roc_auc"])


@pytest.mark.slow
def test_multiclass_champion_with_float32_probabilities_does_not_warn(tmp_path: object) -> None:
    """A champion scores through ONNX Runtime, whose float32 probabilities cast to float64
    sum to one only within ~1e-7; scikit-learn's log_loss then warns "y_prob values do not
    sum to one" (a UserWarning, which the pytest config lets through, so it is caught here
    explicitly). Evaluation renormalises them and must not warn."""
    import warnings

    from sklearn.metrics import log_loss

    from flywheel.registry.onnx_export import export_onnx, make_session, onnx_predict
    from flywheel.training.train import load_holdout

    settings = load_settings(home=tmp_path / "fw")  # type: ignore[operator]
    ws = Workspace(settings)
    df = _churn(900)
    df["plan"] = np.digitize(df.tickets_90d + df.tenure_months / 20, [2.5, 4.5])  # 3 classes
    result = train(ws, _snapshot(ws.settings, df.drop(columns=["y"]), "plan"), PARAMS)
    assert result.classes == [0, 1, 2] and result.threshold is None  # multiclass: argmax
    assert result.pipeline is not None
    session = make_session(
        export_onnx(result.pipeline, result.feature_specs, task="classification")
    )

    def onnx_champion(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        return onnx_predict(session, frame, result.feature_specs, task="classification")

    X_raw, y_raw = load_holdout(ws, result.run_id)
    _, proba = onnx_champion(X_raw)
    assert proba is not None and proba.dtype == np.float32
    with pytest.warns(UserWarning, match="do not sum to one"):  # the precondition
        log_loss(y_raw, proba.astype("float64"), labels=[0, 1, 2])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = evaluate(ws, result, champion=ChampionModel("1", onnx_champion))
    sums = [str(w.message) for w in caught if "do not sum to one" in str(w.message)]
    assert sums == []
    assert ev.champion_error is None and ev.champion_metrics is not None
    assert ev.champion_metrics["log_loss"] == pytest.approx(ev.metrics["log_loss"], abs=1e-5)
