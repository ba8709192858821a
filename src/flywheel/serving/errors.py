"""Serving errors: subclasses of :mod:`flywheel.errors`, each with its HTTP ``status``.

Messages name the field (and row) and the rule, never echo a whole payload.
"""

from __future__ import annotations

from flywheel.errors import DataError, FlywheelError, NotFound, RegistryError

__all__ = [
    "BadRequest",
    "Forbidden",
    "IntegrityError",
    "InternalError",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "PayloadTooLarge",
    "TooManyRows",
    "Unauthorized",
    "UnsupportedMediaType",
]


class InvalidInput(DataError):
    """A request's rows break the model's input rules (names the field and row)."""

    kind = "invalid_input"


class BadRequest(DataError):
    """The body cannot be parsed (not JSON/CSV/Arrow, wrong top-level shape)."""

    status = 400
    kind = "bad_request"


class TooManyRows(InvalidInput):
    kind = "too_many_rows"


class PayloadTooLarge(DataError):
    status = 413
    kind = "payload_too_large"


class UnsupportedMediaType(DataError):
    status = 415
    kind = "unsupported_media_type"


class Unauthorized(FlywheelError):
    status = 401
    kind = "unauthorized"


class Forbidden(FlywheelError):
    status = 403
    kind = "forbidden"


class ModelNotFound(NotFound):
    kind = "model_not_found"


class ModelNotReady(FlywheelError):
    status = 503
    kind = "not_ready"


class InternalError(FlywheelError):
    """An unexpected failure, answered without its details (they go to the server log)."""

    kind = "internal"

    def __init__(self, request_id: str | None = None) -> None:
        if request_id is None:
            super().__init__("Internal error; see the server log.")
        else:
            msg = f"Internal error; see the server log for request {request_id}."
            super().__init__(msg, request_id=request_id)


class IntegrityError(RegistryError):
    """The ONNX file's sha256 differs from the one recorded at registration."""

    status = 500
    kind = "integrity"
