"""Alarm webhooks: a JSON POST with retries that never raises, against a real local server."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flywheel.monitoring import alerts
from flywheel.monitoring.alerts import alarm_payload, post_alarm


class _Hook:
    """A local webhook: answers the statuses in ``plan`` in turn (then 200), records requests."""

    def __init__(self) -> None:
        self.plan: list[int] = []
        self.requests: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status = hook.plan.pop(0) if hook.plan else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-part"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[_Hook]:
    h = _Hook()
    yield h
    h.close()


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the backoff sleeps instead of waiting them."""
    slept: list[float] = []
    monkeypatch.setattr(alerts.time, "sleep", slept.append)
    return slept


def test_success_posts_json_with_the_bearer_token(hook: _Hook) -> None:
    payload = {"model": "m", "alarm": True, "drift_share": float("nan")}
    assert post_alarm(hook.url, payload, token="t0k") is True
    (req,) = hook.requests
    assert req["path"] == "/hook/secret-part"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["Authorization"] == "Bearer t0k"
    assert json.loads(req["body"]) == {"model": "m", "alarm": True, "drift_share": None}


def test_no_token_no_authorization_header(hook: _Hook) -> None:
    assert post_alarm(hook.url, {"a": 1}) is True
    assert "Authorization" not in hook.requests[0]["headers"]


def test_a_5xx_is_retried_with_backoff(hook: _Hook, fast_backoff: list[float]) -> None:
    hook.plan = [500, 503]
    assert post_alarm(hook.url, {"a": 1}, retries=3) is True
    assert len(hook.requests) == 3
    assert fast_backoff == [0.2, 0.4]


def test_retries_run_out(
    hook: _Hook, fast_backoff: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    hook.plan = [502] * 10
    with caplog.at_level(logging.WARNING, logger="flywheel.monitoring.alerts"):
        assert post_alarm(hook.url, {"a": 1}, retries=2, token="t0k") is False
    assert len(hook.requests) == 3 and fast_backoff == [0.2, 0.4]
    assert "HTTP 502" in caplog.text
    assert "secret-part" not in caplog.text and "t0k" not in caplog.text  # no secrets in logs


def test_a_4xx_is_not_retried(hook: _Hook, fast_backoff: list[float]) -> None:
    hook.plan = [400]
    assert post_alarm(hook.url, {"a": 1}) is False
    assert len(hook.requests) == 1 and fast_backoff == []


def test_a_real_backoff_then_success(hook: _Hook) -> None:
    hook.plan = [500]
    t0 = time.monotonic()
    assert post_alarm(hook.url, {"a": 1}) is True
    assert 0.19 <= time.monotonic() - t0 < 3.0
    assert len(hook.requests) == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_false_and_fast(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x"
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="flywheel.monitoring.alerts"):
        assert post_alarm(url, {"a": 1}, retries=2, timeout=1.0) is False
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0  # two backoffs (0.2 + 0.4 s), no hanging
    assert elapsed >= 0.55
    assert "not sent" in caplog.text


@pytest.mark.parametrize(
    "url", ["ftp://example.invalid/x", "file:///etc/passwd", "not a url", "http://"]
)
def test_bad_urls_are_false_not_exceptions(url: str, fast_backoff: list[float]) -> None:
    assert post_alarm(url, {"a": 1}, retries=1) is False


def test_an_unserialisable_payload_is_false(hook: _Hook) -> None:
    assert post_alarm(hook.url, {"a": {1, 2}}) is True  # default=str: sets become text
    assert post_alarm(hook.url, {"a": object()}) is True
    circular: dict[str, Any] = {}
    circular["self"] = circular
    assert post_alarm(hook.url, circular) is False


def test_alarm_payload_summarises_a_result() -> None:
    result = {
        "window": "2025-01-02",
        "rows": 5000,
        "model": "churn",
        "version": "3",
        "reference": "holdout of run abc",
        "start": 1.7e9,
        "end": 1.7e9 + 86400,
        "status": "ok",
        "alarm": True,
        "verdict": True,
        "drift": True,
        "prediction_drift": False,
        "drift_share": 0.4,
        "reason": "drift in a",
        "drifted_features": ["a"],
        "features": [
            {
                "feature": "a",
                "kind": "numeric",
                "stat": "w1",
                "value": 0.3,
                "threshold": 0.1,
                "p_value": 0.001,
                "drifted": True,
            },
            {
                "feature": "b",
                "kind": "numeric",
                "stat": "w1",
                "value": 0.01,
                "threshold": 0.1,
                "p_value": 0.6,
                "drifted": False,
            },
        ],
        "performance": {
            "label_completeness": 0.1,
            "realised": None,
            "estimated": {"f1": {"value": 0.41, "ci95": [0.38, 0.44]}},
            "reference": {"f1": 0.5},
            "primary_metric": "roc_auc",
            "breach": True,
            "reason": "estimated f1 at most 0.44",
        },
    }
    p = alarm_payload(result)
    assert p["source"] == "flywheel"
    for key in (
        "model",
        "version",
        "window",
        "start",
        "end",
        "rows",
        "alarm",
        "reason",
        "drifted_features",
        "drift_share",
    ):
        assert p[key] == result[key]
    assert [f["feature"] for f in p["features"]] == ["a"]
    assert p["performance"]["primary"] == {
        "kind": "estimated",
        "metric": "f1",
        "value": 0.41,
        "ci95": [0.38, 0.44],
    }
    assert p["performance"]["label_completeness"] == 0.1 and p["performance"]["breach"] is True
    assert p["text"].startswith("[flywheel] ALARM: churn v3, window 2025-01-02")
    json.dumps(p, allow_nan=False)


def test_alarm_payload_of_an_insufficient_window() -> None:
    p = alarm_payload(
        {
            "window": "w",
            "rows": 3,
            "model": "m",
            "version": None,
            "status": "insufficient data",
            "features": [],
            "performance": None,
            "drift_share": float("nan"),
        }
    )
    assert p["performance"] is None and p["alarm"] is False and p["drift_share"] is None
    assert p["status"] == "insufficient data" and p["drifted_features"] == []
