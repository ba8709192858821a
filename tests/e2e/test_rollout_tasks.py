"""A rollout's label metrics fit the model's task: a regressor's plan judges labels by
``abs_error`` unless it names another metric that applies (``accuracy`` on a regressor
compared a number with its label for equality: 0 against 0, and a worse regressor was
promoted); a metric that cannot apply is refused, naming the field (exit 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sklearn.datasets import load_diabetes

from tests.e2e.conftest import flywheel, write_settings

pytestmark = pytest.mark.slow


def test_a_regressor_s_rollout_judges_labels_by_abs_error(tmp_path: Path) -> None:
    load_diabetes(as_frame=True).frame.to_csv(tmp_path / "diabetes.csv", index=False)
    write_settings(
        tmp_path,
        source={"dataset": "diabetes"},
        registry={"model_name": "diabetes"},
        gates={"champion_margin": 100.0, "min_metrics": {"r2": -5.0}},
    )
    flywheel(tmp_path, "ingest", "--file", "diabetes.csv", "--target", "target")
    (tmp_path / "params.yaml").write_text("family: linear\ncv_folds: 0\n")
    flywheel(tmp_path, "train")
    flywheel(tmp_path, "promote", "1", "--reason", "first")
    (tmp_path / "params.yaml").write_text(
        "family: linear\ncv_folds: 0\nhyperparams: {alpha: 100000}\n"
    )
    flywheel(tmp_path, "train")  # v2: all but constant, clearly worse

    flywheel(tmp_path, "rollout", "start", "--challenger", "2", "--reason", "defaults")
    plan = json.loads(flywheel(tmp_path, "rollout", "status", "--json").stdout)["rollout"]["plan"]
    assert plan["guardrails"]["metric"] == "abs_error", plan
    flywheel(tmp_path, "rollout", "abort", "--reason", "next")

    for body, field in (
        ({"guardrails": {"metric": "accuracy"}}, "guardrails.metric"),
        ({"strategy": "ab", "metric": "recall"}, "metric"),
    ):
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump({"challenger": "2", **body}))
        err = flywheel(tmp_path, "rollout", "start", str(path), code=4).stderr
        assert f"{field}: " in err and "a regressor" in err and "abs_error" in err, err
    flywheel(tmp_path, "rollout", "start", "--challenger", "2", "--strategy", "ab")
    plan = json.loads(flywheel(tmp_path, "rollout", "status", "--json").stdout)["rollout"]["plan"]
    assert (plan["metric"], plan["guardrails"]["metric"]) == ("abs_error", "abs_error"), plan


def test_recall_on_a_multiclass_challenger_is_refused(tmp_path: Path) -> None:
    """recall and precision count rows of the positive class, which a three-class model has
    not: the metric would wait for ever and no step could pass, so the start refuses it."""
    from sklearn.datasets import load_wine

    load_wine(as_frame=True).frame.to_csv(tmp_path / "wine.csv", index=False)
    write_settings(
        tmp_path,
        source={"dataset": "wine"},
        registry={"model_name": "wine"},
        gates={"champion_margin": 1.0, "min_metrics": {}, "max_slice_gap": {}},
    )
    flywheel(tmp_path, "ingest", "--file", "wine.csv", "--target", "target")
    (tmp_path / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    flywheel(tmp_path, "train")
    flywheel(tmp_path, "promote", "1", "--reason", "first")
    flywheel(tmp_path, "train")
    for body, field in (
        ({"guardrails": {"metric": "recall"}}, "guardrails.metric"),
        ({"strategy": "ab", "metric": "precision"}, "metric"),
    ):
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump({"challenger": "2", **body}))
        err = flywheel(tmp_path, "rollout", "start", str(path), "--reason", "r", code=4).stderr
        assert f"{field}: " in err and "3 classes" in err, err
    flywheel(tmp_path, "rollout", "start", "--challenger", "2", "--reason", "accuracy")
