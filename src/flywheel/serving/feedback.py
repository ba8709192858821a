"""``POST /v1/feedback``: attach ground-truth labels to logged predictions by request id.

Labels may arrive days after the prediction; they are stored beside the prediction log
(:meth:`flywheel.serving.predlog.PredictionLog.feedback_many`), never rewriting it. This is
the input of performance monitoring.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from flywheel.serving.auth import credential, key_ok
from flywheel.serving.config import ServingConfig
from flywheel.serving.errors import Unauthorized

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


def add_feedback_routes(api: FastAPI, log: Any, config: ServingConfig) -> None:
    """Mount ``POST /v1/feedback`` on the FastAPI app, backed by the prediction log."""

    @api.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        tags=["feedback"],
        summary="Attach ground-truth labels to earlier predictions by request id",
    )
    def feedback(payload: FeedbackRequest, request: Request) -> FeedbackResponse:
        # A plain `def`: FastAPI runs it in a worker thread, off the event loop, because
        # the log's feedback call does blocking database I/O.
        _check_key(request, config)
        unknown = [
            item.request_id
            for item in payload.items
            if not log.feedback(item.request_id, item.label)
        ]
        return FeedbackResponse(accepted=len(payload.items) - len(unknown), unknown=unknown)
