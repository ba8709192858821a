"""Feature specs, frame preparation, the ratio transformer and pipeline building."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from flywheel.errors import DataError, TrainingError
from flywheel.training.features import (
    CLASSIFICATION_FAMILIES,
    REGRESSION_FAMILIES,
    FeatureSpec,
    RatioFeature,
    RatioFeatures,
    build_pipeline,
    infer_feature_specs,
    prepare_frame,
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3],
            "tenure": pd.array([12, None, 0], dtype="Int64"),
            "charges": [10.5, np.nan, 3.25],
            "paperless": [True, False, True],
            "plan": ["pro", None, "basic"],
            "region": pd.Categorical(["n", "s", None]),
            "notes": pd.Series(["a", np.nan, "c"], dtype=object),
            "signup": pd.to_datetime(["2024-01-01", "2024-02-01", "2024-03-01"]),
            "churn": [0, 1, 0],
        }
    )


def test_infer_feature_specs_kinds_order_and_exclusions() -> None:
    specs = infer_feature_specs(_frame(), target="churn", drop=["id"])
    assert specs == [
        FeatureSpec("tenure", "numeric"),
        FeatureSpec("charges", "numeric"),
        FeatureSpec("paperless", "numeric"),
        FeatureSpec("plan", "categorical"),
        FeatureSpec("region", "categorical"),
        FeatureSpec("notes", "categorical"),
    ]


def test_infer_feature_specs_missing_target_is_data_error() -> None:
    with pytest.raises(DataError, match="'label'"):
        infer_feature_specs(_frame(), target="label", drop=[])


def test_prepare_frame_casts_and_fills() -> None:
    specs = infer_feature_specs(_frame(), target="churn", drop=["id"])
    frame = prepare_frame(_frame()[["churn", *reversed([s.name for s in specs])]], specs)
    assert list(frame.columns) == [s.name for s in specs]
    assert frame["tenure"].dtype == np.float32
    assert np.isnan(frame["tenure"].iloc[1]) and np.isnan(frame["charges"].iloc[1])
    assert frame["paperless"].tolist() == [1.0, 0.0, 1.0]
    for name in ("plan", "region", "notes"):
        assert frame[name].dtype == object
        assert all(type(v) is str for v in frame[name])
    assert frame["plan"].tolist() == ["pro", "", "basic"]
    assert frame["region"].tolist() == ["n", "s", ""]


def test_prepare_frame_missing_columns_named() -> None:
    specs = [FeatureSpec("tenure", "numeric"), FeatureSpec("nope", "categorical")]
    with pytest.raises(DataError, match="nope") as info:
        prepare_frame(_frame(), specs)
    assert info.value.details["missing"] == ["nope"]


def test_prepare_frame_non_numeric_value_is_data_error() -> None:
    df = pd.DataFrame({"x": ["1.5", "abc"]})
    with pytest.raises(DataError, match="'x'"):
        prepare_frame(df, [FeatureSpec("x", "numeric")])


def test_ratio_features_values_and_contract() -> None:
    frame = pd.DataFrame(
        {"tickets": [6.0, 3.0, np.nan, 4.0], "tenure": [3.0, 0.0, 2.0, np.nan]},
        dtype=np.float32,
    )
    unfitted = RatioFeatures((RatioFeature("per_month", "tickets", "tenure"),))
    fitted = unfitted.fit(frame)
    assert fitted is unfitted and fitted.pairs_ == [(0, 1)]
    out = fitted.transform(frame)
    assert out.dtype == np.float32 and out.shape == (4, 1)
    np.testing.assert_array_equal(out[:2, 0], [2.0, 3.0])  # max(0, 1) == 1
    assert np.isnan(out[2:, 0]).all()  # NaN on either side stays NaN
    assert list(fitted.get_feature_names_out()) == ["per_month"]
    assert not hasattr(clone(unfitted), "pairs_")


def test_ratio_on_categorical_is_training_error() -> None:
    specs = [FeatureSpec("a", "numeric"), FeatureSpec("b", "categorical")]
    with pytest.raises(TrainingError, match="'b'"):
        build_pipeline(
            specs,
            task="regression",
            family="linear",
            hyperparams={},
            ratios=[RatioFeature("r", "a", "b")],
            seed=0,
        )


@pytest.mark.parametrize(
    ("task", "family"),
    [("classification", "linear"), ("regression", "logreg"), ("classification", "catboost")],
)
def test_bad_family_lists_valid_names(task: str, family: str) -> None:
    valid = CLASSIFICATION_FAMILIES if task == "classification" else REGRESSION_FAMILIES
    with pytest.raises(TrainingError) as info:
        build_pipeline(
            [FeatureSpec("a", "numeric")],
            task=task,  # type: ignore[arg-type]
            family=family,
            hyperparams={},
            ratios=[],
            seed=0,
        )
    assert family in info.value.message
    assert all(name in info.value.message for name in valid)


def test_unknown_hyperparameter_named_with_estimator() -> None:
    with pytest.raises(TrainingError, match=r"n_treez.*RandomForestClassifier"):
        build_pipeline(
            [FeatureSpec("a", "numeric")],
            task="classification",
            family="random_forest",
            hyperparams={"n_treez": 3},
            ratios=[],
            seed=0,
        )


def test_pipeline_shape_scaler_only_for_linear_models() -> None:
    specs = [FeatureSpec("a", "numeric"), FeatureSpec("c", "categorical")]
    for family in CLASSIFICATION_FAMILIES:
        pipe = build_pipeline(
            specs,
            task="classification",
            family=family,
            hyperparams={},
            ratios=[],
            seed=7,
        )
        assert [n for n, _ in pipe.steps] == ["features", "model"]
        numeric = pipe.named_steps["features"].transformers[0][1]
        assert ("scale" in numeric.named_steps) == (family == "logreg")
        params = pipe.named_steps["model"].get_params()
        assert params.get("random_state") == 7
        assert params.get("n_jobs") in (None, 1)


def test_hyperparams_are_applied() -> None:
    pipe = build_pipeline(
        [FeatureSpec("a", "numeric")],
        task="regression",
        family="lightgbm",
        hyperparams={"n_estimators": 5, "num_leaves": 4},
        ratios=[],
        seed=0,
    )
    assert pipe.named_steps["model"].get_params()["num_leaves"] == 4


def test_features_are_float32_and_unknown_category_encodes_to_zeros() -> None:
    df = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "c": ["x", None, "y", "x"]})
    specs = infer_feature_specs(df.assign(t=[0, 1, 0, 1]), target="t", drop=[])
    pipe = build_pipeline(
        specs, task="classification", family="hist_gb", hyperparams={}, ratios=[], seed=0
    )
    features = pipe.named_steps["features"].fit(prepare_frame(df, specs))
    out = features.transform(prepare_frame(pd.DataFrame({"a": [np.nan], "c": ["zzz"]}), specs))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[3.0, 0.0, 0.0, 0.0]])  # median 3; "", x, y all 0
