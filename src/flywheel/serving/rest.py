"""REST adapter: native ``/v1``, MLflow ``/invocations``, Open Inference Protocol ``/v2``.

Two layers in one ASGI app (see docs/serving.md):

- a lean raw-ASGI front answers the hot routes itself (``POST /v1/predict``,
  ``POST /invocations``, ``POST /v2/models/{name}[/versions/{v}]/infer``, the health checks
  and ``/metrics``): path dispatch on a dict, ``orjson``, small header lists, no
  per-request framework objects. Why by hand: a framework request/response cycle costs more
  than the model itself on a one-row request (the issue's throughput goals need it);
- everything else (``/docs``, ``/openapi.json``, ``/version``, ``/v2`` metadata, admin) goes
  to a FastAPI app, which also *declares* the hot routes so the OpenAPI schema is truthful.

Error shapes: native routes and admin answer ``FlywheelError.to_dict()``
(``{"error": {"kind", "message", "details"}}``); ``/invocations`` answers MLflow's
``{"error_code", "message"}``; ``/v2`` answers ``{"error": "..."}``. No answer carries a
stack trace. Every route with a body follows one content-type rule
(:func:`flywheel.serving._wire.media_type`) and one content-coding rule
(:func:`~flywheel.serving._wire.decode_content`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from flywheel.errors import FlywheelError
from flywheel.serving import _wire as wire
from flywheel.serving.config import ServingConfig, secret_bytes
from flywheel.serving.cycle import Call, clean_client_id
from flywheel.serving.errors import PayloadTooLarge
from flywheel.serving.metrics import CONTENT_TYPE as METRICS_TYPE
from flywheel.serving.predictor import Predictor
from flywheel.serving.types import json_array

if TYPE_CHECKING:
    from flywheel.config import Settings
    from flywheel.serving.types import PredictionSink

__all__ = ["RestFront", "app_from_env", "create_app"]

log = logging.getLogger("flywheel.serving")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_TEXT = b"text/plain; charset=utf-8"
_MLFLOW_CODES = {  # MLflow's error codes (mlflow.protos.databricks_pb2.ErrorCode)
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "RESOURCE_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    422: "BAD_REQUEST",
    503: "TEMPORARILY_UNAVAILABLE",
}
# Body types each hot route takes (the rule itself: wire.media_type).
V1_TYPES = (wire.JSON, *sorted(wire.ARROW_TYPES), *sorted(wire.PARQUET_TYPES))
MLFLOW_TYPES = (wire.JSON, wire.CSV, *sorted(wire.PARQUET_TYPES))
V2_TYPES = (wire.JSON, wire.BINARY)


class _Disconnected(Exception):
    pass


class _Head:
    """What the hot routes read from the request headers, in one pass."""

    __slots__ = ("cred", "ctype", "encoding", "header_length", "length", "rid", "route")

    def __init__(self) -> None:
        self.ctype, self.encoding = "", ""
        self.length = self.header_length = -1  # -1: no such header
        self.rid: bytes | None = None  # the client's X-Request-ID (cleaned by the cycle)
        self.cred: bytes | None = None
        self.route: str | None = None  # a rollout's sticky header (when its plan names one)


Work = Callable[[str, bytes, "_Head", Call], Awaitable["bytes | tuple[bytes, int]"]]


class RestFront:
    """The raw-ASGI front; unknown routes fall through to ``fallback`` (the FastAPI app)."""

    def __init__(
        self, predictor: Predictor, config: ServingConfig, fallback: Callable[[], Any]
    ) -> None:
        """``fallback`` builds the FastAPI app; it is built off the hot path (FastAPI's
        import alone is ~0.3 s of a ~1 s cold start): in a thread once the models are
        loaded, or on the first request that needs it, whichever comes first."""
        self.predictor = predictor
        self.config = config
        self.metrics = predictor.metrics
        self._build_fallback = fallback
        self._fallback: Any = None
        self._fallback_lock = asyncio.Lock()
        self._warming: asyncio.Task[Any] | None = None
        self.startup_error: BaseException | None = None  # why the lifespan start-up failed
        self._exact: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/predict"): self._v1_predict,
            ("POST", "/invocations"): self._invocations,
            ("GET", "/ping"): self._ping,
            ("GET", "/health"): self._ping,
            ("GET", "/v2/health/live"): self._live,
            ("GET", "/v2/health/ready"): self._ready,
            ("GET", "/metrics"): self._metrics,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            handler = self._exact.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
                return
            path = scope["path"]
            if (
                scope["method"] == "POST"
                and path.startswith("/v2/models/")
                and path.endswith("/infer")
            ):
                await self._v2_infer(scope, receive, send)
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        elif kind == "websocket" and scope["path"] == "/v1/stream":
            from flywheel.serving.ws import stream_endpoint

            key = secret_bytes(self.config.api_key)
            await stream_endpoint(
                scope, receive, send, self.predictor, api_key=key.decode() if key else None
            )
            return
        await self.fallback(scope, receive, send)

    async def fallback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Everything the raw front does not answer: the FastAPI app."""
        app = self._fallback or await self._api()
        await app(scope, receive, send)

    async def _api(self) -> Any:
        async with self._fallback_lock:
            if self._fallback is None:
                self._fallback = await asyncio.to_thread(self._build_fallback)
                gc.collect()
                gc.freeze()
        return self._fallback

    # ------------------------------------------------------------------ plumbing
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.predictor.start()
                except Exception as exc:  # report start-up failure to the server
                    self.startup_error = exc  # re-raised by run_server once uvicorn stops
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Move everything loaded so far (MLflow, scikit-learn, the models) out of the
                # collector's reach: full collections then stay short (p99 latency).
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
                self._warming = asyncio.create_task(self._api())
            elif message["type"] == "lifespan.shutdown":
                await self.predictor.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _reply(
        send: Send,
        status: int,
        body: bytes,
        ctype: bytes = _JSON,
        request_id: str | None = None,
        header_length: int = -1,
        error_kind: str | None = None,
        version: str | None = None,
    ) -> None:
        headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]
        if request_id is not None:
            headers.append((b"x-request-id", request_id.encode()))
        if version is not None:  # which version answered (a rollout routes between two)
            headers.append((b"flywheel-model-version", version.encode()))
        if error_kind is not None:  # the same kind on every protocol (gRPC: trailing metadata)
            headers.append((b"flywheel-error-kind", error_kind.encode()))
        if header_length >= 0:  # the v2 binary tensor data extension
            headers.append((b"inference-header-content-length", b"%d" % header_length))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _headers(scope: Scope) -> _Head:
        head = _Head()
        for key, value in scope["headers"]:
            if key == b"content-type":
                head.ctype = value.decode("latin-1")
            elif key == b"content-length":
                head.length = int(value) if value.isdigit() else -1
            elif key == b"x-request-id":
                head.rid = value
            elif key == b"x-api-key":
                head.cred = value
            elif key == b"authorization" and value[:7].lower() == b"bearer ":
                head.cred = value[7:]
            elif key == b"content-encoding":
                head.encoding = value.decode("latin-1")
            elif key == b"inference-header-content-length":  # -2: not a length (refused)
                head.header_length = int(value) if value.isdigit() else -2
        return head

    async def _body(self, receive: Receive, length: int) -> bytes:
        limit = self.config.max_body_bytes
        if length > limit:
            raise PayloadTooLarge(
                f"The body has {length} bytes; the limit is {limit} "
                "(serving.max_body_bytes). Send fewer rows per request.",
                limit=limit,
            )
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        body = message.get("body", b"")
        chunks, size = [body], len(body)
        while True:  # no (or a false) Content-Length: the size is checked while reading
            if size > limit:
                raise PayloadTooLarge(
                    f"The body exceeds {limit} bytes (serving.max_body_bytes).", limit=limit
                )
            if not message.get("more_body"):
                return body if len(chunks) == 1 else b"".join(chunks)
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        protocol: str,
        route: str,
        accepted: tuple[str, ...],
        work: Work,
        error: Callable[[FlywheelError], tuple[int, bytes]],
    ) -> None:
        """The HTTP half of the request cycle (:mod:`flywheel.serving.cycle` does id, auth,
        error mapping and metrics for every protocol): headers, content type, body, work.
        ``work(mime, body, head, call)`` answers JSON bytes, or (body, JSON header length)
        for the v2 binary tensor data extension. ``X-Request-ID`` echoes the client's id
        when it sent one, else the server's."""
        calls = self.predictor.calls
        head = self._headers(scope)
        sticky = self.predictor.route_header
        if sticky is not None:
            head.route = next(
                (v.decode("latin-1") for k, v in scope["headers"] if k == sticky), None
            )
        call = calls.begin(protocol, route, head.rid)
        status, answer_type, header_length, kind = 200, _JSON, -1, None
        try:
            if calls.auth_required:
                calls.authorize(head.cred)
            mime = wire.media_type(head.ctype, accepted)
            body = await self._body(receive, head.length)
            if head.encoding:
                body = wire.decode_content(body, head.encoding, self.config.max_body_bytes)
            done = await work(mime, body, head, call)
            if isinstance(done, tuple):
                answer, header_length = done
                answer_type = _BINARY if header_length >= 0 else _JSON
            else:
                answer = done
        except _Disconnected:
            return
        except Exception as exc:
            failure = calls.failed(call, exc)
            status, answer = error(failure)
            kind = failure.kind
        await self._reply(
            send, status, answer, answer_type, call.echo_id, header_length, kind, call.version
        )
        calls.end(call, status)

    # ------------------------------------------------------------------ native
    async def _v1_predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(
            scope, receive, send, "rest", "/v1/predict", V1_TYPES, self._v1_work, _native_error
        )

    async def _v1_work(self, mime: str, body: bytes, head: _Head, call: Call) -> bytes:
        data = (
            wire.parse_json(body)
            if mime == wire.JSON
            else {"columns": wire.read_arrow(body, mime)}  # Arrow IPC or Parquet
        )
        request = wire.native_request(data, request_id=call.request_id, client_id=call.client_id)
        request.route_key = head.route
        response = await self.predictor.predict(request)
        call.version = response.version
        return wire.encode_native(response)

    # ------------------------------------------------------------------ MLflow
    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(
            scope,
            receive,
            send,
            "mlflow",
            "/invocations",
            MLFLOW_TYPES,
            self._mlflow_work,
            _mlflow_error,
        )

    async def _mlflow_work(self, mime: str, body: bytes, head: _Head, call: Call) -> bytes:
        if mime == wire.JSON:
            request = wire.mlflow_request(wire.parse_json(body), self.predictor.model().schema)
        else:
            table = wire.read_csv(body) if mime == wire.CSV else wire.read_arrow(body, mime)
            request = wire.native_request({"columns": table}, "mlflow")
            request.extra_fields = "ignore"
        request.request_id, request.client_id = call.request_id, call.client_id
        request.route_key = head.route
        response = await self.predictor.predict(request)
        call.version = response.version  # MLflow's body has no version: a header says it
        return orjson.dumps({"predictions": json_array(response.labels)}, option=wire.JSON_OPTS)

    # ------------------------------------------------------------------ Open Inference v2
    async def _v2_infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].split("/")  # ['', 'v2', 'models', name, ('versions', v,) 'infer']
        if len(parts) == 5:
            name, version = parts[3], None
        elif len(parts) == 7 and parts[4] == "versions":
            name, version = parts[3], parts[5]
        else:
            await self.fallback(scope, receive, send)
            return

        async def work(mime: str, body: bytes, head: _Head, call: Call) -> tuple[bytes, int]:
            model = self.predictor.model(name, version)
            request, outputs = wire.v2_request(
                body,
                head.header_length,
                model.schema,
                model.output_names,
                name,
                self.predictor.check_rows,
            )
            request.model, request.version = name, version
            request.request_id = call.request_id
            # the body's id first (echoed as the answer's "id", as the protocol asks)
            request.client_id = clean_client_id(request.client_id) or call.client_id
            request.route_key = head.route
            response = await self.predictor.predict(request)
            call.version = response.version
            return wire.encode_v2(response, outputs)

        await self._serve(scope, receive, send, "v2", "/v2/models/infer", V2_TYPES, work, _v2_error)

    # ------------------------------------------------------------------ cheap GETs
    async def _ping(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 200 if self.predictor.ready else 503
        await self._reply(send, status, b"\n", _TEXT)

    async def _live(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._reply(send, 200, b'{"live":true}')

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready = self.predictor.ready
        await self._reply(
            send, 200 if ready else 503, b'{"ready":%s}' % (b"true" if ready else b"false")
        )

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._reply(send, 200, self.metrics.render(), METRICS_TYPE.encode())


def _native_error(exc: FlywheelError) -> tuple[int, bytes]:
    return exc.status, orjson.dumps(exc.to_dict(), default=str)


def _mlflow_error(exc: FlywheelError) -> tuple[int, bytes]:
    """MLflow answers 400 for any input it cannot score (schema errors included); a body or a
    request over a limit says so in its code."""
    status = 400 if exc.status == 422 else exc.status
    code = _MLFLOW_CODES.get(status, "INTERNAL_ERROR")
    if exc.kind in ("payload_too_large", "too_many_rows"):
        code = "RESOURCE_LIMIT_EXCEEDED"
    return status, orjson.dumps({"error_code": code, "message": exc.message})


def _v2_error(exc: FlywheelError) -> tuple[int, bytes]:
    return exc.status, orjson.dumps({"error": exc.message})


# --------------------------------------------------------------------------- building


def create_app(
    predictor: Predictor | None = None,
    *,
    settings: Settings | None = None,
    config: ServingConfig | None = None,
    sink: PredictionSink | None = None,
) -> RestFront:
    """The ASGI app: the raw front over the FastAPI app. Builds a registry-backed
    :class:`Predictor` from ``settings`` when none is given."""
    if predictor is None:
        if settings is None:
            from flywheel.config import load_settings

            settings = load_settings()
        config = config or ServingConfig.from_settings(settings)
        predictor = Predictor.from_settings(settings, config, sink=sink)
    config = config or predictor.config
    served = predictor

    def build() -> Any:
        from flywheel.serving._api import build_api

        api = build_api(served, config)
        if sink is not None and hasattr(sink, "feedback"):
            from flywheel.serving.feedback import add_feedback_routes

            add_feedback_routes(api, sink, config, clock=served.clock, calls=served.calls)
        return api

    return RestFront(predictor, config, build)


def app_from_env() -> RestFront:
    """Factory for ``uvicorn flywheel.serving.rest:app_from_env --factory --workers N``
    (settings from ``FLYWHEEL_*``; each worker process loads its own copy of the models)."""
    return create_app()
