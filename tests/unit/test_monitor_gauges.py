"""The monitor's latest.json as Prometheus gauges at scrape time."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from flywheel.serving.monitor_gauges import MonitorGauges

LATEST: dict[str, Any] = {
    "models": {
        "churn": {
            "version": "3",
            "window": "2025-01-02",
            "end": 1.7e9,
            "alarm": True,
            "verdict": True,
            "drift_share": 0.12,
            "drifted_features": ["a"],
            "features": {"a": 0.31, "b": 0.02},
            "feature_ratios": {"a": 3.1, "b": 0.2},
            "label_completeness": 0.4,
            "performance_breach": True,
            "reference": {"roc_auc": 0.91},
            "realised": {"roc_auc": 0.78},
            "estimated": {"f1": 0.41},
            "updated": 1.7e9,
        },
        "price": {
            "version": "1",
            "window": "w",
            "end": None,
            "alarm": False,
            "verdict": False,
            "drift_share": 0.0,
            "drifted_features": [],
            "features": {"x": 0.01},
            "label_completeness": None,
            "realised": None,
            "estimated": None,
            "updated": 1.7e9,
        },
    }
}


def _scrape(collector: MonitorGauges) -> list[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_the_gauges(tmp_path: Path) -> None:
    path = tmp_path / "monitoring" / "latest.json"
    _write(path, LATEST)
    lines = _scrape(MonitorGauges(path))
    assert sorted(lines) == sorted(
        [
            'flywheel_monitor_alarm{model="churn"} 1.0',
            'flywheel_monitor_alarm{model="price"} 0.0',
            'flywheel_monitor_drift_share{model="churn"} 0.12',
            'flywheel_monitor_drift_share{model="price"} 0.0',
            'flywheel_monitor_feature_drift{feature="a",model="churn"} 0.31',
            'flywheel_monitor_feature_drift{feature="b",model="churn"} 0.02',
            'flywheel_monitor_feature_drift{feature="x",model="price"} 0.01',
            'flywheel_monitor_feature_drift_ratio{feature="a",model="churn"} 3.1',
            'flywheel_monitor_feature_drift_ratio{feature="b",model="churn"} 0.2',
            'flywheel_monitor_label_completeness{model="churn"} 0.4',
            'flywheel_monitor_performance_breach{model="churn"} 1.0',
            'flywheel_monitor_performance{kind="reference",metric="roc_auc",model="churn"} 0.91',
            'flywheel_monitor_performance{kind="realised",metric="roc_auc",model="churn"} 0.78',
            'flywheel_monitor_performance{kind="estimated",metric="f1",model="churn"} 0.41',
            'flywheel_monitor_last_window_end_seconds{model="churn"} 1.7e+09',
        ]
    )


def test_features_are_capped_per_model_most_drifted_first(tmp_path: Path) -> None:
    path = tmp_path / "latest.json"
    feats = {f"f{i:03d}": i / 1000 for i in range(250)}
    _write(path, {"models": {"m": {"features": feats}, "n": {"features": {"q": 0.5}}}})
    lines = [
        ln for ln in _scrape(MonitorGauges(path)) if ln.startswith("flywheel_monitor_feature_drift")
    ]
    m = [ln for ln in lines if 'model="m"' in ln]
    assert len(m) == 100
    assert any('feature="f249"' in ln for ln in m) and not any('feature="f149"' in ln for ln in m)
    assert any('model="n"' in ln for ln in lines)
    assert (
        len([ln for ln in _scrape(MonitorGauges(path, max_features=5)) if "feature_drift" in ln])
        == 6
    )


@pytest.mark.parametrize(
    "content",
    ["{not json", "", "[1, 2]", '{"models": [1]}', '{"models": {"m": 3}}', "\x00\xff"],
)
def test_a_corrupt_file_gives_no_samples(tmp_path: Path, content: str) -> None:
    path = tmp_path / "latest.json"
    _write(path, content)
    assert _scrape(MonitorGauges(path)) == []


def test_odd_values_are_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "latest.json"
    _write(
        path,
        {
            "models": {
                "m": {
                    "alarm": "yes",
                    "drift_share": "0.1",
                    "features": {"a": None, "b": "x", "c": 0.5},
                    "realised": {"auc": {"value": 0.7}},
                    "estimated": [1],
                    "end": True,
                }
            }
        },
    )
    lines = _scrape(MonitorGauges(path))
    assert 'flywheel_monitor_feature_drift{feature="c",model="m"} 0.5' in lines
    assert 'flywheel_monitor_performance{kind="realised",metric="auc",model="m"} 0.7' in lines
    assert not any("alarm" in ln or "drift_share" in ln for ln in lines)


def test_missing_file_then_written_then_changed_then_removed(tmp_path: Path) -> None:
    path = tmp_path / "monitoring" / "latest.json"
    gauges = MonitorGauges(path)
    assert _scrape(gauges) == []
    _write(path, {"models": {"m": {"alarm": False}}})
    assert _scrape(gauges) == ['flywheel_monitor_alarm{model="m"} 0.0']
    _write(path, {"models": {"m": {"alarm": True, "drift_share": 0.5}}})
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse clock
    assert _scrape(gauges) == [
        'flywheel_monitor_alarm{model="m"} 1.0',
        'flywheel_monitor_drift_share{model="m"} 0.5',
    ]
    path.unlink()
    assert _scrape(gauges) == []


def test_the_file_is_parsed_again_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "latest.json"
    _write(path, LATEST)
    gauges = MonitorGauges(path)
    calls: list[int] = []
    parse = gauges._parse
    monkeypatch.setattr(gauges, "_parse", lambda data: calls.append(1) or parse(data))
    first = _scrape(gauges)
    assert len(first) == 15
    assert _scrape(gauges) == first and len(calls) == 1
    _write(
        path, "{broken" + " " * 50
    )  # a corrupt file is cached too: one warning, not one per scrape
    with caplog.at_level(logging.WARNING, logger="flywheel.serving"):
        assert _scrape(gauges) == [] and _scrape(gauges) == []
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1


def test_the_module_imports_nothing_of_monitoring() -> None:
    code = (
        "import sys, flywheel.serving.monitor_gauges\n"
        "print(sorted(m for m in sys.modules if m.startswith(('flywheel.monitoring', 'numpy', 'matplotlib'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_latest_json_ranks_features_by_the_bar_each_must_clear(tmp_path: Path) -> None:
    """W1/sigma and JS have no common scale: the ratio divides each by its own bar (the
    effect threshold, or the null's 95th percentile when higher)."""
    from flywheel.monitoring.store import write_latest

    features = [
        {"feature": "tenure", "value": 0.9, "threshold": 0.1, "null_q95": 0.6},
        {"feature": "plan", "value": 0.3, "threshold": 0.1, "null_q95": 0.05},
        {"feature": "flat", "value": 0.0, "threshold": 0.0, "null_q95": 0.0},  # no bar
        {"feature": "none", "value": None, "threshold": 0.1, "null_q95": 0.0},
    ]
    path = write_latest(tmp_path, {"churn": {"features": features}})
    latest = json.loads(path.read_text())["models"]["churn"]
    assert latest["feature_ratios"] == {"tenure": 1.5, "plan": 3.0}
    lines = _scrape(MonitorGauges(path))
    assert 'flywheel_monitor_feature_drift_ratio{feature="plan",model="churn"} 3.0' in lines
