"""Drift monitoring on synthetic data: what is flagged, what is not, and why.

Every window is counted on the reference's bins (``count_window``) and judged by
``evaluate_window``; the statistics themselves (Benjamini-Hochberg, the size buckets of the
null, merging window profiles, persistence) are checked against hand-computed answers.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from flywheel.monitoring.decide import MonitorSettings, WindowResult, decide, evaluate_window
from flywheel.monitoring.drift import FeatureDrift, benjamini_hochberg, size_bucket
from flywheel.monitoring.profile import PREDICTION, SCORE, Reference, WindowProfile
from flywheel.monitoring.reference import build_reference, score_columns
from flywheel.monitoring.window import LABEL, count_window
from flywheel.schema import FeatureSpec

NUMERIC = [f"x{i}" for i in range(5)]
SPECS = [*(FeatureSpec(n, "numeric") for n in NUMERIC), FeatureSpec("c", "categorical")]
LEVELS, SHARES = ["a", "b", "c", "d"], [0.4, 0.3, 0.2, 0.1]


def _frame(
    rng: np.random.Generator,
    n: int,
    *,
    shift: float = 0.0,
    new_category: float = 0.0,
    missing: float = 0.0,
) -> pa.Table:
    """Five N(0, 1) features (x0 moved by ``shift`` sigma, a share ``missing`` of x1 and of
    c missing) and one categorical c (a share ``new_category`` replaced by "zz")."""
    cols: dict[str, object] = {name: rng.normal(0.0, 1.0, n) for name in NUMERIC}
    cols["x0"] = cols["x0"] + shift  # type: ignore[operator]
    if missing:
        x1 = np.asarray(cols["x1"])
        x1[rng.random(n) < missing] = np.nan
    c = rng.choice(LEVELS, n, p=SHARES).astype(object)
    if new_category:
        c[rng.random(n) < new_category] = "zz"
    if missing:
        c[rng.random(n) < missing] = None
    cols["c"] = pa.array(c.tolist(), pa.string())
    return pa.table(cols)


@pytest.fixture(scope="module")
def reference() -> Reference:
    rng = np.random.default_rng(101)
    return build_reference(
        model="m",
        version="1",
        source="test",
        frame=_frame(rng, 5000),
        specs=SPECS,
        task="regression",
    )


def _judge(reference: Reference, frame: pa.Table, **settings: object) -> WindowResult:
    window = count_window(reference, [frame])
    return evaluate_window(reference, window, "w", MonitorSettings(**settings))  # type: ignore[arg-type]


def _by_name(result: WindowResult) -> dict[str, FeatureDrift]:
    return {f.name: f for f in result.features}


# --------------------------------------------------------------------------- flagged or not


def test_a_small_mean_shift_in_one_feature_is_flagged_and_only_there(reference: Reference) -> None:
    rng = np.random.default_rng(1)
    result = _judge(reference, _frame(rng, 5000, shift=0.2))
    feats = _by_name(result)
    assert result.drifted_features == ["x0"]
    x0 = feats["x0"]
    assert x0.drifted and x0.stat == "w1"
    assert 0.15 < x0.value < 0.25  # W1/sigma of a 0.2 sigma shift
    assert x0.value > x0.null_q95 and x0.p_value < 0.01
    for name in ("x1", "x2", "x3", "x4", "c"):
        assert not feats[name].drifted, feats[name].to_dict()
    # one feature in six (uniform importance) passes drift_share 0.1: the window drifts
    assert result.drift and result.verdict
    assert result.drift_share == pytest.approx(1 / 6)
    assert "x0" in result.reason


def test_a_tiny_shift_is_below_the_effect_threshold(reference: Reference) -> None:
    rng = np.random.default_rng(2)
    result = _judge(reference, _frame(rng, 5000, shift=0.02))
    x0 = _by_name(result)["x0"]
    assert not x0.drifted
    assert x0.value < x0.threshold == 0.1
    assert "below the effect threshold" in x0.reason
    assert result.drifted_features == [] and not result.verdict
    assert result.reason == "no drift"


def test_a_shift_below_threshold_stays_unflagged_even_at_a_million_rows(
    reference: Reference,
) -> None:
    """At 1M rows the p-value is tiny for any shift: only the effect threshold holds it back."""
    rng = np.random.default_rng(3)
    result = _judge(reference, _frame(rng, 1_000_000, shift=0.05))
    x0 = _by_name(result)["x0"]
    # significant (beyond the null, KS p tiny): a test alone would call this drift ...
    assert x0.value > x0.null_q95 and x0.p_value < 0.01
    assert x0.stats["ks_p"] < 1e-3
    # ... but the effect is below the threshold
    assert not x0.drifted and x0.value < 0.1
    assert "below the effect threshold" in x0.reason


def test_a_new_category_at_20_percent_is_flagged(reference: Reference) -> None:
    rng = np.random.default_rng(4)
    result = _judge(reference, _frame(rng, 5000, new_category=0.2))
    c = _by_name(result)["c"]
    assert c.drifted and c.stat == "js"
    assert c.unseen_share == pytest.approx(0.2, abs=0.02)
    assert c.stats["linf"] == pytest.approx(0.2, abs=0.03)  # the "other" bin
    assert result.drifted_features == ["c"]
    # the same window without the new value: nothing unseen, nothing flagged
    plain = _by_name(_judge(reference, _frame(rng, 5000)))["c"]
    assert plain.unseen_share == 0.0 and not plain.drifted


def test_missing_values_going_from_0_to_30_percent_is_drift(reference: Reference) -> None:
    rng = np.random.default_rng(5)
    result = _judge(reference, _frame(rng, 5000, missing=0.3))
    feats = _by_name(result)
    for name in ("x1", "c"):
        f = feats[name]
        assert f.drifted, f.to_dict()
        assert f.missing_rate[0] == 0.0
        assert f.missing_rate[1] == pytest.approx(0.3, abs=0.02)
    assert sorted(result.drifted_features) == ["c", "x1"]


def test_text_in_a_numeric_column_is_counted_as_invalid(reference: Reference) -> None:
    rng = np.random.default_rng(6)
    frame = _frame(rng, 5000)
    x2 = [f"{v:.6f}" for v in frame.column("x2").to_numpy()]
    rows = rng.choice(5000, 138, replace=False)
    for i in rows[:137]:
        x2[i] = "not a number"
    x2[rows[137]] = None  # and one real missing value
    frame = frame.set_column(frame.schema.get_field_index("x2"), "x2", pa.array(x2, pa.string()))
    window = count_window(reference, [frame])
    counts = window.columns["x2"]
    assert counts.invalid == 137
    assert counts.counts[-1] == 138  # invalid values are counted as missing, with the null
    assert counts.counts.sum() == 5000
    result = evaluate_window(reference, window, "w", MonitorSettings())
    x2f = _by_name(result)["x2"]
    assert x2f.invalid == 137
    assert "values of the wrong type in x2 (137)" in result.reason
    assert all(f.invalid == 0 for f in result.features if f.name != "x2")


def test_a_window_below_min_rows_gives_no_verdict(reference: Reference) -> None:
    rng = np.random.default_rng(7)
    result = _judge(reference, _frame(rng, 150, shift=2.0))
    assert result.status == "insufficient data" and not result.verdict
    assert result.features == [] and "min_rows 200" in result.reason


# --------------------------------------------------------------------------- the statistics


def test_benjamini_hochberg_against_a_hand_computed_example() -> None:
    # m = 6, level 0.05: the critical values k * 0.05 / 6 are
    #   0.00833, 0.01667, 0.025, 0.03333, 0.04167, 0.05
    # sorted p-values 0.004 0.012 0.030 0.032 0.2 0.6: rank 3 (0.030 > 0.025) fails on its
    # own, rank 4 (0.032 <= 0.0333) passes, so the step-up procedure rejects ranks 1-4
    # (a step-down procedure would stop at rank 2; Bonferroni, 0.0083, at rank 1).
    p = [0.030, 0.6, 0.004, 0.2, 0.032, 0.012]
    assert benjamini_hochberg(p, 0.05) == [True, False, True, False, True, True]
    # at level 0.01 the critical values are 0.00167, 0.00333, ...: nothing passes
    assert benjamini_hochberg(p, 0.01) == [False] * 6
    assert benjamini_hochberg([], 0.05) == []
    assert benjamini_hochberg([0.04], 0.05) == [True]
    assert benjamini_hochberg([0.04, 0.04], 0.05) == [True, True]  # ties: both at rank 2


def test_benjamini_hochberg_agrees_with_scipy_on_random_p_values() -> None:
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(8)
    for _ in range(200):
        m = int(rng.integers(1, 30))
        p = np.concatenate([rng.uniform(0, 1, m), rng.uniform(0, 0.01, int(rng.integers(0, 5)))])
        p = np.round(p, 6)  # avoid values sitting on a critical value
        expected = (false_discovery_control(p, method="bh") <= 0.05).tolist()
        assert benjamini_hochberg(p.tolist(), 0.05) == expected


def test_size_bucket_never_rounds_up() -> None:
    n = np.arange(1, 300_001)
    buckets = np.array([size_bucket(int(k)) for k in n])
    assert (buckets <= n).all()
    assert (np.diff(buckets) >= 0).all()  # monotone
    assert (buckets[:16] == n[:16]).all()  # small sizes are exact
    # and no coarser than a quarter-power of two (one bucket step, less integer rounding)
    assert (buckets >= np.floor(n / 2**0.25)).all()
    assert len(np.unique(buckets[1000:])) < 80  # a cache of few sizes, not one per n
    rng = np.random.default_rng(9)
    for k in [*rng.integers(300_000, 10**13, 2000).tolist(), 2**40, 2**40 - 1, 10**12]:
        assert size_bucket(k) <= k
        assert size_bucket(k) >= k / 2**0.25 - 1
    for power in range(5, 41):  # exact powers of two map to themselves
        assert size_bucket(2**power) == 2**power


# --------------------------------------------------------------------------- merging


def _labelled_frame(rng: np.random.Generator, n: int, new_category: float = 0.05) -> pa.Table:
    """Features with missing values and text in a numeric column, a binary score and labels."""
    t = _frame(rng, n, new_category=new_category, missing=0.1)
    x2 = [f"{v:.5f}" if rng.random() > 0.01 else "bad" for v in t.column("x2").to_numpy()]
    t = t.set_column(t.schema.get_field_index("x2"), "x2", pa.array(x2, pa.string()))
    p = 1 / (1 + np.exp(-np.asarray(t.column("x3"))))
    y = (rng.random(n) < p).astype(int).astype(object)
    y[rng.random(n) < 0.3] = None  # labels that have not arrived
    cols = score_columns("classification", ["0", "1"], (p >= 0.5).astype(int), np.c_[1 - p, p])
    for name, col in cols.items():
        t = t.append_column(name, col)
    return t.append_column(LABEL, pa.array(y.tolist(), pa.int64()))


def test_merging_two_windows_equals_counting_their_rows_together() -> None:
    rng = np.random.default_rng(10)
    base = _labelled_frame(rng, 4000, new_category=0.0)
    ref = build_reference(
        model="m",
        version="1",
        source="test",
        frame=base,
        specs=SPECS,
        task="classification",
        classes=["0", "1"],
        threshold=0.5,
    )
    a, b = _labelled_frame(rng, 7000), _labelled_frame(rng, 13000)
    merged = count_window(ref, [a]).merge(count_window(ref, [b]), ref)
    whole = count_window(ref, [pa.concat_tables([a, b])])
    assert merged.rows == whole.rows == 20000
    assert set(merged.columns) == set(whole.columns) == {*NUMERIC, "c", SCORE, PREDICTION}
    for name, m in merged.columns.items():
        w = whole.columns[name]
        np.testing.assert_array_equal(m.counts, w.counts, err_msg=name)
        assert (m.invalid, m.unseen) == (w.invalid, w.unseen), name
        np.testing.assert_allclose(m.moments, w.moments, rtol=1e-9, err_msg=name)
    assert merged.columns["x2"].invalid > 100 and merged.columns["c"].unseen > 500
    # performance counts add up exactly
    assert merged.performance is not None and whole.performance is not None
    np.testing.assert_array_equal(merged.performance.confusion, whole.performance.confusion)
    np.testing.assert_array_equal(merged.performance.score_hist, whole.performance.score_hist)
    assert merged.performance.labelled == whole.performance.labelled > 12000
    # sketches: the merged KLL quantiles are within its rank error of the exact ones
    qs = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    for name in ("x0", "x1", SCORE):
        values = np.concatenate([_present(a, name), _present(b, name)])
        got = merged.columns[name].quantiles(qs)
        assert got is not None
        ranks = np.searchsorted(np.sort(values), got) / values.size
        np.testing.assert_allclose(ranks, qs, atol=0.02, err_msg=name)
    top = dict(merged.columns["c"].top_items(3))
    assert set(top) == {"a", "b", "c"}
    assert top["a"] == pytest.approx(whole.columns["c"].counts[0], rel=0.02)
    # the merged window judges exactly as the whole one
    r1 = evaluate_window(ref, merged, "m", MonitorSettings())
    r2 = evaluate_window(ref, whole, "w", MonitorSettings())
    assert [f.to_dict() for f in r1.features] == [f.to_dict() for f in r2.features]
    # and survives a round trip through JSON
    again = WindowProfile.from_dict(json.loads(json.dumps(merged.to_dict())))
    np.testing.assert_array_equal(again.columns["x0"].counts, merged.columns["x0"].counts)
    assert again.columns["x0"].quantiles([0.5]) == merged.columns["x0"].quantiles([0.5])


def _present(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_string(col.type):
        out = []
        for v in col.to_pylist():
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                continue
        values = np.asarray(out)
    else:
        values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=float)
    return values[~np.isnan(values)]


# --------------------------------------------------------------------------- persistence


def _results(verdicts: list[bool | None]) -> list[WindowResult]:
    """One result per verdict; None is a window with insufficient data."""
    out = []
    for i, v in enumerate(verdicts):
        r = WindowResult(window=str(i), rows=1000, model="m", version="1", reference="r")
        if v is None:
            r.status, r.rows, r.verdict = "insufficient data", 10, True
        else:
            r.verdict = v
        out.append(r)
    return out


def _alarms(verdicts: list[bool | None], **kw: object) -> list[bool]:
    return [r.alarm for r in decide(_results(verdicts), MonitorSettings(**kw))]  # type: ignore[arg-type]


def test_persistence_two_of_three() -> None:
    assert _alarms([True, False, True]) == [False, False, True]
    assert _alarms([True]) == [False]
    assert _alarms([True, True]) == [False, True]
    assert _alarms([True, False, False, True]) == [False, False, False, False]
    assert _alarms([False, True, True, False]) == [False, False, True, False]  # needs a verdict now
    results = decide(_results([True]), MonitorSettings())
    assert "not yet persistent (1 of the last 1 windows, alarm at 2 of 3)" in results[0].reason
    # history: the verdicts before this batch of windows count
    assert [r.alarm for r in decide(_results([True]), MonitorSettings(), history=[True])] == [True]
    assert [
        r.alarm for r in decide(_results([True]), MonitorSettings(), history=[True, False, False])
    ] == [False]


def test_insufficient_data_windows_are_skipped() -> None:
    # skipped, not counted as "no drift": the verdicts seen are [T, F, T] -> alarm at the end
    assert _alarms([True, False, None, None, True]) == [False, False, False, False, True]
    # and they never alarm themselves, even right after a persistent verdict
    assert _alarms([True, True, None]) == [False, True, False]


def test_cooldown_suppresses_the_first_windows_of_a_version() -> None:
    assert _alarms([True, True, True, True], cooldown=3) == [False, False, False, True]
    results = decide(_results([True, True]), MonitorSettings(cooldown=3))
    assert "cooldown (2 of 3 windows" in results[1].reason
    # insufficient-data windows do not use up the cooldown
    assert _alarms([True, None, None, True, True, True], cooldown=3) == [False] * 5 + [True]
    assert _alarms([True, True, True, True], persist_k=1, persist_m=1) == [True] * 4


# --------------------------------------------------------------------------- end to end


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _multiclass(
    rng: np.random.Generator, n: int, shift: float = 0.0, label_share: float = 1.0
) -> pa.Table:
    classes = np.array(["setosa", "versicolor", "virginica"])
    x = rng.normal(0.0, 1.0, (n, 3))
    x[:, 0] += shift
    proba = _softmax(x @ np.array([[2.0, -1.0, 0.0], [0.0, 1.5, -1.5], [-0.5, 0.0, 1.0]]))
    truth = np.array([rng.choice(3, p=p) for p in proba])
    cols = {"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2]}
    table = pa.table(cols)
    for name, col in score_columns(
        "classification", classes.tolist(), classes[proba.argmax(1)], proba
    ).items():
        table = table.append_column(name, col)
    labels = classes[truth].astype(object)
    labels[rng.random(n) >= label_share] = None
    return table.append_column(LABEL, pa.array(labels.tolist(), pa.string()))


def test_a_multiclass_classifier_end_to_end() -> None:
    rng = np.random.default_rng(11)
    specs = [FeatureSpec(f"x{i}", "numeric") for i in range(3)]
    ref_rows = _multiclass(rng, 5000)
    correct = np.asarray(ref_rows.column(PREDICTION).to_pylist()) == np.asarray(
        ref_rows.column(LABEL).to_pylist()
    )
    ref = build_reference(
        model="iris",
        version="2",
        source="holdout",
        frame=ref_rows,
        specs=specs,
        task="classification",
        classes=["setosa", "versicolor", "virginica"],
        metrics={"accuracy": float(correct.mean())},
        primary_metric="accuracy",
    )
    ref = Reference.from_dict(json.loads(json.dumps(ref.to_dict())))  # as stored
    assert ref.positive is None and ref.calibration is not None
    assert sum(ref.calibration["rows"]) == 5000
    assert sum(ref.calibration["hits"]) == int(correct.sum())
    assert ref.bins_of(PREDICTION).kind == "categorical"

    same = evaluate_window(
        ref, count_window(ref, [_multiclass(rng, 8000)]), "same", MonitorSettings()
    )
    assert not same.verdict and not same.prediction_drift, same.reason
    perf = same.performance
    assert perf is not None and perf.realised is not None and perf.estimated is not None
    assert set(perf.realised) == {"accuracy", "f1_macro"}
    acc = perf.realised["accuracy"]
    assert perf.estimated.low["accuracy"] <= acc <= perf.estimated.high["accuracy"]
    assert abs(acc - ref.metrics["accuracy"]) < 0.03
    json.dumps(same.to_dict())

    moved = evaluate_window(
        ref, count_window(ref, [_multiclass(rng, 8000, shift=1.0)]), "moved", MonitorSettings()
    )
    assert moved.drift and "x0" in moved.drifted_features
    assert moved.prediction_drift  # the predicted classes follow x0

    unlabelled = evaluate_window(
        ref, count_window(ref, [_multiclass(rng, 8000, label_share=0.1)]), "late", MonitorSettings()
    )
    assert unlabelled.performance is not None
    assert unlabelled.performance.realised is None  # 10% labelled < min_completeness 50%
    assert "below 50%: realised metrics wait for labels" in unlabelled.performance.reason
    assert unlabelled.performance.estimated is not None


def _regression(
    rng: np.random.Generator, n: int, noise: float = 0.5, shift: float = 0.0
) -> pa.Table:
    x = rng.normal(0.0, 1.0, (n, 2))
    x[:, 1] += shift
    region = rng.choice(["n", "s", "e"], n)
    truth = 3 * x[:, 0] - x[:, 1] + (region == "n") + rng.normal(0, 1.0, n)
    predicted = 3 * x[:, 0] - x[:, 1] + (region == "n") + rng.normal(0, noise, n)
    table = pa.table({"x0": x[:, 0], "x1": x[:, 1], "region": region})
    for name, col in score_columns("regression", None, predicted, None).items():
        table = table.append_column(name, col)
    return table.append_column(LABEL, pa.array(truth))


def test_a_regression_model_end_to_end() -> None:
    rng = np.random.default_rng(12)
    specs = [
        FeatureSpec("x0", "numeric"),
        FeatureSpec("x1", "numeric"),
        FeatureSpec("region", "categorical"),
    ]
    ref_rows = _regression(rng, 5000)
    err = np.asarray(ref_rows.column(SCORE)) - np.asarray(ref_rows.column(LABEL))
    rmse = float(np.sqrt(np.mean(err**2)))
    ref = build_reference(
        model="price",
        version="1",
        source="holdout",
        frame=ref_rows,
        specs=specs,
        task="regression",
        metrics={"rmse": rmse},
        primary_metric="rmse",
    )
    ref = Reference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert ref.calibration is None and ref.classes is None
    assert [b.name for b in ref.bins] == ["x0", "x1", "region", SCORE]  # no class column

    same = evaluate_window(
        ref, count_window(ref, [_regression(rng, 6000)]), "same", MonitorSettings()
    )
    assert not same.verdict, same.reason
    assert same.performance is not None and same.performance.realised is not None
    assert same.performance.realised["rmse"] == pytest.approx(rmse, rel=0.05)
    assert same.performance.estimated is None  # no label-free estimate for a regressor

    worse = evaluate_window(
        ref, count_window(ref, [_regression(rng, 6000, noise=1.5)]), "worse", MonitorSettings()
    )
    assert worse.performance is not None and worse.performance.breach
    assert worse.verdict and not worse.drift
    assert "realised rmse" in worse.reason

    moved = evaluate_window(
        ref, count_window(ref, [_regression(rng, 6000, shift=0.5)]), "moved", MonitorSettings()
    )
    assert "x1" in moved.drifted_features and moved.verdict
    json.dumps(moved.to_dict())


def test_a_labelled_row_without_a_score_is_counted() -> None:
    rng = np.random.default_rng(13)
    base = _labelled_frame(rng, 2000, new_category=0.0)
    ref = build_reference(
        model="m",
        version="1",
        source="test",
        frame=base,
        specs=SPECS,
        task="classification",
        classes=["0", "1"],
        threshold=0.5,
    )
    window = _labelled_frame(rng, 1000)
    score = np.asarray(window.column(SCORE))
    missing = pa.array(score, mask=np.arange(score.size) < 10)  # ten rows lost their score
    window = window.set_column(window.schema.get_field_index(SCORE), SCORE, missing)
    profile = count_window(ref, [window])
    assert profile.columns[SCORE].counts[-1] == 10
    assert profile.performance is not None and profile.performance.labelled > 600
