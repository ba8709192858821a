"""Every family × task: fit → ONNX → exact parity; graph conventions; parity can fail."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from flywheel.errors import DataError
from flywheel.registry.onnx_export import (
    ParityReport,
    check_parity,
    export_onnx,
    make_session,
    onnx_feeds,
    onnx_predict,
)
from flywheel.training.features import (
    CLASSIFICATION_FAMILIES,
    REGRESSION_FAMILIES,
    RatioFeature,
    Task,
    build_pipeline,
    infer_feature_specs,
    prepare_frame,
)

RATIOS = [RatioFeature("tickets_per_month", "tickets", "tenure")]
SMALL = {"random_forest": {"n_estimators": 15}, "lightgbm": {"n_estimators": 30},
         "xgboost": {"n_estimators": 30}, "hist_gb": {"max_iter": 30}}  # fmt: skip


def _world(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "tenure": pd.array(rng.integers(0, 72, n), dtype="Int64"),
            "charges": rng.normal(70, 30, n).round(2),
            "tickets": rng.poisson(2, n).astype(float),
            "plan": rng.choice(["basic", "pro", "team", None], n),
            "region": pd.Categorical(rng.choice(["n", "s", "e"], n)),
            "paperless": rng.random(n) < 0.5,
        }
    )
    df.loc[rng.random(n) < 0.1, "charges"] = np.nan
    df.loc[rng.random(n) < 0.1, "tenure"] = pd.NA
    score = 0.03 * df["charges"].fillna(70) - 0.05 * df["tenure"].astype(float).fillna(30)
    score += (df["plan"] == "pro") * 1.0 + df["tickets"] * 0.3
    df["churn"] = (rng.random(n) < 1 / (1 + np.exp(-score + 1))).astype(int)
    df["revenue"] = df["charges"].fillna(50) * 12 + rng.normal(0, 10, n)
    return df


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """HistGradientBoosting's OpenMP threads crawl on a shared 2-core machine."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    return _world()


def _unseen(df: pd.DataFrame) -> pd.DataFrame:
    """Scoring rows with unknown categories, missing values and the "" category."""
    out = df.copy()
    out.loc[:40, "plan"] = "enterprise"
    out.loc[40:80, "region"] = np.nan
    out.loc[80:120, "plan"] = ""
    out.loc[120:160, "tenure"] = pd.NA
    return out


def _fit(df: pd.DataFrame, task: Task, family: str) -> tuple[Any, list[Any]]:
    target = "churn" if task == "classification" else "revenue"
    other = "revenue" if task == "classification" else "churn"
    specs = infer_feature_specs(df, target=target, drop=[other])
    pipe = build_pipeline(
        specs,
        task=task,
        family=family,
        hyperparams=SMALL.get(family, {}),
        ratios=RATIOS,
        seed=3,
    )
    return pipe.fit(prepare_frame(df, specs), df[target]), specs


CASES = [("classification", f) for f in CLASSIFICATION_FAMILIES] + [
    ("regression", f) for f in REGRESSION_FAMILIES
]


@pytest.mark.parametrize(("task", "family"), CASES)
def test_export_is_exact(world: pd.DataFrame, task: Task, family: str) -> None:
    pipe, specs = _fit(world, task, family)
    onx = export_onnx(pipe, specs, task=task)
    report = check_parity(pipe, onx, _unseen(world), specs, task=task)
    assert report.rows == len(world)
    assert report.max_abs_diff <= 1e-4, report
    assert report.rows_over_tolerance == 0 and report.label_mismatches == 0
    assert report.passed


def test_graph_inputs_and_outputs_follow_specs(world: pd.DataFrame) -> None:
    pipe, specs = _fit(world, "classification", "hist_gb")
    graph = onnx.load_from_string(export_onnx(pipe, specs, task="classification")).graph
    want_type = {"numeric": onnx.TensorProto.FLOAT, "categorical": onnx.TensorProto.STRING}
    assert [i.name for i in graph.input] == [s.name for s in specs]
    for spec, inp in zip(specs, graph.input, strict=True):
        tensor = inp.type.tensor_type
        assert tensor.elem_type == want_type[spec.kind]
        assert [d.dim_value for d in tensor.shape.dim] == [0, 1]  # [None, 1]
        assert not tensor.shape.dim[0].HasField("dim_value")
    assert [o.name for o in graph.output] == ["label", "probabilities"]
    probabilities = graph.output[1].type.tensor_type.shape.dim
    assert probabilities[1].dim_value == 2
    assert "ZipMap" not in {node.op_type for node in graph.node}


def test_regression_graph_has_only_label(world: pd.DataFrame) -> None:
    pipe, specs = _fit(world, "regression", "linear")
    graph = onnx.load_from_string(export_onnx(pipe, specs, task="regression")).graph
    assert [o.name for o in graph.output] == ["label"]
    values, proba = onnx_predict(
        make_session(export_onnx(pipe, specs, task="regression")),
        world.head(5),
        specs,
        task="regression",
    )
    assert proba is None and values.shape == (5,)


@pytest.mark.parametrize("family", ["logreg", "xgboost", "lightgbm"])
def test_original_string_labels_come_back(world: pd.DataFrame, family: str) -> None:
    df = world.assign(churn=np.where(world["churn"] == 1, "left", "stayed"))
    pipe, specs = _fit(df, "classification", family)
    session = make_session(export_onnx(pipe, specs, task="classification"))
    labels, proba = onnx_predict(session, df, specs, task="classification")
    assert set(labels) <= {"left", "stayed"} and len(set(labels)) == 2
    assert proba is not None and proba.shape == (len(df), 2)
    np.testing.assert_array_equal(labels, pipe.predict(prepare_frame(df, specs)))


@pytest.mark.parametrize("family", CLASSIFICATION_FAMILIES)
@pytest.mark.parametrize("strings", [False, True])
def test_threshold_is_baked_into_the_label(world: pd.DataFrame, family: str, strings: bool) -> None:
    """``label`` is the second class where its probability is >= the threshold, for every
    family and for int and string classes; parity checks the labels at the threshold."""
    df = world.assign(churn=np.where(world["churn"] == 1, "left", "stayed")) if strings else world
    pipe, specs = _fit(df, "classification", family)
    threshold = float(np.float32(0.3))
    blob = export_onnx(pipe, specs, task="classification", threshold=threshold)
    labels, proba = onnx_predict(make_session(blob), df, specs, task="classification")
    assert proba is not None
    p = pipe.predict_proba(prepare_frame(df, specs))[:, 1]
    expected = np.asarray(pipe.classes_)[(p >= threshold).astype(int)]
    np.testing.assert_array_equal(labels, expected)
    assert not np.array_equal(labels, pipe.predict(prepare_frame(df, specs)))  # not argmax
    model = onnx.load_from_string(blob)
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    assert {m.key: m.value for m in model.metadata_props}["flywheel.threshold"] == repr(threshold)
    report = check_parity(
        pipe, blob, _unseen(df), specs, task="classification", threshold=threshold
    )
    assert report.passed and report.label_mismatches == 0
    # parity compares labels at the threshold: a graph made at another one fails it
    assert check_parity(
        pipe, blob, df, specs, task="classification", threshold=0.6
    ).label_mismatches
    assert check_parity(pipe, blob, df, specs, task="classification").label_mismatches  # argmax


def test_threshold_needs_a_binary_classifier(world: pd.DataFrame) -> None:
    from flywheel.errors import RegistryError

    df = world.assign(churn=world["tickets"].clip(0, 2).astype(int))  # three classes
    pipe, specs = _fit(df, "classification", "logreg")
    with pytest.raises(RegistryError, match=r"needs a binary classifier.*3 classes"):
        export_onnx(pipe, specs, task="classification", threshold=0.3)


@pytest.mark.parametrize(
    ("task", "family"), [("classification", "hist_gb"), ("regression", "linear")]
)
def test_export_is_byte_identical_and_named(world: pd.DataFrame, task: Task, family: str) -> None:
    """skl2onnx names a graph with a random uuid; ours is named, so the bytes repeat."""
    pipe, specs = _fit(world, task, family)
    threshold = 0.3 if task == "classification" else None
    first = export_onnx(pipe, specs, task=task, threshold=threshold, graph_name="churn-abc")
    assert export_onnx(pipe, specs, task=task, threshold=threshold, graph_name="churn-abc") == first
    assert onnx.load_from_string(first).graph.name == "churn-abc"
    assert export_onnx(pipe, specs, task=task) == export_onnx(pipe, specs, task=task)
    renamed = export_onnx(pipe, specs, task=task, threshold=threshold, graph_name="churn-abd")
    assert renamed != first


def test_feeds_shapes_and_types(world: pd.DataFrame) -> None:
    _, specs = _fit(world, "regression", "linear")
    feeds = onnx_feeds(_unseen(world).head(50), specs)  # rows 0..40: "enterprise"
    assert list(feeds) == [s.name for s in specs]
    assert feeds["charges"].dtype == np.float32 and feeds["charges"].shape == (50, 1)
    assert feeds["plan"].dtype == object and set(feeds["plan"][:41, 0]) == {"enterprise"}
    assert feeds["region"][45, 0] == ""


def test_missing_column_at_predict_is_data_error(world: pd.DataFrame) -> None:
    pipe, specs = _fit(world, "classification", "logreg")
    session = make_session(export_onnx(pipe, specs, task="classification"))
    with pytest.raises(DataError, match="plan"):
        onnx_predict(session, world.drop(columns=["plan"]), specs, task="classification")


def test_parity_check_can_fail(world: pd.DataFrame) -> None:
    pipe, specs = _fit(world, "classification", "random_forest")
    other, _ = _fit(_world(seed=1), "classification", "random_forest")
    report = check_parity(other, export_onnx(pipe, specs, task="classification"), world, specs,
                          task="classification")  # fmt: skip
    assert not report.passed
    assert report.max_abs_diff > 0.05
    assert 0 < report.rows_over_tolerance <= report.rows
    assert report.label_mismatches > 0


def test_regression_parity_absolute_vs_relative(world: pd.DataFrame) -> None:
    pipe, specs = _fit(world, "regression", "linear")
    onx = export_onnx(pipe, specs, task="regression")
    relative = check_parity(pipe, onx, world, specs, task="regression")
    strict = check_parity(pipe, onx, world, specs, task="regression", relative=False,
                          tolerance=1e-9)  # fmt: skip
    assert relative.passed and relative.relative
    assert not strict.passed and not strict.relative  # float32 output rounding at ~1000
    assert strict.max_abs_diff < 1e-2


def test_parity_report_passed_rule() -> None:
    ok = ParityReport(rows=3, max_abs_diff=0.0, rows_over_tolerance=0, label_mismatches=0,
                      tolerance=1e-4)  # fmt: skip
    assert ok.passed
    assert not dataclasses.replace(ok, label_mismatches=1).passed
    assert not dataclasses.replace(ok, rows_over_tolerance=2).passed


def test_feature_names_that_are_not_identifiers_keep_their_names() -> None:
    """skl2onnx renames "mean radius" to "mean_radius"; the export restores the real name."""
    import numpy as np
    import onnx
    import pandas as pd

    from flywheel.registry.onnx_export import check_parity, export_onnx
    from flywheel.training.features import build_pipeline, infer_feature_specs, prepare_frame

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {"mean radius": rng.normal(size=300), "tier-code": rng.choice(["a", "b"], 300)}
    )
    df["y"] = (df["mean radius"] > 0).astype(int)
    specs = infer_feature_specs(df, target="y", drop=[])
    pipe = build_pipeline(
        specs,
        task="classification",
        family="hist_gb",
        hyperparams={"max_iter": 10},
        ratios=[],
        seed=0,
    )
    pipe.fit(prepare_frame(df, specs), df["y"])
    blob = export_onnx(pipe, specs, task="classification")
    assert [i.name for i in onnx.load_from_string(blob).graph.input] == ["mean radius", "tier-code"]
    assert check_parity(pipe, blob, df, specs, task="classification").passed


def test_tree_thresholds_snap_to_float32_without_changing_native_predictions() -> None:
    """scikit-learn's diabetes data put a row across a float64 HistGradientBoosting split
    that ONNX rounds to float32 (|Δ| 0.0087); after snapping, parity is exact and the native
    model's predictions are unchanged."""
    import numpy as np
    from sklearn.datasets import load_diabetes

    from flywheel.registry.onnx_export import check_parity, export_onnx
    from flywheel.training.features import (
        align_thresholds_to_float32,
        build_pipeline,
        infer_feature_specs,
        prepare_frame,
    )

    df = load_diabetes(as_frame=True).frame
    train, test = df.iloc[:350], df.iloc[350:]
    specs = infer_feature_specs(df, target="target", drop=[])
    for family in ("hist_gb", "random_forest"):
        pipe = build_pipeline(
            specs, task="regression", family=family, hyperparams={}, ratios=[], seed=0
        )
        pipe.fit(prepare_frame(train, specs), train["target"])
        before = pipe.predict(prepare_frame(test, specs))
        align_thresholds_to_float32(pipe)
        assert np.array_equal(before, pipe.predict(prepare_frame(test, specs)))
        report = check_parity(
            pipe, export_onnx(pipe, specs, task="regression"), test, specs, task="regression"
        )
        assert report.rows_over_tolerance == 0 and report.max_abs_diff < 1e-6, (family, report)


def test_export_loads_only_the_converters_its_family_needs() -> None:
    """Exporting a HistGradientBoosting pipeline imports neither LightGBM nor onnxmltools'
    LightGBM/XGBoost converters (~35 ms of a new process); a LightGBM pipeline still gets
    its converter."""
    import subprocess
    import sys

    code = """
import sys
from sklearn.datasets import load_breast_cancer
from flywheel.registry.onnx_export import export_onnx
from flywheel.training.features import build_pipeline, infer_feature_specs, prepare_frame

df = load_breast_cancer(as_frame=True).frame.iloc[:200]
specs = infer_feature_specs(df, target="target", drop=[])
loaded = []
for family in sys.argv[1:]:
    pipe = build_pipeline(specs, task="classification", family=family,
                          hyperparams={"n_estimators": 5} if family == "lightgbm" else {},
                          ratios=[], seed=0)
    pipe.fit(prepare_frame(df, specs), df["target"])
    export_onnx(pipe, specs, task="classification")
    heavy = ("lightgbm", "onnxmltools.convert.lightgbm.operator_converters.LightGbm",
             "onnxmltools.convert.xgboost.operator_converters.XGBoost")
    loaded.append("+".join(m for m in heavy if m in sys.modules) or "-")
print(",".join(loaded))
"""
    run = [sys.executable, "-c", code]
    out = subprocess.run([*run, "hist_gb", "lightgbm"], capture_output=True, text=True, check=True)
    hgb, lgbm = out.stdout.strip().split(",")
    assert hgb == "-"
    assert "onnxmltools.convert.lightgbm.operator_converters.LightGbm" in lgbm
    assert "XGBoost" not in lgbm


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (None, None),
        ([0, 1], None),  # already the indices: the graph is left as it was
        ([False, True], None),  # bool classes come back as 0/1, as documented
        ([3, 5], [3, 5]),
        ([1.0, 2.0], [1, 2]),
        (["no", "yes"], ["no", "yes"]),
        ([0.5, 1.5], ["0.5", "1.5"]),
        (["a", "b", "c"], None),  # a count that is not the pipeline's: not its classes
    ],
)
def test_original_labels_of_a_pipeline_fitted_on_indices(
    classes: list[object] | None, expected: list[object] | None
) -> None:
    from types import SimpleNamespace

    from flywheel.registry.onnx_export import original_labels

    fitted = SimpleNamespace(classes_=np.array([0, 1]))
    got = original_labels(fitted, classes)  # type: ignore[arg-type]
    assert (got if got is None else got.tolist()) == expected
