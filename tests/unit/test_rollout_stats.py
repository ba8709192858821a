"""Always-valid rollout statistics (flywheel.rollout.stats): valid under peeking, by simulation.

The simulations are bench/rollout_stats.py's (seeded, vectorised; a peek after every 100
units per arm): every A/A test that ever declares a winner is a false positive, and the
share of them must stay at most alpha however often the test peeks, while the fixed-horizon
z-test peeked at the same way declares far more. Then power, the confidence sequence's
time-uniform coverage, the sample-ratio test, the scalar API against the simulated arrays,
the small-sample guards and argument validation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest
from bench.rollout_stats import (
    latency_mean,
    latency_sums,
    mean_paths,
    msprt,
    proportion_paths,
    srm_flags,
    summarise,
)

from flywheel.errors import DataError
from flywheel.rollout.stats import (
    Evidence,
    half_width,
    mean_test,
    mixture_p_value,
    naive_z_p,
    proportion_test,
    running,
    srm_test,
)

ALPHA = 0.05
SIMS = 2_000


def _report(name: str, row: dict[str, Any]) -> str:
    median = row["median_n_per_arm"]
    text = (
        f"{name}: mSPRT ever declared {row['ever_declared']['rate']:.2%}, naive z at every peek "
        f"{row['naive_ever_declared']['rate']:.2%}, right winner {row['right_winner']['rate']:.2%}"
        f", median n per arm at decision {median}, CS coverage {row['coverage']['rate']:.2%}"
    )
    print(text)
    return text


# ------------------------------------------------------------------ simulations


def test_aa_proportions_peeking_keeps_msprt_within_alpha_but_not_the_naive_z_test() -> None:
    """2,000 A/A tests at 10%, a peek every 100 per arm up to 20,000 (200 peeks)."""
    paths = proportion_paths(np.random.default_rng(11), SIMS, 0.10, 0.10)
    row = summarise(paths, msprt(paths, ALPHA), ALPHA)
    msg = _report("A/A 10%", row)
    assert row["ever_declared"]["rate"] <= ALPHA, msg
    assert row["naive_ever_declared"]["rate"] > 3 * ALPHA, msg
    # in an A/A test the interval holds the truth (0) exactly when nothing was declared
    assert row["coverage"]["count"] == SIMS - row["ever_declared"]["count"], msg


def test_power_and_time_uniform_coverage_on_proportions() -> None:
    """10% -> 12%: found in >= 80% of runs within 20,000 per arm, the right way round, and
    the confidence sequence holds the true +2 points at every one of the 200 peeks in
    >= 95% of runs."""
    paths = proportion_paths(np.random.default_rng(12), SIMS, 0.10, 0.12)
    row = summarise(paths, msprt(paths, ALPHA), ALPHA)
    msg = _report("10% -> 12%", row)
    assert row["right_winner"]["rate"] >= 0.80, msg
    assert row["wrong_winner"]["rate"] <= ALPHA, msg
    assert row["median_n_per_arm"] is not None and row["median_n_per_arm"] < 20_000, msg
    assert row["coverage"]["rate"] >= 1 - ALPHA, msg


@pytest.mark.parametrize(
    ("shape", "sims", "peeks", "effect"),
    [("normal", SIMS, 200, 0.03), ("lognormal", 500, 100, 0.05)],
)
def test_latency_means_aa_within_alpha_power_and_coverage(
    shape: str, sims: int, peeks: int, effect: float
) -> None:
    """Latency-like means (normal: 100 ms sd 30, 2,000 tests to 20k per arm; lognormal:
    median 100 ms sigma 0.5, 500 tests to 10k per arm): A/A within alpha, a challenger
    ``effect`` slower found (lower is better: the champion wins) in >= 80% of runs."""
    sums = latency_sums(np.random.default_rng(13), sims, shape, peeks=peeks)
    null = mean_paths(sums, shape, 0.0)
    aa = summarise(null, msprt(null, ALPHA), ALPHA)
    msg = _report(f"latency {shape} A/A", aa)
    assert aa["ever_declared"]["rate"] <= ALPHA, msg
    assert aa["naive_ever_declared"]["rate"] > 3 * ALPHA, msg
    slower = mean_paths(sums, shape, effect)
    assert slower.truth == pytest.approx(effect * latency_mean(shape))
    row = summarise(slower, msprt(slower, ALPHA), ALPHA)
    msg = _report(f"latency {shape} {effect:.0%} slower", row)
    assert row["right_winner"]["rate"] >= 0.80, msg
    assert row["coverage"]["rate"] >= 1 - ALPHA, msg
    # the scalar API on one test's last aggregates: lower is better, so the champion wins
    s_a, ss_a, s_b, ss_b = (float(a[0, -1]) for a in sums)
    n = int(slower.n[-1])
    scale = 1 + effect
    last = mean_test(
        "latency_ms", n, s_a, ss_a, n, scale * s_b, scale**2 * ss_b, higher_is_better=False
    )
    assert last.decided and last.winner == "champion" and last.low > 0, last


def test_srm_holds_at_the_configured_share_and_flags_a_mismatch() -> None:
    """A 10% split observed at 10%: ever flagged in at most alpha of 1,000 runs (a peek per
    1,000 users up to 100k), at alpha 0.001 and at 0.05; observed at 12%: flagged in all."""
    rng = np.random.default_rng(14)
    for alpha in (0.001, 0.05):
        null = srm_flags(rng, 1_000, 0.10, alpha=alpha, peeks=100)
        print(f"SRM at 10% of 10%, alpha {alpha}: flagged {null['flagged']['rate']:.2%}")
        assert null["flagged"]["rate"] <= alpha, null
    off = srm_flags(rng, 200, 0.12, alpha=0.001, peeks=100)
    print(
        f"SRM at 12% of 10%: flagged {off['flagged']['rate']:.1%}, "
        f"median users at the flag {off['median_users_at_flag']}"
    )
    assert off["flagged"]["rate"] == 1.0, off
    flagged = srm_test(8_800, 1_200, 0.10)
    assert flagged.decided and flagged.low > 0 and flagged.winner is None
    assert not srm_test(9_000, 1_000, 0.10).decided


# ------------------------------------------------------------------ the scalar API


def test_scalar_api_chained_with_previous_p_matches_the_simulation() -> None:
    paths = proportion_paths(np.random.default_rng(15), 3, 0.10, 0.115, peeks=60)
    seq = msprt(paths, ALPHA)
    x_a = np.rint(paths.mean_a * paths.n).astype(int)
    x_b = np.rint(paths.mean_b * paths.n).astype(int)
    for i in range(3):
        p = 1.0
        for k, n in enumerate(paths.n.astype(int).tolist()):
            ev = proportion_test("acc", n, int(x_a[i, k]), n, int(x_b[i, k]), previous_p=p)
            p = ev.p_value
            assert ev.p_value == pytest.approx(seq.p_value[i, k], rel=1e-9, abs=1e-300)
            assert (ev.low, ev.high) == pytest.approx((seq.low[i, k], seq.high[i, k]))
    sums = latency_sums(np.random.default_rng(16), 2, "lognormal", peeks=5)
    slower = mean_paths(sums, "lognormal", 0.05)
    seq = msprt(slower, ALPHA)
    s_a, ss_a, s_b, ss_b = sums
    arm_a = (500, float(s_a[0, 4]), float(ss_a[0, 4]))
    arm_b = (500, 1.05 * float(s_b[0, 4]), 1.05**2 * float(ss_b[0, 4]))
    ev = mean_test(
        "latency", *arm_a, *arm_b, higher_is_better=False, previous_p=float(seq.p_value[0, 3])
    )
    assert ev.p_value == pytest.approx(seq.p_value[0, 4], rel=1e-9)
    assert (ev.low, ev.high) == pytest.approx((seq.low[0, 4], seq.high[0, 4]))


def test_log_space_p_value_equals_the_direct_formula_and_the_interval_inverts_it() -> None:
    rng = np.random.default_rng(17)
    variance = rng.uniform(1e-5, 1e-3, 200)
    tau2 = rng.uniform(1e-5, 1e-3, 200)
    theta = rng.normal(0, 3, 200) * np.sqrt(variance)
    lam = np.sqrt(variance / (variance + tau2)) * np.exp(
        theta**2 * tau2 / (2 * variance * (variance + tau2))
    )
    assert mixture_p_value(theta, variance, tau2) == pytest.approx(np.minimum(1, 1 / lam))
    # the interval is {theta : p(theta) > alpha}: at its edge the p-value is exactly alpha
    edge = half_width(variance, tau2, ALPHA)
    assert mixture_p_value(edge, variance, tau2) == pytest.approx(ALPHA)
    assert mixture_p_value(1e6, 1e-6, 1e-4) == 0.0  # no overflow, no warning


def test_decided_exactly_when_the_interval_excludes_zero_and_winner_follows_the_direction() -> None:
    for x_b in range(80, 150, 5):
        ev = proportion_test("error_rate", 1_000, 100, 1_000, x_b, higher_is_better=False)
        assert ev.decided == (ev.low > 0 or ev.high < 0), ev
        assert ev.difference == pytest.approx(x_b / 1_000 - 0.1)
        if ev.decided:
            assert ev.winner == ("champion" if x_b > 100 else "challenger"), ev
        else:
            assert ev.winner is None
    up = proportion_test("accuracy", 5_000, 500, 5_000, 650)
    assert up.decided and up.winner == "challenger" and up.low > 0
    assert json.loads(json.dumps(up.to_dict(), allow_nan=False))["winner"] == "challenger"
    assert up.tau == pytest.approx(0.05 * math.sqrt(0.5 * (0.1 * 0.9 + 0.13 * 0.87)), rel=0.01)


def test_previous_p_keeps_the_p_value_from_rising_and_running_intersects() -> None:
    first = proportion_test("accuracy", 5_000, 500, 5_000, 650)
    later = proportion_test("accuracy", 6_000, 600, 6_000, 640, previous_p=first.p_value)
    fresh = proportion_test("accuracy", 6_000, 600, 6_000, 640)
    assert fresh.p_value > first.p_value  # the evidence weakened ...
    assert later.p_value == first.p_value and later.decided  # ... the p-value did not rise
    folded = running(first, fresh)
    assert folded.p_value == first.p_value and folded.decided
    assert (folded.low, folded.high) == (max(first.low, fresh.low), min(first.high, fresh.high))
    assert folded.low > 0 and folded.winner == "challenger"
    assert running(None, fresh) is fresh
    with pytest.raises(DataError, match="one test's peeks"):
        running(first, proportion_test("recall", 10, 1, 10, 2))


def test_the_srm_mixture_is_the_exact_beta_binomial_ratio() -> None:
    """The closed form (log-Beta functions) against a numerical integral over the share."""
    n_a, n_b, q0, tau = 900, 130, 0.1, 0.02
    ev = srm_test(n_a, n_b, q0, tau=tau, alpha=0.05)
    c = q0 * (1 - q0) / tau**2 - 1
    q = np.linspace(1e-6, 1 - 1e-6, 400_001)
    log_prior = (c * q0 - 1) * np.log(q) + (c * (1 - q0) - 1) * np.log1p(-q)
    log_ratio = n_b * np.log(q / q0) + n_a * np.log((1 - q) / (1 - q0))
    lr = np.exp(log_prior + log_ratio).sum() / np.exp(log_prior).sum()
    assert ev.p_value == pytest.approx(min(1.0, 1 / lr), rel=1e-4)
    assert ev.champion == q0 and ev.challenger == pytest.approx(n_b / (n_a + n_b))


def test_naive_z_p_is_the_two_sided_pooled_z_test() -> None:
    pooled = 230 / 2_000
    z = 0.03 / math.sqrt(pooled * (1 - pooled) * 2 / 1_000)
    assert naive_z_p(1_000, 100, 1_000, 130) == pytest.approx(2 * (1 - NormalDist().cdf(z)))
    assert naive_z_p(1_000, 0, 1_000, 0) == 1.0
    assert naive_z_p(0, 0, 10, 3) == 1.0


# ------------------------------------------------------------------ guards and validation


@pytest.mark.parametrize(
    "make",
    [
        lambda: proportion_test("acc", 1, 1, 500, 40),
        lambda: proportion_test("acc", 0, 0, 0, 0),
        lambda: mean_test("latency", 1, 5.0, 25.0, 100, 500.0, 2600.0),
        lambda: mean_test("latency", 50, 150.0, 450.0, 50, 200.0, 800.0),  # both constant
        lambda: srm_test(1, 0, 0.5),
    ],
)
def test_too_little_data_is_undecided_with_an_infinite_interval(
    make: Callable[[], Evidence],
) -> None:
    ev = make()
    assert isinstance(ev, Evidence)
    assert not ev.decided and ev.p_value == 1.0 and ev.winner is None
    assert ev.low == -math.inf and ev.high == math.inf
    data = json.loads(json.dumps(ev.to_dict(), allow_nan=False))
    assert data["low"] is None and data["high"] is None and data["p_value"] == 1.0


def test_a_zero_count_arm_does_not_claim_certainty() -> None:
    """0 of 30 against 1 of 30: plug-in p(1-p) would give the champion no variance."""
    ev = proportion_test("error_rate", 30, 0, 30, 1, higher_is_better=False)
    assert not ev.decided and 0 < ev.p_value <= 1 and math.isfinite(ev.high)


@pytest.mark.parametrize(
    ("call", "field", "rule"),
    [
        (lambda: proportion_test("m", -1, 0, 10, 1), "n_a", ">= 0"),
        (lambda: proportion_test("m", 10, 11, 10, 1), "x_a", "at most n_a"),
        (lambda: proportion_test("m", 10, 1, 10, 12), "x_b", "at most n_b"),
        (lambda: proportion_test("m", 10.5, 1, 10, 1), "n_a", "whole number"),  # type: ignore[arg-type]
        (lambda: proportion_test("m", 10, 1, 10, 1, alpha=0), "alpha", "between 0 and 1"),
        (lambda: proportion_test("m", 10, 1, 10, 1, alpha=1.0), "alpha", "between 0 and 1"),
        (lambda: proportion_test("m", 10, 1, 10, 1, alpha=math.nan), "alpha", "finite"),
        (lambda: proportion_test("m", 10, 1, 10, 1, tau=0.0), "tau", "> 0"),
        (lambda: proportion_test("m", 10, 1, 10, 1, previous_p=1.5), "previous_p", "[0, 1]"),
        (lambda: mean_test("m", 10, 5.0, 1.0, 10, 5.0, 9.0), "sumsq_a", "at least"),
        (lambda: mean_test("m", 10, 5.0, 9.0, -3, 5.0, 9.0), "n_b", ">= 0"),
        (lambda: mean_test("m", 10, math.inf, 9.0, 10, 5.0, 9.0), "sum_a", "finite"),
        (lambda: srm_test(10, 10, 1.0), "expected_b_share", "between 0 and 1"),
        (lambda: srm_test(10, -1, 0.5), "n_b", ">= 0"),
        (lambda: naive_z_p(10, 11, 10, 1), "x_a", "at most n_a"),
    ],
)
def test_bad_arguments_raise_data_error_naming_the_field_and_rule(
    call: Callable[[], object], field: str, rule: str
) -> None:
    with pytest.raises(DataError) as info:
        call()
    assert info.value.details["field"] == field
    assert field in str(info.value) and rule in str(info.value)


def test_a_difference_of_rates_is_bounded_by_one() -> None:
    """290 of 290 right against 0 of 310: the difference is 1, and its interval (the
    helper saw [0.984, 1.016]) never leaves [-1, 1]; nor before data enough to judge."""
    ev = proportion_test("accuracy", 310, 0, 290, 290)
    assert ev.decided and ev.winner == "challenger"
    assert -1.0 <= ev.low <= ev.high <= 1.0 and ev.high == 1.0, ev
    early = proportion_test("accuracy", 3, 1, 3, 2)
    assert -1.0 <= early.low <= early.high <= 1.0, early
