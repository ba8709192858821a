"""The gRPC adapter (Open Inference Protocol v2): the wire schema against tritonclient's, the
tensor translation as pure functions, and every RPC through flywheel's gRPC server on loopback,
with grpcio's asyncio client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from flywheel.errors import ConfigError, FlywheelError, NotFound, RegistryError
from flywheel.registry.onnx_export import export_onnx
from flywheel.schema import InputSchema
from flywheel.serving import grpc as fgrpc
from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.errors import (
    BadRequest,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    TooManyRows,
    Unauthorized,
)
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import ModelFiles, StaticSource
from flywheel.serving.types import PredictRequest
from flywheel.training.features import FeatureSpec, build_pipeline, prepare_frame
from tests.unit.serving_models import SPECS, build, frame

NUMERIC_SPECS = [FeatureSpec("tenure", "numeric"), FeatureSpec("charges", "numeric")]
MIXED = InputSchema(tuple(SPECS))


def limit_rows(n: int) -> Any:
    """The core's row check (serving.max_rows_per_request = n): the one the fronts call."""
    config = ServingConfig(models=(ServedModel("x"),), max_rows_per_request=n)
    return Predictor(config, {"x": StaticSource({}, {})}).check_rows


no_limit = limit_rows(10_000)
Code = grpc.StatusCode


def build_numeric(tmp: Path) -> ModelFiles:
    """A classifier over numeric features only (for [n, n_features] FP32 tensors)."""
    df = frame(seed=0)
    y = (df["tenure"] < 30).astype(int)
    pipe = build_pipeline(
        NUMERIC_SPECS,
        task="classification",
        family="logreg",
        hyperparams={"max_iter": 200},
        ratios=[],
        seed=0,
    )
    pipe.fit(prepare_frame(df, NUMERIC_SPECS), y)
    data = export_onnx(pipe, NUMERIC_SPECS, task="classification")
    path = tmp / "numeric" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return ModelFiles(
        "1", path, list(NUMERIC_SPECS), "classification", [0, 1], hashlib.sha256(data).hexdigest()
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFiles]:
    tmp = tmp_path_factory.mktemp("grpc-models")
    return {
        "churn": build(tmp, family="logreg", version="3"),
        "numeric": build_numeric(tmp),
        "spend": build(tmp, family="linear", task="regression", version="1"),
    }


def predictor_for(files: dict[str, ModelFiles], **config: Any) -> Predictor:
    sources = {
        name: StaticSource({f.version: f}, {"champion": f.version}) for name, f in files.items()
    }
    options = {"models": tuple(ServedModel(n) for n in files), "poll_interval_s": 0.0, **config}
    return Predictor(ServingConfig(**options), sources)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(predictor: Predictor, *, start: bool = True) -> AsyncIterator[Any]:
    port = _free_port()
    server = fgrpc.create_grpc_server(predictor, "127.0.0.1", port)
    await server.start()
    if start:
        await predictor.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.GRPCInferenceServiceStub(channel)
    finally:
        await server.stop(None)
        await predictor.close()


def run(
    predictor: Predictor, check: Callable[[Any], Awaitable[None]], *, start: bool = True
) -> None:
    async def main() -> None:
        async with serving(predictor, start=start) as stub:
            await check(stub)

    asyncio.run(main())


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def trailing(err: grpc.aio.AioRpcError) -> dict[str, str]:
    return {k: v for k, v in err.trailing_metadata() or ()}


# --------------------------------------------------------------------------- requests


def typed_request(df: Any, model: str = "churn", **kwargs: Any) -> Any:
    request = pb.ModelInferRequest(model_name=model, **kwargs)
    for name in ("tenure", "charges"):
        t = request.inputs.add(name=name, datatype="FP32", shape=[len(df)])
        t.contents.fp32_contents.extend(df[name].tolist())
    t = request.inputs.add(name="plan", datatype="BYTES", shape=[len(df), 1])
    t.contents.bytes_contents.extend(p.encode() for p in df["plan"])
    return request


def raw_bytes(items: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in items))


def raw_request(df: Any, model: str = "churn", *, dtype: str = "FP64") -> Any:
    request = pb.ModelInferRequest(model_name=model)
    np_type = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}[dtype]
    for name in ("tenure", "charges"):
        request.inputs.add(name=name, datatype=dtype, shape=[len(df)])
        request.raw_input_contents.append(df[name].to_numpy().astype(np_type).tobytes())
    request.inputs.add(name="plan", datatype="BYTES", shape=[len(df)])
    request.raw_input_contents.append(raw_bytes(list(df["plan"])))
    return request


def expected(files: dict[str, ModelFiles], df: Any, model: str = "churn") -> Any:
    """The core's in-process answer for the same rows (a predictor of its own)."""

    async def main() -> Any:
        predictor = predictor_for({model: files[model]})
        await predictor.start()
        columns = {s.name: df[s.name].to_numpy() for s in predictor.model().schema.specs}
        return await predictor.predict(PredictRequest(columns=columns))

    return asyncio.run(main())


def outputs_of(response: Any) -> dict[str, np.ndarray]:
    """Output tensors as arrays, from raw or typed contents (as a client would read them)."""
    out = {}
    for i, tensor in enumerate(response.outputs):
        dtype = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}[tensor.datatype]
        field = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}[
            tensor.datatype
        ]
        if response.raw_output_contents:
            values = np.frombuffer(response.raw_output_contents[i], dtype=dtype)
        else:
            values = np.array(getattr(tensor.contents, field), dtype=dtype)
        out[tensor.name] = values.reshape(tuple(tensor.shape))
    return out


# --------------------------------------------------------------------------- wire schema


def _fields(message: Any) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else "",
        )
        for f in message.fields
    }


def _messages(message: Any) -> list[Any]:
    nested = [m for n in message.nested_types for m in _messages(n)]
    return [message, *nested]


def test_wire_schema_matches_tritonclient() -> None:
    """Every message and field of our proto has the standard number and type (tritonclient's
    generated code is the reference), and both can be imported in one process."""
    from tritonclient.grpc import service_pb2 as triton

    ours = [m for top in pb.DESCRIPTOR.message_types_by_name.values() for m in _messages(top)]
    assert len(ours) > 20
    for message in ours:
        theirs = triton.DESCRIPTOR.pool.FindMessageTypeByName(message.full_name)
        mine, ref = _fields(message), _fields(theirs)
        assert mine == {name: ref[name] for name in mine}, message.full_name
        assert set(mine) == set(ref), message.full_name  # no field left out
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    reference = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        other = reference.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
    request = typed_request(frame(3))
    assert triton.ModelInferRequest.FromString(request.SerializeToString()).inputs[2].name == "plan"


# --------------------------------------------------------------------------- pure translation


def test_decode_typed_and_raw_give_the_same_columns() -> None:
    df = frame(4, seed=5)
    typed = fgrpc.decode_infer_request(typed_request(df), MIXED, no_limit)
    raw = fgrpc.decode_infer_request(raw_request(df, dtype="FP32"), MIXED, no_limit)
    for name in ("tenure", "charges"):
        np.testing.assert_array_equal(typed[name], raw[name])
        assert raw[name].dtype == np.float32
    assert list(typed["plan"]) == list(raw["plan"]) == list(df["plan"])


def test_decode_matrix_numeric_and_bytes() -> None:
    numeric = InputSchema(tuple(NUMERIC_SPECS))
    request = pb.ModelInferRequest(model_name="numeric")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 2])
    request.raw_input_contents.append(np.array([[1, 2], [3, 4]], "<f4").tobytes())
    columns = fgrpc.decode_infer_request(request, numeric, no_limit)
    assert columns["tenure"].tolist() == [1, 3] and columns["charges"].tolist() == [2, 4]

    request = pb.ModelInferRequest(model_name="churn")
    t = request.inputs.add(name="rows", datatype="BYTES", shape=[2, 3])
    t.contents.bytes_contents.extend([b"12", b"70.5", b"pro", b"", b"1e2", b"max"])
    columns = fgrpc.decode_infer_request(request, MIXED, no_limit)
    assert columns["tenure"][0] == 12 and np.isnan(columns["tenure"][1])
    assert columns["charges"].tolist() == [70.5, 100.0]
    assert list(columns["plan"]) == ["pro", "max"]


def _shaped(
    name: str, datatype: str, shape: list[int], raw: bytes | None = None, **contents: Any
) -> Any:
    request = pb.ModelInferRequest(model_name="churn")
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        (_shaped("tenure", "FP32", [2], fp32_contents=[1.0]), "tenure", "holds 1"),
        (_shaped("tenure", "FP32", [2, 2], fp32_contents=[1.0] * 4), "tenure", "[n, 1]"),
        (_shaped("tenure", "FP32", [-1], fp32_contents=[1.0]), "tenure", ">= 0"),
        (_shaped("tenure", "FP32", [2], raw=b"\0" * 7), "tenure", "7 bytes"),
        (_shaped("tenure", "BYTES", [1], bytes_contents=[b"1"]), "tenure", "numeric feature"),
        (_shaped("tenure", "COMPLEX", [1]), "tenure", "datatype"),
        (_shaped("tenure", "FP16", [1]), "tenure", "raw_input_contents"),
        (_shaped("plan", "BYTES", [2], raw=raw_bytes(["a"])), "plan", "length-prefixed"),
        (_shaped("plan", "BYTES", [1], raw=raw_bytes(["a"]) + b"x"), "plan", "length-prefixed"),
        (_shaped("plan", "BYTES", [1], bytes_contents=[b"\xff"]), "plan", "UTF-8"),
        (_shaped("x", "FP32", [2, 2], fp32_contents=[1.0] * 4), "x", "[n, 3]"),
        (_shaped("x", "FP32", [1, 3], fp32_contents=[1.0] * 3), "x", "categorical"),
        (_shaped("x", "BYTES", [1, 3], bytes_contents=[b"a", b"1", b"b"]), "tenure", "row 0"),
        (pb.ModelInferRequest(model_name="churn"), "inputs", "no inputs"),
    ],
)
def test_decode_errors_name_the_field(request_: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        fgrpc.decode_infer_request(request_, MIXED, no_limit)
    assert info.value.details["field"] == field
    assert words in info.value.message


def test_decode_request_level_errors() -> None:
    request = raw_request(frame(2))
    request.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="typed contents while"):
        fgrpc.decode_infer_request(request, MIXED, no_limit)
    request = raw_request(frame(2))
    del request.raw_input_contents[-1]
    with pytest.raises(InvalidInput, match="2 entries but there are 3 inputs"):
        fgrpc.decode_infer_request(request, MIXED, no_limit)
    request = typed_request(frame(2))
    request.inputs.append(request.inputs[0])
    with pytest.raises(InvalidInput, match="sent twice"):
        fgrpc.decode_infer_request(request, MIXED, no_limit)
    with pytest.raises(TooManyRows):
        fgrpc.decode_infer_request(typed_request(frame(5)), MIXED, limit_rows(4))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("x"), Code.INVALID_ARGUMENT),
        (BadRequest("x"), Code.INVALID_ARGUMENT),
        (TooManyRows("x"), Code.RESOURCE_EXHAUSTED),
        (PayloadTooLarge("x"), Code.RESOURCE_EXHAUSTED),
        (ModelNotFound("x"), Code.NOT_FOUND),
        (NotFound("x"), Code.NOT_FOUND),
        (ModelNotReady("x"), Code.UNAVAILABLE),
        (Unauthorized("x"), Code.UNAUTHENTICATED),
        (RegistryError("x"), Code.FAILED_PRECONDITION),
        (FlywheelError("x"), Code.INTERNAL),
    ],
)
def test_grpc_code(error: FlywheelError, code: grpc.StatusCode) -> None:
    """The same numbers as grpcio's codes (the server does not import grpcio)."""
    assert fgrpc.grpc_code(error) == code.value[0]
    assert fgrpc.grpc_code(error).name == code.name


# --------------------------------------------------------------------------- over the wire


def test_health_and_server_metadata(files: dict[str, ModelFiles]) -> None:
    async def check(stub: Any) -> None:
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        ready = [
            (await stub.ModelReady(pb.ModelReadyRequest(name=n, version=v))).ready
            for n, v in [("churn", ""), ("churn", "3"), ("churn", "1"), ("nope", "")]
        ]
        assert ready == [True, True, False, False]
        meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
        assert meta.name == "flywheel" and meta.version and list(meta.extensions) == []

    run(predictor_for(files), check)


def test_not_ready_until_models_load(files: dict[str, ModelFiles]) -> None:
    predictor = predictor_for(files)

    async def check(stub: Any) -> None:
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name="churn"))).ready
        err = await rpc_error(stub.ModelInfer(typed_request(frame(2))))
        assert err.code() is Code.UNAVAILABLE and "not loaded" in err.details()
        err = await rpc_error(stub.ModelMetadata(pb.ModelMetadataRequest(name="churn")))
        assert err.code() is Code.UNAVAILABLE
        await predictor.start()
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready

    run(predictor, check, start=False)


def test_model_metadata(files: dict[str, ModelFiles]) -> None:
    async def check(stub: Any) -> None:
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="churn", version="3"))
        assert (meta.name, list(meta.versions), meta.platform) == ("churn", ["3"], "onnxruntime")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("tenure", "FP32", [-1, 1]),
            ("charges", "FP32", [-1, 1]),
            ("plan", "BYTES", [-1, 1]),
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("label", "INT64", [-1]),
            ("probabilities", "FP32", [-1, 2]),
        ]
        spend = await stub.ModelMetadata(pb.ModelMetadataRequest(name="spend"))
        assert [(t.name, t.datatype) for t in spend.outputs] == [("label", "FP32")]
        for name, version in [("nope", ""), ("churn", "9")]:
            err = await rpc_error(
                stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version))
            )
            assert err.code() is Code.NOT_FOUND, err.details()
            assert trailing(err)["flywheel-error-kind"] == "model_not_found"

    run(predictor_for(files), check)


def test_infer_typed_and_raw_equal_the_core(files: dict[str, ModelFiles]) -> None:
    df = frame(7, seed=11)
    want = expected(files, df)

    async def check(stub: Any) -> None:
        typed = await stub.ModelInfer(typed_request(df, id="req-1"))
        assert not typed.raw_output_contents and typed.id == "req-1"
        assert (typed.model_name, typed.model_version) == ("churn", "3")
        for dtype in ("FP32", "FP64", "INT64"):
            raw = await stub.ModelInfer(raw_request(df, dtype=dtype))
            assert len(raw.raw_output_contents) == 2
            if dtype != "INT64":  # integers round the charges, so only the floats must match
                got = outputs_of(raw)
                np.testing.assert_array_equal(got["label"], want.labels)
                np.testing.assert_array_equal(got["probabilities"], want.probabilities)
        got = outputs_of(typed)
        assert [t.datatype for t in typed.outputs] == ["INT64", "FP32"]
        assert got["probabilities"].shape == (7, 2)
        np.testing.assert_array_equal(got["label"], want.labels)
        np.testing.assert_array_equal(got["probabilities"], want.probabilities)

    run(predictor_for(files), check)


def test_infer_matrix_outputs_and_regression(files: dict[str, ModelFiles]) -> None:
    df = frame(5, seed=2)
    want_numeric, want_spend = expected(files, df, "numeric"), expected(files, df, "spend")

    async def check(stub: Any) -> None:
        request = pb.ModelInferRequest(model_name="numeric", outputs=[{"name": "probabilities"}])
        request.inputs.add(name="input", datatype="FP32", shape=[5, 2])
        request.raw_input_contents.append(
            df[["tenure", "charges"]].to_numpy().astype("<f4").tobytes()
        )
        answer = await stub.ModelInfer(request)
        assert [t.name for t in answer.outputs] == ["probabilities"]
        np.testing.assert_array_equal(
            outputs_of(answer)["probabilities"], want_numeric.probabilities
        )

        answer = await stub.ModelInfer(typed_request(df, model="spend"))
        assert [(t.name, t.datatype, list(t.shape)) for t in answer.outputs] == [
            ("label", "FP32", [5])
        ]
        np.testing.assert_array_equal(outputs_of(answer)["label"], want_spend.labels)
        err = await rpc_error(
            stub.ModelInfer(typed_request(df, model="spend", outputs=[{"name": "probabilities"}]))
        )
        assert err.code() is Code.INVALID_ARGUMENT and "outputs[0]" in err.details()

    run(predictor_for(files), check)


def test_infer_errors_map_to_status_codes(files: dict[str, ModelFiles]) -> None:
    async def check(stub: Any) -> None:
        bad = typed_request(frame(3))
        bad.inputs[1].contents.fp32_contents[2] = float("inf")
        err = await rpc_error(stub.ModelInfer(bad))
        assert err.code() is Code.INVALID_ARGUMENT
        assert "'charges' (row 2)" in err.details()
        assert trailing(err) == {
            "flywheel-error-kind": "invalid_input",
            "flywheel-error-field": "charges",
        }

        missing = typed_request(frame(3))
        del missing.inputs[2]
        err = await rpc_error(stub.ModelInfer(missing))
        assert err.code() is Code.INVALID_ARGUMENT and "'plan'" in err.details()

        err = await rpc_error(stub.ModelInfer(typed_request(frame(3), model_version="2")))
        assert err.code() is Code.NOT_FOUND and "version '2'" in err.details()
        err = await rpc_error(stub.ModelInfer(typed_request(frame(3), model="nope")))
        assert err.code() is Code.NOT_FOUND
        err = await rpc_error(stub.ModelInfer(typed_request(frame(11))))
        assert err.code() is Code.RESOURCE_EXHAUSTED and "limit is 10" in err.details()

    run(predictor_for(files, max_rows_per_request=10), check)


def test_internal_errors_hide_the_cause(
    files: dict[str, ModelFiles], caplog: pytest.LogCaptureFixture
) -> None:
    predictor = predictor_for(files)
    ids: list[str] = []

    async def boom(request: PredictRequest) -> Any:
        raise RuntimeError("secret detail")

    async def check(stub: Any) -> None:
        predictor.predict = boom  # type: ignore[method-assign]
        err = await rpc_error(stub.ModelInfer(typed_request(frame(2), id="rid-9")))
        assert err.code() is Code.INTERNAL
        found = re.fullmatch(
            r"Internal error; see the server log for request ([0-9a-f]{24})\.", err.details()
        )
        assert found, err.details()  # the server's id, which the log line carries
        ids.append(found.group(1))
        assert trailing(err)["flywheel-error-kind"] == "internal"

    with caplog.at_level("ERROR", logger="flywheel.serving"):
        run(predictor, check)
    assert "secret detail" in caplog.text  # in the log, never in the answer
    logged = next(r for r in caplog.records if getattr(r, "request_id", None) == ids[0])
    assert logged.client_id == "rid-9"  # type: ignore[attr-defined]
    assert predictor.metrics.errors[("grpc", "internal")] == 1
    assert predictor.metrics.requests[("grpc", "ModelInfer", "500")] == 1


def test_api_key_size_limit_log_and_metrics(files: dict[str, ModelFiles]) -> None:
    class Sink:
        def __init__(self) -> None:
            self.records: list[Any] = []

        def append(self, record: Any) -> None:
            self.records.append(record)

    sink = Sink()
    predictor = predictor_for({"churn": files["churn"]}, api_key="k3y", max_body_bytes=4096)
    predictor.sink = sink

    async def check(stub: Any) -> None:
        err = await rpc_error(stub.ModelInfer(typed_request(frame(2))))
        assert err.code() is Code.UNAUTHENTICATED
        err = await rpc_error(
            stub.ModelInfer(typed_request(frame(2)), metadata=(("x-api-key", "wrong"),))
        )
        assert err.code() is Code.UNAUTHENTICATED
        answer = await stub.ModelInfer(
            typed_request(frame(2), id="logged"), metadata=(("authorization", "Bearer k3y"),)
        )
        assert answer.id == "logged"  # the client's id echoed; the server's beside it
        assert len(answer.parameters["request_id"].string_param) == 24
        err = await rpc_error(
            stub.ModelInfer(typed_request(frame(300)), metadata=(("x-api-key", "k3y"),))
        )
        assert err.code() is Code.RESOURCE_EXHAUSTED  # over max_body_bytes: gRPC refuses it
        assert ("flywheel-error-kind", "payload_too_large") in tuple(err.trailing_metadata())
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready  # health needs no key

    run(predictor, check)
    assert [r.protocol for r in sink.records] == ["grpc"]
    assert len(sink.records[0].request_id) == 24  # the server's id keys the log, not "logged"
    assert predictor.metrics.requests[("grpc", "ModelInfer", "200")] == 1
    assert predictor.metrics.requests[("grpc", "ModelInfer", "401")] == 2


def test_serve_grpc_lifecycle(files: dict[str, ModelFiles]) -> None:
    """Listens first (live, not ready), loads the models, then stops and closes on cancel."""
    predictor = predictor_for({"churn": files["churn"]}, poll_interval_s=60.0)
    port = _free_port()

    async def main() -> None:
        task = asyncio.create_task(fgrpc.serve_grpc(predictor, "127.0.0.1", port, grace_s=0.1))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerLive(pb.ServerLiveRequest(), wait_for_ready=True)).live
            for _ in range(200):
                if (await stub.ServerReady(pb.ServerReadyRequest())).ready:
                    break
                await asyncio.sleep(0.02)
            assert predictor.ready and predictor._poller is not None
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert predictor._poller is None  # predictor.close() ran

    asyncio.run(main())


def test_port_in_use_is_a_config_error(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
                fgrpc.create_grpc_server(predictor_for(files), "127.0.0.1", port)

    asyncio.run(main())


def test_public_api() -> None:
    assert set(fgrpc.__all__) == {
        "DEFAULT_GRPC_PORT",
        "GrpcFront",
        "grpc_front",
        "InferenceServicer",
        "StatusCode",
        "create_grpc_server",
        "decode_infer_request",
        "encode_infer_response",
        "grpc_code",
        "serve_grpc",
    }
    assert all(hasattr(fgrpc, name) for name in fgrpc.__all__)
