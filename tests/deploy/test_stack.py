"""The Compose stack (deploy/compose.yaml) as plain processes on this machine.

What compose runs, started here with the same configuration: PostgreSQL (a fresh database
as MLflow's backend, another as flywheel's: audit ledger, rollout state, prediction log,
monitor state), an S3 API server (moto) in place of MinIO, a real `mlflow server` on both,
Mosquitto (the system broker), `flywheel serve` with the serve service's environment read
from compose.yaml, `flywheel worker --once` with the worker's, and Prometheus from Debian
with deploy/prometheus/prometheus.yml and the real alerts.yml.

What differs from compose, and why:
- addresses and ports (127.0.0.1 and free ports in place of the service names), the bucket,
  secrets (test values in place of deploy/.env), the MQTT topics and client id (unique, so
  the shared broker cannot mix this server up with another test's);
- the model: scikit-learn's breast-cancer table (`flywheel ingest --file`) in place of the
  simulated churn world, for speed;
- Prometheus scrapes and evaluates every second, and FlywheelErrorRateHigh's `for: 5m` is
  rewritten to `for: 0s` in the test's copy of alerts.yml, so the alert fires within seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import FLYWHEEL_BIN, flywheel, start_serve, stop_serve
from tests.integration.conftest import (  # the fixtures, shared with tests/integration
    MlflowServer,
    S3Server,
    free_port,
    fresh_database,
    mlflow_server,  # noqa: F401
    pg_url,  # noqa: F401
    s3_server,  # noqa: F401
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRETS = {
    "POSTGRES_PASSWORD": "unused-trust-auth",
    "S3_ACCESS_KEY_ID": "test",
    "S3_SECRET_ACCESS_KEY": "test",
    "FLYWHEEL_ADMIN_TOKEN": "stack-admin-token",
    "FLYWHEEL_SERVING__LABELS_KEY": "stack-labels-key",
}


@pytest.fixture
def flywheel_db() -> Iterator[str]:
    """compose's `flywheel` database: a second fresh database beside pg_url's (MLflow's)."""
    with fresh_database() as url:
        yield url


def service_env(service: str, local: dict[str, str]) -> dict[str, str]:
    """A compose service's `environment` (anchors merged), secrets filled in, and every
    compose address mapped to this machine's by ``local`` (``{compose text: local text}``)."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    env: dict[str, str] = {}
    for key, value in compose["services"][service]["environment"].items():
        value = re.sub(r"\$\{(\w+)(:\?[^}]*)?\}", lambda m: SECRETS[m.group(1)], str(value))
        for old, new in local.items():
            value = value.replace(old, new)
        env[key] = value
    leftover = {k: v for k, v in env.items() if re.search(r"@postgres:|minio:|mosquitto:|\$\{", v)}
    assert not leftover, f"compose settings this test does not map yet: {leftover}"
    return env


def prometheus_config(folder: Path, target: str) -> Path:
    """Copies of deploy/prometheus's config and rules: scrape ``target`` every second,
    FlywheelErrorRateHigh without its `for:` (documented at the top of this module)."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "flywheel"]
    assert job["static_configs"][0]["targets"] == ["flywheel-serve:8080"]
    job["static_configs"][0]["targets"] = [target]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    (rule,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "FlywheelErrorRateHigh"
    ]
    assert rule["for"] == "5m"
    rule["for"] = "0s"
    (folder / config["rule_files"][0]).write_text(yaml.safe_dump(rules))
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(folder: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("prometheus") or "/usr/bin/prometheus"
    log = (folder / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, timeout=30)
    except RuntimeError:
        raise AssertionError((folder / "prometheus.log").read_text()[-3000:]) from None
    return proc


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prom}/api/v1/query", params={"query": expr}).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_for(what: str, check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.5)
    return found


def test_the_compose_stack_as_plain_processes(
    pg_url: str,  # noqa: F811 - the imported fixtures
    s3_server: S3Server,  # noqa: F811
    mlflow_server: MlflowServer,  # noqa: F811
    flywheel_db: str,
    tmp_path: Path,
) -> None:
    # ---- flywheel's settings file and each service's environment, from deploy/
    settings = yaml.safe_load((DEPLOY / "flywheel.yaml").read_text())
    assert settings["store"]["endpoint_url"] == "http://minio:9000"
    assert settings["tracking"]["uri"] == "http://mlflow:5000"
    settings["store"].update(url=f"s3://{s3_server.bucket}/data", endpoint_url=s3_server.endpoint)
    settings["tracking"]["uri"] = mlflow_server.uri
    settings["registry"]["model_name"] = "cancer"  # the cancer table in place of churn
    settings["source"] = {"dataset": "cancer"}
    settings["training"] = {"params_file": str(tmp_path / "params.yaml")}
    settings["gates"] = {"min_metrics": {"roc_auc": 0.5}, "max_slice_gap": {"roc_auc": 1.0}}
    (tmp_path / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    (tmp_path / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    port, grpc_port, prom_port = free_port(), free_port(), free_port()
    topics = f"fw-stack-{uuid.uuid4().hex[:8]}"
    local = {
        "/etc/flywheel/flywheel.yaml": str(tmp_path / "flywheel.yaml"),
        "/var/lib/flywheel": str(tmp_path / "home"),  # the volume serve and worker share
        f"postgresql://flywheel:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/flywheel": flywheel_db,
        f"postgresql://flywheel:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/source": flywheel_db,
        "mqtt://mosquitto:1883": "mqtt://127.0.0.1:1883",
        "0.0.0.0": "127.0.0.1",
    }
    worker_env = service_env("flywheel-worker", local)
    serve_env = service_env("flywheel-serve", local) | {
        "FLYWHEEL_SERVING__PORT": str(port),
        "FLYWHEEL_SERVING__GRPC_PORT": str(grpc_port),
        "FLYWHEEL_SERVING__MQTT_REQUEST_TOPIC": f"{topics}/predict/#",
        "FLYWHEEL_SERVING__MQTT_ERROR_TOPIC": f"{topics}/errors",
        "FLYWHEEL_SERVING__MQTT_REPLY_PREFIX": f"{topics}/reply",
        "FLYWHEEL_SERVING__MQTT_CLIENT_ID": topics,
    }
    assert serve_env["FLYWHEEL_SERVING__PREDICTION_LOG_URL"] == flywheel_db
    assert worker_env["FLYWHEEL_MONITORING__URL"] == flywheel_db

    # ---- the seed compose's README step runs in the worker's image: a first champion
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.to_csv(tmp_path / "cancer.csv", index=False)
    flywheel(tmp_path, "ingest", "--file", "cancer.csv", "--target", "target", env=worker_env)
    assert "registered cancer version 1" in flywheel(tmp_path, "train", env=worker_env).stdout
    flywheel(tmp_path, "promote", "1", "--reason", "first champion", env=worker_env)

    server = start_serve([FLYWHEEL_BIN, "serve"], tmp_path, port, env=serve_env)
    prometheus = None
    try:
        prometheus = start_prometheus(
            tmp_path, prometheus_config(tmp_path, f"127.0.0.1:{port}"), prom_port
        )
        prom = f"http://127.0.0.1:{prom_port}"
        base = f"http://127.0.0.1:{port}"

        # ---- traffic: 60 good requests, 12 bad ones, labels for the good ones. Sent in two
        # rounds with a scrape between: a counter's first sample only starts its series, so
        # rate() sees what the second round adds (steady traffic does this by itself).
        rows = frame.drop(columns="target").to_dict(orient="records")
        items = []

        def send(client: httpx.Client, good: range, bad: int, mlflow_bad: int) -> None:
            for i in good:
                answer = client.post("/v1/predict", json={"records": [rows[i]]})
                assert answer.status_code == 200, answer.text
                items.append(
                    {"request_id": answer.json()["request_id"], "label": int(frame.target[i])}
                )
            for _ in range(bad):
                assert client.post("/v1/predict", json={"records": [{"x": 1}]}).status_code == 422
            for _ in range(mlflow_bad):
                assert client.post("/invocations", json={"nope": 1}).status_code == 400

        with httpx.Client(base_url=base, timeout=10) as client:
            send(client, range(5), 1, 1)
            wait_for(
                "a first scrape of the errors",
                lambda: len(query(prom, "flywheel_errors_total")) == 2,
            )
            send(client, range(5, 60), 7, 3)
            fed = client.post(
                "/v1/feedback",
                json={"items": items},
                headers={"X-API-Key": SECRETS["FLYWHEEL_SERVING__LABELS_KEY"]},
            )
            assert fed.json()["accepted"] == 60, fed.text

        # ---- Prometheus scraped the server: the counts are the requests sent
        def counts() -> dict[tuple[str, str], float] | None:
            result = query(
                prom,
                'sum by (protocol, status) (flywheel_requests_total{job="flywheel", '
                'route!="/v1/feedback"})',
            )
            got = {
                (r["metric"]["protocol"], r["metric"]["status"]): float(r["value"][1])
                for r in result
            }
            return got if got.get(("rest", "200"), 0) >= 60 and ("mlflow", "400") in got else None

        got = wait_for("the requests in Prometheus", counts)
        assert (got[("rest", "200")], got[("rest", "422")], got[("mlflow", "400")]) == (60, 8, 4)
        fed_count = query(prom, 'flywheel_requests_total{route="/v1/feedback"}')  # the labels
        assert [(r["metric"]["status"], r["value"][1]) for r in fed_count] == [("200", "1")]
        assert [r["metric"]["version"] for r in query(prom, "flywheel_model_info")] == ["1"]
        assert query(prom, 'up{job="flywheel"}')[0]["value"][1] == "1"
        errors = query(prom, "sum by (protocol, kind) (flywheel_errors_total)")
        assert {(r["metric"]["protocol"], r["metric"]["kind"]) for r in errors} == {
            ("rest", "invalid_input"),
            ("mlflow", "bad_request"),
        }
        assert query(prom, "flywheel_predlog_dropped_total")[0]["value"][1] == "0"

        # ---- the error-rate alert fires (8 of 68 REST and 4 of 4 MLflow answers are errors)
        def firing() -> list[dict[str, Any]]:
            alerts = httpx.get(f"{prom}/api/v1/alerts").json()["data"]["alerts"]
            return [a for a in alerts if a["state"] == "firing"]

        alerts = wait_for("FlywheelErrorRateHigh firing", firing)
        names = {(a["labels"]["alertname"], a["labels"].get("protocol")) for a in alerts}
        assert ("FlywheelErrorRateHigh", "rest") in names
        summary = next(
            a["annotations"]["summary"] for a in alerts if a["labels"].get("protocol") == "rest"
        )
        assert re.fullmatch(r"[\d.]+% of rest requests get an error answer", summary), summary
        rules = httpx.get(f"{prom}/api/v1/rules").json()["data"]["groups"]
        health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
        shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
        expected = {r["alert"] for g in shipped["groups"] for r in g["rules"]}
        assert set(health) == expected and set(health.values()) == {"ok"}, health
        # a healthy server raises nothing else: no 5xx, up, a model loaded, no drops
        assert {a["labels"]["alertname"] for a in firing()} == {"FlywheelErrorRateHigh"}

        # ---- the worker, as compose runs it, one tick against the same stack
        tick = flywheel(tmp_path, "worker", "--once", "--json", env=worker_env)
        (line,) = [json.loads(x) for x in tick.stdout.splitlines() if x.startswith("{")]
        assert line["errors"] == [], line
        assert line["decision"] is not None and line["decision"]["fire"] is False
        flywheel(tmp_path, "worker", "--healthcheck", env=worker_env)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        stop_serve(server)
