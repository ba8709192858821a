"""Model families: one module each, found by name, imported on first use; a family declared
outside flywheel (tests/unit/family_knn.py) trains, exports and validates like a built-in."""

from __future__ import annotations

import io
import json
import operator
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.preprocessing import FunctionTransformer

from flywheel.config import Settings
from flywheel.data.snapshots import ingest
from flywheel.errors import ConfigError, TrainingError
from flywheel.registry.onnx_export import check_parity, export_onnx
from flywheel.training import families
from flywheel.training.families import Family
from flywheel.training.features import (
    CLASS_WEIGHT_FAMILIES,
    CLASSIFICATION_FAMILIES,
    REGRESSION_FAMILIES,
    build_pipeline,
    prepare_frame,
)
from flywheel.training.params import TrainParams, load_params
from flywheel.training.skops_flavor import pip_requirements, trusted_types
from flywheel.training.train import load_holdout, load_pipeline, train
from flywheel.workspace import Workspace
from tests.unit import family_knn

ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ("logreg", "linear", "random_forest", "hist_gb", "lightgbm", "xgboost")

# A family declared in this module, registered as "module:attribute": its estimator's types
# come from ``_operator``, which only its trusted_prefixes let skops load.
OPERATOR_FAMILY = Family(
    name="neg",
    tasks=("regression",),
    make=lambda task, seed: FunctionTransformer(func=operator.neg),
    trusted_prefixes=("_operator.",),
)


@pytest.fixture
def knn() -> Iterator[None]:
    families.register("knn", "tests.unit.family_knn")
    family_knn.HOOK_CALLS.clear()
    yield
    families.unregister("knn")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _blobs(n: int = 500, seed: int = 0) -> pd.DataFrame:
    """Continuous features (no exact distance ties between rows) and a learnable target."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "usage": rng.normal(20, 5, n),
            "spend": rng.normal(50, 15, n),
            "plan": rng.choice(["basic", "pro", "team"], n),
        }
    )
    score = 0.3 * (df.usage - 20) - 0.1 * (df.spend - 50) + (df.plan == "pro")
    df["y"] = (score + rng.normal(0, 1, n) > 0.5).astype(int)
    return df


# ---------------------------------------------------------------- the registry


def test_importing_training_leaves_boosting_libraries_out() -> None:
    """Importing features and params, listing the families and building a hist_gb pipeline
    import neither XGBoost nor LightGBM; making an xgboost estimator imports XGBoost only."""
    code = """
import sys
import flywheel.training.features, flywheel.training.params
from flywheel.training.features import CLASSIFICATION_FAMILIES, REGRESSION_FAMILIES, build_pipeline
from flywheel.schema import FeatureSpec
first = [m for m in ("xgboost", "lightgbm") if m in sys.modules]
listed = list(CLASSIFICATION_FAMILIES) + list(REGRESSION_FAMILIES)
build_pipeline([FeatureSpec("a", "numeric")], task="classification", family="hist_gb",
               hyperparams={}, ratios=[], seed=0)
second = [m for m in ("xgboost", "lightgbm") if m in sys.modules]
build_pipeline([FeatureSpec("a", "numeric")], task="classification", family="xgboost",
               hyperparams={}, ratios=[], seed=0)
third = [m for m in ("xgboost", "lightgbm") if m in sys.modules]
print(first, second, third, len(listed))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["[]", "[]", "['xgboost']", "10"]


def test_builtin_families_and_the_views_derived_from_them() -> None:
    assert families.names()[: len(BUILTIN)] == BUILTIN
    assert tuple(CLASSIFICATION_FAMILIES) == (
        "logreg", "random_forest", "hist_gb", "lightgbm", "xgboost"
    )  # fmt: skip
    assert tuple(REGRESSION_FAMILIES) == (
        "linear",
        "random_forest",
        "hist_gb",
        "lightgbm",
        "xgboost",
    )
    assert tuple(CLASS_WEIGHT_FAMILIES) == ("logreg", "random_forest", "hist_gb", "lightgbm")
    assert "linear" not in CLASSIFICATION_FAMILIES and "linear" in REGRESSION_FAMILIES
    assert [n for n in BUILTIN if families.get(n).scaled] == ["logreg", "linear"]
    assert families.get("xgboost").pinned_requirements() == [f"xgboost=={version('xgboost')}"]
    assert families.get("hist_gb").pinned_requirements() == []
    assert pip_requirements("lightgbm")[-1] == f"lightgbm=={version('lightgbm')}"
    assert pip_requirements("hist_gb")[0] == f"scikit-learn=={version('scikit-learn')}"


def test_bad_registrations_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"Unknown model family 'nope'.*hist_gb"):
        families.get("nope")
    with pytest.raises(ConfigError, match=r"already registered from"):
        families.register("hist_gb", "somewhere.else")
    for path, message in [
        ("tests.unit.no_such_module", "cannot be imported"),
        ("tests.unit.test_families", "must define FAMILY = Family"),
        ("tests.unit.test_families:OPERATOR_FAMILY", "must define OPERATOR_FAMILY"),  # "neg"
    ]:
        families.register("broken", path)
        try:
            with pytest.raises(ConfigError, match=message):
                families.get("broken")
            # listing leaves the broken family out; the others still work
            assert "broken" in families.names() and "broken" not in tuple(CLASSIFICATION_FAMILIES)
            assert tuple(REGRESSION_FAMILIES)[-1] == "xgboost"
        finally:
            families.unregister("broken")
    with pytest.raises(ConfigError, match=r"tasks \['ranking'\]"):
        Family(name="x", tasks=("ranking",), make=lambda t, s: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not an identifier"):
        Family(name="k nn", tasks=("regression",), make=lambda t, s: None)


def test_a_family_registered_from_an_entry_point(tmp_path: Path) -> None:
    """An installed distribution's ``flywheel.families`` entry point is found by name."""
    dist = tmp_path / "flywheel_knn-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flywheel-knn\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[flywheel.families]\nknn = tests.unit.family_knn\n")
    code = """
import sys
sys.path.insert(0, sys.argv[1])
from flywheel.training.features import CLASSIFICATION_FAMILIES
from flywheel.training.params import TrainParams
print(TrainParams(family="knn").family, "knn" in CLASSIFICATION_FAMILIES)
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.split() == ["knn", "True"]


def test_a_family_widens_what_skops_trusts() -> None:
    data = skops.io.dumps(FunctionTransformer(func=operator.neg))
    with pytest.raises(TrainingError, match=r"_operator.neg"):
        trusted_types(data)
    families.register("neg", "tests.unit.test_families:OPERATOR_FAMILY")
    try:
        assert "_operator.neg" in trusted_types(data)
    finally:
        families.unregister("neg")


def test_xgboost_models_saved_before_the_move_still_load() -> None:
    """skops dumps made before the families package name the classifier
    ``flywheel.training.features.EncodedXGBClassifier``; they load to the same class."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 2)).astype(np.float32), rng.choice(["no", "yes"], 60)
    model = families.get("xgboost").make("classification", 0).set_params(n_estimators=3)
    data = skops.io.dumps(model.fit(X, y))
    old = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            body = src.read(item)
            if item.filename == "schema.json":
                text = body.decode().replace(
                    "flywheel.training.families._xgboost_classifier", "flywheel.training.features"
                )
                assert "flywheel.training.features" in json.loads(text)["__module__"]
                body = text.encode()
            dst.writestr(item, body)
    loaded = skops.io.loads(old.getvalue(), trusted=trusted_types(old.getvalue()))
    assert type(loaded) is type(model)
    assert list(loaded.predict(X)) == list(model.predict(X))


# ---------------------------------------------------------------- a family from outside


def test_params_accept_a_registered_family_and_list_the_known_ones(
    tmp_path: Path, knn: None
) -> None:
    assert load_params(_write(tmp_path, "family: knn\n")).family == "knn"
    with pytest.raises(ConfigError, match=r"family 'knn' cannot do regression; use one of linear"):
        load_params(_write(tmp_path, "family: knn\ntask: regression\n"))
    with pytest.raises(ConfigError, match=r"class_weight is not supported by family 'knn'"):
        load_params(_write(tmp_path, "family: knn\nclass_weight: balanced\n"))
    families.unregister("knn")
    with pytest.raises(ConfigError) as info:
        load_params(_write(tmp_path, "family: knn\n"))
    assert "family must be one of" in info.value.message and "'knn'" in info.value.message
    assert all(name in info.value.message for name in BUILTIN)


def test_a_registered_family_whose_module_is_gone_names_it(tmp_path: Path) -> None:
    families.register("gone", "tests.unit.no_such_family")
    try:
        with pytest.raises(ConfigError, match=r"'tests.unit.no_such_family'.*cannot be imported"):
            load_params(_write(tmp_path, "family: gone\n"))
    finally:
        families.unregister("gone")


def test_build_pipeline_refuses_the_wrong_task_and_lists_valid_families(knn: None) -> None:
    from flywheel.schema import FeatureSpec

    with pytest.raises(TrainingError, match=r"Unknown model family 'knn' for regression"):
        build_pipeline(
            [FeatureSpec("a", "numeric")],
            task="regression",
            family="knn",
            hyperparams={},
            ratios=[],
            seed=0,
        )


@pytest.mark.slow
def test_a_family_from_outside_trains_exports_and_keeps_parity(
    settings: Settings, knn: None
) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    csv = settings.home.parent / "blobs.csv"
    _blobs().to_csv(csv, index=False)
    snapshot_id = ingest(settings, file=csv, target="y", dataset="t").manifest.id
    params = TrainParams(
        family="knn", hyperparams={"n_neighbors": 9}, cv_folds=2, drop_columns=["customer_id"]
    )

    ws = Workspace(settings)
    result = train(ws, snapshot_id, params)

    assert result.family == "knn" and result.task == "classification"
    assert result.cv_metrics["roc_auc_cv_mean"] > 0.7
    pipeline = result.pipeline
    assert pipeline is not None
    assert type(pipeline.named_steps["model"]).__name__ == "KNeighborsClassifier"
    assert pipeline.named_steps["model"].n_neighbors == 9
    assert "scale" in pipeline.named_steps["features"].transformers[0][1].named_steps
    # the logged skops copy loads with the allow-list, and predicts the same
    X, _ = load_holdout(ws, result.run_id)
    frame = prepare_frame(X, result.feature_specs)
    loaded = load_pipeline(ws, result.run_id)
    assert np.array_equal(loaded.predict_proba(frame), pipeline.predict_proba(frame))
    # ONNX: the family's hook ran once, before the first export; parity holds on the holdout
    threshold = result.threshold.value if result.threshold else None
    onx = export_onnx(pipeline, result.feature_specs, task="classification", threshold=threshold)
    assert export_onnx(pipeline, result.feature_specs, task="classification") != onx
    assert family_knn.HOOK_CALLS == ["knn"]
    report = check_parity(
        pipeline, onx, X, result.feature_specs, task="classification", threshold=threshold
    )
    assert report.passed and report.rows == len(X) and report.max_abs_diff < 1e-5, report
