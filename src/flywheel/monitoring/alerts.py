"""Alarms out: a JSON POST to a webhook, with retries, that never raises.

:func:`alarm_payload` turns a window's result (:meth:`WindowResult.to_dict`) into the body;
:func:`post_alarm` sends it with the standard library only (no HTTP client dependency).
Connection errors, timeouts, 5xx and 429 answers are retried with a doubling backoff
(0.2 s, 0.4 s, 0.8 s, ...); any other answer, or running out of attempts, logs a warning and
returns False: a monitor run must not fail because a chat or pager endpoint is down.

The payload carries a ``text`` line as well, so Slack-, Mattermost- or Teams-style incoming
webhooks can take it as it is.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["alarm_payload", "post_alarm"]

log = logging.getLogger("flywheel.monitoring.alerts")

BACKOFF = 0.2  # seconds before the first retry; doubled each time
MAX_FEATURES = 20  # drifted features listed with their statistics in the payload


def _where(url: str) -> str:
    """The URL without its path, query or credentials: webhook URLs often carry a secret."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def post_alarm(
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float = 5.0,
    retries: int = 3,
    token: str | None = None,
) -> bool:
    """POST ``payload`` as JSON to ``url``; True on a 2xx answer. ``retries``: further
    attempts after the first, on connection errors, timeouts, 5xx and 429. ``token`` is sent
    as ``Authorization: Bearer``. Never raises: failures log a warning and return False."""
    where = _where(url)
    if urlsplit(url).scheme not in ("http", "https"):
        log.warning("alarm not sent: %r is not an http(s) URL", where)
        return False
    try:
        body = json.dumps(_finite(payload), default=str, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: a cycle
        log.warning("alarm not sent: the payload is not JSON (%s: %s)", type(exc).__name__, exc)
        return False
    headers = {"Content-Type": "application/json", "User-Agent": "flywheel-monitor"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    attempts = 1 + max(0, int(retries))
    why = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(BACKOFF * 2 ** (attempt - 1))
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(65536)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
            exc.close()
        except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout, reset
            reason = getattr(exc, "reason", exc)
            why = f"{type(reason).__name__}: {reason}"
            continue
        except Exception as exc:  # a malformed URL or answer: not worth retrying
            log.warning("alarm to %s not sent: %s: %s", where, type(exc).__name__, exc)
            return False
        if 200 <= status < 300:
            if attempt:
                log.info("alarm to %s sent after %d attempts", where, attempt + 1)
            return True
        why = f"HTTP {status}"
        if status < 500 and status != 429:
            break
    log.warning("alarm to %s not sent (%s; %d attempt(s))", where, why, attempt + 1)
    return False


def _performance(perf: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not perf:
        return None
    primary = perf.get("primary_metric")
    realised = perf.get("realised") or None
    estimated = perf.get("estimated") or None
    out: dict[str, Any] = {
        "primary_metric": primary,
        "label_completeness": perf.get("label_completeness"),
        "realised": realised,
        "estimated": estimated,
        "reference": perf.get("reference") or {},
        "breach": bool(perf.get("breach")),
        "reason": perf.get("reason") or "",
    }
    if primary and realised and primary in realised:
        out["primary"] = {"kind": "realised", "metric": primary, "value": realised[primary]}
    elif estimated:
        name = primary if primary in estimated else next(iter(estimated))
        est = estimated[name]
        out["primary"] = {
            "kind": "estimated",
            "metric": name,
            "value": est.get("value"),
            "ci95": est.get("ci95"),
        }
    return out


def alarm_payload(result: Mapping[str, Any]) -> dict[str, Any]:
    """The webhook body for one window's result (``WindowResult.to_dict()``)."""
    drifted = [f for f in result.get("features") or [] if f.get("drifted")]
    drifted.sort(key=lambda f: -(f.get("value") or 0.0) / (f.get("threshold") or 1.0))
    model, version, window = result.get("model"), result.get("version"), result.get("window")
    alarm = bool(result.get("alarm"))
    head = "ALARM" if alarm else ("verdict" if result.get("verdict") else "ok")
    name = f"{model}" + (f" v{version}" if version is not None else "")
    text = f"[flywheel] {head}: {name}, window {window}: {result.get('reason') or 'no drift'}"
    return _finite(
        {
            "source": "flywheel",
            "model": model,
            "version": version,
            "window": window,
            "start": result.get("start"),
            "end": result.get("end"),
            "rows": result.get("rows"),
            "status": result.get("status", "ok"),
            "alarm": alarm,
            "verdict": bool(result.get("verdict")),
            "reason": result.get("reason") or "",
            "drift_share": result.get("drift_share"),
            "prediction_drift": bool(result.get("prediction_drift")),
            "drifted_features": list(result.get("drifted_features") or []),
            "features": [
                {k: f.get(k) for k in ("feature", "kind", "stat", "value", "threshold", "p_value")}
                for f in drifted[:MAX_FEATURES]
            ],
            "performance": _performance(result.get("performance")),
            "reference": result.get("reference"),
            "text": text,
        }
    )
