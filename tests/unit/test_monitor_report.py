"""The monitoring report: one self-contained HTML file from a reference and its windows."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("datasketches")
pytest.importorskip("matplotlib")

from flywheel.monitoring.decide import MonitorSettings, decide, evaluate_window
from flywheel.monitoring.reference import build_reference, score_columns
from flywheel.monitoring.report import render_report
from flywheel.monitoring.window import count_window
from flywheel.schema import FeatureSpec

ODD = "city<&>\"'$"  # a feature name HTML (and matplotlib's mathtext) must not take literally


def _frame(
    rng: np.random.Generator, n: int, shift: float = 0.0, new: float = 0.0, labels: float = 1.0
) -> pa.Table:
    x0 = rng.normal(shift, 1, n)
    x1 = rng.normal(0, 1, n)
    city = rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    if new:
        city[rng.random(n) < new] = "zzz"
    p = 1 / (1 + np.exp(-(x0 + x1)))
    y = (rng.random(n) < p).astype(int)
    cols: dict[str, Any] = {"x0": x0, "x1": x1, ODD: city}
    cols.update(
        score_columns("classification", ["0", "1"], (p >= 0.5).astype(int), np.c_[1 - p, p])
    )
    cols["__label__"] = pa.array(
        [str(v) if rng.random() < labels else None for v in y], pa.string()
    )
    return pa.table(cols)


@pytest.fixture(scope="module")
def monitored() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(7)
    specs = [
        FeatureSpec("x0", "numeric"),
        FeatureSpec("x1", "numeric"),
        FeatureSpec(ODD, "categorical"),
    ]
    ref = build_reference(
        model="churn",
        version="3",
        source="holdout of run abc",
        frame=_frame(rng, 3000),
        specs=specs,
        task="classification",
        classes=[0, 1],
        threshold=0.5,
        metrics={"roc_auc": 0.8, "f1": 0.7},
        primary_metric="roc_auc",
    )
    settings = MonitorSettings()
    plan = [
        ("w1", _frame(rng, 2000)),  # no drift, fully labelled
        ("w2", _frame(rng, 50)),  # insufficient data
        ("w3", _frame(rng, 2000, shift=0.6, new=0.3, labels=0.2)),  # drifted, few labels
        ("w4", _frame(rng, 2000, shift=0.6, new=0.3, labels=0.0)),  # drifted: the alarm
    ]
    results = [evaluate_window(ref, count_window(ref, [t]), name, settings) for name, t in plan]
    decide(results, settings)
    return ref.to_dict(), [r.to_dict(profile=True) for r in results]


def test_the_fixture_has_what_the_report_must_handle(
    monitored: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, windows = monitored
    assert windows[1]["status"] == "insufficient data" and windows[1]["features"] == []
    assert windows[1]["performance"] is None
    assert "x0" in windows[-1]["drifted_features"] and windows[-1]["alarm"]
    assert windows[0]["drifted_features"] == []


def test_the_report_is_one_self_contained_file(
    monitored: tuple[dict[str, Any], list[dict[str, Any]]], tmp_path: Path
) -> None:
    reference, windows = monitored
    out = render_report(reference, windows, tmp_path / "sub" / "report.html")
    assert out == tmp_path / "sub" / "report.html" and out.is_file()
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # nothing fetched from elsewhere: no remote src/href, no script at all
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower()
    # the plots are inline PNGs that decode: heat map, distributions, drift,
    # performance, completeness
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 5
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in images)
    # header and table
    assert "churn" in text and "holdout of run abc" in text and "3000" in text
    assert "insufficient data" in text
    assert "Reference vs current: window w4" in text
    assert re.search(r"<dt>Alarms</dt><dd>1: w4</dd>", text)
    assert "estimated roc_auc (95% CI)" in text


def test_feature_names_and_reasons_are_escaped(
    monitored: tuple[dict[str, Any], list[dict[str, Any]]], tmp_path: Path
) -> None:
    reference, windows = monitored
    assert ODD in windows[-1]["drifted_features"]  # the odd name did drift: it is in the text
    text = render_report(reference, windows, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "x0" in text
    assert "city&lt;&amp;&gt;&quot;&#x27;$" in text
    assert ODD not in text and "<&>" not in text


def test_a_title_is_escaped_and_used(
    monitored: tuple[dict[str, Any], list[dict[str, Any]]], tmp_path: Path
) -> None:
    reference, windows = monitored
    text = render_report(reference, windows, tmp_path / "r.html", title="<b>weekly</b>").read_text()
    assert "<title>&lt;b&gt;weekly&lt;/b&gt;</title>" in text and "<b>weekly" not in text


def test_only_insufficient_windows_or_none_still_render(
    monitored: tuple[dict[str, Any], list[dict[str, Any]]], tmp_path: Path
) -> None:
    reference, windows = monitored
    text = render_report(reference, [windows[1]], tmp_path / "a.html").read_text()
    assert "insufficient data" in text and "No window has a verdict yet." in text
    assert "No window has performance figures." in text
    text = render_report(reference, [], tmp_path / "b.html").read_text()
    assert "No windows." in text


def test_windows_without_profile_or_performance(
    monitored: tuple[dict[str, Any], list[dict[str, Any]]], tmp_path: Path
) -> None:
    reference, windows = monitored
    bare = [{k: v for k, v in w.items() if k != "profile"} | {"performance": None} for w in windows]
    text = render_report(reference, bare, tmp_path / "r.html").read_text()
    assert "carries no profile" in text
    assert "No window has performance figures." in text
    assert text.count("<img ") == 2  # the heat map and drift over time


def test_a_regression_reference_without_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    specs = [FeatureSpec("x", "numeric"), FeatureSpec("k", "categorical")]

    def frame(n: int, shift: float = 0.0) -> pa.Table:
        # more categories than a plot shows; the shifted window loses half of them
        k = rng.choice([f"c{i}" for i in range(30 if shift else 60)], n)
        return pa.table({"x": rng.normal(shift, 1, n), "k": k})

    ref = build_reference(
        model="price",
        version=None,
        source="snapshot s1",
        frame=frame(4000),
        specs=specs,
        task="regression",
    )
    settings = MonitorSettings()
    results = [
        evaluate_window(ref, count_window(ref, [frame(3000, s)]), f"d{i}", settings)
        for i, s in enumerate((0.0, 1.0))
    ]
    decide(results, settings)
    windows = [r.to_dict(profile=True) for r in results]
    assert all(w["performance"] is None for w in windows)
    text = render_report(ref.to_dict(), windows, tmp_path / "r.html").read_text()
    assert "Monitoring report: price</title>" in text
    assert sorted(windows[1]["drifted_features"]) == ["k", "x"]
    assert (
        "Reference vs current: window d1" in text and "No window has performance figures." in text
    )
    assert text.count("<img ") == 3  # heat map, distributions, drift over time


def test_a_panel_too_small_for_its_labels_renders_without_a_warning() -> None:
    """matplotlib warned "constrained_layout not applied" on the user's terminal."""
    import io
    import warnings

    from flywheel.monitoring.report import _Plots

    plots = _Plots()
    fig = plots.figure(1.0, 0.6)
    ax = fig.add_subplot(111)
    ax.set_xticks(range(3))
    ax.set_xticklabels(["a very long feature name " * 5] * 3, rotation=45)
    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")
        fig.savefig(io.BytesIO(), format="png")
    assert any("constrained_layout" in str(w.message) for w in plain)  # the case is real
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        png = plots.png(fig)
    assert png.startswith(b"\x89PNG") and not seen, [str(w.message) for w in seen]
