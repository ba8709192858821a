"""gRPC adapter: Open Inference Protocol v2 (KServe v2) ``inference.GRPCInferenceService``.

It only translates between protobuf tensors and the protocol-free core
(:class:`flywheel.serving.predictor.Predictor`); the wire format is the standard one
(``proto/grpc_predict_v2.proto``), so ``tritonclient.grpc`` and KServe clients work unchanged.

``ModelInfer`` takes the rows either as one input tensor per feature (name = feature name,
shape ``[n]`` or ``[n, 1]``; numeric features in any numeric datatype, categorical ones as
``BYTES``), or as one 2-D tensor ``[n, n_features]`` in the model's feature order (any name
that is not a feature name; numeric datatypes for all-numeric models, ``BYTES`` for any
model). Data comes as typed ``contents`` or as ``raw_input_contents`` (little-endian, row-major;
``BYTES`` elements each prefixed by a 4-byte little-endian length). The answer holds ``label``
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
import math
import struct
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import numpy as np

import flywheel
from flywheel.errors import ConfigError, FlywheelError
from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from flywheel.serving.auth import credential, key_ok
from flywheel.serving.errors import (
    InternalError,
    InvalidInput,
    ModelNotFound,
    TooManyRows,
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

# Numeric datatypes -> little-endian numpy dtypes (raw contents) and their typed field.
_NUMERIC: dict[str, tuple[str, str]] = {
    "BOOL": ("?", "bool_contents"),
    "INT8": ("<i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "UINT8": ("<u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "FP16": ("<f2", ""),  # no typed field in the protocol: raw only
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
}
_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
}
_LENGTH = struct.Struct("<I")

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


def _bad(name: str, message: str, rule: str) -> InvalidInput:
    return InvalidInput(f"Input {name!r} {message}", field=name, rule=rule)


def _shape(tensor: Any) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if shape and min(shape) < 0:
        raise _bad(tensor.name[:64], f"has shape {list(shape)}; dimensions must be >= 0.", "shape")
    return shape


def _split_bytes(buf: bytes, count: int, name: str) -> list[bytes]:
    """Raw BYTES contents: ``count`` elements, each a 4-byte LE length then the bytes.
    (A loop by necessity: elements have their own lengths.)"""
    out: list[bytes] = []
    pos, end = 0, len(buf)
    unpack = _LENGTH.unpack_from
    for _ in range(count):
        if pos + 4 > end:
            break
        (size,) = unpack(buf, pos)
        pos += 4
        if pos + size > end:
            break
        out.append(buf[pos : pos + size])
        pos += size
    if len(out) != count or pos != end:
        raise _bad(
            name,
            f"has raw BYTES contents that do not hold {count} length-prefixed "
            "elements (each a 4-byte little-endian length, then the bytes).",
            "raw",
        )
    return out


def _text(items: Sequence[bytes], name: str) -> np.ndarray:
    try:
        return np.array([b.decode() for b in items], dtype=object)
    except UnicodeDecodeError as exc:
        raise _bad(name, "holds BYTES that are not UTF-8 text.", "utf8") from exc


def _tensor_values(tensor: Any, raw: bytes | None, count: int) -> np.ndarray:
    """One input tensor's ``count`` values as a flat array (numbers, or str objects)."""
    name, datatype = tensor.name[:64], tensor.datatype
    if datatype == "BYTES":
        if raw is not None:
            return _text(_split_bytes(raw, count, name), name)
        items = tensor.contents.bytes_contents
        if len(items) != count:
            raise _bad(
                name,
                f"has shape {list(tensor.shape)} ({count} values) but "
                f"bytes_contents holds {len(items)}.",
                "shape",
            )
        return _text(items, name)
    spec = _NUMERIC.get(datatype)
    if spec is None:
        raise _bad(
            name, f"has datatype {datatype[:16]!r}; use one of {[*_NUMERIC, 'BYTES']}.", "datatype"
        )
    dtype, field = spec
    if raw is not None:
        size = np.dtype(dtype).itemsize
        if len(raw) != count * size:
            raise _bad(
                name,
                f"has shape {list(tensor.shape)} ({count} {datatype} values, "
                f"{count * size} bytes) but its raw contents hold {len(raw)} bytes.",
                "shape",
            )
        return np.frombuffer(raw, dtype=dtype)
    if not field:
        raise _bad(
            name,
            f"is {datatype}, which has no typed contents field: send it in raw_input_contents.",
            "datatype",
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise _bad(
            name,
            f"has shape {list(tensor.shape)} ({count} values) but {field} holds {len(values)}.",
            "shape",
        )
    return np.array(values, dtype=dtype)


def _check_rows(rows: int, limit: int) -> None:
    if rows > limit:  # before decoding anything: refuse big requests cheaply
        raise TooManyRows(
            f"The request has {rows} rows; the limit is {limit} "
            "(serving.max_rows_per_request). Split it into smaller requests.",
            rows=rows,
            limit=limit,
        )


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
            raise _bad(
                tensor.name[:64],
                "has typed contents while the request uses "
                "raw_input_contents; use one or the other for every input.",
                "raw",
            )
    return list(raw)


def _numeric_text(values: np.ndarray, name: str) -> np.ndarray:
    """A numeric feature given as BYTES text (2-D BYTES tensors): '' means missing."""
    try:
        return values.astype(str).astype(np.float64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.float64)
    for row, text in enumerate(values):
        try:
            out[row] = float(text) if text.strip() else math.nan
        except ValueError:
            raise InvalidInput(
                f"Field {name!r} (row {row}) must be a number (or empty); the "
                "BYTES value is not one.",
                field=name,
                row=row,
                rule="type",
            ) from None
    return out


def _matrix_columns(
    tensor: Any, raw: bytes | None, schema: InputSchema, limit: int
) -> dict[str, Any]:
    name, width = tensor.name[:64], len(schema.names)
    shape = _shape(tensor)
    if len(shape) != 2 or shape[1] != width:
        raise _bad(
            name,
            f"has shape {list(shape)}; a single input tensor must be "
            f"[n, {width}] with the features in model order {list(schema.names[:50])} "
            "(or send one tensor per feature, named after it).",
            "shape",
        )
    _check_rows(shape[0], limit)
    if tensor.datatype != "BYTES" and not all(schema.numeric):
        categorical = [n for n, num in zip(schema.names, schema.numeric, strict=True) if not num]
        raise _bad(
            name,
            f"is {tensor.datatype[:16]}, but the model has categorical features "
            f"{categorical[:10]}: send a BYTES matrix, or one tensor per feature.",
            "datatype",
        )
    matrix = _tensor_values(tensor, raw, shape[0] * width).reshape(shape[0], width)
    columns: dict[str, Any] = {}
    for i, (feature, numeric) in enumerate(zip(schema.names, schema.numeric, strict=True)):
        column = matrix[:, i]
        if numeric and column.dtype == object:
            column = _numeric_text(column, feature)
        columns[feature] = column
    return columns


def decode_infer_request(
    request: Any, schema: InputSchema, max_rows: int = 10_000
) -> dict[str, Any]:
    """A ``ModelInferRequest``'s inputs -> ``{feature: 1-D array}`` for ``PredictRequest``.

    Checks shapes, datatypes and contents; the core then checks the values (and names the
    field and row of a bad one). Raises :class:`InvalidInput` / :class:`TooManyRows`."""
    inputs = request.inputs
    if not inputs:
        raise InvalidInput(
            f"The request has no inputs; send one tensor per feature {list(schema.names[:50])}.",
            field="inputs",
            rule="required",
        )
    raw = _raw_for(request)
    known = set(schema.names)
    if len(inputs) == 1 and inputs[0].name not in known:
        return _matrix_columns(inputs[0], raw[0], schema, max_rows)
    numeric = dict(zip(schema.names, schema.numeric, strict=True))
    columns: dict[str, Any] = {}
    for tensor, data in zip(inputs, raw, strict=True):
        name = tensor.name
        if name in columns:
            raise _bad(name[:64], "is sent twice; send each feature once.", "duplicate")
        shape = _shape(tensor)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise _bad(
                name[:64],
                f"has shape {list(shape)}; a feature tensor must be [n] or [n, 1].",
                "shape",
            )
        _check_rows(shape[0], max_rows)
        if numeric.get(name) and tensor.datatype == "BYTES":
            raise _bad(
                name[:64],
                "is a numeric feature but was sent as BYTES; send FP32 (or FP64, INT32, INT64).",
                "datatype",
            )
        columns[name] = _tensor_values(tensor, data, shape[0])
    return columns


def requested_outputs(request: Any, model: LoadedModel) -> tuple[str, ...]:
    """The outputs to answer (all when none is named); unknown names are an error."""
    available = tuple(model.output_names)
    if not request.outputs:
        return available
    wanted = []
    for i, out in enumerate(request.outputs):
        if out.name not in available:
            raise InvalidInput(
                f"outputs[{i}] asks for {out.name[:64]!r}; model {model.name!r} has outputs "
                f"{list(available)}.",
                field=f"outputs[{i}]",
                rule="unknown",
            )
        wanted.append(out.name)
    return tuple(wanted)


# --------------------------------------------------------------------------- response


def _datatype(values: np.ndarray) -> str:
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "f":
        return "FP64" if size == 8 else "FP32"
    if kind in "iu":
        return f"{'U' if kind == 'u' else ''}INT{size * 8}"
    return "BOOL" if kind == "b" else "BYTES"


def _as_bytes(values: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in values.reshape(-1)]


def _output(name: str, values: np.ndarray, raw: list[bytes] | None) -> Any:
    datatype = _datatype(values)
    tensor = pb.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=values.shape
    )
    if datatype == "BYTES":
        items = _as_bytes(values)
        if raw is None:
            tensor.contents.bytes_contents.extend(items)
        else:
            raw.append(b"".join(_LENGTH.pack(len(b)) + b for b in items))
    elif raw is not None:
        raw.append(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
    else:
        field = _NUMERIC[datatype][1]
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
