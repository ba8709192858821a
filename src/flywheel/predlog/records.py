"""What the prediction log stores: the record, the encoded row, JSON encoding, the error.

A row is the record encoded once, on the caller's thread: two JSON strings (``inputs``,
``outputs``, made by :func:`encode_json`) and scalars, in :data:`Row` order. The serving
core builds rows itself; other producers append :class:`PredictionRecord` objects and the
log encodes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from flywheel.errors import DataError, FlywheelError

__all__ = [
    "FeedbackRow",
    "PredictionLogError",
    "PredictionRecord",
    "Row",
    "encode_json",
    "encode_label",
    "encode_record",
]

log = logging.getLogger("flywheel.predlog")

# String keys first: OPT_NON_STR_KEYS takes orjson's slower dict path (0.55 -> 0.75 µs for a
# 14-feature record), and only a caller's own inputs can have other keys.
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
_ORJSON_ANY_KEYS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

# (request_id, ts, model, version, protocol, inputs_json, outputs_json, latency_ms, client_id,
#  role)
# request_id is the server's own id; client_id the id the client sent, if any; role the
# version's part in a rollout ("champion", "challenger", "shadow"), None when none is active.
# (request_id, role) is the log's key: a request scored by a champion and a shadow is 2 rows.
Row = tuple[str, float, str, str, str, str, str, float, str | None, str | None]
FeedbackRow = tuple[str, str, float]  # (server request_id, label_json, received_at)


class PredictionLogError(FlywheelError):
    """The prediction log's database could not be reached or written in time."""

    exit_code = 6
    status = 503
    kind = "prediction_log"


@dataclass(slots=True)
class PredictionRecord:
    request_id: str  # the server's id for the request: the log's key
    ts: float  # unix seconds
    model: str
    version: str
    protocol: str  # "rest" | "mlflow" | "v2" | "grpc" | "ws" | "mqtt" | "python"
    inputs: Any  # JSON-able; ``append`` encodes it with orjson
    outputs: Any
    latency_ms: float
    client_id: str | None = None  # the id the client sent (X-Request-ID, v2/gRPC ``id``)
    role: str | None = None  # "champion" | "challenger" | "shadow"; None: no rollout active


def _default(obj: Any) -> Any:
    """orjson fallback for values it does not encode natively."""
    if hasattr(obj, "tolist"):  # numpy arrays orjson declined (object dtype, e.g. string
        return obj.tolist()  # columns from gRPC; non-contiguous views) and numpy scalars
    if hasattr(obj, "model_dump"):  # pydantic model
        return obj.model_dump(mode="json")
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def encode_json(value: Any, request_id: str, field: str) -> str:
    """``value`` as JSON text for a row's ``inputs``/``outputs`` (numpy included); a value
    orjson cannot encode becomes ``{"$unencodable": repr}`` (logged), never an error."""
    try:
        return orjson.dumps(value, default=_default, option=_ORJSON_OPTS).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return orjson.dumps(value, default=_default, option=_ORJSON_ANY_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        log.error(
            "prediction %s: %s is not JSON-serialisable (%s); stored as its repr",
            request_id,
            field,
            exc,
        )
        return orjson.dumps({"$unencodable": repr(value)[:2000]}).decode()


def encode_label(request_id: str, label: Any) -> str:
    """A feedback label as JSON text; :class:`DataError` when it cannot be encoded."""
    try:
        return orjson.dumps(label, default=_default, option=_ORJSON_ANY_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise DataError(
            f"The label for request {request_id!r} is not JSON-serialisable ({exc}); send "
            "a number, string, bool, list or object.",
            request_id=request_id,
        ) from exc


def _text(value: Any) -> str:
    return value if type(value) is str else ("" if value is None else str(value))


def encode_record(r: PredictionRecord) -> Row:
    """The row of ``r`` (raises when ``ts`` or ``latency_ms`` is not a number)."""
    rid = _text(r.request_id)
    client, role = r.client_id, r.role
    return (
        rid,
        float(r.ts),
        _text(r.model),
        _text(r.version),
        _text(r.protocol),
        encode_json(r.inputs, rid, "inputs"),
        encode_json(r.outputs, rid, "outputs"),
        float(r.latency_ms),
        None if client is None else _text(client),
        None if role is None else _text(role),
    )
