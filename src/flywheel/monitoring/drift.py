"""Per-feature drift, calibrated: effect sizes from bin counts, and their null distribution
at the window's actual sizes.

Statistics (all computed from counts on the reference's bins, the missing bin included,
so a change in the missing-value rate is drift too):

- numeric: ``w1`` = Wasserstein-1 distance between the two binned distributions (each bin
  at the reference rows' mean in it), divided by the reference's standard deviation;
  ``psi`` (population stability index) on the reference's deciles; ``ks`` = the largest
  gap between the two cumulative distributions;
- categorical: ``js`` = Jensen-Shannon distance (base 2, in [0, 1]) and ``linf`` = the
  largest change of one category's share, over the top categories + "other" + missing;
  ``chi2_p`` = a chi-squared test's p-value (reported; at large n it rejects everything,
  so it never decides); ``unseen`` = the share of the window's values the reference never
  saw.

Decision (:func:`assess`): a feature drifts when its effect size (``w1`` or ``js``) passes
its threshold AND it lies beyond the 95th percentile of its null distribution AND its
p-value survives Benjamini-Hochberg across the window's features. The null distribution is
that of the same statistic between two samples drawn from the reference's own bin
probabilities at sizes (n_ref, n_cur): both sides are multinomial draws over the bins,
which costs O(bins) per draw whatever the row counts, so a 1M-row window is as cheap to
calibrate as a 500-row one. It is cached per (feature, n_ref, size bucket); the bucket
rounds n_cur *down* to a quarter-power of two, which widens the null a little (never
narrows it). Because the window and the reference are counted on the same fixed bins,
the statistic carries no sketch error; the KLL/frequent-items sketches only serve reports
and rolling references.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from flywheel.monitoring.profile import Bins, ColumnCounts

__all__ = ["DriftSettings", "FeatureDrift", "assess", "benjamini_hochberg", "feature_stats"]

_EPS = 1e-4  # share floor for PSI's logarithm


@dataclass(frozen=True)
class DriftSettings:
    w1: float = 0.1  # numeric effect threshold: W1 / sigma_ref
    js: float = 0.1  # categorical effect threshold: Jensen-Shannon distance
    null_quantile: float = 0.95
    fdr: float = 0.05  # Benjamini-Hochberg level across a window's features
    draws: int = 1000  # null draws per (feature, size bucket); at least 40 per feature
    seed: int = 0


@dataclass
class FeatureDrift:
    """One feature in one window: statistics, null quantile, p-value and the verdict."""

    name: str
    kind: str
    n_ref: int
    n_cur: int
    stat: str  # the deciding statistic: "w1" or "js"
    value: float
    threshold: float
    null_q95: float
    p_value: float
    stats: dict[str, float] = field(default_factory=dict)
    missing_rate: tuple[float, float] = (0.0, 0.0)  # reference, current
    invalid: int = 0
    unseen_share: float = 0.0
    drifted: bool = False
    importance: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.name,
            "kind": self.kind,
            "n_ref": self.n_ref,
            "n_cur": self.n_cur,
            "stat": self.stat,
            "value": _round(self.value),
            "threshold": self.threshold,
            "null_q95": _round(self.null_q95),
            "p_value": _round(self.p_value),
            "drifted": self.drifted,
            "importance": _round(self.importance),
            "missing_rate": [_round(x) for x in self.missing_rate],
            "invalid": self.invalid,
            "unseen_share": _round(self.unseen_share),
            "stats": {k: _round(v) for k, v in self.stats.items()},
            "reason": self.reason,
        }


def _round(x: float) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


# --------------------------------------------------------------------------- statistics


def _shares(counts: np.ndarray) -> np.ndarray:
    """Rows are draws: counts (..., bins) -> shares, an all-zero row stays zero."""
    total = counts.sum(axis=-1, keepdims=True)
    return counts / np.maximum(total, 1)


def _w1(p: np.ndarray, q: np.ndarray, positions: np.ndarray, sigma: float) -> np.ndarray:
    """Binned Wasserstein-1 / sigma; the missing bin (last) compared as a share gap."""
    cdf_gap = np.abs(np.cumsum(p[..., :-1] - q[..., :-1], axis=-1))[..., :-1]
    steps = np.diff(positions)
    w = (cdf_gap * steps).sum(axis=-1) / sigma
    return w + np.abs(p[..., -1] - q[..., -1])


def _ks(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.abs(np.cumsum(p - q, axis=-1)).max(axis=-1)


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(m > 0, m, 1)), 0.0)
        return t.sum(axis=-1)

    return np.sqrt(np.clip((kl(p) + kl(q)) / 2, 0.0, 1.0))


def _psi(p: np.ndarray, q: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """PSI on grouped bins (deciles of the reference + missing)."""
    pg = np.add.reduceat(p, groups, axis=-1)
    qg = np.add.reduceat(q, groups, axis=-1)
    pg, qg = np.maximum(pg, _EPS), np.maximum(qg, _EPS)
    return ((qg - pg) * np.log(qg / pg)).sum(axis=-1)


def _decile_groups(ref_counts: np.ndarray) -> np.ndarray:
    """Start index of each PSI group: ~10 groups of the value bins by reference share, then
    the missing bin alone."""
    values = ref_counts[:-1].astype(float)
    cum = np.cumsum(values) / max(values.sum(), 1)
    starts = [0]
    for target in np.linspace(0.1, 0.9, 9):
        i = int(np.searchsorted(cum, target, side="left")) + 1
        if i > starts[-1] and i < len(values):
            starts.append(i)
    starts.append(len(values))  # the missing bin
    return np.asarray(starts)


class _Numeric:
    def __init__(self, bins: Bins, ref: ColumnCounts) -> None:
        self.positions = np.asarray(bins.centers, dtype=float)
        n, s, ss = ref.moments
        var = ss / n - (s / n) ** 2 if n else 0.0
        spread = float(self.positions[-1] - self.positions[0]) if self.positions.size else 0.0
        self.sigma = math.sqrt(var) if var > 0 else max(spread, 1.0)
        self.groups = _decile_groups(ref.counts)

    def main(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        if self.positions.size < 2:  # one value bin: only the missing share can move
            return np.abs(p[..., -1] - q[..., -1])
        return _w1(p, q, self.positions, self.sigma)

    def all(self, p: np.ndarray, q: np.ndarray) -> dict[str, float]:
        return {
            "w1": float(self.main(p, q)),
            "psi": float(_psi(p, q, self.groups)),
            "ks": float(_ks(p, q)),
        }


class _Categorical:
    def main(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return _js(p, q)

    def all(self, p: np.ndarray, q: np.ndarray) -> dict[str, float]:
        return {"js": float(_js(p, q)), "linf": float(np.abs(p - q).max())}


def _chi2_p(ref: np.ndarray, cur: np.ndarray) -> float:
    """Chi-squared test of homogeneity of the two count vectors (its p-value)."""
    from scipy.special import chdtrc  # scipy.special, not scipy.stats: ~1 s less to import

    table = np.vstack([ref, cur]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    stat = float(((table - expected) ** 2 / expected).sum())
    return float(chdtrc(table.shape[1] - 1, stat))


def _ks_p(stat: float, n_ref: int, n_cur: int) -> float:
    """Two-sample KS p-value, Kolmogorov's asymptotic distribution at the effective n
    (binned: conservative with ties)."""
    from scipy.special import kolmogorov

    if n_ref == 0 or n_cur == 0:
        return 1.0
    n = n_ref * n_cur / (n_ref + n_cur)
    return float(kolmogorov(stat * math.sqrt(n)))


# --------------------------------------------------------------------------- the null


def size_bucket(n: int) -> int:
    """``n`` rounded down to a quarter-power of two (at least 1)."""
    if n <= 16:
        return max(n, 1)
    k = math.floor(4 * math.log2(n))
    return max(int(2 ** (k / 4)), 16)


@lru_cache(maxsize=4096)
def _null(
    key: tuple[Any, ...], probs: tuple[float, ...], n_ref: int, n_cur: int, draws: int, seed: int
) -> np.ndarray:
    """Sorted null draws of the feature's main statistic (``key`` names the feature's
    statistic and its constants; ``probs`` the reference's bin shares)."""
    stat = _STATS[key]
    p = np.asarray(probs, dtype=float)
    p = p / (p.sum() * (1 + 1e-12))  # rounding must not push the sum past 1
    rng = np.random.default_rng([seed, n_ref, n_cur, len(p)])
    ref = rng.multinomial(n_ref, p, size=draws)
    cur = rng.multinomial(n_cur, p, size=draws)
    return np.sort(stat.main(_shares(ref), _shares(cur)))


_STATS: dict[tuple[Any, ...], _Numeric | _Categorical] = {}


def feature_stats(bins: Bins, ref: ColumnCounts, cur: ColumnCounts) -> dict[str, float]:
    """Every statistic of one feature (no null): what ``flywheel monitor`` prints."""
    stat: _Numeric | _Categorical = (
        _Numeric(bins, ref) if bins.kind == "numeric" else _Categorical()
    )
    p, q = _shares(ref.counts.astype(float)), _shares(cur.counts.astype(float))
    out = stat.all(p, q)
    out["chi2_p"] = _chi2_p(ref.counts, cur.counts)
    if "ks" in out:
        out["ks_p"] = _ks_p(out["ks"], ref.n, cur.n)
    return out


def one_feature(
    bins: Bins,
    ref: ColumnCounts,
    cur: ColumnCounts,
    settings: DriftSettings,
    draws: int,
) -> FeatureDrift:
    numeric = bins.kind == "numeric"
    stat: _Numeric | _Categorical = _Numeric(bins, ref) if numeric else _Categorical()
    stats = feature_stats(bins, ref, cur)
    name = "w1" if numeric else "js"
    value = stats[name]
    n_ref, n_cur = ref.n, cur.n
    probs = tuple(np.round(_shares(ref.counts.astype(float)), 12).tolist())
    key = (
        bins.name,
        bins.kind,
        tuple(bins.edges),
        tuple(bins.centers),
        len(bins.categories),
        probs,
    )
    _STATS[key] = stat
    while len(_STATS) > 4096:  # bounded, like the cache of nulls it serves
        del _STATS[next(iter(_STATS))]
    null = _null(key, probs, n_ref, size_bucket(n_cur), draws, settings.seed)
    q95 = float(np.quantile(null, settings.null_quantile))
    p_value = float((1 + (null >= value - 1e-12).sum()) / (len(null) + 1))
    present = max(cur.n - int(cur.counts[-1]), 1)
    return FeatureDrift(
        name=bins.name,
        kind=bins.kind,
        n_ref=n_ref,
        n_cur=n_cur,
        stat=name,
        value=value,
        threshold=settings.w1 if numeric else settings.js,
        null_q95=q95,
        p_value=p_value,
        stats=stats,
        missing_rate=(ref.missing_rate, cur.missing_rate),
        invalid=cur.invalid,
        unseen_share=(cur.unseen / present) if not numeric else 0.0,
    )


def benjamini_hochberg(p_values: list[float], level: float) -> list[bool]:
    """Which hypotheses Benjamini-Hochberg rejects at false-discovery rate ``level``."""
    m = len(p_values)
    if m == 0:
        return []
    order = np.argsort(p_values)
    ranked = np.asarray(p_values)[order]
    passed = np.nonzero(ranked <= level * (np.arange(1, m + 1) / m))[0]
    keep = np.zeros(m, dtype=bool)
    if passed.size:
        keep[order[: passed.max() + 1]] = True
    return keep.tolist()


def assess(
    bins: list[Bins],
    reference: Mapping[str, ColumnCounts],
    window: Mapping[str, ColumnCounts],
    settings: DriftSettings,
    importance: Mapping[str, float] | None = None,
) -> list[FeatureDrift]:
    """Every profiled column of a window, with its calibrated verdict."""
    # a column the window has no count of (no score in the data) is not assessed
    present = [b for b in bins if b.name in reference and b.name in window and window[b.name].n]
    draws = max(settings.draws, 40 * len(present))
    results = [one_feature(b, reference[b.name], window[b.name], settings, draws) for b in present]
    keep = benjamini_hochberg([r.p_value for r in results], settings.fdr)
    for r, survived in zip(results, keep, strict=True):
        r.importance = float((importance or {}).get(r.name, 0.0))
        big = r.value >= r.threshold
        beyond = r.value > r.null_q95
        r.drifted = bool(big and beyond and survived)
        if r.drifted:
            r.reason = (
                f"{r.stat} {r.value:.3g} >= {r.threshold:g} and beyond the null's 95th "
                f"percentile {r.null_q95:.3g} (p {r.p_value:.2g}, kept by Benjamini-Hochberg)"
            )
        elif not big:
            r.reason = f"{r.stat} {r.value:.3g} below the effect threshold {r.threshold:g}"
        elif not beyond:
            r.reason = f"{r.stat} {r.value:.3g} within the null's 95th percentile {r.null_q95:.3g}"
        else:
            r.reason = f"p {r.p_value:.2g} not kept by Benjamini-Hochberg at {settings.fdr:g}"
    return results
