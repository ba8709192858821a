"""One request cycle for every front door: id, auth, error mapping, metrics.

Every protocol (REST, MLflow, v2 REST, gRPC, WebSocket, MQTT) runs the same steps around
:meth:`flywheel.serving.predictor.Predictor.predict`, so they live here once::

    call = predictor.calls.begin("grpc", "ModelInfer", client_id=request.id)
    try:
        predictor.calls.authorize(credential)          # Unauthorized when the key is wrong
        response = await predictor.predict(PredictRequest(..., request_id=call.request_id,
                                                          client_id=call.client_id))
    except Exception as exc:
        error = predictor.calls.failed(call, exc)      # a FlywheelError; logs the unexpected
        ...map error.kind / error.status to the protocol...
    predictor.calls.end(call, status)

Request ids: the server gives every request its own id (:func:`new_request_id`, a random
per-process prefix and a counter: unique across replicas and restarts, ~10x cheaper than
uuid4). It is the prediction log's key and the id ``/v1/feedback`` takes. The id a client
sends (``X-Request-ID``, the v2/gRPC ``id``, the MQTT correlation data) is kept beside it as
``client_id`` and echoed back, but never keys anything: a client reusing its ids cannot
hide or overwrite another answer's log row.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flywheel.errors import FlywheelError
from flywheel.serving.auth import key_ok
from flywheel.serving.config import secret_bytes
from flywheel.serving.errors import InternalError, Unauthorized
from flywheel.serving.metrics import ServingMetrics

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = ["Call", "Calls", "clean_client_id", "new_request_id"]

log = logging.getLogger("flywheel.serving")

_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)
CLIENT_ID_MAX = 128


def new_request_id() -> str:
    """The server's id for one request (24 hex characters)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def clean_client_id(value: str | bytes | None) -> str | None:
    """A client's id as kept and echoed: printable ASCII, at most 128 characters; anything
    else (or empty) is dropped rather than refused, as an id is only a courtesy."""
    if not value:
        return None
    if isinstance(value, bytes):
        if not value.isascii():
            return None
        value = value.decode("ascii")
    if len(value) > CLIENT_ID_MAX or not value.isprintable() or not value.isascii():
        return None
    return value


@dataclass(slots=True)
class Call:
    """One request in flight: which door, the server's id, the client's id, when it began."""

    protocol: str
    route: str
    request_id: str
    client_id: str | None
    started: float
    version: str | None = None  # the version that answered (set by fronts that echo it)

    @property
    def echo_id(self) -> str:
        """The id to echo to the client: theirs when they sent one, else the server's."""
        return self.client_id or self.request_id


class Calls:
    """The request cycle shared by the fronts (one per predictor: ``predictor.calls``)."""

    def __init__(self, metrics: ServingMetrics, api_key: SecretStr | str | None) -> None:
        self.metrics = metrics
        self._key = secret_bytes(api_key)

    @property
    def auth_required(self) -> bool:
        return self._key is not None

    def begin(self, protocol: str, route: str, client_id: str | bytes | None = None) -> Call:
        return Call(
            protocol, route, new_request_id(), clean_client_id(client_id), time.perf_counter()
        )

    def authorize(self, credential: bytes | None) -> None:
        """Raise :class:`Unauthorized` unless no key is configured or ``credential`` is it."""
        if not key_ok(credential, self._key):
            raise Unauthorized(
                "A valid API key is required: send 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>'."
            )

    def failed(self, call: Call, exc: BaseException) -> FlywheelError:
        """The error to answer with: ``exc`` itself when it is a FlywheelError, else an
        :class:`InternalError` naming the request id (the traceback goes to the log only).
        Counts the error under its kind."""
        if isinstance(exc, FlywheelError):
            error = exc
        else:
            log.error(
                "unhandled error",
                exc_info=exc,
                extra={
                    "request_id": call.request_id,
                    "client_id": call.client_id,
                    "route": call.route,
                },
            )
            error = InternalError(call.request_id)
        self.metrics.error(call.protocol, error.kind)
        return error

    def end(self, call: Call, status: int) -> None:
        self.metrics.request(call.protocol, call.route, status, time.perf_counter() - call.started)
