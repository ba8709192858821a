"""gRPC adapter: Open Inference Protocol v2 (KServe v2) ``inference.GRPCInferenceService``.

It only translates between protobuf tensors and the protocol-free core
(:class:`flywheel.serving.predictor.Predictor`); the wire format is the standard one
(``proto/grpc_predict_v2.proto``), so ``tritonclient.grpc`` and KServe clients work unchanged.

``ModelInfer`` takes the rows either as one input tensor per feature (name = feature name,
shape ``[n]`` or ``[n, 1]``; numeric features in any numeric datatype, categorical ones as
``BYTES``), or as one 2-D tensor ``[n, n_features]`` in the model's feature order (any name
that is not a feature name; numeric datatypes for all-numeric models, ``BYTES`` for any
model). Data comes as typed ``contents`` or as ``raw_input_contents`` (little-endian, row-major;
``BYTES`` elements each prefixed by a 4-byte little-endian length). These tensor rules live in
:mod:`flywheel.serving._tensors`, shared with the v2 REST route. The answer holds ``label``
``[n]`` and, for classifiers, ``probabilities`` ``[n, k]`` (FP32, columns in class order), raw
when the request was raw (as tritonclient sends) and typed otherwise.

Errors: the core's errors carry an HTTP ``status``/``kind``; :func:`grpc_code` maps them to gRPC
status codes (400/415/422 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 503 -> UNAVAILABLE, too many
rows / too large -> RESOURCE_EXHAUSTED, anything unexpected -> INTERNAL with a request id and
no traceback). The details string is the error's message (it names the field and the rule);
trailing metadata ``flywheel-error-kind`` (and ``flywheel-error-field``) make it machine-readable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import numpy as np

import flywheel
from flywheel.errors import ConfigError, FlywheelError
from flywheel.serving import _tensors as tensors
from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from flywheel.serving.auth import credential, key_ok
from flywheel.serving.errors import (
    InternalError,
    InvalidInput,
    ModelNotFound,
    Unauthorized,
)
from flywheel.serving.types import PredictRequest, PredictResponse

if TYPE_CHECKING:
    from flywheel.serving.decode import InputSchema
    from flywheel.serving.models import LoadedModel
    from flywheel.serving.predictor import Predictor

__all__ = [
    "DEFAULT_GRPC_PORT",
    "InferenceServicer",
    "create_grpc_server",
    "decode_infer_request",
    "encode_infer_response",
    "grpc_code",
    "serve_grpc",
]

log = logging.getLogger("flywheel.serving")

DEFAULT_GRPC_PORT = 8081  # KServe's gRPC port; REST stays on 8080
EXTENSIONS: tuple[str, ...] = ()  # none of the protocol's optional extensions is offered
PLATFORM = "onnxruntime"

# The typed contents field of each datatype (FP16 has none in the protocol: raw only).
_TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
}
_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
_EXHAUSTED_KINDS = frozenset({"too_many_rows", "payload_too_large"})


def grpc_code(exc: FlywheelError) -> grpc.StatusCode:
    """The gRPC status code for one of flywheel's errors (decided here, once)."""
    if exc.kind in _EXHAUSTED_KINDS:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return _CODES.get(exc.status, grpc.StatusCode.INTERNAL)


# --------------------------------------------------------------------------- request


def _raw_for(request: Any) -> list[bytes | None]:
    inputs, raw = request.inputs, request.raw_input_contents
    if not raw:
        return [None] * len(inputs)
    if len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but there are {len(inputs)} inputs; "
            "when raw contents are used, send one entry per input, in input order.",
            field="raw_input_contents",
            rule="raw",
        )
    for tensor in inputs:
        if tensor.HasField("contents"):
            raise tensors.bad(
                tensor.name[:64],
                "has typed contents while the request uses "
                "raw_input_contents; use one or the other for every input.",
                "raw",
            )
    return list(raw)


def _tensor(tensor: Any, raw: bytes | None) -> tensors.Tensor:
    """A protobuf input tensor as the shared :class:`~flywheel.serving._tensors.Tensor`."""
    name, datatype = tensor.name[:64], tensor.datatype
    out = tensors.Tensor(name, datatype, tuple(tensor.shape), raw=raw, typed=True)
    if raw is None and datatype in tensors.DATATYPES:
        field = _TYPED_FIELD.get(datatype)
        if field is None:
            raise tensors.bad(
                name,
                f"is {datatype}, which has no typed contents field: send it in raw_input_contents.",
                "datatype",
            )
        out.data, out.source = getattr(tensor.contents, field), field
    return out


def decode_infer_request(
    request: Any, schema: InputSchema, max_rows: int = 10_000
) -> dict[str, Any]:
    """A ``ModelInferRequest``'s inputs -> ``{feature: 1-D array}`` for ``PredictRequest``.

    Checks shapes, datatypes and contents (the rules of :mod:`flywheel.serving._tensors`, shared
    with the v2 REST route); the core then checks the values (and names the field and row of a
    bad one). Raises :class:`InvalidInput` / :class:`TooManyRows`."""
    raw = _raw_for(request)
    inputs = [_tensor(t, r) for t, r in zip(request.inputs, raw, strict=True)]
    return tensors.to_columns(inputs, schema, max_rows)


def requested_outputs(request: Any, model: LoadedModel) -> tuple[str, ...]:
    """The outputs to answer (all when none is named); unknown names are an error."""
    names = [out.name for out in request.outputs]
    return tensors.pick_outputs(names, tuple(model.output_names), model.name)


# --------------------------------------------------------------------------- response


def _output(name: str, values: np.ndarray, raw: list[bytes] | None) -> Any:
    datatype = tensors.datatype_of(values)
    tensor = pb.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=values.shape
    )
    if raw is not None:
        raw.append(tensors.raw_bytes(values))
    elif datatype == "BYTES":
        tensor.contents.bytes_contents.extend(tensors.as_bytes(values))
    else:
        field = _TYPED_FIELD.get(datatype, "fp32_contents")  # FP16 has no typed field
        getattr(tensor.contents, field).extend(values.reshape(-1).tolist())
    return tensor


def encode_infer_response(response: PredictResponse, outputs: Sequence[str], raw: bool) -> Any:
    """A ``ModelInferResponse`` with ``outputs`` (``label``, ``probabilities``), as
    ``raw_output_contents`` when ``raw`` else typed contents."""
    arrays = {"label": response.labels, "probabilities": response.probabilities}
    contents: list[bytes] | None = [] if raw else None
    tensors = [
        _output(name, np.asarray(arrays[name]), contents)
        for name in outputs
        if arrays.get(name) is not None
    ]
    return pb.ModelInferResponse(
        model_name=response.model,
        model_version=response.version,
        id=response.request_id,
        outputs=tensors,
        raw_output_contents=contents or (),
    )


def model_metadata(model: LoadedModel, name: str) -> Any:
    """Versions, platform, one input per feature (FP32 / BYTES, ``[-1, 1]``), outputs."""
    inputs = [
        pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype="FP32" if spec.kind == "numeric" else "BYTES", shape=[-1, 1]
        )
        for spec in model.schema.specs
    ]
    # TODO(core): LoadedModel.describe() could list output datatypes/shapes; read them from
    # the ONNX session until it does.
    ort_types = {o.name: o.type for o in model.session.get_outputs()}
    outputs = []
    for out in model.output_names:
        shape = [-1]
        if out == "probabilities":
            shape = [-1, len(model.classes) if model.classes else -1]
        outputs.append(
            pb.ModelMetadataResponse.TensorMetadata(
                name=out, datatype=_ORT_TYPES.get(ort_types.get(out, ""), "FP32"), shape=shape
            )
        )
    return pb.ModelMetadataResponse(
        name=name, versions=[model.version], platform=PLATFORM, inputs=inputs, outputs=outputs
    )


# --------------------------------------------------------------------------- servicer


def _metadata_value(value: Any) -> str | None:
    text = str(value)[:128]
    return text if text.isascii() and text.isprintable() else None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over one :class:`Predictor` (async handlers)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.metrics = predictor.metrics
        key = predictor.config.api_key
        self._api_key = key.encode() if key else None
        self._max_rows = predictor.config.max_rows_per_request

    # ------------------------------------------------------------------ health + metadata
    # (method names are the RPC names)
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.predictor.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        """False (not an error) for an unknown model or a version not served, as Triton does:
        a readiness probe answers yes or no."""
        try:
            model = self.predictor.model(request.name or None)
        except FlywheelError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=request.version in ("", model.version))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name="flywheel", version=flywheel.__version__, extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            model = self._model(request.name, request.version)
        except FlywheelError as exc:
            await self._abort(context, exc)
        return model_metadata(model, request.name or model.name)

    # ------------------------------------------------------------------ inference
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        start = time.perf_counter()
        error: FlywheelError | None = None
        try:
            self._check_key(context)
            answer = await self._infer(request)
        except FlywheelError as exc:
            error = exc
        except Exception:
            rid = request.id[:128] or uuid.uuid4().hex
            log.exception("unhandled error", extra={"request_id": rid, "route": "ModelInfer"})
            error = InternalError(rid)
        seconds = time.perf_counter() - start
        if error is not None:
            self.metrics.error("grpc", error.kind)
            self.metrics.request("grpc", "ModelInfer", error.status, seconds)
            await self._abort(context, error)
        self.metrics.request("grpc", "ModelInfer", 200, seconds)
        return answer

    async def _infer(self, request: Any) -> Any:
        name = request.model_name or None
        model = self._model(request.model_name, request.model_version)
        outputs = requested_outputs(request, model)
        columns = decode_infer_request(request, model.schema, self._max_rows)
        response = await self.predictor.predict(
            PredictRequest(
                columns=columns,
                model=name,
                version=request.model_version or None,
                request_id=request.id[:128] or None,
                protocol="grpc",
            )
        )
        return encode_infer_response(response, outputs, raw=bool(request.raw_input_contents))

    # ------------------------------------------------------------------ helpers
    def _model(self, name: str, version: str) -> LoadedModel:
        model = self.predictor.model(name or None)
        if version and version != model.version:
            raise ModelNotFound(
                f"Model {model.name!r} version {version[:32]!r} is not served; this server "
                f"serves version {model.version}.",
                model=model.name,
                version=version[:32],
            )
        return model

    def _check_key(self, context: Any) -> None:
        if self._api_key is None:
            return
        if not key_ok(credential(context.invocation_metadata() or ()), self._api_key):
            raise Unauthorized(
                "A valid API key is required: send metadata 'x-api-key: <key>' "
                "or 'authorization: Bearer <key>'."
            )

    @staticmethod
    async def _abort(context: Any, exc: FlywheelError) -> NoReturn:
        trailing = [("flywheel-error-kind", exc.kind)]
        field = _metadata_value(exc.details.get("field", ""))
        if field:
            trailing.append(("flywheel-error-field", field))
        await context.abort(grpc_code(exc), exc.message, trailing_metadata=tuple(trailing))
        raise AssertionError("grpc.aio context.abort() returned")  # it always raises


# --------------------------------------------------------------------------- server


def create_grpc_server(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = DEFAULT_GRPC_PORT,
    *,
    max_concurrent_rpcs: int | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Server:
    """A ``grpc.aio`` server with the inference service bound to ``host:port`` (not started;
    call from the event loop that will run it). It does not load models: ``serve_grpc`` (or
    the caller) runs ``predictor.start()``. ``max_concurrent_rpcs``: more in flight are
    refused with RESOURCE_EXHAUSTED (None: no limit). Messages up to
    ``serving.max_body_bytes`` are accepted; larger ones get RESOURCE_EXHAUSTED from gRPC."""
    limit = predictor.config.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", max(limit, 4 * 1024 * 1024)),
            # fail loudly when the port is taken instead of sharing it silently
            ("grpc.so_reuseport", 0),
            *options,
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(predictor), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
        raise ConfigError(
            f"The gRPC server cannot listen on {address}: {exc}. Choose another "
            "port or stop what holds it.",
            key="serving.grpc_port",
        ) from exc
    log.info("gRPC inference service bound to %s:%s", host, bound)
    return server


async def serve_grpc(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = DEFAULT_GRPC_PORT,
    *,
    max_concurrent_rpcs: int | None = None,
    grace_s: float = 5.0,
) -> None:
    """Serve until cancelled: start listening (ServerLive answers at once, ServerReady once
    the models are loaded), load the models, wait; then drain for ``grace_s`` and close."""
    server = create_grpc_server(predictor, host, port, max_concurrent_rpcs=max_concurrent_rpcs)
    await server.start()
    try:
        await predictor.start()
        # Shielded: cancelling grpc's own wait also cancels the future that stop() awaits,
        # and stop() would then raise CancelledError instead of draining.
        await asyncio.shield(server.wait_for_termination())
    finally:
        try:
            await server.stop(grace_s)
        finally:
            await predictor.close()
