"""The Live view's data: requests per second, latency percentiles and errors per protocol
(read from the server's Prometheus metrics: this server's in process, or another's
``/metrics`` over HTTP), the versions in service, and the rollout (weights, per-arm counts,
the checks and the test's evidence: ``flywheel rollout status``).

Rates need two readings: :class:`Sampler` keeps the last readings (one per ``min_gap_s``,
taken when the page polls) and turns consecutive ones into a series."""

from __future__ import annotations

import itertools
import json
import math
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reading", "Sampler", "parse_metrics", "percentile", "remote_get"]

QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class Reading:
    """Cumulative counters at one time, per protocol."""

    at: float
    requests: dict[str, float] = field(default_factory=dict)
    errors: dict[str, dict[str, float]] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # le -> cumulative


def parse_metrics(text: str, at: float | None = None) -> Reading:
    """A :class:`Reading` of ``flywheel_requests_total``, ``flywheel_errors_total`` and
    ``flywheel_request_duration_seconds`` (routes summed per protocol)."""
    from prometheus_client.parser import text_string_to_metric_families

    reading = Reading(at=time.time() if at is None else at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            proto = s.labels.get("protocol")
            if proto is None:
                continue
            if s.name == "flywheel_requests_total":
                reading.requests[proto] = reading.requests.get(proto, 0.0) + s.value
            elif s.name == "flywheel_errors_total":
                kinds = reading.errors.setdefault(proto, {})
                kinds[s.labels["kind"]] = kinds.get(s.labels["kind"], 0.0) + s.value
            elif s.name == "flywheel_request_duration_seconds_bucket":
                le = float(s.labels["le"])
                hist = reading.buckets.setdefault(proto, {})
                hist[le] = hist.get(le, 0.0) + s.value
    return reading


def percentile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile (seconds) of a cumulative histogram, interpolated within its bucket
    (as Prometheus' histogram_quantile); None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank, low, below = q * total, 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return low  # beyond the last finite bound: its lower edge
            inside = count - below
            return low + (le - low) * ((rank - below) / inside if inside else 1.0)
        low, below = le, count
    return low


def _minus(a: dict[float, float], b: dict[float, float]) -> dict[float, float]:
    return {le: a[le] - b.get(le, 0.0) for le in a}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Sampler:
    """The last ``keep`` readings, at least ``min_gap_s`` apart."""

    def __init__(self, keep: int = 180, min_gap_s: float = 1.0) -> None:
        self.readings: deque[Reading] = deque(maxlen=keep)
        self.min_gap_s = min_gap_s

    def add(self, reading: Reading) -> None:
        if self.readings and reading.at - self.readings[-1].at < self.min_gap_s:
            self.readings[-1] = reading  # too close: the newest replaces it
            if len(self.readings) == 1:
                return
        else:
            self.readings.append(reading)

    def summary(self) -> dict[str, Any]:
        """Per protocol: totals, rps and percentiles over the last interval; and the series."""
        if not self.readings:
            return {"protocols": {}, "series": []}
        last = self.readings[-1]
        prev = self.readings[-2] if len(self.readings) > 1 else None
        protocols = {}
        for proto in sorted(set(last.requests) | set(last.buckets)):
            recent = last.buckets.get(proto, {})
            if prev is not None and proto in prev.buckets:
                delta = _minus(recent, prev.buckets[proto])
                recent = delta if max(delta.values(), default=0) > 0 else recent
            protocols[proto] = {
                "requests": last.requests.get(proto, 0.0),
                "errors": sum(last.errors.get(proto, {}).values()),
                "errors_by_kind": last.errors.get(proto, {}),
                "rps": _rate(prev, last, proto),
                **{f"p{round(q * 100)}_ms": _ms(percentile(recent, q)) for q in QUANTILES},
            }
        return {"at": last.at, "protocols": protocols, "series": self.series()}

    def series(self) -> list[dict[str, Any]]:
        out = []
        items = list(self.readings)
        for prev, cur in itertools.pairwise(items):
            all_b: dict[float, float] = {}
            for proto, hist in cur.buckets.items():
                for le, n in _minus(hist, prev.buckets.get(proto, {})).items():
                    all_b[le] = all_b.get(le, 0.0) + n
            span = max(cur.at - prev.at, 1e-9)
            done = sum(cur.requests.values()) - sum(prev.requests.values())
            errs = sum(sum(k.values()) for k in cur.errors.values()) - sum(
                sum(k.values()) for k in prev.errors.values()
            )
            out.append(
                {
                    "at": cur.at,
                    "rps": round(done / span, 3),
                    "errors_per_s": round(errs / span, 3),
                    "p50_ms": _ms(percentile(all_b, 0.5)),
                    "p99_ms": _ms(percentile(all_b, 0.99)),
                }
            )
        return out


def _rate(prev: Reading | None, last: Reading, proto: str) -> float | None:
    if prev is None:
        return None
    span = max(last.at - prev.at, 1e-9)
    return round((last.requests.get(proto, 0.0) - prev.requests.get(proto, 0.0)) / span, 3)


def remote_get(url: str, token: bytes | None = None, timeout: float = 5.0) -> tuple[str, Any]:
    """GET ``url`` (the server ``flywheel console --server`` names): (content type, body as
    text or parsed JSON)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", "Bearer " + token.decode())
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        kind = answer.headers.get("content-type", "")
        body = answer.read().decode()
    return kind, json.loads(body) if "json" in kind else body
