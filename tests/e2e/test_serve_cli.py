"""`flywheel serve` as a user runs it: one process, every front door, on real sockets.

A small churn world is trained and promoted through the CLI, the server is started as a
subprocess with gRPC and MQTT (the Mosquitto broker on this machine, 127.0.0.1:1883), and
`flywheel predict` asks the same rows over REST, MLflow /invocations, v2 REST, gRPC,
WebSocket and MQTT. After SIGTERM the prediction log holds exactly one row per answer.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Cli, copy_folder
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _rows(home: Path) -> list[dict[str, object]]:
    code = (
        "import json, sys; from flywheel.config import load_settings; "
        "from flywheel.data.snapshots import read_snapshot, latest_snapshot; "
        "s = load_settings(); df = read_snapshot(s, latest_snapshot(s, 'churn'))"
        ".drop(columns=['churned', 'customer_id', 'observed_at']).head(3); "
        "print(df.to_json(orient='records'))"
    )
    env = {**os.environ, "FLYWHEEL_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    rows: list[dict[str, object]] = json.loads(out.stdout)
    return rows


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "server exited"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("server not ready in time")


def test_every_protocol_answers_the_same_and_the_log_matches(
    cli: Cli, tmp_path: Path, small_world: tuple[Path, str]
) -> None:
    # `flywheel run --days 240 --customers 1500` with gates roc_auc >= 0.6, slice gap <= 0.5:
    # the session's small world (that run, those gates), copied as this test's home
    folder, out = small_world
    assert "version 1 is the first champion" in out
    home = tmp_path / "fw"
    copy_folder(folder, tmp_path / "small-world", to_home=home)
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(_rows(home)))
    port, grpc_port = free_port(), free_port()
    # Private topics on the shared broker: no other server answers these requests.
    topics = {
        "FLYWHEEL_SERVING__MQTT_REQUEST_TOPIC": f"fw-e2e-{port}/predict/#",
        "FLYWHEEL_SERVING__MQTT_REPLY_PREFIX": f"fw-e2e-{port}/reply",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env.update(
        FLYWHEEL_HOME=str(home),
        FLYWHEEL_CONFIG=os.devnull,
        FLYWHEEL_ADMIN_TOKEN="e2e-token",
        FLYWHEEL_SERVING__LABELS_KEY="e2e-labels",  # auth is on: feedback takes its own key
        FLYWHEEL_SERVING__MQTT_CLIENT_ID=f"fw-e2e-{port}",
        **topics,
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flywheel",
            "serve",
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--mqtt-url",
            "mqtt://127.0.0.1:1883",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        urls = {
            "rest": base,
            "mlflow": base,
            "v2": base,
            "grpc": f"127.0.0.1:{grpc_port}",
            "ws": f"ws://127.0.0.1:{port}",
            "mqtt": "mqtt://127.0.0.1:1883",
        }
        answers = {
            p: json.loads(
                cli("predict", "--file", str(rows), "--protocol", p, "--url", u, env=topics).stdout
            )
            for p, u in urls.items()
        }
        # an answer that is an error exits 12 on every door (ws and mqtt exited 0)
        bad = json.dumps({"tenure_months": "abc"})
        for p, u in urls.items():
            failed = cli(
                "predict", "--json", bad, "--protocol", p, "--url", u, env=topics, ok=False
            )
            assert failed.returncode == 12 and "tenure_months" in failed.stderr, (p, failed.stderr)
        labels = answers["rest"]["predictions"]
        assert len(labels) == 3
        assert answers["mlflow"]["predictions"] == labels
        assert answers["v2"]["outputs"][0]["data"] == labels
        assert answers["grpc"]["predictions"] == labels
        # the server's id, as every door prints (it printed the client's own id)
        grpc_ids = answers["grpc"]["request_id"], answers["grpc"]["client_id"]
        assert grpc_ids[0] != grpc_ids[1] and len(grpc_ids[0]) == len(answers["rest"]["request_id"])
        assert [a["prediction"] for a in answers["ws"]["answers"]] == labels
        assert answers["mqtt"]["predictions"] == labels
        for p in ("grpc", "mqtt"):
            for mine, theirs in zip(
                answers[p]["probabilities"], answers["rest"]["probabilities"], strict=True
            ):
                assert mine == pytest.approx(theirs, abs=1e-6)

        labels = {
            "items": [
                {"request_id": answers["rest"]["request_id"], "label": 1},
                {"request_id": "never-seen", "label": 0},
            ]
        }
        bearer = {"authorization": "Bearer e2e-token"}  # the admin token is no labels key
        assert httpx.post(f"{base}/v1/feedback", json=labels, headers=bearer).status_code == 403
        fb = httpx.post(
            f"{base}/v1/feedback", json=labels, headers={"x-api-key": "e2e-labels"}
        ).json()
        assert fb == {"accepted": 1, "unknown": ["never-seen"]}
        assert httpx.post(f"{base}/admin/reload").status_code == 401
        assert (
            httpx.post(
                f"{base}/admin/reload", headers={"authorization": "Bearer e2e-token"}
            ).status_code
            == 200
        )
        metrics = httpx.get(f"{base}/metrics").text
        for protocol in ("rest", "mlflow", "v2", "grpc", "ws", "mqtt"):
            assert f'flywheel_requests_total{{protocol="{protocol}"' in metrics, protocol
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    with sqlite3.connect(home / "predictions.db") as db:
        logged = dict(db.execute("SELECT protocol, count(*) FROM prediction_log GROUP BY protocol"))
        labels_in = db.execute("SELECT count(*) FROM prediction_feedback").fetchone()[0]
    # one row per request; each WebSocket record is a request of its own (3 rows)
    assert logged == {"rest": 1, "mlflow": 1, "v2": 1, "grpc": 1, "ws": 3, "mqtt": 1}
    assert labels_in == 1
