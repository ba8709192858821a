"""Always-valid statistics for rollouts: p-values and intervals that stay valid under peeking.

A rollout looks at its counters after every interval and stops the moment the numbers say
so. A fixed-horizon test (the z-test of a textbook A/B readout) checked that way declares a
winner in an A/A test far more often than its alpha says: peeking every 100 users per arm
up to 20,000 at a 10% base rate, about 40% of the time at alpha = 0.05
(``bench/rollout_stats.py``). The tests here are valid at every peek at once: the chance
that an A/A test *ever* crosses alpha is at most alpha, however often it is looked at.

Method: the normal-mixture mSPRT (Johari, Pekelis, Walsh, "Always valid inference",
Operations Research 2022; Optimizely's Stats Engine) on the difference
theta = challenger - champion. With ``theta_hat = mean_b - mean_a`` and its variance
``V = var_a / n_a + var_b / n_b``, the likelihood ratio of theta ~ N(0, tau^2) against
theta = 0 is::

    Lambda = sqrt(V / (V + tau^2)) * exp(theta_hat^2 tau^2 / (2 V (V + tau^2)))

a martingale under the null, so by Ville's inequality P(ever Lambda >= 1/alpha) <= alpha.
The always-valid p-value is ``min(1, 1/Lambda)``, made monotone by a running minimum (pass
``previous_p``, or fold evidences with :func:`running`), and the matching confidence
sequence (the thetas whose own test does not reject) is::

    theta_hat +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))

so ``p_value <= alpha`` exactly when the interval excludes 0. V is a plug-in estimate
from each arm's own variance (the normal approximation), good once each arm has a few
dozen units; a proportion's variance is taken from ``(x + 0.5) / (n + 1)`` so an arm with
no successes yet does not claim zero variance.

The mixing scale tau. For a given V the interval is narrowest at tau^2 ~ 8 V (alpha
0.05), which is about where an effect of size tau first crosses it: tau is best set to the
smallest difference worth detecting, in the metric's own units; pass it as ``tau``.
Without it, tau is ``EFFECT_SD`` = 0.05 standard deviations of one unit's outcome, pooled
over the two arms: ``0.05 * sqrt(p (1 - p))`` for a proportion p (0.015 at a 10% rate),
``0.05 * sd`` for a mean: a standardised "small" effect, since a model rollout cares about
regressions of a few percent. Simulated at a 10% rate (2,000 tests, peeks every 100 per
arm to 20k, tau fixed at k sd), k = 0.05 found 10% -> 11% in 67% of tests (0.025: 67%,
0.1: 61%, 0.2: 54%) and 10% -> 12% at a median 4,000 per arm (0.025: 5,200, 0.1: 3,800),
with the A/A rate at 1-3% for all four. Under the null the pooled sd estimates the arms'
common sd and says nothing about the difference's sign, so the default keeps the test
(approximately) valid, which the simulations confirm.

Sample-ratio mismatch (:func:`srm_test`) uses the exact one-sample version: a Beta mixture
over the challenger's share against the configured share (Lindon and Malek, "Anytime-valid
inference for multinomial count data", 2022, with two categories), valid at any count.

Everything takes sufficient statistics (counts, sums, sums of squares), so it runs on
aggregates summed across server replicas. Only the standard library and numpy: the
serve-only install has no scipy. The formula helpers (:func:`mixture_p_value`,
:func:`half_width`, :func:`proportion_moments`, :func:`mean_moments`,
:func:`default_tau2`) take floats or numpy arrays alike; the simulations in
``bench/rollout_stats.py`` run them on arrays, so the figures there are this code's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from flywheel.errors import DataError

__all__ = [
    "EFFECT_SD",
    "Evidence",
    "above_share",
    "default_tau2",
    "half_width",
    "mean_moments",
    "mean_test",
    "mixture_p_value",
    "naive_z_p",
    "proportion_moments",
    "proportion_test",
    "running",
    "srm_test",
]

EFFECT_SD = 0.05
"""The default mixing scale tau, in standard deviations of one unit's outcome."""

SRM_METRIC = "sample_ratio"
_EPS = float(np.finfo(float).eps)

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Evidence:
    """What one always-valid test says about ``challenger - champion`` at one peek.

    ``low``/``high`` is the (1 - alpha) confidence sequence for the difference (infinite
    before there is data enough to judge); ``p_value`` the always-valid p-value of "no
    difference"; ``decided`` is ``p_value <= alpha``. ``winner`` names the better arm by the
    difference's sign and ``higher_is_better`` once decided. For :func:`srm_test`, champion
    is the configured challenger share, challenger the observed one, decided means a
    mismatch, and winner is always None. ``tau`` is the mixing scale used (NaN if none), and
    ``higher_is_better`` the direction the winner was named by.
    """

    metric: str
    n_champion: int
    n_challenger: int
    champion: float
    challenger: float
    difference: float
    low: float
    high: float
    p_value: float
    alpha: float
    decided: bool
    winner: str | None
    tau: float = math.nan
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; non-finite numbers (an infinite interval, no estimate yet)
        become None, since JSON has no infinity."""
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in asdict(self).items()
        }


# ------------------------------------------------------------------ formulas (floats or arrays)


def mixture_p_value(difference: ArrayLike, variance: ArrayLike, tau2: ArrayLike) -> Array:
    """``min(1, 1/Lambda)`` of the normal-mixture mSPRT, computed in logs (no overflow).

    ``variance`` is the variance of ``difference``, ``tau2`` the mixing variance; both > 0.
    """
    d, v, t = (np.asarray(a, dtype=float) for a in (difference, variance, tau2))
    log_lr = 0.5 * np.log(v / (v + t)) + d * d * t / (2.0 * v * (v + t))
    return np.asarray(np.exp(-np.maximum(log_lr, 0.0)), dtype=float)


def half_width(variance: ArrayLike, tau2: ArrayLike, alpha: float) -> Array:
    """Half the width of the (1 - alpha) confidence sequence around the difference."""
    v, t = (np.asarray(a, dtype=float) for a in (variance, tau2))
    bound = 2.0 * math.log(1.0 / alpha) + np.log((v + t) / v)
    return np.asarray(np.sqrt(v * (v + t) / t * bound), dtype=float)


def proportion_moments(n: ArrayLike, x: ArrayLike) -> tuple[Array, Array]:
    """(x / n, the variance of one unit's outcome). The variance comes from
    ``(x + 0.5) / (n + 1)``, so an arm with 0 or n successes does not claim zero variance
    (which would make one lucky run of zeros look certain)."""
    n_, x_ = np.asarray(n, dtype=float), np.asarray(x, dtype=float)
    shrunk = (x_ + 0.5) / (n_ + 1.0)
    return x_ / n_, shrunk * (1.0 - shrunk)


def mean_moments(n: ArrayLike, total: ArrayLike, sumsq: ArrayLike) -> tuple[Array, Array]:
    """(mean, sample variance) from a count, a sum and a sum of squares; n >= 2.

    ``sumsq - total^2 / n`` loses digits to cancellation when the spread is tiny against
    the mean; a value within that rounding error (or below 0) is taken as zero variance.
    """
    n_, s, ss = (np.asarray(a, dtype=float) for a in (n, total, sumsq))
    mean = s / n_
    centred = ss - s * mean
    centred = np.where(centred <= 16.0 * _EPS * np.abs(ss), 0.0, centred)
    return mean, centred / (n_ - 1.0)


def default_tau2(var_a: ArrayLike, var_b: ArrayLike) -> Array:
    """``(EFFECT_SD * pooled sd)^2``: the default mixing variance (see the module doc)."""
    va, vb = np.asarray(var_a, dtype=float), np.asarray(var_b, dtype=float)
    return np.asarray(EFFECT_SD**2 * 0.5 * (va + vb), dtype=float)


# ------------------------------------------------------------------ validation


def _is_number(value: Any) -> bool:
    """A finite int or float (numpy's included); not a bool, not a string."""
    real = int | float | np.integer | np.floating
    return isinstance(value, real) and not isinstance(value, bool) and math.isfinite(value)


def _count(field: str, value: Any) -> int:
    if not (_is_number(value) and value >= 0 and value == int(value)):
        raise DataError(
            f"{field} must be a whole number >= 0 (a count), got {value!r}.", field=field
        )
    return int(value)


def _real(field: str, value: Any) -> float:
    if not _is_number(value):
        raise DataError(f"{field} must be a finite number, got {value!r}.", field=field)
    return float(value)


def _successes(n_field: str, n: Any, x_field: str, x: Any) -> tuple[int, int]:
    n_, x_ = _count(n_field, n), _count(x_field, x)
    if x_ > n_:
        raise DataError(
            f"{x_field} must be at most {n_field} (successes cannot outnumber trials), "
            f"got {x_field}={x_}, {n_field}={n_}.",
            field=x_field,
        )
    return n_, x_


def _options(alpha: Any, previous_p: Any, tau: Any) -> tuple[float, float, float | None]:
    a = _real("alpha", alpha)
    if not 0.0 < a < 1.0:
        raise DataError(f"alpha must lie strictly between 0 and 1, got {alpha!r}.", field="alpha")
    p = _real("previous_p", previous_p)
    if not 0.0 <= p <= 1.0:
        raise DataError(
            f"previous_p must lie in [0, 1] (a p-value; 1.0 at the first peek), "
            f"got {previous_p!r}.",
            field="previous_p",
        )
    if tau is None:
        return a, p, None
    t = _real("tau", tau)
    if t <= 0.0:
        raise DataError(
            f"tau must be > 0 (the smallest difference worth detecting), got {tau!r}.",
            field="tau",
        )
    return a, p, t


# ------------------------------------------------------------------ the tests


def _winner(decided: bool, difference: float, higher_is_better: bool) -> str | None:
    if not decided or math.isnan(difference) or difference == 0.0:
        return None
    return "challenger" if (difference > 0) == higher_is_better else "champion"


def _evidence(
    metric: str,
    n: tuple[int, int],
    estimates: tuple[float, float],
    interval: tuple[float, float],
    p_value: float,
    alpha: float,
    tau: float,
    higher_is_better: bool | None,
) -> Evidence:
    """One Evidence; ``higher_is_better=None`` names no winner (the SRM test)."""
    difference = estimates[1] - estimates[0]
    decided = p_value <= alpha
    winner = None if higher_is_better is None else _winner(decided, difference, higher_is_better)
    return Evidence(
        metric=metric,
        n_champion=n[0],
        n_challenger=n[1],
        champion=estimates[0],
        challenger=estimates[1],
        difference=difference,
        low=interval[0],
        high=interval[1],
        p_value=p_value,
        alpha=alpha,
        decided=decided,
        winner=winner,
        tau=tau,
        higher_is_better=True if higher_is_better is None else higher_is_better,
    )


_UNBOUNDED = (-math.inf, math.inf)


def _two_sample(
    metric: str,
    n: tuple[int, int],
    means: tuple[float, float],
    variances: tuple[float, float],
    alpha: float,
    higher_is_better: bool,
    tau: float | None,
    previous_p: float,
) -> Evidence:
    """The mSPRT on (mean_b - mean_a); undecided with an infinite interval when an arm has
    fewer than 2 units or the difference has no variance to judge it by."""
    variance = variances[0] / n[0] + variances[1] / n[1] if min(n) >= 2 else 0.0
    if not variance > 0.0 or not math.isfinite(variance):
        tau_used = tau if tau is not None else math.nan
        return _evidence(
            metric, n, means, _UNBOUNDED, previous_p, alpha, tau_used, higher_is_better
        )
    tau2 = tau * tau if tau is not None else float(default_tau2(*variances))
    difference = means[1] - means[0]
    p_value = min(previous_p, float(mixture_p_value(difference, variance, tau2)))
    half = float(half_width(variance, tau2, alpha))
    interval = (difference - half, difference + half)
    return _evidence(metric, n, means, interval, p_value, alpha, math.sqrt(tau2), higher_is_better)


def proportion_test(
    metric: str,
    n_a: int,
    x_a: int,
    n_b: int,
    x_b: int,
    *,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    tau: float | None = None,
    previous_p: float = 1.0,
) -> Evidence:
    """Always-valid test of a rate: ``x_a`` of ``n_a`` champion units against ``x_b`` of
    ``n_b`` challenger units (an error rate, accuracy on labelled rows, a conversion).

    ``tau``: the smallest difference of rates worth detecting (default 0.05 pooled sd, see
    the module doc); ``previous_p``: the p-value this test reported at the last peek, so the
    p-value never rises again. ``higher_is_better=False`` for error rates.
    """
    n_a, x_a = _successes("n_a", n_a, "x_a", x_a)
    n_b, x_b = _successes("n_b", n_b, "x_b", x_b)
    alpha, previous_p, tau = _options(alpha, previous_p, tau)
    if min(n_a, n_b) < 2:
        means = (x_a / n_a if n_a else math.nan, x_b / n_b if n_b else math.nan)
        return _two_sample(
            metric, (n_a, n_b), means, (0.0, 0.0), alpha, higher_is_better, tau, previous_p
        )
    m_a, v_a = proportion_moments(n_a, x_a)
    m_b, v_b = proportion_moments(n_b, x_b)
    out = _two_sample(
        metric,
        (n_a, n_b),
        (float(m_a), float(m_b)),
        (float(v_a), float(v_b)),
        alpha,
        higher_is_better,
        tau,
        previous_p,
    )
    # a difference of two rates lies in [-1, 1]: the sequence cut to it is as valid (an
    # unbounded one, no data enough to judge, stays unbounded: shown as n/a, not computed)
    if math.isinf(out.low) and math.isinf(out.high):
        return out
    return replace(out, low=max(out.low, -1.0), high=min(out.high, 1.0))


def _mean_arm(arm: str, n: Any, total: Any, sumsq: Any) -> tuple[int, float, float]:
    n_ = _count(f"n_{arm}", n)
    s, ss = _real(f"sum_{arm}", total), _real(f"sumsq_{arm}", sumsq)
    # Cauchy-Schwarz: sum^2 <= n * sumsq, up to rounding
    if ss < 0 or s * s > n_ * ss * (1.0 + 1e-9) + 1e-300:
        raise DataError(
            f"sumsq_{arm} must be at least sum_{arm}**2 / n_{arm} (a sum of squares of the "
            f"same values), got n_{arm}={n_}, sum_{arm}={s!r}, sumsq_{arm}={ss!r}.",
            field=f"sumsq_{arm}",
        )
    return n_, s, ss


def mean_test(
    metric: str,
    n_a: int,
    sum_a: float,
    sumsq_a: float,
    n_b: int,
    sum_b: float,
    sumsq_b: float,
    *,
    alpha: float = 0.05,
    higher_is_better: bool = True,
    tau: float | None = None,
    previous_p: float = 1.0,
) -> Evidence:
    """Always-valid test of a mean (latency, absolute error) from each arm's count, sum and
    sum of squares. ``tau``: the smallest difference of means worth detecting, in the
    metric's units (default 0.05 pooled sd); ``higher_is_better=False`` for latency and
    errors. Undecided while both arms show zero variance (nothing to judge a gap by)."""
    n_a, s_a, ss_a = _mean_arm("a", n_a, sum_a, sumsq_a)
    n_b, s_b, ss_b = _mean_arm("b", n_b, sum_b, sumsq_b)
    alpha, previous_p, tau = _options(alpha, previous_p, tau)
    means = (s_a / n_a if n_a else math.nan, s_b / n_b if n_b else math.nan)
    variances = (0.0, 0.0)
    if min(n_a, n_b) >= 2:
        _, var_a = mean_moments(n_a, s_a, ss_a)
        _, var_b = mean_moments(n_b, s_b, ss_b)
        variances = (float(var_a), float(var_b))
    return _two_sample(
        metric, (n_a, n_b), means, variances, alpha, higher_is_better, tau, previous_p
    )


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def srm_test(
    n_a: int,
    n_b: int,
    expected_b_share: float,
    *,
    alpha: float = 0.001,
    previous_p: float = 1.0,
    tau: float | None = None,
) -> Evidence:
    """Sample-ratio mismatch: is the challenger's share of units ``n_b / (n_a + n_b)`` the
    configured ``expected_b_share``? ``decided=True`` means it is not (a routing bug, a
    crashing arm, a filter on one side), and the arms' comparison cannot be trusted.

    An exact mixture SPRT on the share q: under H0 each unit joins the challenger with
    probability q0; the mixture is Beta(c q0, c (1 - q0)), whose sd ``tau`` defaults to
    ``EFFECT_SD * sqrt(q0 (1 - q0))`` (1.5 percentage points at a 10% split; a ``tau``
    near ``sqrt(q0 (1 - q0))`` or above flattens the Beta to its limit). Its
    likelihood ratio is a martingale under H0 at every count, small ones included. The
    interval (for the observed share minus the expected one) is the normal-mixture one.
    Count units of assignment (users, when routing is sticky by user): requests of the
    same user are not independent draws.
    """
    n_a, n_b = _count("n_a", n_a), _count("n_b", n_b)
    q0 = _real("expected_b_share", expected_b_share)
    if not 0.0 < q0 < 1.0:
        raise DataError(
            f"expected_b_share must lie strictly between 0 and 1 (the challenger's configured "
            f"share of traffic, e.g. 0.1 for 10%), got {expected_b_share!r}.",
            field="expected_b_share",
        )
    alpha, previous_p, tau = _options(alpha, previous_p, tau)
    total = n_a + n_b
    null_sd = math.sqrt(q0 * (1.0 - q0))
    tau = tau if tau is not None else EFFECT_SD * null_sd
    share = n_b / total if total else math.nan
    if total < 2:
        return _evidence(
            SRM_METRIC, (n_a, n_b), (q0, share), _UNBOUNDED, previous_p, alpha, tau, None
        )
    concentration = max(q0 * (1.0 - q0) / (tau * tau) - 1.0, 1e-6)
    a, b = concentration * q0, concentration * (1.0 - q0)
    log_lr = (
        _log_beta(a + n_b, b + n_a)
        - _log_beta(a, b)
        - n_b * math.log(q0)
        - n_a * math.log(1.0 - q0)
    )
    p_value = min(previous_p, math.exp(-max(log_lr, 0.0)))
    _, variance = proportion_moments(total, n_b)
    half = float(half_width(float(variance) / total, tau * tau, alpha))
    interval = (share - q0 - half, share - q0 + half)
    return _evidence(SRM_METRIC, (n_a, n_b), (q0, share), interval, p_value, alpha, tau, None)


def above_share(n: int, k: int, share: float, *, alpha: float, tau: float) -> tuple[bool, float]:
    """Are ``k`` events in ``n`` (slow answers, errors) more than ``share`` of them, beyond
    chance? The one-sample mixture SPRT of :func:`srm_test` read one-sided: True when it
    rejects ``share`` at ``alpha`` and ``k / n`` lies above it; and its p-value. Valid at
    every count, so a guardrail may ask after every batch; ``tau``: the effects it is
    tuned to, in shares (0.03: a few percentage points). No events (``n`` 0) and a share of
    1 or more (nothing can pass it) answer (False, 1.0)."""
    if n <= 0 or share >= 1.0:
        return False, 1.0
    ev = srm_test(n - k, k, share, alpha=alpha, tau=tau)
    return ev.decided and k > share * n, ev.p_value


def running(previous: Evidence | None, current: Evidence) -> Evidence:
    """``current`` made monotone over the peeks: the running minimum of the p-value and the
    running intersection of the confidence sequence (both stay valid: the statements hold
    at every peek at once). The winner then follows the intersected interval, which
    excludes 0 from the first decided peek on. An empty intersection (a chance of at most
    alpha when the model holds) falls back to the current interval."""
    if previous is None:
        return current
    if previous.metric != current.metric or previous.alpha != current.alpha:
        raise DataError(
            f"running() folds one test's peeks: previous is {previous.metric!r} at alpha "
            f"{previous.alpha}, current {current.metric!r} at alpha {current.alpha}.",
            field="previous",
        )
    p_value = min(previous.p_value, current.p_value)
    low, high = max(previous.low, current.low), min(previous.high, current.high)
    if low > high:
        low, high = current.low, current.high
    decided = p_value <= current.alpha
    winner = None
    if current.metric != SRM_METRIC:
        side = 1.0 if low > 0 else -1.0 if high < 0 else current.difference
        winner = _winner(decided, side, current.higher_is_better)
    return replace(current, p_value=p_value, low=low, high=high, decided=decided, winner=winner)


def naive_z_p(n_a: int, x_a: int, n_b: int, x_b: int) -> float:
    """The fixed-horizon two-proportion z-test's two-sided p-value (pooled variance).

    Valid only when looked at once, at a sample size fixed in advance; here only to show,
    in the benchmark and the tests, what peeking does to it. 1.0 when undefined."""
    n_a, x_a = _successes("n_a", n_a, "x_a", x_a)
    n_b, x_b = _successes("n_b", n_b, "x_b", x_b)
    if n_a == 0 or n_b == 0:
        return 1.0
    pooled = (x_a + x_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    if se == 0.0:
        return 1.0
    z = (x_b / n_b - x_a / n_a) / se
    return math.erfc(abs(z) / math.sqrt(2.0))
