"""Dashboards and alert rules as code (deploy/prometheus, deploy/grafana).

promtool (Debian's prometheus package) checks the scrape config and the rules and runs the
rules' unit tests; every dashboard query is checked as PromQL by promtool too; and every
metric name a dashboard or an alert queries is one that a live `flywheel serve` exports:
the module's server has served traffic (good and bad requests, labels), runs a canary
rollout and has a monitor run behind its gauges.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    FLYWHEEL_BIN,
    cancer_champion,  # noqa: F401 - the session fixture, used through live_metrics
    cancer_ingested,  # noqa: F401 - cancer_champion's own fixture
    copy_folder,
    flywheel,
    start_serve,
    stop_serve,
    write_settings,
)
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "flywheel-prometheus"
# Series Prometheus makes itself for each target, not the server
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


# --------------------------------------------------------------------------- helpers
def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install Debian's prometheus package")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=120, check=False, cwd=PROMETHEUS
    )


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_WORDS |= {"and", "or", "unless", "inf", "nan"}
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)\s*(\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings, label
    matchers, ranges, grouping clauses and offsets are gone, except function and
    aggregation calls (followed by a parenthesis) and keywords. Grafana variables
    (``$model``, ``$__rate_interval``) sit inside matchers or ranges, or start with ``$``."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _CLAUSE.sub(" ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    return {
        m.group(1)
        for m in _IDENT.finditer(s)
        if m.group(2) is None and m.group(1).lower() not in _WORDS
    }


def variable_expr(query: str) -> str | None:
    """The PromQL inside a Grafana variable query: ``label_values(EXPR, label)`` → EXPR,
    ``query_result(EXPR)`` → EXPR; ``label_values(label)`` has none."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    return m.group(1) if m else None


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and variable of a dashboard file."""
    board = json.loads(path.read_text())
    out = [
        (f"{path.name}: panel {p['title']!r} {t['refId']}", t["expr"])
        for p in _panels(board["panels"])
        for t in p.get("targets", [])
    ]
    for v in board.get("templating", {}).get("list", []):
        query = v.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        expr = variable_expr(query or "") if v.get("type") == "query" else None
        if expr:
            out.append((f"{path.name}: variable ${v['name']}", expr))
    return out


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [
        (f"alerts.yml: {r.get('alert') or r.get('record')}", r["expr"])
        for g in rules["groups"]
        for r in g["rules"]
    ]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced, so promtool can parse it."""
    for var, value in (
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
    ):
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def missing_names(queries: list[tuple[str, str]], exported: set[str]) -> list[str]:
    known = exported | PROMETHEUS_OWN
    return [
        f"{where}: {name}"
        for where, expr in queries
        for name in sorted(metric_names(expr))
        if name not in known
    ]


# --------------------------------------------------------------------------- promtool
def test_promtool_checks_the_config_the_rules_and_their_unit_tests() -> None:
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    unit = promtool("test", "rules", "alerts_test.yml")
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    alerts = {name.split(": ")[1] for name, _ in alert_queries()}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    checks = [c for t in tests for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in checks if c.get("exp_alerts")}
    silent = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    assert alerts - fires == set(), "alerts never tested firing"
    # healthy series sit beside the bad ones in each firing test; these are also checked
    # at a time or on a server where they must stay quiet
    assert {"FlywheelDown", "FlywheelServerErrors", "FlywheelErrorRateHigh"} <= silent


def test_scrape_config_names_the_compose_service_and_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "flywheel"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["flywheel-serve:8080"]
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert "flywheel-serve" in compose["services"]
    assert "8080" in compose["services"]["flywheel-serve"]["environment"]["FLYWHEEL_SERVING__PORT"]
    mounts = " ".join(compose["services"]["prometheus"]["volumes"])
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml" in mounts


# --------------------------------------------------------------------------- Grafana
def test_grafana_provisioning_points_at_the_dashboards_and_the_datasource() -> None:
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (ds,) = source["datasources"]
    assert (ds["uid"], ds["type"], ds["url"]) == (
        DATASOURCE_UID,
        "prometheus",
        "http://prometheus:9090",
    )
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/flywheel.yaml").read_text())
    (p,) = provider["providers"]
    assert (p["type"], p["options"]["path"]) == ("file", "/var/lib/grafana/dashboards")
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_dashboards_are_well_formed() -> None:
    assert [p.name for p in DASHBOARDS] == [
        "flywheel-models.json",
        "flywheel-monitoring.json",
        "flywheel-serving.json",
    ]
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["schemaVersion"] >= 36 and board["uid"] not in uids, path.name
        uids.add(board["uid"])
        panels = list(_panels(board["panels"]))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        cells: set[tuple[int, int]] = set()
        for p in panels:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{path.name}: {p['title']}"
            taken = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not taken & cells, f"{path.name}: {p['title']!r} overlaps another panel"
            cells |= taken
            if p["type"] != "row":
                assert p["datasource"]["uid"] == DATASOURCE_UID, p["title"]
                assert p["targets"], f"{path.name}: {p['title']!r} has no query"
                assert all(t["datasource"]["uid"] == DATASOURCE_UID for t in p["targets"])
        for v in board["templating"]["list"]:
            assert v["datasource"]["uid"] == DATASOURCE_UID


def test_dashboards_show_what_the_issue_asks_for() -> None:
    def names(stem: str) -> set[str]:
        queries = dashboard_queries(GRAFANA / "dashboards" / f"flywheel-{stem}.json")
        return set().union(*(metric_names(q) for _, q in queries))

    serving = names("serving")
    assert {
        "flywheel_requests_total",
        "flywheel_request_duration_seconds_bucket",
        "flywheel_errors_total",
        "flywheel_predlog_dropped_total",
    } <= serving
    text = (GRAFANA / "dashboards/flywheel-serving.json").read_text()
    assert "histogram_quantile(0.99" in text and "by (protocol, kind)" in text
    assert {
        "flywheel_model_info",
        "flywheel_rollout_weight_percent",
        "flywheel_rollout_step_requests",
    } <= names("models")
    assert {
        "flywheel_monitor_alarm",
        "flywheel_monitor_drift_share",
        "flywheel_monitor_feature_drift_ratio",
        "flywheel_monitor_performance",
        "flywheel_monitor_label_completeness",
    } <= names("monitoring")


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (variables replaced) as a recording rule."""
    queries = [q for path in DASHBOARDS for q in dashboard_queries(path)]
    assert len(queries) > 40
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_promql(expr)}
                    for i, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'histogram_quantile(0.99, sum by (le, protocol) (rate(flywheel_request_duration_seconds_bucket{instance=~"$instance", protocol=~"$protocol"}[$__rate_interval])))',
            {"flywheel_request_duration_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{status=~"5.."}[5m])) / sum(rate(b_total[5m] offset 1h)) > 0.01',
            {"a_total", "b_total"},
        ),
        (
            '(up{job="flywheel"} == 1) unless on (job, instance) flywheel_model_info',
            {"up", "flywheel_model_info"},
        ),
        ("time() - x_seconds > 2 * 86400 and y > 1e3", {"x_seconds", "y"}),
        ("sum(z) by (model) / ignoring(kind) group_left w", {"z", "w"}),
        ('topk(15, max by (model, feature) (f{model=~"$model"}))', {"f"}),
        ("label_values(flywheel_model_info, model)", {"flywheel_model_info", "model"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_variable_queries_keep_only_their_promql() -> None:
    assert variable_expr("label_values(flywheel_model_info, model)") == "flywheel_model_info"
    assert variable_expr("label_values(model)") is None


@pytest.fixture(scope="module")
def live_metrics(
    cancer_champion: Path,  # noqa: F811 - the imported session fixture
    tmp_path_factory: pytest.TempPathFactory,
) -> set[str]:
    """Sample names of a live ``/metrics``: `flywheel serve` (cancer v1 champion) after good
    and bad requests and labels, with a canary of v2 running and a `flywheel monitor run`
    behind the monitor gauges. Training v2 runs while the server takes traffic."""
    cwd = copy_folder(cancer_champion, tmp_path_factory.mktemp("metrics") / "f")
    write_settings(cwd, monitoring={"window_rows": 100, "min_rows": 50}, rollout={"poll_s": 0.5})
    trained: list[str] = []
    train = threading.Thread(target=lambda: trained.append(flywheel(cwd, "train").stdout))
    train.start()
    port = free_port()
    server = start_serve([FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"], cwd, port)
    base = f"http://127.0.0.1:{port}"
    try:
        frame = (cwd / "cancer.csv").read_text().splitlines()
        header = frame[0].split(",")
        rows = [dict(zip(header, map(float, line.split(",")), strict=True)) for line in frame[1:]]
        items = []
        with httpx.Client(base_url=base, timeout=10) as client:
            for row in rows[:150]:
                label = int(row.pop("target"))
                answer = client.post("/v1/predict", json={"records": [row]}).json()
                items.append({"request_id": answer["request_id"], "label": label})
            assert client.post("/v1/predict", json={"records": [{"x": 1}]}).status_code == 422
            assert client.post("/invocations", json={"nope": 1}).status_code == 400
            assert client.post("/v1/feedback", json={"items": items}).json()["accepted"] == 150
            train.join(120)
            assert trained and "registered cancer version 2" in trained[0]
            flywheel(cwd, "rollout", "start", "--challenger", "2", "--reason", "metrics test")
            flywheel(cwd, "monitor", "run")
            deadline = time.monotonic() + 20
            while "flywheel_rollout_weight_percent{" not in (text := client.get("/metrics").text):
                assert time.monotonic() < deadline, "the rollout never showed on /metrics"
                time.sleep(0.25)
                client.post("/v1/predict", json={"records": [rows[0]]})
    finally:
        stop_serve(server)
        train.join(120)
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.slow
def test_every_queried_metric_is_exported_by_a_live_server(live_metrics: set[str]) -> None:
    # the server exported what each group of panels needs, with samples
    assert {
        "flywheel_requests_total",
        "flywheel_errors_total",
        "flywheel_rollout_weight_percent",
        "flywheel_rollout_ended_total",
        "flywheel_monitor_performance",
        "flywheel_monitor_feature_drift",
        "flywheel_monitor_feature_drift_ratio",
        "flywheel_monitor_label_completeness",
    } <= live_metrics
    queries = [q for path in DASHBOARDS for q in dashboard_queries(path)] + alert_queries()
    assert missing_names(queries, live_metrics) == []


@pytest.mark.slow
def test_a_misspelt_metric_is_caught(live_metrics: set[str]) -> None:
    """What a typo in a dashboard does: the check names the panel and the wrong name."""
    queries = dashboard_queries(GRAFANA / "dashboards" / "flywheel-serving.json")
    where, expr = next(q for q in queries if "flywheel_requests_total" in q[1])
    typo = expr.replace("flywheel_requests_total", "flywheel_request_total")
    assert typo != expr
    assert missing_names([(where, typo)], live_metrics) == [f"{where}: flywheel_request_total"]
