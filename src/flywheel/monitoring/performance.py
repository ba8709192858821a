"""Performance: realised metrics from late labels, and a label-free estimate until they come.

Realised (:func:`realised`): from a window's :class:`PerformanceCounts` (rows with a label),
only when the label completeness passes ``min_completeness``; below it the window says so.

Estimated (:func:`estimate`, CBPE-style, binary and multiclass classifiers): the reference
holds, per score bin, its rows and how many were positive (binary: score = p(positive),
and the decision threshold is a bin edge, so each bin predicts one class) or correctly
classified (multiclass: score = the top probability). A window's rows per score bin, times
each bin's calibrated rate, give the expected confusion matrix, hence expected accuracy,
precision, recall, F1 and (binned) ROC AUC. The 95% interval draws both sources of error:
each bin's rate from its Beta posterior on the reference (calibration error) and the
window's outcomes given those rates (sampling error), 2,000 draws. It assumes the score's
calibration holds (no concept drift): under concept drift the realised value leaves the
interval, which is what makes the two worth showing side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flywheel.monitoring.profile import SCORE, PerformanceCounts, Reference, WindowProfile

__all__ = ["Estimate", "Performance", "estimate", "realised"]

DRAWS = 2000


@dataclass
class Estimate:
    metrics: dict[str, float]
    low: dict[str, float]  # the 95% interval
    high: dict[str, float]
    low99: dict[str, float] = field(default_factory=dict)  # the 99% interval (decisions)
    high99: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            k: {"value": _r(v), "ci95": [_r(self.low[k]), _r(self.high[k])]}
            for k, v in self.metrics.items()
        }


@dataclass
class Performance:
    """A window's performance: realised (when labels suffice), estimated, completeness."""

    rows: int
    labelled: int
    completeness: float
    realised: dict[str, float] | None = None
    estimated: Estimate | None = None
    reference: dict[str, float] = field(default_factory=dict)
    primary: str | None = None
    breach: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "labelled": self.labelled,
            "label_completeness": _r(self.completeness),
            "realised": {k: _r(v) for k, v in self.realised.items()} if self.realised else None,
            "estimated": self.estimated.to_dict() if self.estimated else None,
            "reference": {k: _r(v) for k, v in self.reference.items()},
            "primary_metric": self.primary,
            "breach": self.breach,
            "reason": self.reason,
        }


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.6g}")


# --------------------------------------------------------------------------- realised


def _f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else float("nan")


def _binary(tp: Any, fp: Any, fn: Any, tn: Any) -> dict[str, Any]:
    n = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "accuracy": (tp + tn) / n,
            "precision": tp / (tp + fp),
            "recall": tp / (tp + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def _auc_from_hist(neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC from score histograms of negatives and positives (ties count one half)."""
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (below + neg / 2)).sum() / (n_neg * n_pos))


def realised(counts: PerformanceCounts) -> dict[str, float]:
    if counts.task == "regression":
        n, s, ss, sa = counts.errors
        if n == 0:
            return {}
        return {"rmse": math.sqrt(ss / n), "mae": sa / n, "bias": s / n}
    c = counts.confusion.astype(float)
    n = c.sum()
    if n == 0:
        return {}
    out = {"accuracy": float(np.trace(c) / n)}
    if len(counts.classes) == 2:
        tn, fp, fn, tp = c[0, 0], c[0, 1], c[1, 0], c[1, 1]
        out.update({k: float(v) for k, v in _binary(tp, fp, fn, tn).items()})
        out["positive_rate"] = float((tp + fn) / n)
        if counts.score_hist.size:
            out["roc_auc"] = _auc_from_hist(counts.score_hist[0], counts.score_hist[1])
    else:
        f1s = [
            _f1(c[i, i], c[:, i].sum() - c[i, i], c[i, :].sum() - c[i, i]) for i in range(len(c))
        ]
        out["f1_macro"] = float(np.nanmean(f1s)) if f1s else float("nan")
    return out


# --------------------------------------------------------------------------- estimated


def estimate(reference: Reference, window: WindowProfile, seed: int = 0) -> Estimate | None:
    cal = reference.calibration
    if cal is None or SCORE not in window.columns:
        return None
    rows = np.asarray(cal["rows"], dtype=float)
    hits = np.asarray(cal["hits"], dtype=float)
    n_bins = window.columns[SCORE].counts[:-1].astype(float)  # the missing bin is left out
    if n_bins.sum() == 0 or rows.size != n_bins.size:
        return None
    rng = np.random.default_rng(seed)
    # each bin's rate: a Beta posterior whose one-row prior sits at the bin's mean score
    # (what the score promises), not at 1/2, which would pull every bin towards 1/2
    score_bins = reference.bins_of(SCORE)
    prior = np.clip(np.asarray(score_bins.centers, dtype=float), 0.01, 0.99)
    if prior.size != rows.size:
        prior = np.full(rows.size, 0.5)
    a, b = hits + prior, rows - hits + 1.0 - prior
    rate = a / (a + b)
    draw_rate = rng.beta(a, b, size=(DRAWS, rows.size))
    outcomes = rng.binomial(n_bins.astype(np.int64), draw_rate)  # (DRAWS, bins)
    if reference.positive is None:  # multiclass: hits = correct answers
        point = {"accuracy": float((n_bins * rate).sum() / n_bins.sum())}
        sims = {"accuracy": outcomes.sum(axis=1) / n_bins.sum()}
    else:
        threshold = reference.threshold if reference.threshold is not None else 0.5
        # the threshold is a bin edge, so each bin predicts one class: its mean score says which
        says_pos = np.asarray(score_bins.centers, dtype=float) >= threshold
        point = _binary_estimate(n_bins, n_bins * rate, says_pos)
        sims = _binary_estimate(n_bins, outcomes.astype(float), says_pos)

    def q(p: float) -> dict[str, float]:
        return {k: float(np.nanquantile(v, p)) for k, v in sims.items()}

    return Estimate(metrics=point, low=q(0.025), high=q(0.975), low99=q(0.005), high99=q(0.995))


def _binary_estimate(n: np.ndarray, pos: np.ndarray, says_pos: np.ndarray) -> dict[str, Any]:
    """Metrics from rows per bin and positives per bin (1-D, or (draws, bins))."""
    neg = n - pos
    tp = (pos * says_pos).sum(axis=-1)
    fp = (neg * says_pos).sum(axis=-1)
    fn = (pos * ~says_pos).sum(axis=-1)
    tn = (neg * ~says_pos).sum(axis=-1)
    out = _binary(tp, fp, fn, tn)
    out["positive_rate"] = (tp + fn) / (tp + fp + fn + tn)
    n_pos, n_neg = pos.sum(axis=-1), neg.sum(axis=-1)
    below = np.cumsum(neg, axis=-1) - neg
    with np.errstate(divide="ignore", invalid="ignore"):
        out["roc_auc"] = (pos * (below + neg / 2)).sum(axis=-1) / (n_pos * n_neg)
    if np.ndim(tp) == 0:
        return {k: float(v) for k, v in out.items()}
    return out


# --------------------------------------------------------------------------- the verdict


def assess_performance(
    reference: Reference,
    window: WindowProfile,
    *,
    min_completeness: float,
    max_drop: float,
    estimate_metric: str | None,
) -> Performance:
    counts = window.performance
    labelled = counts.labelled if counts is not None else 0
    completeness = labelled / window.rows if window.rows else 0.0
    perf = Performance(
        rows=window.rows,
        labelled=labelled,
        completeness=completeness,
        reference=dict(reference.metrics),
        primary=reference.primary_metric,
    )
    if counts is not None and labelled and completeness >= min_completeness:
        perf.realised = realised(counts)
    perf.estimated = estimate(reference, window)
    higher_better = not (perf.primary or "").endswith(("rmse", "mae", "log_loss"))
    ref_value = reference.metrics.get(perf.primary or "")
    if perf.realised and ref_value is not None and perf.primary in perf.realised:
        now = perf.realised[perf.primary]
        drop = (
            (ref_value - now) if higher_better else (now - ref_value) / max(abs(ref_value), 1e-12)
        )
        if math.isfinite(now) and drop > max_drop:
            perf.breach = True
            perf.reason = (
                f"realised {perf.primary} {now:.4g} vs {ref_value:.4g} on the reference "
                f"(worse by {drop:.3g} > {max_drop:g})"
            )
    elif perf.estimated and estimate_metric in perf.estimated.metrics:
        ref_e = reference.metrics.get(estimate_metric)
        high = perf.estimated.high[estimate_metric]
        if ref_e is not None and math.isfinite(high) and ref_e - high > max_drop:
            perf.breach = True
            perf.reason = (
                f"estimated {estimate_metric} at most {high:.4g} (95% interval) vs {ref_e:.4g} "
                f"on the reference (worse by more than {max_drop:g})"
            )
    if not perf.breach and perf.realised and perf.estimated:
        # calibration in the large: the labels disagree with what the scores promise (the
        # share of positives, or of correct answers), beyond the estimate's 99% interval
        m = "positive_rate" if reference.positive else "accuracy"
        if m in perf.realised and m in perf.estimated.low99:
            now, lo, hi = perf.realised[m], perf.estimated.low99[m], perf.estimated.high99[m]
            if math.isfinite(now) and (now < lo or now > hi):
                perf.breach = True
                perf.reason = (
                    f"realised {m} {now:.4g} outside the estimate's 99% interval "
                    f"[{lo:.4g}, {hi:.4g}]: the labels disagree with the scores (concept drift)"
                )
    if not perf.reason and perf.realised is None and counts is not None and labelled:
        perf.reason = (
            f"label completeness {completeness:.0%} below {min_completeness:.0%}: "
            "realised metrics wait for labels"
        )
    return perf
