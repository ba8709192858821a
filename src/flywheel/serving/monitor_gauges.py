"""The monitor's latest verdicts as Prometheus gauges on the server's ``/metrics``.

The monitor (``flywheel monitor``) writes ``<home>/monitoring/latest.json``::

    {"models": {"<model>": {"version": "3", "window": "...", "end": 1.7e9, "alarm": true,
      "verdict": true, "drift_share": 0.12, "drifted_features": ["a"],
      "features": {"a": 0.31, "b": 0.02}, "label_completeness": 0.4,
      "performance_breach": false, "reference": {"roc_auc": 0.81},
      "realised": {"roc_auc": 0.78}, "estimated": {"f1": 0.41}, "updated": 1.7e9}}}

:class:`MonitorGauges` reads it when ``/metrics`` is scraped (parsed again only when the
file's mtime or size changes) and yields:

- ``flywheel_monitor_alarm{model}`` (1 or 0), ``flywheel_monitor_drift_share{model}``,
  ``flywheel_monitor_label_completeness{model}``,
  ``flywheel_monitor_performance_breach{model}`` (1: the monitor judged the window's
  performance, realised or estimated, worse than the reference by more than
  ``monitoring.max_drop``), ``flywheel_monitor_last_window_end_seconds{model}``;
- ``flywheel_monitor_feature_drift{model,feature}``: the features in the file (and the
  model's ``__score__`` and ``__prediction__``), at most ``max_features`` per model (the
  most drifted first), so the label set stays bounded; each its own statistic's value
  (W1/σ for a numeric feature, JS distance for a categorical one);
- ``flywheel_monitor_feature_drift_ratio{model,feature}``: the same, each over the bar it
  must clear (its effect threshold or its null distribution's 95th percentile, the higher;
  1 or more: big enough and beyond chance), comparable across features and statistics;
- ``flywheel_monitor_performance{model,metric,kind}``, kind ``realised``, ``estimated`` or
  ``reference`` (the version's holdout metrics the window is judged against).

A missing, unreadable or malformed file gives no samples, never an error: a scrape must not
fail because the monitor has not run yet. This module imports nothing of
``flywheel.monitoring`` (the serve-only install stays lean): json and prometheus_client.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MonitorGauges"]

log = logging.getLogger("flywheel.serving")

MAX_MODELS = 1000
MAX_FEATURES = 100
MAX_METRICS = 20  # per model and kind
MAX_LABEL = 200  # characters of one label value

Sample = tuple[tuple[str, ...], float]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _label(value: Any) -> str:
    return str(value)[:MAX_LABEL]


class MonitorGauges(Collector):
    """A custom collector over ``latest.json`` (see the module docstring)."""

    def __init__(self, path: Path | str, *, max_features: int = MAX_FEATURES) -> None:
        self.path = Path(path)
        self.max_features = max_features
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._samples: dict[str, list[Sample]] = {}

    # ------------------------------------------------------------------ reading
    def _load(self) -> dict[str, list[Sample]]:
        try:
            st = self.path.stat()
        except OSError:
            with self._lock:
                self._stamp, self._samples = None, {}
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp == self._stamp:
                return self._samples
        try:
            data = json.loads(self.path.read_bytes())
            samples = self._parse(data)
        except Exception as exc:  # unreadable, not JSON, not the expected shape
            log.warning(
                "monitor gauges: %s unreadable (%s: %s)", self.path, type(exc).__name__, exc
            )
            samples = {}
        with self._lock:
            self._stamp, self._samples = stamp, samples
        return samples

    def _parse(self, data: Any) -> dict[str, list[Sample]]:
        out: dict[str, list[Sample]] = {
            k: []
            for k in (
                "alarm",
                "drift_share",
                "feature_drift",
                "feature_drift_ratio",
                "label_completeness",
                "performance_breach",
                "performance",
                "last_window_end_seconds",
            )
        }
        models = data.get("models") if isinstance(data, Mapping) else None
        if not isinstance(models, Mapping):
            return {}
        for name, entry in list(models.items())[:MAX_MODELS]:
            if not isinstance(entry, Mapping):
                continue
            model = _label(name)
            for key, field in (
                ("alarm", "alarm"),
                ("drift_share", "drift_share"),
                ("label_completeness", "label_completeness"),
                ("performance_breach", "performance_breach"),
                ("last_window_end_seconds", "end"),
            ):
                value = _number(entry.get(field))
                if value is not None:
                    out[key].append(((model,), value))
            for key, field in (
                ("feature_drift", "features"),
                ("feature_drift_ratio", "feature_ratios"),
            ):
                features = entry.get(field)
                if not isinstance(features, Mapping):
                    continue
                values = [(str(f), v) for f, x in features.items() if (v := _number(x)) is not None]
                values.sort(key=lambda fv: -fv[1])  # the most drifted survive the cap
                out[key].extend(((model, _label(f)), v) for f, v in values[: self.max_features])
            for kind in ("realised", "estimated", "reference"):
                metrics = entry.get(kind)
                if not isinstance(metrics, Mapping):
                    continue
                for metric, raw in list(metrics.items())[:MAX_METRICS]:
                    if isinstance(raw, Mapping):  # {"value": ..., "ci95": [...]} accepted too
                        raw = raw.get("value")
                    value = _number(raw)
                    if value is not None:
                        out["performance"].append(((model, _label(metric), kind), value))
        return out

    # ------------------------------------------------------------------ scrape
    def collect(self) -> Iterator[Metric]:
        samples = self._load()
        if not samples:
            return
        for key, doc, labels in (
            ("alarm", "Monitor alarm on the latest window (1 = alarm).", ("model",)),
            (
                "drift_share",
                "Importance-weighted share of drifted features, latest window.",
                ("model",),
            ),
            (
                "feature_drift",
                "A feature's drift statistic, latest window (most drifted features, capped).",
                ("model", "feature"),
            ),
            (
                "feature_drift_ratio",
                "A feature's drift statistic over the bar it must clear (its effect threshold "
                "or its null's 95th percentile), latest window (most drifted features, capped).",
                ("model", "feature"),
            ),
            ("label_completeness", "Share of the latest window's rows with a label.", ("model",)),
            (
                "performance_breach",
                "1: the latest window's performance (realised, or estimated before labels) is "
                "worse than the reference by more than monitoring.max_drop.",
                ("model",),
            ),
            (
                "performance",
                "Model performance in the latest window (realised, estimated) and the "
                "version's holdout reference it is judged against.",
                ("model", "metric", "kind"),
            ),
            (
                "last_window_end_seconds",
                "End of the latest monitored window (unix seconds).",
                ("model",),
            ),
        ):
            family = GaugeMetricFamily(f"flywheel_monitor_{key}", doc, labels=labels)
            for label_values, value in samples.get(key, []):
                family.add_metric(label_values, value)
            yield family
