"""The replay's timeline: one self-contained HTML page (plots inlined, no script, no network).

Four plots share the simulated calendar: the traffic per day by the version that answered,
the monitor's drift share (alarms marked), realised and estimated performance with label
completeness, and the champion's version; every retrain, rollout step, promotion and
rollback is a line across all four and a row in the events table.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.workspace import Workspace

if TYPE_CHECKING:
    from flywheel.pipelines.replay import ReplayResult

__all__ = ["write_timeline"]

DPI = 100
COLOURS = {
    "retrain_triggered": "#e69f00",
    "pipeline_failed": "#7f0000",
    "rollout_start": "#0072b2",
    "rollout_step": "#56b4e9",
    "rollout_promote": "#009e73",
    "promote": "#009e73",
    "rollout_rollback": "#d55e00",
    "rollback": "#d55e00",
    "self_heal": "#d55e00",
    "rollout_abort": "#999999",
}


def _windows(ws: Workspace, first: str, last: str) -> list[dict[str, Any]]:
    from flywheel.monitoring.store import MonitorStore

    store = MonitorStore(ws.settings.monitoring.url or "")
    try:
        rows = store.windows(ws.settings.registry.model_name)
    finally:
        store.dispose()
    lo = dt.date.fromisoformat(first)
    hi = dt.date.fromisoformat(last)
    out = []
    for w in rows:
        if w.get("start") is None:
            continue
        day = dt.datetime.fromtimestamp(float(w["start"]), dt.UTC).date()
        if lo <= day <= hi:
            out.append({**w, "day": day})
    return out


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plot(result: ReplayResult, windows: list[dict[str, Any]]) -> str:
    days = [dt.date.fromisoformat(d.day) for d in result.days]
    fig = _figure(12, 11)
    ax_t, ax_d, ax_p, ax_c = fig.subplots(4, 1, sharex=True, height_ratios=[3, 2.5, 3, 1.5])
    # traffic by version
    versions = sorted({v for d in result.days for v in d.versions}, key=_version_key)
    bottom = [0] * len(days)
    for v in versions:
        counts = [d.versions.get(v, 0) for d in result.days]
        ax_t.bar(days, counts, bottom=bottom, width=1.0, label=f"v{v}", linewidth=0)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    errors = [d.errors for d in result.days]
    if any(errors):
        ax_t.plot(days, errors, color="red", lw=1, label="errors")
    ax_t.set_ylabel("requests / day")
    ax_t.legend(loc="upper left", ncols=min(6, len(versions) + 1), fontsize=8)
    ax_t.set_title("Traffic by the version that answered")
    # drift
    ok = [w for w in windows if w.get("status") == "ok"]
    ax_d.plot(
        [w["day"] for w in ok], [w.get("drift_share") or 0 for w in ok], lw=1, label="drift share"
    )
    alarms = [w for w in ok if w.get("alarm")]
    ax_d.scatter(
        [w["day"] for w in alarms],
        [w.get("drift_share") or 0 for w in alarms],
        color="red",
        s=12,
        zorder=3,
        label="alarm",
    )
    pred = [w for w in ok if w.get("prediction_drift")]
    ax_d.scatter(
        [w["day"] for w in pred],
        [0] * len(pred),
        marker="|",
        color="purple",
        label="prediction drift",
    )
    ax_d.set_ylabel("importance-weighted\nshare drifted")
    ax_d.set_ylim(-0.05, 1.05)
    ax_d.legend(loc="upper left", fontsize=8)
    ax_d.set_title("Drift (the monitor's daily windows, each against its version's reference)")
    # performance
    metric = _primary(ok)
    real = [(w["day"], _realised(w, metric)) for w in ok]
    real = [(d, v) for d, v in real if v is not None]
    est = [(w["day"], *_estimated(w, metric)) for w in ok]
    est = [e for e in est if e[1] is not None]
    if est:
        ax_p.plot(
            [e[0] for e in est],
            [e[1] for e in est],
            lw=1,
            color="#0072b2",
            label=f"estimated {metric}",
        )
        ax_p.fill_between(
            [e[0] for e in est],
            [e[2] for e in est],
            [e[3] for e in est],
            color="#0072b2",
            alpha=0.15,
            linewidth=0,
        )
    if real:
        ax_p.plot(
            [d for d, _ in real],
            [v for _, v in real],
            lw=1.2,
            color="black",
            label=f"realised {metric}",
        )
    comp = [(w["day"], _completeness(w)) for w in ok]
    comp = [(d, c) for d, c in comp if c is not None]
    if comp:
        twin = ax_p.twinx()
        twin.plot([d for d, _ in comp], [c for _, c in comp], lw=0.8, ls=":", color="grey")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("label completeness", color="grey")
    ax_p.set_ylabel(metric or "metric")
    ax_p.legend(loc="lower left", fontsize=8)
    ax_p.set_title("Performance: realised once labels arrive, estimated before (95% band)")
    # champion
    champ = [int(d.champion) if d.champion else None for d in result.days]
    ax_c.step(
        days, [c if c is not None else float("nan") for c in champ], where="post", color="black"
    )
    ax_c.set_ylabel("champion")
    ax_c.yaxis.get_major_locator().set_params(integer=True)
    for e in result.events:
        colour = COLOURS.get(e["action"])
        if colour is None:
            continue
        day = dt.date.fromisoformat(e["day"])
        for ax in (ax_t, ax_d, ax_p, ax_c):
            ax.axvline(day, color=colour, lw=1, alpha=0.7)
    fig.autofmt_xdate()
    return _png(fig)


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (10**9, v)


def _primary(windows: list[dict[str, Any]]) -> str | None:
    for w in reversed(windows):
        perf = w.get("performance") or {}
        if perf.get("primary_metric"):
            return str(perf["primary_metric"])
    return None


def _realised(w: dict[str, Any], metric: str | None) -> float | None:
    perf = w.get("performance") or {}
    real = perf.get("realised") or {}
    return real.get(metric) if metric else None


def _estimated(w: dict[str, Any], metric: str | None) -> tuple[float | None, float, float]:
    perf = w.get("performance") or {}
    est = (perf.get("estimated") or {}).get(metric or "") or {}
    value = est.get("value")
    if value is None:
        return None, 0.0, 0.0
    lo, hi = (est.get("ci95") or [value, value])[:2]
    return float(value), float(value if lo is None else lo), float(value if hi is None else hi)


def _completeness(w: dict[str, Any]) -> float | None:
    perf = w.get("performance") or {}
    value = perf.get("label_completeness")
    return None if value is None else float(value)


def write_timeline(ws: Workspace, result: ReplayResult, path: Path) -> Path:
    """Write the timeline page to ``path`` (atomically) and return it."""
    windows = _windows(ws, result.first_day, result.last_day)
    image = _plot(result, windows)
    e = html.escape
    summary = result.summary()
    rows = "".join(
        f"<tr><td>{e(ev['day'])}</td><td>{e(ev['action'])}</td>"
        f"<td>{e(str(ev['from'] or ''))}</td><td>{e(str(ev['to'] or ''))}</td>"
        f"<td>{e(ev['reason'])}</td></tr>"
        for ev in result.events
        if ev["action"] != "monitor"
    )
    timing = "".join(
        f"<tr><td>{e(k)}</td><td>{v:.1f}</td></tr>"
        for k, v in sorted(result.seconds.items(), key=lambda kv: -kv[1])
    )
    facts = "".join(
        f"<tr><th>{e(k.replace('_', ' '))}</th><td>{e(str(v))}</td></tr>"
        for k, v in summary.items()
        if k not in ("seconds", "timeline")
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>flywheel replay {e(result.first_day)} to {e(result.last_day)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1250px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }}
img {{ max-width: 100%; }}
.key span {{ display: inline-block; width: 0.8rem; height: 0.8rem; margin: 0 0.3rem 0 1rem; }}
</style></head><body>
<h1>The flywheel, {e(result.first_day)} to {e(result.last_day)}</h1>
<table>{facts}</table>
<p class="key">Lines: <span style="background:#e69f00"></span>retrain triggered
<span style="background:#0072b2"></span>rollout started
<span style="background:#56b4e9"></span>rollout step
<span style="background:#009e73"></span>promoted
<span style="background:#d55e00"></span>rolled back
<span style="background:#7f0000"></span>pipeline stopped</p>
<img alt="traffic, drift, performance and the champion over the replayed days"
 src="data:image/png;base64,{image}">
<h2>Events</h2>
<table><tr><th>day</th><th>action</th><th>from</th><th>to</th><th>reason</th></tr>{rows}</table>
<h2>Where the wall time went (seconds)</h2>
<table>{timing}</table>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
