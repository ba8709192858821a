"""The label-free performance estimate: does its 95% interval cover the realised metric?

A simulated binary classifier: three features x ~ N(0, 1), the truth y ~ Bernoulli(p) with
p = sigmoid(a.x + b), and the model's score a slightly noisy monotone function of p
(sigmoid(logit p + N(0, 0.15))): calibrated-ish, as a fitted model is. The references are
5,000 labelled rows each; the windows (2k-20k rows) come from the same P(y|x), half of
them with a covariate shift (the mean of x moved by 0.3 sigma, which moves the score
distribution and the metrics, but not the score's calibration). Each window gets its own
reference: the interval accounts for the reference's calibration error, and with one
reference for all windows they would all share that one error, and the count would measure
that one draw's luck (8 references x 16 windows: accuracy covered in 89% on one seed; 800
windows with a reference each: 94.6%).

Under concept drift (P(y|x) changed, the model unchanged) the calibration no longer holds
and the realised metric should leave the interval: that is the signal the estimate exists
for.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from flywheel.monitoring.performance import estimate, realised
from flywheel.monitoring.profile import Reference
from flywheel.monitoring.reference import build_reference, score_columns
from flywheel.monitoring.window import LABEL, count_window
from flywheel.schema import FeatureSpec

COEF = np.array([1.2, -0.8, 0.5])
BIAS = -0.4
SPECS = [FeatureSpec(f"x{i}", "numeric") for i in range(len(COEF))]
METRICS = ("f1", "accuracy")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _rows(
    rng: np.random.Generator,
    n: int,
    threshold: float,
    *,
    shift: float = 0.0,
    coef: np.ndarray = COEF,
    bias: float = BIAS,
) -> pa.Table:
    """n labelled rows; ``shift`` moves every feature's mean (covariate shift); ``coef`` and
    ``bias`` are the *true* P(y|x) (the model's score always follows COEF and BIAS)."""
    x = rng.normal(shift, 1.0, (n, len(COEF)))
    y = (rng.random(n) < _sigmoid(x @ coef + bias)).astype(int)
    score = _sigmoid(x @ COEF + BIAS + rng.normal(0.0, 0.15, n))
    table = pa.table({f"x{i}": x[:, i] for i in range(len(COEF))})
    cols = score_columns(
        "classification", ["0", "1"], (score >= threshold).astype(int), np.c_[1 - score, score]
    )
    for name, col in cols.items():
        table = table.append_column(name, col)
    return table.append_column(LABEL, pa.array(y.astype(str).tolist(), pa.string()))


def _best_f1_threshold(table: pa.Table) -> float:
    score = np.asarray(table.column("__score__"))
    y = np.asarray(table.column(LABEL).to_pylist()) == "1"
    cuts = np.round(np.linspace(0.1, 0.9, 161), 3)
    f1 = [2 * (y & (score >= c)).sum() / (y.sum() + (score >= c).sum()) for c in cuts]
    return float(cuts[int(np.argmax(f1))])


def _reference(rng: np.random.Generator, threshold: float | None) -> Reference:
    """5,000 labelled rows; ``threshold`` None: the F1-optimal cut of these rows."""
    rows = _rows(rng, 5000, 0.5)
    if threshold is None:
        threshold = _best_f1_threshold(rows)
        rows = _rows(rng, 5000, threshold)
    return build_reference(
        model="m",
        version="1",
        source="holdout",
        frame=rows,
        specs=SPECS,
        task="classification",
        classes=["0", "1"],
        threshold=threshold,
    )


def _covered(ref: Reference, table: pa.Table, seed: int) -> tuple[dict[str, bool], float]:
    """Whether each metric's realised value lies in the estimate's 95% interval, and the
    width of the accuracy interval."""
    window = count_window(ref, [table], sketches=False)
    assert window.performance is not None and window.performance.labelled == table.num_rows
    est = estimate(ref, window, seed=seed)
    assert est is not None
    real = realised(window.performance)
    covered = {m: bool(est.low[m] <= real[m] <= est.high[m]) for m in METRICS}
    return covered, est.high["accuracy"] - est.low["accuracy"]


def test_the_95_interval_covers_the_realised_metric_without_concept_drift() -> None:
    rng = np.random.default_rng(2024)
    hits = {m: 0 for m in METRICS}
    by_case: dict[str, list[int]] = {}
    widths = []
    windows = 200
    for w in range(windows):
        # a reference per window (see the module docstring), half at threshold 0.5, half at
        # their F1-optimal threshold; half the windows with a covariate shift
        ref = _reference(rng, 0.5 if w % 2 == 0 else None)
        assert ref.threshold is not None
        n = int(np.exp(rng.uniform(np.log(2000), np.log(20000))))
        shift = 0.3 if (w // 2) % 2 else 0.0
        covered, width = _covered(ref, _rows(rng, n, ref.threshold, shift=shift), seed=w)
        widths.append(width)
        for m in METRICS:
            hits[m] += covered[m]
        case = f"threshold {'0.5' if w % 2 == 0 else 'F1-optimal'}, shift {shift}"
        by_case.setdefault(case, [0, 0, 0])
        by_case[case][0] += covered["f1"]
        by_case[case][1] += covered["accuracy"]
        by_case[case][2] += 1
    coverage = {m: hits[m] / windows for m in METRICS}
    print(f"\nlabel-free estimate, {windows} windows without concept drift: 95% interval coverage")
    for m in METRICS:
        print(f"  {m}: {hits[m]}/{windows} = {coverage[m]:.1%}")
    for case, (f1, acc, n) in sorted(by_case.items()):
        print(f"  {case}: f1 {f1}/{n}, accuracy {acc}/{n}")
    print(f"  accuracy interval width: median {np.median(widths):.4f}, max {max(widths):.4f}")
    for m in METRICS:
        assert coverage[m] >= 0.90, (m, coverage)
    # and not by being uselessly wide: about +-2 points on a few thousand rows
    assert np.median(widths) < 0.05


def test_under_concept_drift_the_realised_metric_leaves_the_interval() -> None:
    rng = np.random.default_rng(7)
    ref = _reference(rng, 0.5)
    assert ref.threshold == 0.5
    # P(y|x) changes: x0 stops mattering, x1 flips sign; the model still scores the old way
    drifted = np.array([0.0, 0.8, 0.5])
    outside = {m: 0 for m in METRICS}
    windows = 20
    for w in range(windows):
        n = int(rng.integers(2000, 20001))
        covered, _ = _covered(ref, _rows(rng, n, 0.5, coef=drifted), seed=w)
        for m in METRICS:
            outside[m] += not covered[m]
    print(f"\nconcept drift: realised metric outside the 95% interval in {windows} windows")
    for m in METRICS:
        print(f"  {m}: {outside[m]}/{windows}")
    for m in METRICS:
        assert outside[m] >= 0.8 * windows, outside
