"""Always-valid rollout statistics by simulation: what peeking does to a fixed-horizon test.

Each simulated test peeks after every batch of 100 units per arm, up to 20,000 per arm (200
peeks), and stops at the first peek whose p-value is at most alpha = 0.05. Counted per
setting, over ``--sims`` tests (default 2,000), with 95% Wilson intervals:

- "ever declared": the share of tests that declared a winner at some peek. In an A/A test
  (no difference) every one is a false positive: for the mSPRT of
  :mod:`flywheel.rollout.stats` it must be at most alpha, for the naive z-test checked at
  every peek it is not;
- power: the share that declared the right winner within 20,000 per arm, and the median
  units per arm at that decision (over the tests that made it);
- coverage: the share of tests whose confidence sequence held the true difference at
  every one of the 200 peeks (time-uniform coverage; the target is at least 1 - alpha).

Worlds: proportions at a 10% base rate (A/A, 10% -> 11%, 12%, 13%); latency-like means,
lognormal (median 100 ms, sigma 0.5) and normal (100 ms, sd 30), A/A and a challenger 2%,
3%, 5% slower (``higher_is_better=False``, so the right winner is the champion); the
sample-ratio test at a configured 10% split, observed at 10% (alpha 0.001 and 0.05) and at
10.5% and 12%, in batches of 1,000 users.

The simulations run the module's own formula helpers on arrays (the same code the scalar
API calls); the tests in ``tests/unit/test_rollout_stats.py`` reuse these functions.

    .venv/bin/python -m bench.rollout_stats [--sims N] [--seed S] [--json [PATH]]

Results also go to ``bench/results/rollout_stats.json``. About 30 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.monitoring_null import wilson
from flywheel.rollout.stats import (
    default_tau2,
    half_width,
    mean_moments,
    mixture_p_value,
    proportion_moments,
    srm_test,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rollout_stats.json"
ALPHA = 0.05
BATCH = 100
PEEKS = 200  # 100 per arm per peek, up to 20,000
BASE_RATE = 0.10
RATE_EFFECTS = (0.11, 0.12, 0.13)
LATENCY_EFFECTS = (0.02, 0.03, 0.05)  # the challenger this much slower
LOGNORMAL_SIGMA = 0.5
NORMAL_MEAN, NORMAL_SD = 100.0, 30.0

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Paths:
    """Each arm's estimate and unit variance at every peek: arrays of shape (sims, peeks);
    ``n`` (peeks,) is the units per arm; ``truth`` the true difference (b - a)."""

    n: Array
    mean_a: Array
    var_a: Array
    mean_b: Array
    var_b: Array
    truth: float
    naive_var: Array  # the variance the naive z-test uses (pooled, for proportions)


@dataclass(frozen=True)
class Sequence:
    """The mSPRT at every peek: running-min p-value and the confidence sequence."""

    difference: Array
    p_value: Array
    low: Array
    high: Array


def peek_sizes(batch: int = BATCH, peeks: int = PEEKS) -> Array:
    return np.arange(1, peeks + 1, dtype=float) * batch


def proportion_paths(
    rng: np.random.Generator,
    sims: int,
    p_a: float,
    p_b: float,
    *,
    batch: int = BATCH,
    peeks: int = PEEKS,
) -> Paths:
    """``sims`` tests of a rate, ``batch`` units per arm between peeks."""
    n = peek_sizes(batch, peeks)
    x_a = np.cumsum(rng.binomial(batch, p_a, (sims, peeks)), axis=1).astype(float)
    x_b = np.cumsum(rng.binomial(batch, p_b, (sims, peeks)), axis=1).astype(float)
    mean_a, var_a = proportion_moments(n, x_a)
    mean_b, var_b = proportion_moments(n, x_b)
    pooled = (x_a + x_b) / (2 * n)
    naive_var = pooled * (1 - pooled) * 2 / n
    return Paths(n, mean_a, var_a, mean_b, var_b, p_b - p_a, naive_var)


def latency_sums(
    rng: np.random.Generator,
    sims: int,
    shape: str,
    *,
    batch: int = BATCH,
    peeks: int = PEEKS,
) -> tuple[Array, Array, Array, Array]:
    """Cumulative (sum, sum of squares) per peek of two independent arms of baseline
    latency (ms). A challenger ``effect`` slower is arm b's values times (1 + effect), so
    one draw serves every effect size. Normal: the batch sum and the within-batch sum of
    squares are drawn exactly (a normal and sd^2 chi2(batch - 1), independent), not
    unit by unit."""
    sums = []
    for _arm in range(2):
        if shape == "normal":
            total = rng.normal(batch * NORMAL_MEAN, math.sqrt(batch) * NORMAL_SD, (sims, peeks))
            within = NORMAL_SD**2 * rng.chisquare(batch - 1, (sims, peeks))
            s, ss = total, within + total * total / batch
        elif shape == "lognormal":
            s, ss = np.empty((sims, peeks)), np.empty((sims, peeks))
            for k in range(peeks):
                x = 100.0 * np.exp(LOGNORMAL_SIGMA * rng.standard_normal((sims, batch)))
                s[:, k], ss[:, k] = x.sum(axis=1), np.einsum("ij,ij->i", x, x)
        else:
            raise ValueError(f"shape must be normal or lognormal, got {shape!r}")
        sums += [np.cumsum(s, axis=1), np.cumsum(ss, axis=1)]
    return sums[0], sums[1], sums[2], sums[3]


def latency_mean(shape: str) -> float:
    return NORMAL_MEAN if shape == "normal" else 100.0 * math.exp(LOGNORMAL_SIGMA**2 / 2)


def mean_paths(
    sums: tuple[Array, Array, Array, Array], shape: str, effect: float, batch: int = BATCH
) -> Paths:
    """The paths of a challenger ``effect`` slower (0: A/A) from :func:`latency_sums`."""
    s_a, ss_a, s_b, ss_b = sums
    n = peek_sizes(batch, s_a.shape[1])
    scale = 1.0 + effect
    mean_a, var_a = mean_moments(n, s_a, ss_a)
    mean_b, var_b = mean_moments(n, scale * s_b, scale * scale * ss_b)
    return Paths(
        n, mean_a, var_a, mean_b, var_b, effect * latency_mean(shape), var_a / n + var_b / n
    )


def msprt(paths: Paths, alpha: float = ALPHA, tau: float | None = None) -> Sequence:
    """The mSPRT at every peek (p-value made monotone, as ``previous_p`` does)."""
    difference = paths.mean_b - paths.mean_a
    variance = paths.var_a / paths.n + paths.var_b / paths.n
    tau2 = tau * tau if tau is not None else default_tau2(paths.var_a, paths.var_b)
    ok = variance > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(ok, mixture_p_value(difference, variance, tau2), 1.0)
        half = np.where(ok, half_width(variance, tau2, alpha), np.inf)
    low, high = difference - half, difference + half
    return Sequence(difference, np.minimum.accumulate(p, axis=1), low, high)


def naive_decided(paths: Paths, alpha: float = ALPHA) -> NDArray[np.bool_]:
    """The fixed-horizon z-test at every peek: |z| beyond the two-sided critical value
    (the same rule as ``naive_z_p(...) <= alpha``)."""
    crit = NormalDist().inv_cdf(1 - alpha / 2)
    difference = paths.mean_b - paths.mean_a
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(paths.naive_var > 0, np.abs(difference) / np.sqrt(paths.naive_var), 0.0)
    return np.asarray(z >= crit)


def rate(k: int, n: int) -> dict[str, Any]:
    return {"count": int(k), "of": int(n), "rate": k / n, "ci95": list(wilson(int(k), n))}


def summarise(paths: Paths, seq: Sequence, alpha: float = ALPHA) -> dict[str, Any]:
    """Ever declared, right and wrong winners, median units per arm at the right decision,
    time-uniform coverage of the true difference; the naive z-test's ever-declared rate.
    The right winner: the difference at the decision has the true difference's sign (the
    winner's name then follows from ``higher_is_better``); in an A/A test there is none."""
    sims = seq.p_value.shape[0]
    decided = seq.p_value <= alpha
    ever = decided.any(axis=1)
    first = np.argmax(decided, axis=1)
    sign = np.sign(seq.difference[np.arange(sims), first])
    right = ever & (sign == np.sign(paths.truth)) if paths.truth else np.zeros(sims, bool)
    at = paths.n[first[right]]
    covered = ((seq.low <= paths.truth) & (paths.truth <= seq.high)).all(axis=1)
    naive = naive_decided(paths, alpha).any(axis=1)
    return {
        "truth": paths.truth,
        "ever_declared": rate(ever.sum(), sims),
        "right_winner": rate(right.sum(), sims),
        "wrong_winner": rate((ever & ~right).sum(), sims) if paths.truth else None,
        "median_n_per_arm": float(np.median(at)) if at.size else None,
        "coverage": rate(covered.sum(), sims),
        "naive_ever_declared": rate(naive.sum(), sims),
    }


def srm_flags(
    rng: np.random.Generator,
    sims: int,
    observed: float,
    *,
    expected: float = 0.10,
    alpha: float = 0.001,
    batch: int = 1_000,
    peeks: int = PEEKS,
) -> dict[str, Any]:
    """:func:`srm_test` after every batch of ``batch`` users split with challenger share
    ``observed`` against a configured ``expected``: the share of runs ever flagged and the
    median users at the flag. Calls the public function itself (previous_p chained)."""
    to_b = np.cumsum(rng.binomial(batch, observed, (sims, peeks)), axis=1)
    flagged_at: list[int] = []
    for row in to_b:
        p = 1.0
        for k, n_b in enumerate(row.tolist()):
            total = (k + 1) * batch
            p = srm_test(total - n_b, n_b, expected, alpha=alpha, previous_p=p).p_value
            if p <= alpha:
                flagged_at.append(total)
                break
    return {
        "expected": expected,
        "observed": observed,
        "alpha": alpha,
        "flagged": rate(len(flagged_at), sims),
        "median_users_at_flag": float(np.median(flagged_at)) if flagged_at else None,
    }


def run(sims: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for p_b in (BASE_RATE, *RATE_EFFECTS):
        paths = proportion_paths(rng, sims, BASE_RATE, p_b)
        row = summarise(paths, msprt(paths))
        rows.append({"world": "proportion", "setting": f"{BASE_RATE:.0%} -> {p_b:.0%}", **row})
    for shape in ("lognormal", "normal"):
        sums = latency_sums(rng, sims, shape)
        for effect in (0.0, *LATENCY_EFFECTS):
            paths = mean_paths(sums, shape, effect)
            row = summarise(paths, msprt(paths))
            setting = "A/A" if effect == 0 else f"{effect:.0%} slower"
            rows.append({"world": f"latency ({shape})", "setting": setting, **row})
    srm = [
        srm_flags(rng, sims, 0.10, alpha=0.001),
        srm_flags(rng, sims, 0.10, alpha=0.05),
        srm_flags(rng, sims, 0.105, alpha=0.001),
        srm_flags(rng, sims, 0.12, alpha=0.001),
    ]
    return {
        "config": {
            "sims": sims,
            "seed": seed,
            "alpha": ALPHA,
            "batch_per_arm": BATCH,
            "peeks": PEEKS,
            "max_per_arm": BATCH * PEEKS,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "rows": rows,
        "srm": srm,
    }


def _pct(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{r['rate']:.1%} [{lo:.1%}, {hi:.1%}]"


def print_table(out: dict[str, Any]) -> None:
    cfg = out["config"]
    print(
        f"Always-valid (mSPRT) vs naive z-test at every peek: {cfg['sims']:,} tests per row, "
        f"a peek every {cfg['batch_per_arm']} per arm up to {cfg['max_per_arm']:,}, "
        f"alpha {cfg['alpha']}; 95% Wilson intervals\n"
    )
    print(
        "| world | setting | naive z ever declared | mSPRT ever declared | naive / mSPRT "
        "| mSPRT right winner | median n per arm | CS covers truth at every peek |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in out["rows"]:
        aa = not row["truth"]
        ratio = row["naive_ever_declared"]["rate"] / max(row["ever_declared"]["rate"], 1e-12)
        median = row["median_n_per_arm"]
        print(
            f"| {row['world']} | {row['setting']} | {_pct(row['naive_ever_declared'])} "
            f"| {_pct(row['ever_declared'])} | {f'{ratio:.0f}x' if aa else '-'} "
            f"| {'-' if aa else _pct(row['right_winner'])} "
            f"| {'-' if aa or median is None else f'{median:,.0f}'} | {_pct(row['coverage'])} |"
        )
    print("\nSample-ratio mismatch (configured 10%; a peek every 1,000 users up to 200,000)\n")
    print("| observed share | alpha | ever flagged | median users at flag |")
    print("| --- | --- | --- | --- |")
    for s in out["srm"]:
        median = s["median_users_at_flag"]
        print(
            f"| {s['observed']:.1%} | {s['alpha']} | {_pct(s['flagged'])} "
            f"| {'-' if median is None else f'{median:,.0f}'} |"
        )
    print(f"\n{out['config']['wall_s']:.1f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sims", type=int, default=2_000, help="tests per row (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", nargs="?", const="-", help="print JSON (or write it to PATH) instead of a table"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out = run(args.sims, args.seed)
    out["config"]["wall_s"] = time.perf_counter() - t0
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    if args.json == "-":
        json.dump(out, sys.stdout, indent=2)
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        print_table(out)


if __name__ == "__main__":
    main()
