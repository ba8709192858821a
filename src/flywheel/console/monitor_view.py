"""The Monitoring view's data: the stored windows of a model (``flywheel monitor run``'s
results) as a features x windows grid of drift, each window's decision and reason, realised
and estimated performance with label completeness; and one feature's distribution in a
window against the version's reference, on the reference's own bins."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.errors import NotFound

if TYPE_CHECKING:
    from flywheel.config import Settings
    from flywheel.workspace import Workspace

__all__ = ["distribution", "load_windows", "windows_view"]

REFERENCE = Path("extra_files") / "reference.json"


def load_windows(settings: Settings, model: str) -> list[dict[str, Any]]:
    """The model's stored windows (every version), oldest first, profiles included."""
    from flywheel.monitoring.store import MonitorStore

    url = settings.monitoring.url
    if url and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return []  # never monitored: do not create the database from a read
    store = MonitorStore(str(url))
    try:
        return store.windows(model)
    finally:
        store.dispose()


def _ratio(feature: dict[str, Any]) -> float | None:
    value, threshold = feature.get("value"), feature.get("threshold")
    if not isinstance(value, int | float) or not isinstance(threshold, int | float):
        return None
    return round(value / threshold, 4) if threshold else None


def _cell(f: dict[str, Any]) -> dict[str, Any]:
    keep = ("stat", "value", "threshold", "p_value", "drifted", "importance")
    return {**{k: f.get(k) for k in keep}, "ratio": _ratio(f)}


def _window(w: dict[str, Any]) -> dict[str, Any]:
    perf = w.get("performance") or {}
    keep = ("window", "version", "start", "end", "rows", "status", "alarm", "verdict")
    return {
        **{k: w.get(k) for k in keep},
        "label": _short(w),
        "drift": w.get("drift"),
        "prediction_drift": w.get("prediction_drift"),
        "drift_share": w.get("drift_share"),
        "reason": w.get("reason") or "",
        "drifted_features": w.get("drifted_features") or [],
        "cells": {str(f.get("feature")): _cell(f) for f in w.get("features") or []},
        "performance": {
            k: perf.get(k)
            for k in (
                "rows",
                "labelled",
                "label_completeness",
                "realised",
                "estimated",
                "reference",
                "primary_metric",
                "breach",
                "reason",
            )
        },
    }


def _short(w: dict[str, Any]) -> str:
    """A window's name for an axis: its start (to the second, or the day) when it has one."""
    start = w.get("start")
    if not isinstance(start, int | float):
        return str(w.get("window"))
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(start, UTC)
    return (
        at.strftime("%Y-%m-%d")
        if at.hour == at.minute == at.second == 0
        else at.strftime("%m-%d %H:%M:%S")
    )


def windows_view(ws: Workspace, model: str, version: str | None = None) -> dict[str, Any]:
    """Windows (newest last) without their profiles, and the features ordered by their
    largest drift (value over threshold) in any window. A model with no window must be
    registered (NotFound otherwise); a registered one not monitored yet has no windows."""
    found = load_windows(ws.settings, model)
    if not found:
        _must_be_registered(ws, model)
    versions = sorted({str(w.get("version")) for w in found}, key=_num)
    if version:
        found = [w for w in found if str(w.get("version")) == str(version)]
    windows = [_window(w) for w in found]
    worst: dict[str, float] = {}
    for w in windows:
        for name, cell in w["cells"].items():
            worst[name] = max(worst.get(name, 0.0), cell["ratio"] or 0.0)
    features = sorted(worst, key=lambda n: (n.startswith("__"), -worst[n], n))
    return {"model": model, "versions": versions, "features": features, "windows": windows}


def _must_be_registered(ws: Workspace, model: str) -> None:
    from flywheel.console.registry_view import unknown_model
    from flywheel.registry._client import mlflow_errors, registered_aliases

    with mlflow_errors(f"read the registered model {model!r}", ws, model):
        known = registered_aliases(ws.client, model) is not None
    if not known:
        raise unknown_model(ws, model)


def _num(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (1 << 30, v)


def reference_of(ws: Workspace, model: str, version: str) -> dict[str, Any] | None:
    """The version's reference profile: the served copy under ``<home>/models``, else the
    registry's (fetched and sha-checked as serving fetches it), else None."""
    local = ws.settings.home / "models" / model / version / REFERENCE
    if not local.is_file():
        try:
            from flywheel.registry.artifacts import fetch_model_artifacts

            fetch_model_artifacts(ws, version, name=model)
        except Exception:  # an old version without one, or the registry unreachable
            return None
    if not local.is_file():
        return None
    data: dict[str, Any] = json.loads(local.read_text())
    return data


def _labels(bins: dict[str, Any], n: int) -> list[str]:
    if bins.get("kind") == "numeric":
        edges = [float(e) for e in bins.get("edges") or []]
        if not edges:
            return [*(["present"] * (n - 1)), "(missing)"][-n:]
        inner = [f"{lo:.4g} – {hi:.4g}" for lo, hi in itertools.pairwise(edges)]
        labels = [f"< {edges[0]:.4g}", *inner, f"≥ {edges[-1]:.4g}", "(missing)"]
    else:
        labels = [*(str(c) for c in bins.get("categories") or []), "(other)", "(missing)"]
    return labels if len(labels) == n else [str(i) for i in range(n)]


def _shares(counts: list[float]) -> list[float]:
    total = sum(counts)
    return [round(c / total, 6) if total else 0.0 for c in counts]


def distribution(ws: Workspace, model: str, window: str | None, feature: str) -> dict[str, Any]:
    """Shares of ``feature`` per reference bin: the reference's and the window's (default:
    the latest window)."""
    found = load_windows(ws.settings, model)
    chosen = [w for w in found if window is None or w.get("window") == window]
    if not chosen:
        if not found:
            _must_be_registered(ws, model)
        raise NotFound(
            f"No monitored window {window or ''} of {model}"
            + (f"; the newest is {found[-1].get('window')}." if found else ": run `flywheel "
               "monitor run`."),
            model=model,
            field="window",
        )  # fmt: skip
    w = chosen[-1]
    version = str(w.get("version"))
    ref = reference_of(ws, model, version)
    if ref is None:
        raise NotFound(f"No reference profile for {model} v{version}.", model=model)
    bins = next((b for b in ref.get("bins") or [] if b.get("name") == feature), None)
    ref_col = ((ref.get("profile") or {}).get("columns") or {}).get(feature) or {}
    cur_col = ((w.get("profile") or {}).get("columns") or {}).get(feature) or {}
    ref_counts, cur_counts = ref_col.get("counts"), cur_col.get("counts")
    if bins is None or not ref_counts or not cur_counts or len(ref_counts) != len(cur_counts):
        raise NotFound(
            f"No counts of {feature!r} in window {w['window']}.", model=model, field="feature"
        )
    stats: dict[str, Any] = next(
        (f for f in w.get("features") or [] if f.get("feature") == feature), {}
    )
    return {
        "feature": feature,
        "kind": bins.get("kind"),
        "window": w.get("window"),
        "version": version,
        "labels": _labels(bins, len(ref_counts)),
        "reference": _shares([float(c) for c in ref_counts]),
        "current": _shares([float(c) for c in cur_counts]),
        "rows": [sum(ref_counts), sum(cur_counts)],
        "stat": stats.get("stat"),
        "value": stats.get("value"),
        "drifted": stats.get("drifted"),
    }
