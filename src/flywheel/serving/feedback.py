"""``POST /v1/feedback``: attach ground-truth labels to logged predictions by request id.

Labels may arrive days after the prediction; they are stored beside the prediction log
(:meth:`flywheel.serving.predlog.PredictionLog.feedback_many`), never rewriting it. This is
the input of performance monitoring.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from flywheel.serving import _wire as wire
from flywheel.serving._api import ErrorBody
from flywheel.serving.auth import credential, key_ok
from flywheel.serving.config import ServingConfig
from flywheel.serving.errors import InvalidInput, PayloadTooLarge, Unauthorized

__all__ = ["FeedbackItem", "FeedbackRequest", "FeedbackResponse", "add_feedback_routes"]


class FeedbackItem(BaseModel):
    request_id: str = Field(
        ..., min_length=1, max_length=200, description="From the prediction's answer."
    )
    label: Any = Field(..., description="The ground truth (class label or value).")


class FeedbackRequest(BaseModel):
    items: list[FeedbackItem] = Field(..., min_length=1, max_length=10_000)


class FeedbackResponse(BaseModel):
    accepted: int = Field(..., description="Labels stored.")
    unknown: list[str] = Field(..., description="Request ids with no logged prediction.")


def _check_key(request: Request, config: ServingConfig) -> None:
    key = config.api_key.encode() if config.api_key else None
    if not key_ok(credential(request.headers.raw), key):
        raise Unauthorized("A valid API key is required (X-API-Key or Authorization: Bearer).")


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


def add_feedback_routes(api: FastAPI, log: Any, config: ServingConfig) -> None:
    """Mount ``POST /v1/feedback`` on the FastAPI app, backed by the prediction log."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody} for code in (400, 401, 413, 415, 422, 500, 503)
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
        _check_key(request, config)
        payload = await _payload(request, config)
        # The log's feedback call does blocking database I/O: off the event loop.
        unknown = await run_in_threadpool(
            lambda: [i.request_id for i in payload.items if not log.feedback(i.request_id, i.label)]
        )
        return FeedbackResponse(accepted=len(payload.items) - len(unknown), unknown=unknown)
