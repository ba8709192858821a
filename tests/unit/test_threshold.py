"""choose_threshold: each objective picks what a brute force over every cut picks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from flywheel.training.params import CostMatrix, ThresholdParams
from flywheel.training.threshold import apply_threshold, choose_threshold


def _validation(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels (~8% positive) and informative, tied-in-places probabilities."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.08).astype(int)
    p = np.clip(0.05 + 0.25 * y + rng.normal(0, 0.12, n), 0, 1).round(3)  # rounding makes ties
    return y, p


def _labels(p: np.ndarray, t: float) -> np.ndarray:
    return (p >= t).astype(int)


def _every_cut(p: np.ndarray) -> list[float]:
    return [*np.unique(p).tolist(), 1.01]  # "p >= cut" for each distinct value, and nobody


def test_f1_threshold_reaches_the_best_f1_of_any_cut() -> None:
    y, p = _validation()
    choice = choose_threshold(y, p, ThresholdParams(), source="cv_out_of_fold")
    best = max(skm.f1_score(y, _labels(p, c), zero_division=0.0) for c in _every_cut(p))
    assert skm.f1_score(y, _labels(p, choice.value)) == pytest.approx(best)
    assert choice.validation["f1"] == pytest.approx(best)
    assert skm.f1_score(y, _labels(p, 0.5)) < best - 0.1  # 0.5 is far off on this data
    assert (choice.objective, choice.source, choice.rows) == ("f1", "cv_out_of_fold", len(y))
    assert choice.value == float(np.float32(choice.value))  # what ONNX compares against


def test_cost_threshold_minimises_the_expected_cost() -> None:
    y, p = _validation(seed=1)
    costs = CostMatrix(fp=1, fn=15, tp=-2, tn=0)

    def cost(labels: np.ndarray) -> float:
        tn, fp, fn, tp = skm.confusion_matrix(y, labels, labels=[0, 1]).ravel()
        return float(costs.fp * fp + costs.fn * fn + costs.tp * tp + costs.tn * tn)

    params = ThresholdParams(objective="cost", costs=costs)
    choice = choose_threshold(y, p, params, source="validation_split")
    best = min(cost(_labels(p, c)) for c in _every_cut(p))
    assert cost(_labels(p, choice.value)) == pytest.approx(best)
    assert choice.validation["cost_per_row"] == pytest.approx(best / len(y))
    # a false positive dearer than every false negative together: none is accepted, and
    # where even the top-scored row is negative, nobody is labelled positive
    strict = ThresholdParams(objective="cost", costs=CostMatrix(fp=1000, fn=1))
    labels = _labels(p, choose_threshold(y, p, strict, source="x").value)
    assert labels.sum() > 0 and ((labels == 1) & (y == 0)).sum() == 0
    top_negative = y.copy()
    top_negative[np.argmax(p)] = 0
    labels = _labels(p, choose_threshold(top_negative, p, strict, source="x").value)
    assert labels.sum() == 0


@pytest.mark.parametrize("min_recall", [0.5, 0.8, 0.95, 1.0])
def test_recall_threshold_is_the_most_precise_that_reaches_the_recall(min_recall: float) -> None:
    y, p = _validation(seed=2)
    params = ThresholdParams(objective="recall", min_recall=min_recall)
    choice = choose_threshold(y, p, params, source="cv_out_of_fold")
    labels = _labels(p, choice.value)
    assert skm.recall_score(y, labels) >= min_recall
    feasible = [
        skm.precision_score(y, _labels(p, c), zero_division=0.0)
        for c in _every_cut(p)
        if skm.recall_score(y, _labels(p, c)) >= min_recall
    ]
    assert skm.precision_score(y, labels) == pytest.approx(max(feasible))


def test_fixed_threshold_is_taken_as_given() -> None:
    y, p = _validation()
    choice = choose_threshold(y, p, ThresholdParams(objective="fixed", value=0.3), source="x")
    assert (choice.value, choice.objective, choice.source) == (
        float(np.float32(0.3)),
        "fixed",
        "fixed",
    )


def test_single_class_validation_keeps_the_default_and_says_why() -> None:
    p = np.linspace(0, 1, 50)
    choice = choose_threshold(np.zeros(50, int), p, ThresholdParams(), source="cv_out_of_fold")
    assert (choice.value, choice.source) == (0.5, "default")
    assert choice.note is not None and "single class" in choice.note


def test_threshold_labels_validation_rows_as_the_cut_it_was_chosen_at() -> None:
    """The threshold lies between the chosen probability and the next lower one, so the
    validation rows get exactly the labels the objective was computed on."""
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.9])
    choice = choose_threshold(y, p, ThresholdParams(), source="x")
    assert 0.2 < choice.value <= 0.3  # every positive caught, one false positive: F1 6/7
    assert choice.validation["f1"] == pytest.approx(6 / 7)
    assert apply_threshold(np.c_[1 - p, p], choice.value).tolist() == [0, 0, 1, 1, 1, 1]
    assert apply_threshold(np.array([[0.5, 0.5]]), 0.5).tolist() == [1]  # >=, not >
