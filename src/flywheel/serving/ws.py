"""WebSocket adapter: ``/v1/stream``, many predictions over one open connection.

A raw ASGI websocket handler (no framework per message): the REST front routes
``scope["type"] == "websocket"`` and path ``/v1/stream`` to :func:`stream_endpoint`;
:func:`websocket_app` wraps it as a standalone ASGI app (tests, embedding).

Messages (text or binary frames holding JSON; see docs/websocket.md)::

    -> {"id": "a1", "record": {...}}                               one record
    -> {"items": [{"id": "a1", "record": {...}}, ...], "model": "churn"}   many, one call
    <- {"id": "a1", "prediction": 1, "probabilities": [0.2, 0.8], "classes": [0, 1],
        "model": "churn", "version": "3"}
    <- {"id": "a1" | null, "error": {"kind", "message", "details"}}

Every id gets exactly one frame (answer or error), possibly out of order. A bad message
never closes the socket. Each record of a message is its own request (its own request id,
prediction log row, rollout routing by its id, and verdict): the items are submitted
together, so the micro-batcher scores them in few model calls (``max_batch_rows`` rows each).

Flow control: at most ``max_in_flight`` records per connection are being scored or
waiting for their answer to be written. When the bound is reached the handler stops
calling ``receive()``; the ASGI server then stops reading the socket (uvicorn's websocket
protocols hold a small bounded queue), so TCP pushes back on a fast sender instead of the
server buffering without bound. A client that does not read its answers is not pushed back:
uvicorn's ``send`` does not wait for the peer, so its unread answers wait in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from flywheel.serving._wire import loads as loads_json
from flywheel.serving.auth import credential, key_ok
from flywheel.serving.predictor import Predictor
from flywheel.serving.types import PredictRequest, PredictResponse

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "stream_endpoint", "websocket_app"]

log = logging.getLogger("flywheel.serving.ws")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_MAX_IN_FLIGHT = 1024  # records per connection
_MAX_ID_CHARS = 128
_POLICY_VIOLATION = 1008
_STATUS = {"bad_request": 400, "payload_too_large": 413}  # a refused message's, in /metrics


@dataclass(slots=True)
class _Item:
    id: str | int
    record: dict[str, Any]


class _BadMessage(Exception):
    def __init__(
        self, message: str, kind: str = "bad_request", msg_id: Any = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.message, self.kind, self.msg_id, self.details = message, kind, msg_id, details


def _frame(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "websocket.send",
        "text": orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
    }


def _error(
    msg_id: Any, kind: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"id": msg_id, "error": {"kind": kind, "message": message, "details": details or {}}}


def _check_id(value: Any, where: str) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _BadMessage(
            f"{where}: 'id' is required and must be a string or an integer "
            f"(got {type(value).__name__}). Give every record its own id.",
            field="id",
        )
    if isinstance(value, str) and not 0 < len(value) <= _MAX_ID_CHARS:
        raise _BadMessage(f"{where}: 'id' must be 1 to {_MAX_ID_CHARS} characters.", field="id")
    return value


def _parse_item(raw: Any, where: str) -> _Item:
    if not isinstance(raw, dict):
        raise _BadMessage(
            f'{where} must be an object {{"id": ..., "record": {{...}}}}.', field="items"
        )
    item_id = _check_id(raw.get("id"), where)
    record = raw.get("record")
    if not isinstance(record, dict):
        raise _BadMessage(
            f"{where}: 'record' must be an object of feature values (got {type(record).__name__}).",
            msg_id=item_id,
            field="record",
        )
    return _Item(item_id, record)


class _Stream:
    """One connection's state: in-flight accounting, the send lock, scoring tasks."""

    def __init__(
        self,
        send: Send,
        predictor: Predictor,
        max_in_flight: int,
        max_message_bytes: int,
        max_rows: int,
    ) -> None:
        self.send, self.predictor = send, predictor
        self.max_in_flight, self.max_message_bytes = max_in_flight, max_message_bytes
        self.max_rows = max_rows
        self.in_flight = 0
        self.closed = False
        self._room = asyncio.Condition()
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ reading
    async def wait_below_bound(self) -> None:
        async with self._room:
            await self._room.wait_for(lambda: self.in_flight < self.max_in_flight)

    async def handle(self, message: dict[str, Any]) -> None:
        """One received frame: parse, wait for room, dispatch (errors answered inline)."""
        data = message.get("text")
        raw: str | bytes | None = data if data is not None else message.get("bytes")
        started = time.perf_counter()
        try:
            model, version, items, errors = self._parse(raw)
        except _BadMessage as exc:
            await self._refuse([_error(exc.msg_id, exc.kind, exc.message, exc.details)], started)
            return
        if errors:
            await self._refuse(errors, started)
        if not items:
            return
        if len(items) > self.max_in_flight:
            await self._refuse(
                [
                    _error(
                        i.id,
                        "bad_request",
                        f"The message holds {len(items)} records; the limit per "
                        f"message is {self.max_in_flight}. Split it.",
                    )
                    for i in items
                ],
                started,
            )
            return
        async with self._room:
            await self._room.wait_for(lambda: self.in_flight + len(items) <= self.max_in_flight)
            self.in_flight += len(items)
        for start in range(0, len(items), self.max_rows):
            self._spawn(self._score(items[start : start + self.max_rows], model, version))

    def _parse(
        self, raw: str | bytes | None
    ) -> tuple[str | None, str | None, list[_Item], list[dict[str, Any]]]:
        if raw is None:
            raise _BadMessage("Empty frame; send a JSON object.", rule="json")
        if len(raw) > self.max_message_bytes:
            raise _BadMessage(
                f"The message has {len(raw)} bytes; the limit is "
                f"{self.max_message_bytes}. Send fewer records per message.",
                kind="payload_too_large",
                limit=self.max_message_bytes,
            )
        try:
            data = loads_json(raw)
        except orjson.JSONDecodeError as exc:
            raise _BadMessage(
                f"The message is not valid JSON (at byte {exc.pos}). Send a JSON object.",
                rule="json",
            ) from None
        if not isinstance(data, dict):
            raise _BadMessage(
                'The message must be a JSON object: {"id": ..., "record": '
                '{...}} or {"items": [...]}.',
                rule="shape",
            )
        model, version = data.get("model"), data.get("version")
        if model is not None and not isinstance(model, str):
            raise _BadMessage("'model' must be a string (a served model name).", field="model")
        version = None if version is None else str(version)
        if "items" not in data:
            return model, version, [_parse_item(data, "The message")], []
        raw_items = data["items"]
        if not isinstance(raw_items, list):
            raise _BadMessage(
                '\'items\' must be a list of {"id": ..., "record": {...}}.', field="items"
            )
        items, errors = [], []
        for n, raw_item in enumerate(raw_items):
            try:
                items.append(_parse_item(raw_item, f"items[{n}]"))
            except _BadMessage as exc:
                msg_id = exc.msg_id
                if msg_id is None and isinstance(raw_item, dict):
                    with contextlib.suppress(_BadMessage):
                        msg_id = _check_id(raw_item.get("id"), "")
                errors.append(_error(msg_id, exc.kind, exc.message, exc.details))
        return model, version, items, errors

    async def _refuse(self, frames: list[dict[str, Any]], started: float) -> None:
        """Answer error frames the message itself earned (not a record's scoring), each
        counted in /metrics as the other doors count a refused request."""
        metrics, seconds = self.predictor.calls.metrics, time.perf_counter() - started
        for frame in frames:
            kind = frame["error"]["kind"]
            metrics.error("ws", kind)
            metrics.request("ws", "/v1/stream", _STATUS.get(kind, 400), seconds)
        await self._write(frames)

    # ------------------------------------------------------------------ scoring
    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(self, items: list[_Item], model: str | None, version: str | None) -> None:
        try:
            # each record its own request, submitted together: the micro-batcher joins them
            frames = await asyncio.gather(*(self._predict(i, model, version) for i in items))
            await self._write(frames)
        finally:
            async with self._room:
                self.in_flight -= len(items)
                self._room.notify_all()

    async def _predict(self, item: _Item, model: str | None, version: str | None) -> dict[str, Any]:
        calls = self.predictor.calls
        call = calls.begin("ws", "/v1/stream", str(item.id))
        request = PredictRequest(
            records=[item.record],
            model=model,
            version=version,
            request_id=call.request_id,
            client_id=call.client_id,
            protocol="ws",
        )
        try:
            response = await self.predictor.predict(request)
        except Exception as exc:  # never let one request kill the connection; no stack trace out
            error = calls.failed(call, exc)
            calls.end(call, error.status)
            return _error(item.id, error.kind, error.message, error.details)
        calls.end(call, 200)
        return _answer(item, response)

    # ------------------------------------------------------------------ writing
    async def _write(self, frames: list[dict[str, Any]]) -> None:
        if self.closed:
            return
        async with self._send_lock:
            try:
                for data in frames:
                    await self.send(_frame(data))
            except Exception:  # the peer went away; the reader sees the disconnect
                self.closed = True

    async def drain(self) -> None:
        """Cancel what is still running (the client left; answers cannot be delivered)."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _answer(item: _Item, response: PredictResponse) -> dict[str, Any]:
    proba = response.probabilities_list()
    answer: dict[str, Any] = {
        "id": item.id,
        "prediction": response.labels_list()[0],
        "probabilities": None if proba is None else proba[0],
    }
    if proba is not None:
        answer["classes"] = response.classes
    answer["model"], answer["version"] = response.model, response.version
    answer["request_id"] = response.request_id  # the server's id (for /v1/feedback)
    return answer


async def stream_endpoint(
    scope: Scope,
    receive: Receive,
    send: Send,
    predictor: Predictor,
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    max_message_bytes: int | None = None,
    api_key: str | None = None,
) -> None:
    """Serve one ``/v1/stream`` websocket connection until the client leaves.

    ``max_in_flight``: records per connection being scored or awaiting their answer;
    ``max_message_bytes``: defaults to ``serving.max_body_bytes``; ``api_key``: when set,
    the handshake must carry ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``
    (else it is refused with close code 1008, which servers answer as HTTP 403).
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}.")
    config = predictor.config
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    key = None if api_key is None else api_key.encode()
    if not key_ok(credential(scope.get("headers", ())), key):
        await send(
            {
                "type": "websocket.close",
                "code": _POLICY_VIOLATION,
                "reason": "A valid API key is required (X-API-Key).",
            }
        )
        return
    await send({"type": "websocket.accept"})
    stream = _Stream(
        send,
        predictor,
        max_in_flight,
        max_message_bytes or config.max_body_bytes,
        max(1, config.max_rows_per_request),
    )
    scope.setdefault("state", {})["flywheel_stream"] = stream  # observable in tests
    try:
        while True:
            await stream.wait_below_bound()  # bound reached: stop reading (backpressure)
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            if message["type"] == "websocket.receive":
                await stream.handle(message)
    finally:
        await stream.drain()


def websocket_app(
    predictor: Predictor, *, path: str = "/v1/stream", manage: bool = True, **options: Any
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A standalone ASGI app serving :func:`stream_endpoint` at ``path``.

    With ``manage`` it also answers the lifespan protocol (``predictor.start()`` /
    ``close()``). Other paths are refused (websocket close 1008 / HTTP 404).
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and scope["path"] == path:
            await stream_endpoint(scope, receive, send, predictor, **options)
        elif kind == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
        elif kind == "lifespan":
            await _lifespan(receive, send, predictor if manage else None)
        else:
            body = b'{"error":{"kind":"not_found","message":"Not found.","details":{}}}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})

    return app


async def _lifespan(receive: Receive, send: Send, predictor: Predictor | None) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if predictor is not None:
                await predictor.start()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if predictor is not None:
                await predictor.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
