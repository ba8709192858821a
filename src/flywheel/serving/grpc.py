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
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.message import DecodeError

import flywheel
from flywheel.errors import ConfigError, FlywheelError
from flywheel.serving import _tensors as tensors
from flywheel.serving._pbwire import infer_response_bytes
from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
from flywheel.serving.auth import credential
from flywheel.serving.cycle import Call
from flywheel.serving.errors import InvalidInput
from flywheel.serving.h2 import H2Server, Reply, StatusCode, Unary
from flywheel.serving.types import PredictRequest, PredictResponse

if TYPE_CHECKING:
    from flywheel.config import Settings
    from flywheel.schema import InputSchema
    from flywheel.serving.loading import LoadedModel
    from flywheel.serving.predictor import Predictor

__all__ = [
    "DEFAULT_GRPC_PORT",
    "GrpcFront",
    "InferenceServicer",
    "StatusCode",
    "create_grpc_server",
    "decode_infer_request",
    "encode_infer_response",
    "grpc_code",
    "grpc_front",
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


_CODES: dict[int, StatusCode] = {
    400: StatusCode.INVALID_ARGUMENT,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.NOT_FOUND,
    409: StatusCode.FAILED_PRECONDITION,
    413: StatusCode.RESOURCE_EXHAUSTED,
    415: StatusCode.INVALID_ARGUMENT,
    422: StatusCode.INVALID_ARGUMENT,
    503: StatusCode.UNAVAILABLE,
}
_EXHAUSTED_KINDS = frozenset({"too_many_rows", "payload_too_large"})
SERVICE = "/inference.GRPCInferenceService/"


def grpc_code(exc: FlywheelError) -> StatusCode:
    """The gRPC status code for one of flywheel's errors (decided here, once)."""
    if exc.kind in _EXHAUSTED_KINDS:
        return StatusCode.RESOURCE_EXHAUSTED
    return _CODES.get(exc.status, StatusCode.INTERNAL)


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


# the typed contents field and raw struct code of each numeric datatype (FP16: raw only)
_NUMBERS: dict[str, tuple[str | None, str]] = {
    datatype: (_TYPED_FIELD.get(datatype), code) for datatype, code in tensors.STRUCT_CODES.items()
}


def _common_columns(
    request: Any, schema: InputSchema, check_rows: tensors.RowCheck
) -> dict[str, list[Any]] | None:
    """The common ModelInfer decoded in one pass, or None for any other request.

    Common: one tensor per feature, shape ``[n]`` or ``[n, 1]`` with ``n`` at most
    ``LIST_MAX_ROWS``, each in its feature's kind (a numeric datatype for a numeric feature,
    ``BYTES`` for a categorical one), all typed or all raw. The columns are those
    :func:`decode_infer_request` gives with ``lists=True`` (a test compares both) for about
    half its CPU: one loop, no intermediate tensors. Anything else, or anything wrong, is
    left to :func:`decode_infer_request`, which names each problem."""
    kinds = schema.numeric_of
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        return None
    columns: dict[str, list[Any]] = {}
    rows = -1
    for i, tensor in enumerate(inputs):
        name = tensor.name
        numeric = kinds.get(name)
        if numeric is None or name in columns or len(name) > 64:
            return None
        shape = tensor.shape
        dims = len(shape)
        if dims != 1 and (dims != 2 or shape[1] != 1):
            return None
        count = shape[0]
        if count != rows:  # checked once: a tensor of another length is left to the general
            if rows != -1 or not 0 <= count <= tensors.LIST_MAX_ROWS:  # path, which names it
                return None
            check_rows(count)
            rows = count
        values = _common_values(tensor, count, numeric, raw[i] if raw else None)
        if values is None:
            return None
        columns[name] = values
    return columns


def _common_values(tensor: Any, rows: int, numeric: bool, raw: bytes | None) -> list[Any] | None:
    """One tensor of :func:`_common_columns` as a list, or None (left to the general path)."""
    datatype = tensor.datatype
    if raw is not None and tensor.HasField("contents"):
        return None  # typed and raw at once: an error the general path names
    try:
        if numeric:
            field, code = _NUMBERS.get(datatype, (None, ""))
            if raw is not None:
                return list(struct.unpack(f"<{rows}{code}", raw)) if code else None
            if field is None:
                return None
            values = list(getattr(tensor.contents, field))
        elif datatype != "BYTES":
            return None
        elif raw is not None:
            values = [b.decode() for b in tensors.split_bytes(raw, rows, tensor.name)]
        else:
            values = [b.decode() for b in tensor.contents.bytes_contents]
    except (struct.error, UnicodeDecodeError, InvalidInput):
        return None
    return values if len(values) == rows else None


def decode_infer_request(
    request: Any, schema: InputSchema, check_rows: tensors.RowCheck, *, lists: bool = False
) -> dict[str, Any]:
    """A ``ModelInferRequest``'s inputs -> ``{feature: 1-D array}`` for ``PredictRequest``.

    Checks shapes, datatypes and contents (the rules of :mod:`flywheel.serving._tensors`, shared
    with the v2 REST route); the core then checks the values (and names the field and row of a
    bad one). ``lists``: small feature tensors as Python lists (``to_columns``), as ModelInfer
    sends them to the core. Raises :class:`InvalidInput` / :class:`TooManyRows`."""
    raw = _raw_for(request)
    inputs = [_tensor(t, r) for t, r in zip(request.inputs, raw, strict=True)]
    return tensors.to_columns(inputs, schema, check_rows, lists=lists)


def requested_outputs(request: Any, model: LoadedModel) -> tuple[str, ...]:
    """The outputs to answer (all when none is named); unknown names are an error."""
    names = [out.name for out in request.outputs]
    return tensors.pick_outputs(names, tuple(model.output_names), model.name)


# --------------------------------------------------------------------------- response


def _output(response: Any, name: str, values: np.ndarray, raw: bool) -> None:
    """Add output ``name`` to ``response``: raw bytes, or the datatype's typed contents."""
    datatype = tensors.datatype_of(values)
    tensor = response.outputs.add(name=name, datatype=datatype, shape=values.shape)
    if raw:
        response.raw_output_contents.append(tensors.raw_bytes(values))
    elif datatype == "BYTES":
        tensor.contents.bytes_contents.extend(tensors.as_bytes(values))
    else:
        field = _TYPED_FIELD.get(datatype, "fp32_contents")  # FP16 has no typed field
        getattr(tensor.contents, field).extend(values.reshape(-1).tolist())


def encode_infer_response(response: PredictResponse, outputs: Sequence[str], raw: bool) -> Any:
    """A ``ModelInferResponse`` with ``outputs`` (``label``, ``probabilities``), as
    ``raw_output_contents`` when ``raw`` else typed contents. Built in place (outputs added
    to the message, not built apart and copied in): ~40% less CPU than building its parts."""
    answer = pb.ModelInferResponse(
        model_name=response.model,
        model_version=response.version,
        id=response.client_id or response.request_id,
    )
    answer.parameters["request_id"].string_param = response.request_id
    arrays = {"label": response.labels, "probabilities": response.probabilities}
    for name in outputs:
        values = arrays.get(name)
        if values is not None:
            _output(answer, name, np.asarray(values), raw)
    return answer


def model_metadata(meta: dict[str, Any]) -> Any:
    """The core's metadata (:meth:`Predictor.metadata`) as a ``ModelMetadataResponse``."""

    def tensors(items: list[dict[str, Any]]) -> list[Any]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=t["name"], datatype=t["datatype"], shape=t["shape"]
            )
            for t in items
        ]

    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=tensors(meta["inputs"]),
        outputs=tensors(meta["outputs"]),
    )


# --------------------------------------------------------------------------- servicer


def _metadata_value(value: Any) -> str | None:
    text = str(value)[:128]
    return text if text.isascii() and text.isprintable() else None


class InferenceServicer:
    """``inference.GRPCInferenceService`` over one :class:`Predictor`, as unary methods of
    the HTTP/2 server (:mod:`flywheel.serving.h2`): each takes the request message's bytes
    and headers and runs on the predictor's event loop, where the request cycle
    (``predictor.calls``), decoding, the micro-batcher and encoding run as for every other
    front; calls that arrive together meet in one micro-batch."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def methods(self) -> dict[str, Unary]:
        """``/inference.GRPCInferenceService/<RPC>`` -> its unary method."""
        rpcs: dict[str, tuple[Any, Callable[..., Awaitable[Any]]]] = {
            "ServerLive": (pb.ServerLiveRequest, self.server_live),
            "ServerReady": (pb.ServerReadyRequest, self.server_ready),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self.model_metadata),
            "ModelInfer": (pb.ModelInferRequest, self.model_infer),
        }
        return {SERVICE + name: _unary(kind, rpc) for name, (kind, rpc) in rpcs.items()}

    # ------------------------------------------------------------------ health + metadata
    async def server_live(self, request: Any, headers: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, headers: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.predictor.ready)

    async def model_ready(self, request: Any, headers: Any) -> Any:
        """False (not an error) for an unknown model or a version not served, as Triton does:
        a readiness probe answers yes or no."""
        try:
            model = self.predictor.model(request.name or None)
        except FlywheelError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=request.version in ("", model.version))

    async def server_metadata(self, request: Any, headers: Any) -> Any:
        return pb.ServerMetadataResponse(
            name="flywheel", version=flywheel.__version__, extensions=EXTENSIONS
        )

    async def model_metadata(self, request: Any, headers: Any) -> Any:
        try:
            meta = self.predictor.metadata(request.name or None, request.version or None)
        except FlywheelError as exc:
            return exc
        return model_metadata(meta)

    # ------------------------------------------------------------------ inference
    async def model_infer(self, request: Any, headers: Any) -> Any:
        """The request cycle: the answer, or the error to end the call with."""
        calls = self.predictor.calls
        call = calls.begin("grpc", "ModelInfer", request.id)
        try:
            if calls.auth_required:
                calls.authorize(credential(headers))
            answer = await self._infer(request, call)
        except Exception as exc:
            error = calls.failed(call, exc)
            calls.end(call, error.status)
            return error
        calls.end(call, 200)
        return answer

    async def _infer(self, request: Any, call: Call) -> Any:
        name, version = request.model_name or None, request.model_version or None
        model = self.predictor.model(name, version)
        outputs = requested_outputs(request, model)
        check_rows = self.predictor.check_rows
        columns: dict[str, Any] | None = _common_columns(request, model.schema, check_rows)
        records = None
        if columns is None:
            columns = decode_infer_request(request, model.schema, check_rows, lists=True)
        elif all(len(values) == 1 for values in columns.values()):
            # one row: the core's record path checks it in a third of the column path's CPU
            records, columns = [{k: values[0] for k, values in columns.items()}], None
        response = await self.predictor.predict(
            PredictRequest(
                records=records,
                columns=columns,
                model=name,
                version=version,
                request_id=call.request_id,
                client_id=call.client_id,
                protocol="grpc",
            )
        )
        return infer_response_bytes(response, outputs, raw=bool(request.raw_input_contents))


def _unary(kind: Any, rpc: Callable[[Any, Any], Awaitable[Any]]) -> Unary:
    """An RPC as the HTTP/2 server's unary method: parse, call, serialize or map the error."""

    async def unary(message: bytes, headers: list[tuple[str, str]]) -> Reply:
        try:
            request = kind.FromString(message)
        except DecodeError:
            return Reply(None, StatusCode.INTERNAL, "Exception deserializing request!")
        answer = await rpc(request, headers)
        if isinstance(answer, FlywheelError):
            return _error_reply(answer)
        return Reply(answer if type(answer) is bytes else answer.SerializeToString())

    return unary


def _error_reply(exc: FlywheelError) -> Reply:
    trailing = [("flywheel-error-kind", exc.kind)]
    field = _metadata_value(exc.details.get("field", ""))
    if field:
        trailing.append(("flywheel-error-field", field))
    return Reply(None, grpc_code(exc), exc.message, tuple(trailing))


# --------------------------------------------------------------------------- server


class GrpcServer:
    """The gRPC server :func:`create_grpc_server` builds (``await start()``, ``await
    stop(grace)``, ``await wait_for_termination()``): :class:`flywheel.serving.h2.H2Server`
    on the event loop that runs the predictor.

    Why not grpcio's server: its Python layer alone costs ~125-155 µs per call, and its
    calls arrive on threads (or, with grpc.aio, one loop turn apart) that must be handed to
    the event loop; here the calls are read on the loop itself (bench/README.md, "The other
    doors")."""

    def __init__(self, servicer: InferenceServicer, sock: socket.socket, limit: int | None):
        self.servicer = servicer
        self._socket = sock
        self._h2 = H2Server(
            servicer.methods(),
            max_message=servicer.predictor.config.max_body_bytes,
            limit=limit,
        )

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    async def start(self) -> None:
        """Accept calls on the running event loop."""
        await self._h2.listen(self._socket)

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let those in hand finish for ``grace`` seconds (None: cancel
        them now), then close."""
        await self._h2.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._h2.wait_closed(), timeout)
        except TimeoutError:
            return False
        return True


def create_grpc_server(
    predictor: Predictor,
    host: str = "127.0.0.1",
    port: int = DEFAULT_GRPC_PORT,
    *,
    max_concurrent_rpcs: int | None = None,
) -> GrpcServer:
    """A :class:`GrpcServer` with the inference service bound to ``host:port`` (not started;
    ``await server.start()`` on the event loop that runs the predictor). It does not load
    models: ``serve_grpc`` (or the caller) runs ``predictor.start()``. ``max_concurrent_rpcs``:
    more in flight are refused with RESOURCE_EXHAUSTED (None: no limit). Messages up to
    ``serving.max_body_bytes`` are accepted; larger ones get RESOURCE_EXHAUSTED."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # fail loudly when the port is taken (no SO_REUSEPORT: never share it silently)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"The gRPC server cannot listen on {address}: {exc.strerror or exc}. Choose "
            "another port or stop what holds it.",
            key="serving.grpc_port",
        ) from exc
    server = GrpcServer(InferenceServicer(predictor), sock, max_concurrent_rpcs)
    log.info("gRPC inference service bound to %s:%s", host, server.port)
    return server


class GrpcFront:
    """The gRPC front (:mod:`flywheel.serving.fronts`): listens at once (ServerLive), ready
    when the predictor is."""

    name = "grpc"

    def __init__(self, host: str, port: int, grace_s: float = 5.0) -> None:
        self.host, self.port, self.grace_s = host, port, grace_s
        self._server: GrpcServer | None = None

    def describe(self) -> str:
        return f"gRPC {self.host}:{self.port}"

    async def start(self, predictor: Predictor) -> None:
        self._server = create_grpc_server(predictor, self.host, self.port)
        await self._server.start()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=self.grace_s)


def grpc_front(settings: Settings, block: Mapping[str, Any]) -> GrpcFront | None:
    """On unless ``serving.grpc_port`` is unset; ``block`` may give ``host``/``port``."""
    port = block.get("port", settings.serving.grpc_port)
    if port is None:
        return None
    return GrpcFront(str(block.get("host", settings.serving.host)), int(port))


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
