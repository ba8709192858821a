"""A new front door is one file registered by name (tests/unit/front_line.py): a real
`flywheel serve` starts it from its settings block, and it shares the core's request cycle
(server ids, error kinds, metrics, the prediction log) with every built-in door."""

from __future__ import annotations

import json
import socket
import sqlite3
from dataclasses import asdict
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.conftest import FLYWHEEL_BIN, start_serve, stop_serve
from tests.integration.conftest import free_port
from tests.unit.serving_models import build, rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _bundle(tmp: Path) -> Path:
    """A folder `flywheel serve --model-dir` takes, written from a tiny real model."""
    files = build(tmp / "src", family="logreg")
    folder = files.model_path.parent
    (folder / "flywheel-model.json").write_text(
        json.dumps(
            {
                "format": 1,
                "name": "churn",
                "version": files.version,
                "onnx_sha256": files.onnx_sha256,
                "model_file": files.model_path.name,
                "task": files.task,
                "classes": files.classes,
                "feature_specs": [asdict(s) for s in files.feature_specs],
            }
        )
    )
    return folder


def _ask(port: int, *messages: dict[str, object]) -> list[dict[str, object]]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(orjson.dumps(m) + b"\n" for m in messages))
        stream = sock.makefile("rb")
        return [orjson.loads(stream.readline()) for _ in messages]


def test_a_front_registered_by_name_serves_through_the_core(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    port, line_port = free_port(), free_port()
    fronts = {"line": {"factory": "tests.unit.front_line:front", "port": line_port}}
    cwd = tmp_path / "here"
    cwd.mkdir()
    env = {"FLYWHEEL_SERVING__FRONTS": json.dumps(fronts), "PYTHONPATH": str(REPO)}
    cmd = [FLYWHEEL_BIN, "serve", "--model-dir", str(folder), "--port", str(port), "--no-grpc"]
    proc = start_serve(cmd, cwd, port, env)
    try:
        good, bad = _ask(
            line_port,
            {"id": "L1", "records": rows(2)},
            {"id": "L2", "records": [{"tenure": "x", "charges": 1.0, "plan": "pro"}]},
        )
        rest = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"records": rows(2)}).json()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        err = stop_serve(proc)
    assert "line 127.0.0.1:" in err  # the server names the door it started
    assert f"serving churn v1 from {folder}" in err  # the bundle's model, not its folder's name
    assert good["predictions"] == rest["predictions"] and good["client_id"] == "L1"
    assert len(str(good["request_id"])) == 24
    assert bad["error"]["kind"] == "invalid_input"  # type: ignore[index]
    assert 'protocol="line"' in metrics
    with sqlite3.connect(cwd / ".flywheel" / "predictions.db") as db:
        logged = db.execute(
            "SELECT request_id, protocol FROM prediction_log WHERE protocol = 'line'"
        ).fetchall()
    assert logged == [(good["request_id"], "line")]
