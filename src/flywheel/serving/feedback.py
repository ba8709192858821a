"""``POST /v1/feedback``: attach ground-truth labels to logged predictions by request id.

Labels may arrive days after the prediction; they are stored beside the prediction log
(:meth:`flywheel.predlog.PredictionLog.label`), never rewriting it. This is the input of
performance monitoring. An id is the server's ``request_id`` from the answer, or the id the
client sent (``X-Request-ID``, v2/gRPC ``id``) when exactly one logged prediction carries it;
anything else is answered as unknown (:mod:`flywheel.predlog.feedback`).

Labels can poison monitoring, so the route takes its own credential: whenever any auth is
configured (``serving.api_key``, the admin token, or ``serving.labels_key``), it needs the
labels key (``X-API-Key`` or ``Authorization: Bearer``): no key is 401, any other key
(a prediction key included) is 403, and with no labels key configured it is closed (403).
With no auth configured at all it stays open, as the prediction routes are.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from starlette.concurrency import run_in_threadpool

from flywheel.serving import _wire as wire
from flywheel.serving._api import ErrorBody
from flywheel.serving.auth import credential, key_ok
from flywheel.serving.clock import DataClock
from flywheel.serving.config import ServingConfig, secret_bytes
from flywheel.serving.cycle import Calls
from flywheel.serving.errors import Forbidden, InvalidInput, PayloadTooLarge, Unauthorized

__all__ = ["FeedbackItem", "FeedbackRequest", "FeedbackResponse", "add_feedback_routes"]


_Scalar = StrictBool | StrictInt | StrictFloat | StrictStr


class FeedbackItem(BaseModel):
    request_id: str = Field(
        ...,
        min_length=1,
        max_length=200,
        description="The request_id of the prediction's answer (the server's id), or the id "
        "the client sent with it when exactly one prediction carries that id.",
    )
    # a scalar, or a list of them (one per row of a multi-row request, null for a row
    # without one); a null label (which, the latest winning, would erase a real one), an
    # object or a non-finite number is refused
    label: _Scalar | list[_Scalar | None] = Field(
        ...,
        description="The ground truth (class label or value): a string, number or boolean, "
        "or a list of them, one per row of a multi-row request.",
    )

    @field_validator("label", mode="before")
    @classmethod
    def _shape(cls, v: Any) -> Any:  # one message naming the rule, not the union's first
        values = v if isinstance(v, list) else [v]
        if v is None or any(isinstance(x, list | dict) for x in values):
            raise ValueError(
                "a label is a string, number or boolean, or a list of them (one per row of "
                f"the request; null only inside the list), got {type(v).__name__}"
            )
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            raise ValueError("a label must be a finite number, a string or a boolean")
        return v


class FeedbackRequest(BaseModel):
    items: list[FeedbackItem] = Field(..., min_length=1, max_length=10_000)


class FeedbackResponse(BaseModel):
    accepted: int = Field(..., description="Labels stored.")
    unknown: list[str] = Field(
        ...,
        description="Ids that name no logged prediction (or a client id several carry), once each.",
    )


def _check_key(request: Request, config: ServingConfig) -> None:
    """The labels key rule (module docstring)."""
    labels_key = secret_bytes(config.labels_key)
    if not (secret_bytes(config.api_key) or secret_bytes(config.admin_token) or labels_key):
        return  # no auth configured at all: open, as the prediction routes are
    if not labels_key:
        raise Forbidden(
            "Feedback is closed: serving auth is on and no labels key is set. Set "
            "FLYWHEEL_SERVING__LABELS_KEY and send it as 'X-API-Key: <key>' or "
            "'Authorization: Bearer <key>'."
        )
    given = credential(request.headers.raw)
    if given is None:
        raise Unauthorized(
            "POST /v1/feedback needs the labels key (serving.labels_key): send "
            "'X-API-Key: <key>' or 'Authorization: Bearer <key>'."
        )
    if not key_ok(given, labels_key):
        raise Forbidden(
            "This key does not open /v1/feedback: labels need the labels key "
            "(serving.labels_key); prediction keys are refused here."
        )


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's JSON schema with its ``$defs`` resolved in place (an OpenAPI body has none)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)  # type: ignore[no-any-return]


async def _payload(request: Request, config: ServingConfig) -> FeedbackRequest:
    """The body under the rules of every route with a body: content type, content coding, size
    limit, and one JSON reader (orjson, as the prediction routes)."""
    wire.media_type(request.headers.get("content-type", ""), (wire.JSON,))
    limit, chunks, size = config.max_body_bytes, [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"The body exceeds {limit} bytes (serving.max_body_bytes).", limit=limit
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "")
    data = wire.parse_json(wire.decode_content(body, encoding, limit) if encoding else body)
    try:
        return FeedbackRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(
            f"Invalid feedback: {where}: {first['msg']}.", field=where, rule=first["type"]
        ) from None


def add_feedback_routes(
    api: FastAPI,
    log: Any,
    config: ServingConfig,
    *,
    clock: DataClock | None = None,
    calls: Calls | None = None,
) -> None:
    """Mount ``POST /v1/feedback`` on the FastAPI app, backed by the prediction log; labels
    are stamped with ``clock`` (the server's data clock; default the wall clock). ``calls``
    (the predictor's request cycle) counts each answer in /metrics as the doors count
    theirs: ``requests_total{protocol="rest",route="/v1/feedback",status}`` and, for an
    error, ``errors_total{protocol="rest",kind}``."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 401, 403, 413, 415, 422, 500, 503)
    }
    body = _inline(FeedbackRequest.model_json_schema())

    @api.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses=errors,
        tags=["feedback"],
        summary="Attach ground-truth labels to earlier predictions by request id",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}}
        },
    )
    async def feedback(request: Request) -> FeedbackResponse:
        call = calls.begin("rest", "/v1/feedback") if calls is not None else None
        try:
            _check_key(request, config)
            payload = await _payload(request, config)
            # The log's label call does blocking database I/O: off the event loop.
            items = [(i.request_id, i.label) for i in payload.items]
            ts = clock.now() if clock is not None else None
            result = await run_in_threadpool(lambda: log.label(items, ts=ts))
        except Exception as exc:
            if calls is None or call is None:
                raise
            error = calls.failed(call, exc)  # an unexpected one: logged, answered as internal
            calls.end(call, error.status)
            raise error from None if error is exc else exc
        if calls is not None and call is not None:
            calls.end(call, 200)
        return FeedbackResponse(accepted=result.accepted, unknown=result.unknown)
