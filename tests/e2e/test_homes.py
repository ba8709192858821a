"""Every kind of home a user has: the default (`.flywheel` in the current folder), a relative
`FLYWHEEL_HOME` and an absolute one. Each runs the loop, retrains against the champion (which
fetches the champion's artifacts from MLflow) and serves, through the installed entry point
in a fresh folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import FLYWHEEL_BIN, flywheel, start_serve, stop_serve, triton_labels
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOOSE_GATES = {"min_metrics": {"roc_auc": 0.6}, "max_slice_gap": {"roc_auc": 0.5}}


def _serve_and_ask(cwd: Path, env: dict[str, str]) -> dict[str, object]:
    port, grpc_port = free_port(), free_port()
    cmd = [FLYWHEEL_BIN, "serve", "--port", str(port), "--grpc-port", str(grpc_port)]
    proc = start_serve(cmd, cwd, port, env)
    try:
        url = f"http://127.0.0.1:{port}"
        rows = str(EXAMPLES / "customers.json")
        answer: dict[str, object] = json.loads(
            flywheel(cwd, "predict", "--file", rows, "--url", url, env=env).stdout
        )
        records = json.loads((EXAMPLES / "customers.json").read_text())
        answer["triton_http"] = triton_labels(f"127.0.0.1:{port}", records)
    finally:
        stop_serve(proc)
    return answer


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
