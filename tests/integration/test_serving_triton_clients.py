"""Standard Open Inference Protocol clients, unchanged, against real sockets.

REST (uvicorn + uvloop + httptools) and gRPC run on one event loop sharing one predictor, as
`flywheel serve` runs them. ``tritonclient.http`` is used with its defaults: inputs set with
``set_data_from_numpy`` (binary tensor data), outputs asked for with ``InferRequestedOutput``
defaults (binary) or not at all (``binary_data_output``), answers read with ``as_numpy``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import uvicorn
from tritonclient.utils import InferenceServerException

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.grpc import create_grpc_server
from flywheel.serving.predictor import Predictor
from flywheel.serving.rest import create_app
from flywheel.serving.sources import StaticSource
from flywheel.serving.types import PredictRequest, PredictResponse
from tests.integration.conftest import free_port
from tests.unit.serving_models import build, frame

pytestmark = pytest.mark.integration


@dataclass
class Served:
    http: str
    grpc: str
    predictor: Predictor
    loop: asyncio.AbstractEventLoop

    def in_process(self, df: pd.DataFrame) -> PredictResponse:
        """The core's own answer for the same rows, on the server's loop."""
        records = df.astype({"tenure": np.float32, "charges": np.float32}).to_dict("records")
        call = self.predictor.predict(PredictRequest(records=records, model="churn"))
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    files = build(Path(tmp_path_factory.mktemp("triton")), family="logreg", version="3")
    predictor = Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({"3": files}, {"champion": "3"})},
    )
    port, grpc_port = free_port(), free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(predictor), host="127.0.0.1", port=port, http="httptools",
            lifespan="on", log_config=None, access_log=False,
        )
    )  # fmt: skip
    import uvloop

    loop = uvloop.new_event_loop()

    async def main() -> None:
        grpc_server = create_grpc_server(predictor, "127.0.0.1", grpc_port)
        await grpc_server.start()
        try:
            await server.serve()
        finally:
            await grpc_server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and predictor.ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started and predictor.ready, "the server did not start"
    try:
        yield Served(f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", predictor, loop)
    finally:
        server.should_exit = True
        thread.join(15)
        loop.close()


@pytest.fixture
def http(served: Served) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(served.http)
    yield client
    client.close()


def _inputs(module: Any, df: pd.DataFrame, **kw: Any) -> list[Any]:
    """One tensor per feature, each set the client's default way (binary data over HTTP)."""
    columns = [
        ("tenure", df["tenure"].to_numpy(np.float32), "FP32"),
        ("charges", df["charges"].to_numpy(np.float32).reshape(-1, 1), "FP32"),
        ("plan", df["plan"].to_numpy(object), "BYTES"),
    ]
    out = []
    for name, values, datatype in columns:
        tensor = module.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values, **kw)
        out.append(tensor)
    return out


def _same(result: Any, want: PredictResponse) -> None:
    np.testing.assert_array_equal(result.as_numpy("label"), want.labels)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), want.probabilities)


def test_http_metadata(http: thttp.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert http.is_model_ready("churn") and http.is_model_ready("churn", "3")
    assert not http.is_model_ready("churn", "2")
    assert "binary_tensor_data" in http.get_server_metadata()["extensions"]
    meta = http.get_model_metadata("churn")
    assert meta["versions"] == ["3"]
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("tenure", "FP32"),
        ("charges", "FP32"),
        ("plan", "BYTES"),
    ]


def test_http_default_infer_equals_the_core(
    served: Served, http: thttp.InferenceServerClient
) -> None:
    df = frame(40, seed=5)
    want = served.in_process(df)
    # no outputs named: every output comes back as binary data (binary_data_output)
    result = http.infer("churn", _inputs(thttp, df))
    _same(result, want)
    assert result.get_response()["model_version"] == "3"
    assert result.get_output("label")["parameters"]["binary_data_size"] == 40 * 8
    # outputs named with InferRequestedOutput's defaults (binary), a request id, a version
    outputs = [thttp.InferRequestedOutput("probabilities"), thttp.InferRequestedOutput("label")]
    result = http.infer(
        "churn", _inputs(thttp, df), model_version="3", outputs=outputs, request_id="tc-1"
    )
    _same(result, want)
    assert result.get_response()["id"] == "tc-1"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities", "label"]


def test_http_json_mixed_matrix_and_compression(
    served: Served, http: thttp.InferenceServerClient
) -> None:
    df = frame(12, seed=8)
    want = served.in_process(df)
    # all JSON (binary_data=False both ways)
    json_out = [
        thttp.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")
    ]
    result = http.infer("churn", _inputs(thttp, df, binary_data=False), outputs=json_out)
    _same(result, want)
    assert "data" in result.get_output("label")
    # one BYTES [n, 3] tensor, binary
    matrix = np.array(
        [[str(r.tenure), str(np.float32(r.charges)), r.plan] for r in df.itertuples()],
        dtype=object,
    )
    rows = thttp.InferInput("rows", list(matrix.shape), "BYTES")
    rows.set_data_from_numpy(matrix)
    _same(http.infer("churn", [rows]), want)
    # compressed request bodies; a response compression the server does not offer is ignored
    for algorithm in ("gzip", "deflate"):
        result = http.infer(
            "churn",
            _inputs(thttp, df),
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        _same(result, want)


def test_http_errors_name_the_input(http: thttp.InferenceServerClient) -> None:
    df = frame(3, seed=2)
    inputs = _inputs(thttp, df)
    as_text = thttp.InferInput("tenure", [3], "BYTES")
    as_text.set_data_from_numpy(np.array(["1", "2", "3"], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        http.infer("churn", [as_text, *inputs[1:]])
    assert info.value.status() == "422" and "'tenure'" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        http.infer("churn", inputs, outputs=[thttp.InferRequestedOutput("score")])
    assert info.value.status() == "422" and "outputs[0]" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        http.infer("nope", inputs)
    assert info.value.status() == "404"


def test_grpc_and_http_answer_alike(served: Served, http: thttp.InferenceServerClient) -> None:
    df = frame(25, seed=11)
    want = served.in_process(df)
    with tgrpc.InferenceServerClient(served.grpc) as grpc_client:
        assert grpc_client.is_model_ready("churn", "3")
        outputs = [tgrpc.InferRequestedOutput("label"), tgrpc.InferRequestedOutput("probabilities")]
        over_grpc = grpc_client.infer("churn", _inputs(tgrpc, df), outputs=outputs)
    _same(over_grpc, want)
    _same(http.infer("churn", _inputs(thttp, df)), want)
