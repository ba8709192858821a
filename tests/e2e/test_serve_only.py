"""The serving-only install (`pip install flywheel[serve]`, the serve image) serves a registered
model and answers every protocol, without scikit-learn or the rest of the training stack.

A venv is built from requirements/serve.lock exactly as `make install-serve` does (uv's cache
makes it ~15 s). The champion is trained by the full install in a fresh folder (default home,
no FLYWHEEL_* set); then the serve-only `flywheel serve` answers REST, MLflow /invocations,
v2 REST (tritonclient), gRPC (tritonclient), WebSocket and MQTT (mosquitto_rr), from the
registry and from a folder `flywheel registry export` wrote.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import flywheel, newcomer_env, start_serve, stop_serve, triton_labels
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
RECORDS = json.loads((REPO / "examples" / "customers.json").read_text())
TRAINING_ONLY = ["sklearn", "pandas", "lightgbm", "xgboost", "optuna", "matplotlib", "skl2onnx"]


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("serve-venv") / "v"
    subprocess.run(
        ["make", "-C", str(REPO), "install-serve", f"VENV={venv}"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return venv


@pytest.fixture(scope="module")
def loop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the full install ran the loop (champion v1 in ./.flywheel)."""
    cwd = tmp_path_factory.mktemp("serve-only-loop")
    flywheel(cwd, "run")
    return cwd


def test_the_serve_install_has_no_training_stack(serve_venv: Path) -> None:
    probe = (
        "import importlib.util, json; "
        f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {TRAINING_ONLY!r}}}))"
    )
    found = json.loads(
        subprocess.run(
            [str(serve_venv / "bin" / "python"), "-c", probe],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert found == dict.fromkeys(TRAINING_ONLY, False)


class Server:
    """`flywheel serve` of a venv, every door on: REST + WebSocket, gRPC, MQTT."""

    def __init__(self, venv: Path, cwd: Path, *args: str) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        self.topic = f"flywheel-test/{self.port}/predict"
        cmd = [str(venv / "bin" / "flywheel"), "serve", "--port", str(self.port)]
        cmd += ["--grpc-port", str(self.grpc_port), "--mqtt-url", "mqtt://127.0.0.1:1883"]
        env = {"FLYWHEEL_SERVING__MQTT_REQUEST_TOPIC": self.topic}
        self.proc = start_serve([*cmd, *args], cwd, self.port, env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        return stop_serve(self.proc)


@pytest.fixture
def served(serve_venv: Path, loop_dir: Path) -> Iterator[Server]:
    server = Server(serve_venv, loop_dir)
    try:
        yield server
    finally:
        server.stop()


def _ask_every_door(server: Server) -> dict[str, list[int]]:
    answers: dict[str, list[int]] = {}
    v1 = httpx.post(f"{server.url}/v1/predict", json={"records": RECORDS}).json()
    answers["rest"] = v1["predictions"]
    mlflow = httpx.post(f"{server.url}/invocations", json={"dataframe_records": RECORDS}).json()
    answers["mlflow"] = mlflow["predictions"]
    answers["mlflow (ScoringServerClient)"] = _ask_mlflow_client(server.port)
    answers["v2 (tritonclient.http)"] = triton_labels(f"127.0.0.1:{server.port}", RECORDS)
    grpc_address = f"127.0.0.1:{server.grpc_port}"
    answers["grpc (tritonclient.grpc)"] = triton_labels(grpc_address, RECORDS, grpc=True)
    answers["ws"] = _ask_ws(f"ws://127.0.0.1:{server.port}/v1/stream")
    answers["mqtt (mosquitto_rr)"] = _ask_mqtt(server.topic)
    return answers


def _ask_mlflow_client(port: int) -> list[int]:
    """MLflow's own scoring client, at its defaults: a DataFrame of the records, whose
    missing number it writes as the JSON token NaN (the server answered 400 to it)."""
    import pandas as pd
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    frame = pd.DataFrame(RECORDS)
    assert frame.isna().any().any()  # the examples hold a missing value
    answer = ScoringServerClient("127.0.0.1", port).invoke(frame)
    return [int(p) for p in answer.get_predictions(predictions_format="ndarray").ravel()]


def _ask_ws(url: str) -> list[int]:
    from websockets.sync.client import connect

    items = [{"id": str(i), "record": r} for i, r in enumerate(RECORDS)]
    with connect(url) as ws:
        ws.send(json.dumps({"items": items}))
        frames = [json.loads(ws.recv(timeout=30)) for _ in items]
    by_id = {f["id"]: f["prediction"] for f in frames}
    return [by_id[str(i)] for i in range(len(RECORDS))]


def _ask_mqtt(topic: str) -> list[int]:
    """mosquitto_rr (Mosquitto's own request/response client, MQTT 5 response topic)."""
    proc = subprocess.run(
        [
            *("mosquitto_rr", "-h", "127.0.0.1", "-t", topic, "-e", f"{topic}/reply"),
            *("-W", "30", "-m", json.dumps({"records": RECORDS})),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(proc.stdout)["predictions"])


def test_serve_only_install_answers_every_protocol(served: Server) -> None:
    answers = _ask_every_door(served)
    expected = answers["rest"]
    assert len(expected) == len(RECORDS)
    assert answers == dict.fromkeys(answers, expected), answers


def test_serve_only_install_serves_an_exported_folder(
    serve_venv: Path, loop_dir: Path, tmp_path: Path
) -> None:
    """`flywheel registry export` (full install) then `serve --model-dir` (serve-only):
    no registry at all; a copy of the folder served from elsewhere answers the same."""
    flywheel(loop_dir, "registry", "export", "churn@champion", "--out", str(tmp_path / "m"))
    bundle = json.loads((tmp_path / "m" / "flywheel-model.json").read_text())
    assert (bundle["name"], bundle["version"]) == ("churn", "1")
    moved = shutil.copytree(tmp_path / "m", tmp_path / "elsewhere" / "model")
    empty = tmp_path / "empty"
    empty.mkdir()
    server = Server(serve_venv, empty, "--model-dir", str(moved))
    try:
        answers = _ask_every_door(server)
        meta = httpx.get(f"{server.url}/v2/models/churn").json()
        # the folder's own MLflow input example (its missing values are NaN tokens)
        example = (moved / "serving_input_example.json").read_bytes()
        assert b"NaN" in example
        asked = httpx.post(
            f"{server.url}/invocations",
            content=example,
            headers={"content-type": "application/json"},
        )
        assert asked.status_code == 200, asked.text
    finally:
        server.stop()
    assert meta["versions"] == ["1"] and meta["parameters"]["sha256"] == bundle["onnx_sha256"]
    assert answers == dict.fromkeys(answers, answers["rest"]), answers
    assert not (empty / ".flywheel" / "mlflow.db").exists()  # the registry was never opened


def test_a_changed_model_file_is_refused(serve_venv: Path, loop_dir: Path, tmp_path: Path) -> None:
    """The sha256 recorded at registration still guards a baked folder: the server stays up
    but not ready, and says why on every answer (as it does for the registry)."""
    flywheel(loop_dir, "registry", "export", "@champion", "--out", str(tmp_path / "m"))
    model = tmp_path / "m" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    port = free_port()
    proc = subprocess.Popen(
        [
            *(str(serve_venv / "bin" / "flywheel"), "serve", "--model-dir", str(tmp_path / "m")),
            *("--port", str(port), "--no-grpc"),
        ],
        cwd=tmp_path,
        env=newcomer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json=RECORDS[0])
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert answer.status_code == 503
        assert "sha256" in answer.json()["error"]["message"]
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 503
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
