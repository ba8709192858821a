"""A monitoring report: one self-contained HTML file for a reference and its windows.

Input is what the monitor keeps as JSON: a reference (:meth:`Reference.to_dict`) and the
windows' results (:meth:`WindowResult.to_dict` with ``profile=True``; without the profile
the distribution plots are left out). The file holds everything itself: plots are PNGs
drawn with matplotlib's Agg backend and inlined as base64 ``data:`` URIs, no script, no
stylesheet or font from elsewhere, so it can be mailed, attached to a ticket or opened
offline. Every text from the data (feature names, reasons, sources) is HTML-escaped.

Sections: a header; a table per window; a heat map of drift (each feature's deciding
statistic over its threshold, features x windows); reference-vs-current distributions of
the most drifted features of the last window with a verdict; drift, performance (realised,
and estimated with its 95% interval) and label completeness over time.

matplotlib is imported inside :func:`render_report` only (it is part of the ``train``
extra); without it the report is written with its tables and a note instead of plots.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["render_report"]

MAX_DISTRIBUTIONS = 6
MAX_CATEGORIES_SHOWN = 20
HEATMAP_CAP = 3.0  # value/threshold above this shows in the darkest colour
DPI = 96

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.alarm td{background:#fde2e1}tr.insufficient td{color:#888}
dl.head{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:.9em}
dl.head dt{font-weight:600}dl.head dd{margin:0}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;font-size:.8em}
.red{background:#c0392b;color:#fff}.green{background:#27ae60;color:#fff}.grey{background:#999;color:#fff}
.note{color:#666;font-size:.85em}img{max-width:100%;height:auto}
"""


# --------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _mpl(text: Any) -> str:
    """Text for matplotlib: ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:.{digits}g}"


def _pct(value: Any) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:.0%}"


def _time(ts: Any) -> str:
    v = _num(ts)
    if v is None:
        return ""
    return dt.datetime.fromtimestamp(v, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ratio(feature: Mapping[str, Any]) -> float | None:
    value, threshold = _num(feature.get("value")), _num(feature.get("threshold"))
    if value is None or threshold is None or threshold <= 0:
        return None
    return value / threshold


def _has_verdict(window: Mapping[str, Any]) -> bool:
    return window.get("status", "ok") == "ok" and bool(window.get("features"))


def _perf(window: Mapping[str, Any]) -> Mapping[str, Any]:
    perf = window.get("performance")
    return perf if isinstance(perf, Mapping) else {}


def _metrics(
    reference: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]
) -> tuple[str | None, str | None]:
    """The metric shown as realised, and the one shown as estimated: the primary metric
    where the windows have it, else what they have (f1, then accuracy, for the estimate)."""
    primary = reference.get("primary_metric") or next(
        (_perf(w).get("primary_metric") for w in windows if _perf(w).get("primary_metric")), None
    )
    realised: list[str] = []
    estimated: list[str] = []
    for w in windows:
        perf = _perf(w)
        for key in perf.get("realised") or {}:
            if key not in realised:
                realised.append(key)
        for key in perf.get("estimated") or {}:
            if key not in estimated:
                estimated.append(key)

    def pick(names: list[str], *fallback: str) -> str | None:
        for name in (primary, *fallback):
            if name and name in names:
                return name
        return names[0] if names else None

    return pick(realised), pick(estimated, "f1", "accuracy")


def _estimate(
    window: Mapping[str, Any], metric: str | None
) -> tuple[float | None, float | None, float | None]:
    est = (_perf(window).get("estimated") or {}).get(metric or "") if metric else None
    if not isinstance(est, Mapping):
        return None, None, None
    ci = est.get("ci95") or [None, None]
    low, high = (ci[0], ci[1]) if len(ci) == 2 else (None, None)
    return _num(est.get("value")), _num(low), _num(high)


def _realised(window: Mapping[str, Any], metric: str | None) -> float | None:
    if not metric:
        return None
    return _num((_perf(window).get("realised") or {}).get(metric))


# --------------------------------------------------------------------------- HTML parts


def _header(reference: Mapping[str, Any], windows: Sequence[Mapping[str, Any]], title: str) -> str:
    profile = reference.get("profile") or {}
    alarms = [str(w.get("window")) for w in windows if w.get("alarm")]
    verdicts = sum(1 for w in windows if _has_verdict(w))
    starts = [v for w in windows if (v := _num(w.get("start"))) is not None]
    ends = [v for w in windows if (v := _num(w.get("end"))) is not None]
    items = [
        ("Model", reference.get("model")),
        ("Version", reference.get("version") if reference.get("version") is not None else "—"),
        ("Task", reference.get("task")),
        ("Reference", reference.get("source")),
        ("Reference rows", profile.get("rows")),
        ("Reference built", reference.get("created") or "—"),
        ("Primary metric", reference.get("primary_metric") or "—"),
        ("Windows", f"{len(windows)} ({verdicts} with a verdict)"),
        ("Alarms", f"{len(alarms)}" + (f": {', '.join(alarms)}" if alarms else "")),
    ]
    if starts and ends:
        items.append(("Period", f"{_time(min(starts))} — {_time(max(ends))}"))
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    last = windows[-1] if windows else None
    badge = ""
    if last is not None:
        if last.get("alarm"):
            badge = '<span class="badge red">ALARM</span>'
        elif not _has_verdict(last):
            badge = '<span class="badge grey">insufficient data</span>'
        else:
            badge = '<span class="badge green">no alarm</span>'
        badge = f"<p>Last window {_e(last.get('window'))}: {badge} {_e(last.get('reason'))}</p>"
    return f'<h1>{_e(title)}</h1>\n<dl class="head">{rows}</dl>\n{badge}'


def _summary_table(windows: Sequence[Mapping[str, Any]], real: str | None, est: str | None) -> str:
    head = [
        "window",
        "period",
        "rows",
        "status",
        "alarm",
        "verdict",
        "drift share",
        "drifted features",
        "label completeness",
        f"realised {real or ''}".strip(),
        f"estimated {est or ''} (95% CI)".strip(),
        "reason",
    ]
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for w in windows:
        perf = _perf(w)
        value, low, high = _estimate(w, est)
        estimate = "—" if value is None else f"{value:.3g} [{_fmt(low)}, {_fmt(high)}]"
        period = " — ".join(p for p in (_time(w.get("start")), _time(w.get("end"))) if p)
        cls = "alarm" if w.get("alarm") else ("" if _has_verdict(w) else "insufficient")
        ok = _has_verdict(w)
        cells = [
            (_e(w.get("window")), ""),
            (_e(period), ""),
            (_e(w.get("rows")), "num"),
            (_e(w.get("status", "ok")), ""),
            ("yes" if w.get("alarm") else "no", ""),
            (("yes" if w.get("verdict") else "no") if ok else "—", ""),
            (_fmt(w.get("drift_share")) if ok else "—", "num"),
            (_e(", ".join(str(f) for f in w.get("drifted_features") or [])), ""),
            (_pct(perf.get("label_completeness")), "num"),
            (_fmt(_realised(w, real)), "num"),
            (_e(estimate), "num"),
            (_e(w.get("reason")), ""),
        ]
        row = "".join(f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>" for v, c in cells)
        out.append(f'<tr class="{cls}">{row}</tr>' if cls else f"<tr>{row}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _drifted_table(window: Mapping[str, Any]) -> str:
    feats = sorted(window.get("features") or [], key=lambda f: -(_ratio(f) or 0.0))
    head = ["feature", "kind", "statistic", "value", "threshold", "null q95", "p", "drifted", "why"]
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for f in feats:
        cells = [
            _e(f.get("feature")),
            _e(f.get("kind")),
            _e(f.get("stat")),
            _fmt(f.get("value")),
            _fmt(f.get("threshold")),
            _fmt(f.get("null_q95")),
            _fmt(f.get("p_value"), 2),
            "yes" if f.get("drifted") else "no",
            _e(f.get("reason")),
        ]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


# --------------------------------------------------------------------------- plots


class _Plots:
    """matplotlib Figures on the Agg canvas (no pyplot: no global state, thread-safe)."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._figure = Figure
        self._canvas = FigureCanvasAgg

    def figure(self, width: float, height: float) -> Any:
        fig = self._figure(figsize=(width, height), dpi=DPI, layout="constrained")
        self._canvas(fig)
        return fig

    @staticmethod
    def png(fig: Any) -> bytes:
        import warnings

        buf = io.BytesIO()
        with warnings.catch_warnings():
            # a panel too small for its labels keeps the default layout; matplotlib's warning
            # about it reached the user's terminal on every `monitor report`
            warnings.filterwarnings("ignore", message="constrained_layout not applied")
            fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
        return buf.getvalue()


def _x_axis(ax: Any, names: Sequence[str]) -> None:
    n = len(names)
    step = max(1, math.ceil(n / 30))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels(
        [_mpl(names[i]) for i in ticks],
        rotation=45 if n > 6 else 0,
        ha="right" if n > 6 else "center",
    )
    ax.set_xlim(-0.5, n - 0.5)


def _heatmap(
    plots: _Plots, reference: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]
) -> bytes | None:
    import numpy as np

    names = [str(w.get("window")) for w in windows]
    features: list[str] = [str(f) for f in reference.get("features") or []]
    for w in windows:
        for f in w.get("features") or []:
            name = str(f.get("feature"))
            if name not in features:
                features.append(name)
    if not features or not any(_has_verdict(w) for w in windows):
        return None
    grid = np.full((len(features), len(windows)), np.nan)
    drifted = np.zeros_like(grid, dtype=bool)
    row = {f: i for i, f in enumerate(features)}
    for j, w in enumerate(windows):
        for f in w.get("features") or []:
            i = row[str(f.get("feature"))]
            r = _ratio(f)
            grid[i, j] = np.nan if r is None else r
            drifted[i, j] = bool(f.get("drifted"))
    fig = plots.figure(min(3.0 + 0.45 * len(windows), 16.0), min(1.6 + 0.28 * len(features), 30.0))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["YlOrRd"].copy()
    cmap.set_bad("#dddddd")
    im = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        cmap=cmap,
        vmin=0.0,
        vmax=HEATMAP_CAP,
        interpolation="nearest",
    )
    ax.set_yticks(range(len(features)))
    ax.set_yticklabels([_mpl(f) for f in features], fontsize=8)
    _x_axis(ax, names)
    if len(features) * len(windows) <= 400:
        for i in range(len(features)):
            for j in range(len(windows)):
                if np.isfinite(grid[i, j]):
                    text = f"{grid[i, j]:.2g}" + ("*" if drifted[i, j] else "")
                    dark = grid[i, j] > HEATMAP_CAP * 0.6
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
    ys, xs = np.nonzero(drifted)
    if len(xs) and len(features) * len(windows) > 400:
        ax.scatter(xs, ys, marker="x", s=12, c="black", linewidths=0.8)
    ax.set_xlabel("window")
    ax.set_title(
        "drift: deciding statistic / its threshold (* = drifted; grey = no data; "
        f"colour capped at {HEATMAP_CAP:g})",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, label="value / threshold", shrink=0.8, pad=0.01)
    return plots.png(fig)


def _bins_of(reference: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    for b in reference.get("bins") or []:
        if b.get("name") == name:
            return b
    return None


def _counts(profile: Any, name: str) -> list[float] | None:
    if not isinstance(profile, Mapping):
        return None
    col = (profile.get("columns") or {}).get(name)
    if not isinstance(col, Mapping) or col.get("counts") is None:
        return None
    return [float(c) for c in col["counts"]]


def _shares(counts: Sequence[float]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def _distribution(
    ax: Any, feature: Mapping[str, Any], bins: Mapping[str, Any], ref: list[float], cur: list[float]
) -> None:
    import numpy as np

    name = str(feature.get("feature"))
    p, q = np.asarray(_shares(ref)), np.asarray(_shares(cur))
    title = f"{name}: {feature.get('stat')} {_fmt(feature.get('value'))}"
    title += " (drifted)" if feature.get("drifted") else ""
    miss = f"missing: ref {p[-1]:.1%}, current {q[-1]:.1%}"
    if bins.get("kind") == "numeric":
        edges = [float(e) for e in bins.get("edges") or []]
        centers = [float(c) for c in bins.get("centers") or []]
        if edges and len(centers) == len(edges) + 1:
            inner = np.diff(edges)
            typical = float(np.median(inner)) if inner.size else 1.0
            lo = centers[0] - max(edges[0] - centers[0], typical / 2)
            hi = centers[-1] + max(centers[-1] - edges[-1], typical / 2)
            x = np.asarray([lo, *edges, hi])
            width = np.maximum(np.diff(x), 1e-12)
            for share, label, style in ((p, "reference", "-"), (q, "current", "-")):
                density = share[:-1] / width
                ax.stairs(
                    density,
                    x,
                    label=label,
                    linestyle=style,
                    linewidth=1.4,
                    fill=label == "reference",
                    alpha=0.35 if label == "reference" else 1.0,
                )
            ax.set_ylabel("density (outer bins approximate)", fontsize=7)
        else:  # one bin: nothing to show but the present/missing split
            ax.bar([0, 1], [p[0], p[-1]], width=0.4, label="reference", alpha=0.5)
            ax.bar([0.4, 1.4], [q[0], q[-1]], width=0.4, label="current", alpha=0.8)
            ax.set_xticks([0.2, 1.2], ["present", "(missing)"])
    else:
        labels = [*(str(c) for c in bins.get("categories") or []), "(other)", "(missing)"]
        if len(labels) != len(p):
            labels = [str(i) for i in range(len(p))]
        idx = list(range(len(labels)))
        if len(labels) > MAX_CATEGORIES_SHOWN + 2:  # the largest shares, then other + missing
            top = sorted(idx[:-2], key=lambda i: -max(p[i], q[i]))[:MAX_CATEGORIES_SHOWN]
            idx = [*sorted(top), len(labels) - 2, len(labels) - 1]
        pos = np.arange(len(idx))
        ax.bar(pos - 0.2, p[idx], width=0.4, label="reference", alpha=0.6)
        ax.bar(pos + 0.2, q[idx], width=0.4, label="current", alpha=0.9)
        ax.set_xticks(
            pos,
            [_mpl(labels[i]) for i in idx],
            rotation=45 if len(idx) > 5 else 0,
            ha="right" if len(idx) > 5 else "center",
            fontsize=7,
        )
        ax.set_ylabel("share of rows", fontsize=7)
        unseen = _num(feature.get("unseen_share"))
        if unseen:
            miss += f"; unseen values {unseen:.1%}"
    ax.set_title(_mpl(title), fontsize=9)
    ax.set_xlabel(_mpl(miss), fontsize=7)
    ax.legend(fontsize=7)


def _distributions(
    plots: _Plots, reference: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]
) -> tuple[str, bytes | None, str]:
    """(window name, plot, note) for the last window with a verdict."""
    last = next((w for w in reversed(windows) if _has_verdict(w)), None)
    if last is None:
        return "", None, "No window has a verdict yet."
    feats = [f for f in last.get("features") or [] if f.get("drifted")]
    note = ""
    if not feats:
        ranked = sorted(last.get("features") or [], key=lambda f: -(_ratio(f) or 0.0))
        feats = ranked[:3]
        note = "No feature drifted in this window: the largest changes are shown."
    feats = sorted(feats, key=lambda f: -(_ratio(f) or 0.0))[:MAX_DISTRIBUTIONS]
    ref_profile = reference.get("profile")
    shown = []
    for f in feats:
        name = str(f.get("feature"))
        bins = _bins_of(reference, name)
        ref, cur = _counts(ref_profile, name), _counts(last.get("profile"), name)
        if bins is not None and ref and cur and len(ref) == len(cur):
            shown.append((f, bins, ref, cur))
    if not shown:
        missing = "the window's result carries no profile (write it with profile=True)"
        return str(last.get("window")), None, note or f"No distributions: {missing}."
    cols = 2 if len(shown) > 1 else 1
    rows = math.ceil(len(shown) / cols)
    fig = plots.figure(5.2 * cols, 3.3 * rows)
    for k, (f, bins, ref, cur) in enumerate(shown):
        _distribution(fig.add_subplot(rows, cols, k + 1), f, bins, ref, cur)
    return str(last.get("window")), plots.png(fig), note


def _drift_over_time(plots: _Plots, windows: Sequence[Mapping[str, Any]]) -> bytes:
    import numpy as np

    names = [str(w.get("window")) for w in windows]
    share = np.asarray(
        [(_num(w.get("drift_share")) or 0.0) if _has_verdict(w) else np.nan for w in windows],
        dtype=float,
    )
    fig = plots.figure(min(4.0 + 0.35 * len(windows), 14.0), 3.0)
    ax = fig.add_subplot()
    x = np.arange(len(windows))
    ax.plot(x, share, marker="o", color="#2c7fb8", label="drift share (importance-weighted)")
    alarm = [i for i, w in enumerate(windows) if w.get("alarm")]
    verdict = [i for i, w in enumerate(windows) if w.get("verdict") and not w.get("alarm")]
    none = [i for i, w in enumerate(windows) if not _has_verdict(w)]
    for i in alarm:
        ax.axvspan(i - 0.5, i + 0.5, color="#e74c3c", alpha=0.18, linewidth=0)
    if alarm:
        ax.scatter(alarm, share[alarm], color="#c0392b", zorder=3, s=50, label="alarm")
    if verdict:
        ax.scatter(
            verdict, share[verdict], color="#f39c12", zorder=3, s=35, label="verdict, no alarm yet"
        )
    if none:
        ax.scatter(
            none, np.zeros(len(none)), marker="x", color="#999", zorder=3, label="insufficient data"
        )
    _x_axis(ax, names)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("drift share")
    ax.set_title("drift over time", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return plots.png(fig)


def _performance_over_time(
    plots: _Plots,
    reference: Mapping[str, Any],
    windows: Sequence[Mapping[str, Any]],
    real: str | None,
    est: str | None,
) -> bytes | None:
    import numpy as np

    if real is None and est is None:
        return None
    names = [str(w.get("window")) for w in windows]
    x = np.arange(len(windows))
    fig = plots.figure(min(4.0 + 0.35 * len(windows), 14.0), 3.2)
    ax = fig.add_subplot()
    if est is not None:
        triples = [_estimate(w, est) for w in windows]
        value = np.asarray([t[0] if t[0] is not None else np.nan for t in triples], dtype=float)
        low = np.asarray([t[1] if t[1] is not None else np.nan for t in triples], dtype=float)
        high = np.asarray([t[2] if t[2] is not None else np.nan for t in triples], dtype=float)
        ax.fill_between(x, low, high, color="#9ecae1", alpha=0.4, linewidth=0)
        ax.errorbar(
            x,
            value,
            yerr=[value - low, high - value],
            fmt=".-",
            color="#3182bd",
            ecolor="#6baed6",
            capsize=3,
            label=_mpl(f"estimated {est} (95% interval)"),
        )
    if real is not None:
        values = [_realised(w, real) for w in windows]
        pts = [(i, v) for i, v in enumerate(values) if v is not None]
        if pts:
            ax.plot(
                [i for i, _ in pts],
                [v for _, v in pts],
                "o-",
                color="#d95f0e",
                label=_mpl(f"realised {real}"),
            )
    metrics = reference.get("metrics") or {}
    lines = {m: c for m, c in ((est, "#3182bd"), (real, "#d95f0e")) if m}  # one line a metric
    for metric, color in lines.items():
        ref_value = _num(metrics.get(metric))
        if ref_value is not None:
            ax.axhline(
                ref_value,
                color=color,
                linestyle="--",
                linewidth=0.9,
                label=_mpl(f"{metric} on the reference"),
            )
    _x_axis(ax, names)
    ax.set_title("performance over time", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return plots.png(fig)


def _completeness_over_time(plots: _Plots, windows: Sequence[Mapping[str, Any]]) -> bytes | None:
    values = [_num(_perf(w).get("label_completeness")) for w in windows]
    if all(v is None for v in values):
        return None
    import numpy as np

    fig = plots.figure(min(4.0 + 0.35 * len(windows), 14.0), 2.6)
    ax = fig.add_subplot()
    x = np.arange(len(windows))
    ax.bar(x, [v if v is not None else 0.0 for v in values], color="#74c476", width=0.6)
    for i, v in enumerate(values):
        if v is None:  # no performance figures (insufficient data): not the same as 0%
            ax.text(i, 0.02, "no data", ha="center", va="bottom", fontsize=7, color="#888")
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter("{x:.0%}")
    _x_axis(ax, [str(w.get("window")) for w in windows])
    ax.set_ylabel("labelled rows")
    ax.set_title("label completeness over time", fontsize=10)
    return plots.png(fig)


# --------------------------------------------------------------------------- the report


def render_report(
    reference: dict[str, Any],
    windows: list[dict[str, Any]],
    out: Path,
    *,
    title: str | None = None,
) -> Path:
    """Write the HTML report of ``windows`` (oldest first) against ``reference`` to ``out``
    (parent folders are created) and return its path."""
    out = Path(out)
    model = reference.get("model", "")
    version = reference.get("version")
    title = title or f"Monitoring report: {model}" + (f" v{version}" if version is not None else "")
    real, est = _metrics(reference, windows)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        _header(reference, windows, title),
        "<h2>Windows</h2>",
        _summary_table(windows, real, est) if windows else '<p class="note">No windows.</p>',
    ]
    last = next((w for w in reversed(windows) if _has_verdict(w)), None)
    if last is not None:
        parts.append(f"<h2>Features in window {_e(last.get('window'))}</h2>")
        parts.append(_drifted_table(last))
    try:
        plots: _Plots | None = _Plots()
    except ImportError:
        plots = None
        parts.append('<p class="note">matplotlib is not installed: plots are left out.</p>')
    if plots is not None and windows:
        parts.append("<h2>Drift per feature</h2>")
        heat = _heatmap(plots, reference, windows)
        parts.append(
            _img(heat, "drift heat map: features by windows")
            if heat
            else '<p class="note">No window has a verdict yet.</p>'
        )
        name, dist, note = _distributions(plots, reference, windows)
        parts.append(
            f"<h2>Reference vs current: window {_e(name)}</h2>"
            if name
            else "<h2>Reference vs current</h2>"
        )
        if note:
            parts.append(f'<p class="note">{_e(note)}</p>')
        if dist:
            parts.append(_img(dist, f"distributions of the most drifted features in window {name}"))
        parts.append("<h2>Drift over time</h2>")
        parts.append(_img(_drift_over_time(plots, windows), "drift share per window"))
        parts.append("<h2>Performance over time</h2>")
        perf = _performance_over_time(plots, reference, windows, real, est)
        parts.append(
            _img(perf, "realised and estimated performance per window")
            if perf
            else '<p class="note">No window has performance figures.</p>'
        )
        parts.append("<h2>Label completeness over time</h2>")
        comp = _completeness_over_time(plots, windows)
        parts.append(
            _img(comp, "label completeness per window")
            if comp
            else '<p class="note">No window has label counts.</p>'
        )
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="note">Generated by flywheel on {_e(generated)}.</p></body></html>')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
