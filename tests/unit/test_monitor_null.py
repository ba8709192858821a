"""Drift monitoring under the null (no drift at all): the window verdict's false-alarm rate.

A shorter `bench/monitoring_null.py`: 200 windows at 500 and at 5,000 rows against a
5,000-row reference, from the same generator (numeric features of several shapes, one with
20% missing values, categorical features of cardinality 5, 100 and 10,000, and a binary
model's score and prediction, so prediction drift and the label-free estimate are judged
too). Every verdict is a false alarm; the target is at most 5% of windows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from bench.monitoring_null import CATEGORIES, SPECS, _zipf

from flywheel.monitoring.decide import MonitorSettings, decide, evaluate_window
from flywheel.monitoring.drift import DriftSettings, assess
from flywheel.monitoring.profile import PREDICTION, ColumnCounts, Reference
from flywheel.monitoring.reference import build_reference, score_columns
from flywheel.monitoring.window import LABEL, count_window
from flywheel.schema import FeatureSpec

WINDOWS = 200
# If the true false-alarm rate were exactly the 5% target, the false alarms in 200 windows
# would be Binomial(200, 0.05): mean 10, sd 3.1, and P(count >= 18) = 0.012
# (scipy.stats.binom.sf(17, 200, 0.05)). So at most 17 (8.5%) is a ~1% one-sided margin: a
# monitor that meets the target fails this about once in a hundred seeds, while one at a
# 10% rate fails it 72% of the time and one at 15% 99.6% of the time (binom.sf(17, 200,
# 0.10) and (17, 200, 0.15)), which keeps it a test that can fail.
#
# Measured before categories needed 40 reference rows for a bin of their own: 5,000 rows
# 15/200 (56/800 = 7.0% over four seeds), nearly all from cat10k; the test below pins that.
MAX_FALSE_ALARMS = 17

# the same null world as bench.monitoring_null (its full table goes up to 1M-row windows)


def _rows(rng: np.random.Generator, n: int, labels: bool = False) -> pa.Table:
    with_missing = rng.normal(0.0, 1.0, n)
    with_missing[rng.random(n) < 0.2] = np.nan
    cols: dict[str, object] = {
        "normal": rng.normal(50.0, 10.0, n),
        "lognormal": rng.lognormal(0.0, 1.0, n),
        "counts": rng.poisson(2.0, n),
        "with_missing": with_missing,
    }
    codes = {}
    for name, (p, dictionary) in CATEGORIES.items():
        codes[name] = rng.choice(p.size, n, p=p).astype(np.int32)
        cols[name] = pa.DictionaryArray.from_arrays(pa.array(codes[name]), dictionary)
    z = (
        0.08 * (np.asarray(cols["normal"]) - 50)
        + 0.6 * np.log(np.asarray(cols["lognormal"]))
        - 0.4 * (np.asarray(cols["counts"]) - 2)
        + 0.7 * np.nan_to_num(with_missing)
        + np.array([0.8, 0.2, -0.3, -0.6, 0.0])[codes["cat5"]]
    )
    score = 1 / (1 + np.exp(-z))
    table = pa.table(cols)
    outputs = score_columns(
        "classification", ["0", "1"], (score >= 0.5).astype(int), np.c_[1 - score, score]
    )
    for name, col in outputs.items():
        table = table.append_column(name, col)
    if labels:
        table = table.append_column(LABEL, pa.array((rng.random(n) < score).astype(int)))
    return table


def _reference(rng: np.random.Generator) -> Reference:
    frame = _rows(rng, 5000, labels=True)
    y = np.asarray(frame.column(LABEL)) == 1
    pred = np.asarray(frame.column(PREDICTION).to_pylist()) == "1"
    f1 = 2 * (y & pred).sum() / (y.sum() + pred.sum())
    return build_reference(
        model="null",
        version="1",
        source="generated",
        frame=frame,
        specs=SPECS,
        task="classification",
        classes=["0", "1"],
        threshold=0.5,
        metrics={"f1": float(f1), "accuracy": float((y == pred).mean())},
        primary_metric="f1",
    )


@pytest.mark.slow  # ~10 s per size on one core
@pytest.mark.parametrize("size", [500, 5000])
def test_window_verdict_false_alarms_under_the_null(size: int) -> None:
    rng = np.random.default_rng(size)
    ref = _reference(rng)
    settings = MonitorSettings()
    results = [
        evaluate_window(
            ref, count_window(ref, [_rows(rng, size)], sketches=False), str(w), settings
        )
        for w in range(WINDOWS)
    ]
    assert all(r.status == "ok" for r in results)
    decide(results, settings)
    verdicts = sum(r.verdict for r in results)
    features = sum(bool(r.drifted_features) for r in results)
    alarms = sum(r.alarm for r in results)
    print(
        f"\n{size} rows, {WINDOWS} windows: any feature flagged {features}, window verdict "
        f"{verdicts} ({verdicts / WINDOWS:.1%}), alarm after persistence {alarms}"
    )
    assert verdicts <= MAX_FALSE_ALARMS, [r.reason for r in results if r.verdict]
    assert alarms <= verdicts
    # the monitor does judge: every window has every column's statistics and a p-value
    assert all(len(r.features) == len(SPECS) + 2 for r in results)
    assert all(r.performance is not None and r.performance.estimated for r in results)


def test_a_long_tailed_categorical_is_not_flagged_window_after_window_under_the_null() -> None:
    """Zipf over 10,000 values, 5,000 reference rows, 50,000-row windows with no drift.

    A window's counts on the reference's bins are drawn as Multinomial(rows, the true share
    of each bin) (the exact distribution of counting that many rows), so 100 windows per
    reference cost milliseconds. At 50k rows the window's own noise is small and the
    statistic is set by the reference's sampling error: the flag then repeats window after
    window, and persistence cannot filter it. The null should make that happen for at most
    ~5% of references; at most one of six references flagging most windows is allowed.
    """
    k = 10_000
    share = _zipf(k, 1.0)
    dictionary = pa.array([f"i{i}" for i in range(k)])
    rates = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        codes = pa.array(rng.choice(k, 5000, p=share).astype(np.int32))
        frame = pa.table({"c": pa.DictionaryArray.from_arrays(codes, dictionary)})
        ref = build_reference(
            model="m",
            version="1",
            source="generated",
            frame=frame,
            specs=[FeatureSpec("c", "categorical")],
            task="regression",
        )
        bins = ref.bins[0]
        top = share[[int(c[1:]) for c in bins.categories]]
        probs = np.concatenate([top, [1.0 - top.sum(), 0.0]])  # + "other", missing
        flagged = 0
        for _ in range(100):
            window = {"c": ColumnCounts(counts=rng.multinomial(50_000, probs))}
            flagged += assess(ref.bins, ref.profile.columns, window, DriftSettings())[0].drifted
        rates.append(flagged / 100)
    print(f"\nshare of null windows flagged, per reference: {rates}")
    assert sum(rate > 0.5 for rate in rates) <= 1, rates
