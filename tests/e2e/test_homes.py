"""Every kind of home a user has: the default (`.flywheel` in the current folder), a relative
`FLYWHEEL_HOME` and an absolute one. Each runs the loop, retrains against the champion (which
fetches the champion's artifacts from MLflow) and serves, through the installed entry point
in a fresh folder."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import FLYWHEEL_BIN, flywheel, newcomer_env
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOOSE_GATES = {"min_metrics": {"roc_auc": 0.6}, "max_slice_gap": {"roc_auc": 0.5}}


def _serve_and_ask(cwd: Path, env: dict[str, str]) -> dict[str, object]:
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [FLYWHEEL_BIN, "serve", "--port", str(port), "--grpc-port", str(grpc_port)],
        cwd=cwd,
        env=newcomer_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready in time"
            time.sleep(0.3)
        url = f"http://127.0.0.1:{port}"
        rows = str(EXAMPLES / "customers.json")
        answer: dict[str, object] = json.loads(
            flywheel(cwd, "predict", "--file", rows, "--url", url, env=env).stdout
        )
        answer["triton_http"] = _ask_with_tritonclient(f"127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    return answer


def _ask_with_tritonclient(address: str) -> list[int]:
    """The official Open Inference Protocol client at its defaults (binary tensor data)."""
    import numpy as np
    import tritonclient.http as thttp

    records = json.loads((EXAMPLES / "customers.json").read_text())
    client = thttp.InferenceServerClient(address)
    inputs = []
    for meta in client.get_model_metadata("churn")["inputs"]:
        values = [r[meta["name"]] for r in records]
        if meta["datatype"] == "BYTES":
            array = np.array([v.encode() for v in values], dtype=object).reshape(-1, 1)
        else:
            array = np.array([np.nan if v is None else v for v in values], np.float32)
            array = array.reshape(-1, 1)
        tensor = thttp.InferInput(meta["name"], list(array.shape), meta["datatype"])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("churn", inputs)
    return [int(v) for v in result.as_numpy("label").reshape(-1)]


@pytest.mark.parametrize("kind", ["default", "relative", "absolute"])
def test_loop_retrain_and_serve_on_every_kind_of_home(kind: str, tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump({"gates": LOOSE_GATES}))
    expected = {
        "default": cwd / ".flywheel",
        "relative": cwd / "state" / "fw",
        "absolute": tmp_path / "elsewhere" / "fw",
    }[kind]
    env = {
        "default": {},
        "relative": {"FLYWHEEL_HOME": "state/fw"},
        "absolute": {"FLYWHEEL_HOME": str(expected)},
    }[kind]

    flywheel(cwd, "run", "--days", "240", "--customers", "1500", env=env)
    assert (expected / "mlflow.db").exists() and (expected / "store").is_dir()
    # a second training compares with the champion: it downloads the champion's artifacts
    out = flywheel(cwd, "train", env=env).stdout
    assert "champion v1" in out and "registered churn version 2" in out
    assert json.loads(flywheel(cwd, "config", "show", "--json", env=env).stdout)["home"] == str(
        expected
    )

    answer = _serve_and_ask(cwd, env)
    assert answer["version"] == "1" and len(answer["predictions"]) == 3  # type: ignore[arg-type]
    assert answer["triton_http"] == answer["predictions"]
    assert any((expected / "models" / "churn").rglob("model.onnx"))  # the serving cache
