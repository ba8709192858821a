"""params.yaml: defaults, the example file, and errors that name the key and the rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flywheel.errors import ConfigError, NotFound
from flywheel.training.features import RatioFeature
from flywheel.training.params import (
    CostMatrix,
    SearchParams,
    ThresholdParams,
    TrainParams,
    load_params,
)

ROOT = Path(__file__).parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_none_gives_the_defaults() -> None:
    params = load_params(None)
    assert params == TrainParams()
    assert (params.family, params.test_size, params.cv_folds) == ("hist_gb", 0.2, 5)
    assert params.search.trials == 0


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_params(_write(tmp_path, "# only a comment\n")) == TrainParams()


def test_full_file_is_read(tmp_path: Path) -> None:
    text = """
family: lightgbm
task: classification
target: churned
hyperparams: {n_estimators: 20}
test_size: 0.25
cv_folds: 3
seed: 7
drop_columns: [plan]
ratios: [{name: r, numerator: a, denominator: b}]
search:
  trials: 4
  metric: pr_auc
  space:
    num_leaves: {type: int, low: 8, high: 64, log: true}
    colsample_bytree: {type: categorical, choices: [0.5, 1.0]}
"""
    params = load_params(_write(tmp_path, text))
    assert params.family == "lightgbm" and params.seed == 7 and params.test_size == 0.25
    assert params.ratios == [RatioFeature(name="r", numerator="a", denominator="b")]
    assert params.search.trials == 4 and params.search.metric == "pr_auc"
    assert params.search.space["num_leaves"]["log"] is True


def test_the_example_file_is_valid() -> None:
    params = load_params(ROOT / "examples" / "params.yaml")
    assert params.family == "hist_gb"
    assert params.ratios[0].numerator == "tickets_90d"
    assert params.search.space, "the example shows a search space"


def test_threshold_defaults_to_f1_and_a_number_is_a_fixed_threshold(tmp_path: Path) -> None:
    assert TrainParams().threshold == ThresholdParams(objective="f1")
    fixed = load_params(_write(tmp_path, "threshold: 0.3\n")).threshold
    assert (fixed.objective, fixed.value) == ("fixed", 0.3)
    text = "threshold:\n  objective: cost\n  costs: {fp: 1, fn: 20}\nclass_weight: balanced\n"
    params = load_params(_write(tmp_path, text))
    assert params.threshold.costs == CostMatrix(fp=1, fn=20, tp=0, tn=0)
    assert params.class_weight == "balanced"


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_bad_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_params(_write(tmp_path, "family: [hist_gb\n"))


def test_a_list_at_top_level_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must be a mapping"):
        load_params(_write(tmp_path, "- family\n"))


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("test_size: 1.5", "test_size", "test_size must be > 0 and < 1, got 1.5"),
        ("test_size: 0", "test_size", "test_size must be > 0 and < 1, got 0"),
        ("cv_folds: -1", "cv_folds", "cv_folds: input should be greater than or equal to 0"),
        ("family: catboost", "family", "family must be one of"),
        ("hyperparms: {}", "hyperparms", "unknown key 'hyperparms'"),
        ("task: ranking", "task", "task: input should be 'classification' or 'regression'"),
        ("seed: abc", "seed", "got 'abc'"),
        ("search: {metric: auc}", "search.metric", "search.metric must be one of"),
        ("search: {trials: 2, colour: red}", "search.colour", "unknown key 'search.colour'"),
        ("hyperparams: {seed: 1}", "hyperparams", "reserved names ['seed']"),
        ("ratios: [{name: r, numerator: a}]", "ratios.0.denominator", "denominator"),
        ("hyperparams: {class_weight: balanced}", "hyperparams", "['class_weight']"),
        ("class_weight: auto", "class_weight", "class_weight: input should be 'balanced'"),
        (
            "family: xgboost\nclass_weight: balanced",
            "class_weight",
            "class_weight is not supported by family 'xgboost'",
        ),
        (
            "family: linear\ntask: regression\nclass_weight: balanced",
            "class_weight",
            "class_weight applies to classification only",
        ),
        ("threshold: {objective: auc}", "threshold.objective", "input should be 'f1', 'cost'"),
        ("threshold: {objectve: f1}", "threshold.objectve", "unknown key 'threshold.objectve'"),
        (
            "threshold: {objective: cost}",
            "threshold",
            "threshold.costs is required with threshold.objective: cost",
        ),
        (
            "threshold: {objective: recall}",
            "threshold",
            "threshold.min_recall is required with threshold.objective: recall",
        ),
        (
            "threshold: {min_recall: 0.8}",
            "threshold",
            "threshold.min_recall is not used with threshold.objective: f1",
        ),
        ("threshold: {objective: recall, min_recall: 0}", "threshold.min_recall", "> 0 and <= 1"),
        ("threshold: 1.5", "threshold.value", "threshold.value must be between 0 and 1, got 1.5"),
        ("threshold: {costs: {fp: 1}, objective: cost}", "threshold.costs.fn", "field required"),
        (
            "threshold: {objective: cost, costs: {fp: 0, fn: 5, tn: 1}}",
            "threshold.costs",
            "fp > tn and fn > tp",
        ),
        ("threshold: {validation_size: 1}", "threshold.validation_size", "> 0 and < 1, got 1"),
    ],
)
def test_bad_values_name_the_key_and_the_rule(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_params(_write(tmp_path, text))
    assert info.value.details["key"] == key
    assert message in info.value.message
    assert "params.yaml" in info.value.message  # says where to fix it


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr": {"type": "float", "low": 1.0, "high": 0.1}}, "low < high"),
        ({"lr": {"type": "real", "low": 0, "high": 1}}, "type must be one of"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "needs low > 0"),
        ({"d": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"d": {"type": "int", "low": 1, "high": 5, "choices": [1]}}, "unknown keys ['choices']"),
    ],
)
def test_bad_search_space_is_refused(tmp_path: Path, space: dict, message: str) -> None:
    import yaml

    with pytest.raises(ConfigError) as info:
        load_params(_write(tmp_path, yaml.safe_dump({"search": {"space": space}})))
    assert message in info.value.message
    assert info.value.details["key"] == "search.space"


def test_family_must_fit_an_explicit_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"family 'logreg' cannot do regression"):
        load_params(_write(tmp_path, "family: logreg\ntask: regression\n"))


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    keys = (
        list(TrainParams.model_fields)
        + [f"search.{k}" for k in SearchParams.model_fields]
        + [f"threshold.{k}" for k in ThresholdParams.model_fields]
        + [f"threshold.costs.{k}" for k in CostMatrix.model_fields]
    )
    missing = [k for k in keys if not re.search(rf"`{re.escape(k)}`", doc)]
    assert not missing, f"params keys missing from docs/training.md: {missing}"
