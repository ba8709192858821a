"""Prometheus metrics for serving, kept cheap on the hot path.

Why not ``prometheus_client.Histogram`` directly: its ``labels(...).observe()`` takes a lock
and allocates per call (a few microseconds, a noticeable share of a ~100 µs request), and it
has no vectorised observe for a 10,000-row bulk request. Here the hot path only bumps plain
ints in dicts (one event-loop thread, so no lock), and a custom ``prometheus_client``
collector turns them into standard counter/histogram/gauge families when ``/metrics`` is
scraped.

Series (all prefixed ``flywheel_``):

- ``requests_total{protocol,route,status}``, ``request_duration_seconds{protocol,route}``;
- ``errors_total{protocol,kind}`` (kind = the error's ``kind``);
- ``batch_rows{model}`` (rows per micro-batch), ``prediction_score{model,version}``
  (positive-class probability for binary, top probability for multi-class, the value for
  regression);
- ``model_info{model,version,sha256}`` = 1 per loaded model, ``model_reloads_total{model,outcome}``;
- ``predlog_queue_depth`` and ``predlog_dropped_total`` when the sink has ``depth()``/``dropped()``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from flywheel.rollout.counters import scores_of

__all__ = ["CONTENT_TYPE", "Hist", "ServingMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
SCORE_BUCKETS = (*tuple(round(0.1 * i, 1) for i in range(1, 10)), 1.0)


_SMALL = 32  # Hist.observe_many bins up to this many values in plain Python


class Hist:
    """Bucket counts (non-cumulative) + sum; exported cumulative as Prometheus wants."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, values: np.ndarray) -> None:
        if len(values) <= _SMALL:  # plain Python: numpy's per-call cost dominates a few values
            counts, bounds, total = self.counts, self.bounds, 0.0
            for value in values.tolist():
                if -math.inf < value < math.inf:  # NaN and infinities are not observed
                    counts[bisect_left(bounds, value)] += 1
                    total += value
            self.total += total
            return
        values = values[np.isfinite(values)]
        if not values.size:
            return
        idx = np.searchsorted(np.asarray(self.bounds), values, side="left")
        for i, n in enumerate(np.bincount(idx, minlength=len(self.counts)).tolist()):
            self.counts[i] += n
        self.total += float(values.sum())

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class ServingMetrics(Collector):
    """Counters kept in plain dicts; see the module docstring for the series."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[tuple[str, str], Hist] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.batch_rows: dict[str, Hist] = {}
        self.scores: dict[tuple[str, str], Hist] = {}
        self.reloads: dict[tuple[str, str], int] = {}
        self.models: Callable[[], list[dict[str, Any]]] = list
        self.sink: Any = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------------ hot path
    def request(self, protocol: str, route: str, status: int, seconds: float) -> None:
        key = (protocol, route, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get((protocol, route))
        if hist is None:
            hist = self.latency[(protocol, route)] = Hist(LATENCY_BUCKETS)
        hist.observe(seconds)

    def error(self, protocol: str, kind: str) -> None:
        self.errors[(protocol, kind)] = self.errors.get((protocol, kind), 0) + 1

    def batch(self, model: str, rows: int) -> None:
        hist = self.batch_rows.get(model)
        if hist is None:
            hist = self.batch_rows[model] = Hist(ROWS_BUCKETS)
        hist.observe(rows)

    def score(self, model: str, version: str, labels: np.ndarray, proba: np.ndarray | None) -> None:
        hist = self.scores.get((model, version))
        if hist is None:
            hist = self.scores[(model, version)] = Hist(SCORE_BUCKETS)
        values = scores_of(proba)  # a binary classifier's: the rollout's counters bin it too
        if values is None:
            if labels.dtype.kind != "f":
                return
            values = labels  # a regressor: its predictions
        hist.observe_many(np.asarray(values, dtype=np.float64))

    def reload(self, model: str, outcome: str) -> None:
        self.reloads[(model, outcome)] = self.reloads.get((model, outcome), 0) + 1

    # ------------------------------------------------------------------ scrape
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        yield self._counter(
            "requests", "Requests answered.", ("protocol", "route", "status"), self.requests
        )
        yield self._hist(
            "request_duration_seconds",
            "Request latency in the server.",
            ("protocol", "route"),
            self.latency,
        )
        yield self._counter("errors", "Error answers by kind.", ("protocol", "kind"), self.errors)
        yield self._hist(
            "batch_rows",
            "Rows per micro-batch.",
            ("model",),
            {(k,): v for k, v in self.batch_rows.items()},
        )
        yield self._hist(
            "prediction_score", "Predicted score per row.", ("model", "version"), self.scores
        )
        yield self._counter(
            "model_reloads", "Model loads by outcome.", ("model", "outcome"), self.reloads
        )
        info = GaugeMetricFamily(
            "flywheel_model_info",
            "Loaded model versions (value 1).",
            labels=("model", "version", "sha256"),
        )
        for m in self.models():
            info.add_metric((m["name"], m["version"], m["sha256"]), 1.0)
        yield info
        yield from self._sink_metrics()

    def _sink_metrics(self) -> Iterator[Metric]:
        sink = self.sink
        if sink is not None and callable(getattr(sink, "depth", None)):
            gauge = GaugeMetricFamily(
                "flywheel_predlog_queue_depth", "Prediction log records waiting to be written."
            )
            gauge.add_metric((), float(sink.depth()))
            yield gauge
        if sink is not None and callable(getattr(sink, "dropped", None)):
            yield CounterMetricFamily(
                "flywheel_predlog_dropped",
                "Prediction log records dropped (queue full).",
                value=float(sink.dropped()),
            )

    @staticmethod
    def _counter(name: str, doc: str, labels: tuple[str, ...], data: dict[Any, int]) -> Metric:
        family = CounterMetricFamily(f"flywheel_{name}", doc, labels=labels)
        for key, value in list(data.items()):
            family.add_metric(key, float(value))
        return family

    @staticmethod
    def _hist(name: str, doc: str, labels: tuple[str, ...], data: dict[Any, Hist]) -> Metric:
        family = HistogramMetricFamily(f"flywheel_{name}", doc, labels=labels)
        for key, hist in list(data.items()):
            family.add_metric(key, hist.buckets(), hist.total)
        return family
