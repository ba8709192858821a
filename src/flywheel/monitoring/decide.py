"""A window's verdict and the alarm after persistence: the one result object both current-data
paths (files, the prediction log) produce.

- A window with fewer than ``min_rows`` rows says "insufficient data" and gives no verdict
  (it neither raises nor clears an alarm).
- Its *drift* verdict: the importance-weighted share of drifted features reaches
  ``drift_share``, or the prediction (score) drifted. Weights: each feature
  weighs its share of the model's permutation importance, so a drifted feature the model
  relies on counts and one it ignores does not (it is still listed as drifted).
- Its *verdict*: drift, or a performance breach (realised, or the estimate's whole 95%
  interval below the reference).
- The *alarm*: the verdict held in at least ``persist_k`` of the last ``persist_m`` windows
  with a verdict (2 of 3 by default), and the window is past the cooldown after the model
  version started (``cooldown`` windows after a retrain give verdicts but no alarm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.monitoring.drift import DriftSettings, FeatureDrift, assess
from flywheel.monitoring.performance import Performance, assess_performance
from flywheel.monitoring.profile import PREDICTION, SCORE, Reference, WindowProfile

__all__ = ["MonitorSettings", "WindowResult", "decide", "evaluate_window"]


@dataclass(frozen=True)
class MonitorSettings:
    drift: DriftSettings = field(default_factory=DriftSettings)
    min_rows: int = 200
    drift_share: float = 0.1
    persist_k: int = 2
    persist_m: int = 3
    cooldown: int = 0
    min_completeness: float = 0.5
    max_drop: float = 0.05  # absolute for scores (AUC, F1), relative for errors (RMSE)
    estimate_metric: str | None = None  # default: f1 (binary), accuracy (multiclass)


@dataclass
class WindowResult:
    """One window's result: what ``flywheel monitor check`` prints one JSON line of."""

    window: str
    rows: int
    model: str
    version: str | None
    reference: str
    start: float | None = None
    end: float | None = None
    status: str = "ok"  # "ok" or "insufficient data"
    verdict: bool = False  # this window alone
    drift: bool = False
    prediction_drift: bool = False
    drift_share: float = 0.0
    alarm: bool = False  # after persistence and cooldown
    reason: str = ""
    drifted_features: list[str] = field(default_factory=list)
    features: list[FeatureDrift] = field(default_factory=list)
    performance: Performance | None = None
    profile: WindowProfile | None = field(default=None, repr=False)

    def to_dict(self, *, profile: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "window": self.window,
            "rows": self.rows,
            "model": self.model,
            "version": self.version,
            "reference": self.reference,
            "start": self.start,
            "end": self.end,
            "status": self.status,
            "alarm": self.alarm,
            "verdict": self.verdict,
            "drift": self.drift,
            "prediction_drift": self.prediction_drift,
            "drift_share": round(self.drift_share, 6),
            "reason": self.reason,
            "drifted_features": self.drifted_features,
            "features": [f.to_dict() for f in self.features],
            "performance": self.performance.to_dict() if self.performance else None,
        }
        if profile and self.profile is not None:
            out["profile"] = self.profile.to_dict()
        return out


def _weights(reference: Reference) -> dict[str, float]:
    """Each feature's share of the model's permutation importance (sums to 1; equal shares
    when the reference has none): drift the model does not rely on does not make a verdict."""
    n = max(len(reference.features), 1)
    return {f: reference.importance.get(f, 1.0 / n) for f in reference.features}


def evaluate_window(
    reference: Reference,
    window: WindowProfile,
    name: str,
    settings: MonitorSettings,
) -> WindowResult:
    """The verdict of one window, before persistence."""
    result = WindowResult(
        window=name,
        rows=window.rows,
        model=reference.model,
        version=reference.version,
        reference=reference.source,
        start=window.start,
        end=window.end,
        profile=window,
    )
    if window.rows < settings.min_rows:
        result.status = "insufficient data"
        result.reason = f"{window.rows} rows < min_rows {settings.min_rows}: no verdict"
        return result
    weights = _weights(reference)
    feats = assess(
        reference.bins, reference.profile.columns, window.columns, settings.drift, weights
    )
    result.features = feats
    model_feats = [f for f in feats if f.name not in (SCORE, PREDICTION)]
    result.drifted_features = [f.name for f in model_feats if f.drifted]
    result.drift_share = sum(weights.get(f.name, 0.0) for f in model_feats if f.drifted)
    result.prediction_drift = any(f.drifted for f in feats if f.name in (SCORE, PREDICTION))
    result.drift = result.drift_share >= settings.drift_share or result.prediction_drift
    metric = settings.estimate_metric or ("f1" if reference.positive else "accuracy")
    if reference.task == "classification" or (window.performance and window.performance.labelled):
        result.performance = assess_performance(
            reference,
            window,
            min_completeness=settings.min_completeness,
            max_drop=settings.max_drop,
            estimate_metric=metric,
        )
    breach = bool(result.performance and result.performance.breach)
    result.verdict = result.drift or breach
    reasons = []
    if result.drift_share >= settings.drift_share:
        reasons.append(
            f"drift in {', '.join(result.drifted_features)} (importance-weighted share "
            f"{result.drift_share:.2f} >= {settings.drift_share:g})"
        )
    if result.prediction_drift:
        reasons.append("prediction drift")
    if breach and result.performance is not None:
        reasons.append(result.performance.reason)
    invalid = [f"{f.name} ({f.invalid})" for f in model_feats if f.invalid]
    if invalid:
        reasons.append(f"values of the wrong type in {', '.join(invalid)}")
    result.reason = "; ".join(reasons) or "no drift"
    return result


def decide(
    results: Sequence[WindowResult], settings: MonitorSettings, history: Sequence[bool] = ()
) -> list[WindowResult]:
    """Set each window's ``alarm`` from its verdict and the verdicts before it (``history``:
    the verdicts of earlier windows with one, oldest first). Windows without a verdict
    (insufficient data) are skipped. The first ``cooldown`` windows with a verdict give no
    alarm."""
    seen = list(history)
    for r in results:
        if r.status != "ok":
            r.alarm = False
            continue
        seen.append(r.verdict)
        recent = seen[-settings.persist_m :]
        persistent = r.verdict and sum(recent) >= settings.persist_k
        if persistent and len(seen) <= settings.cooldown:
            r.alarm = False
            r.reason += (
                f"; cooldown ({len(seen)} of {settings.cooldown} windows after the version started)"
            )
        else:
            r.alarm = bool(persistent)
            if r.verdict and not persistent:
                r.reason += (
                    f"; not yet persistent ({sum(recent)} of the last {len(recent)} windows, "
                    f"alarm at {settings.persist_k} of {settings.persist_m})"
                )
    return list(results)
