"""The gRPC server on a real socket, driven by an unmodified ``tritonclient.grpc`` client."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.grpc import create_grpc_server
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import StaticSource
from flywheel.serving.types import PredictRequest, PredictResponse
from tests.unit.serving_models import build, frame

pytestmark = pytest.mark.integration


@dataclass
class Served:
    url: str
    predictor: Predictor
    loop: asyncio.AbstractEventLoop

    def in_process(self, records: list[dict[str, Any]]) -> PredictResponse:
        """The core's own answer for the same rows (on the server's loop)."""
        call = self.predictor.predict(PredictRequest(records=records, model="churn"))
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    files = build(tmp_path_factory.mktemp("grpc-socket"), family="random_forest", version="4")
    predictor = Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({"4": files}, {"champion": "4"})},
    )
    port = _free_port()
    loop = asyncio.new_event_loop()

    async def boot() -> Any:
        server = create_grpc_server(predictor, "127.0.0.1", port)
        await server.start()
        await predictor.start()
        return server

    server = loop.run_until_complete(boot())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield Served(f"127.0.0.1:{port}", predictor, loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def client(served: Served) -> Iterator[tc.InferenceServerClient]:
    with tc.InferenceServerClient(served.url) as c:
        yield c


def _column(name: str, values: np.ndarray, datatype: str) -> tc.InferInput:
    tensor = tc.InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return tensor


def test_health_and_metadata(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("churn") and client.is_model_ready("churn", "4")
    assert not client.is_model_ready("churn", "3")
    meta = client.get_model_metadata("churn", as_json=True)
    assert meta["versions"] == ["4"] and meta["platform"] == "onnxruntime"
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("tenure", "FP32"),
        ("charges", "FP32"),
        ("plan", "BYTES"),
    ]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert client.get_server_metadata().name == "flywheel"


def test_infer_columns_equal_the_core(served: Served, client: tc.InferenceServerClient) -> None:
    df = frame(50, seed=7)
    inputs = [
        _column("tenure", df["tenure"].to_numpy(np.float32), "FP32"),
        _column("charges", df["charges"].to_numpy(np.float32).reshape(-1, 1), "FP32"),
        _column("plan", df["plan"].to_numpy(object), "BYTES"),
    ]
    outputs = [tc.InferRequestedOutput("label"), tc.InferRequestedOutput("probabilities")]
    result = client.infer("churn", inputs, outputs=outputs, request_id="it-1")
    want = served.in_process(df.astype({"charges": np.float32}).to_dict(orient="records"))
    np.testing.assert_array_equal(result.as_numpy("label"), want.labels)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), want.probabilities)
    assert result.get_response().id == "it-1"
    assert result.get_response().model_version == "4"


def test_infer_bytes_matrix(served: Served, client: tc.InferenceServerClient) -> None:
    df = frame(8, seed=9)
    matrix = np.array(
        [[str(r.tenure), repr(r.charges), r.plan] for r in df.itertuples()], dtype=object
    )
    result = client.infer("churn", [_column("rows", matrix, "BYTES")])
    want = served.in_process(df.to_dict(orient="records"))
    np.testing.assert_array_equal(result.as_numpy("label"), want.labels)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), want.probabilities)


def test_bad_input_is_invalid_argument_naming_the_field(client: tc.InferenceServerClient) -> None:
    plan = _column("plan", np.array(["pro", "max"], dtype=object), "BYTES")
    as_text = _column("tenure", np.array(["1", "2"], dtype=object), "BYTES")
    with pytest.raises(InferenceServerException) as info:
        client.infer("churn", [as_text, _column("charges", np.ones(2, np.float32), "FP32"), plan])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'tenure'" in info.value.message()

    inf = _column("charges", np.array([1.0, np.inf], np.float32), "FP32")
    with pytest.raises(InferenceServerException) as info:
        client.infer("churn", [_column("tenure", np.ones(2, np.float32), "FP32"), inf, plan])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'charges' (row 1)" in info.value.message()

    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [plan])
    assert info.value.status() == "StatusCode.NOT_FOUND"
