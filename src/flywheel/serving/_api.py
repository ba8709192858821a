"""The FastAPI half of the REST app: docs, metadata, admin; declares the hot routes for the
OpenAPI schema (they are answered by :class:`flywheel.serving.rest.RestFront`)."""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import flywheel
from flywheel.errors import FlywheelError
from flywheel.serving import _tensors as tensors
from flywheel.serving import _wire as wire
from flywheel.serving.config import ServingConfig, secret_bytes
from flywheel.serving.errors import (
    BadRequest,
    Forbidden,
    InternalError,
    InvalidInput,
    ModelNotReady,
    Unauthorized,
    UnsupportedMediaType,
)
from flywheel.serving.predictor import Predictor

__all__ = ["build_api", "install_errors"]

log = logging.getLogger("flywheel.serving")


# --------------------------------------------------------------------------- schema models


class ErrorDetail(BaseModel):
    kind: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    """The one error shape of every native route."""

    error: ErrorDetail


class V1Records(BaseModel):
    """Also accepted: one record object, a bare list of records, {"columns": {feature:
    [values]}}, or an Arrow IPC / Parquet body (see docs/serving.md)."""

    records: list[dict[str, Any]] = Field(description="Rows as {feature: value} objects.")
    model: str | None = Field(None, description="Served model name (default: the first).")
    version: str | int | None = Field(None, description="Must equal the served version if given.")


class V1Response(BaseModel):
    model: str
    version: str
    request_id: str = Field(
        description="The server's id for this request (the prediction log's key; "
        "POST /v1/feedback takes it)."
    )
    client_id: str | None = Field(
        None, description="The X-Request-ID the client sent, when it sent one (echoed)."
    )
    predictions: list[Any] = Field(description="Class labels, or values for regression.")
    probabilities: list[list[float]] | None = Field(None, description="[rows][classes].")
    classes: list[Any] | None = None


class DataframeSplit(BaseModel):
    columns: list[str]
    data: list[list[Any]]
    index: list[Any] | None = None


class MlflowSplit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataframe_split: DataframeSplit
    params: dict[str, Any] | None = None


class MlflowRecords(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataframe_records: list[dict[str, Any]]
    params: dict[str, Any] | None = None


class MlflowInstances(BaseModel):
    """Also accepted: an object of columns, or rows of values in model order."""

    model_config = ConfigDict(extra="forbid")
    instances: list[dict[str, Any]]
    params: dict[str, Any] | None = None


class MlflowInputs(BaseModel):
    """Also accepted: an object of columns, or rows of values in model order."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[dict[str, Any]]
    params: dict[str, Any] | None = None


class MlflowResponse(BaseModel):
    predictions: list[Any]


class MlflowError(BaseModel):
    error_code: str
    message: str


Scalar = str | int | float | bool
Datatype = Literal[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class V2Tensor(BaseModel):
    """An input tensor. Its ``data`` is flat or nested one level (rows), row-major, and holds
    prod(shape) values; or, with the binary tensor data extension, ``data`` is left out and
    ``parameters.binary_data_size`` gives its bytes after the JSON header."""

    name: str
    shape: list[int]
    datatype: Datatype
    data: list[Any]
    parameters: dict[str, Scalar] | None = None


class V2RequestedOutput(BaseModel):
    name: str = Field(description="label, or probabilities (classifiers).")
    parameters: dict[str, Scalar] | None = Field(
        None, description="binary_data: true answers the tensor as binary data."
    )


class V2InferRequest(BaseModel):
    """Open Inference Protocol v2 infer request. Also accepted: the binary tensor data
    extension (an Inference-Header-Content-Length header, the JSON, then the tensors' bytes)."""

    id: str | None = None
    parameters: dict[str, Scalar] | None = Field(
        None, description="binary_data_output: true answers every output as binary data."
    )
    inputs: list[V2Tensor] = Field(
        min_length=1, description="One tensor per feature, or one [n, features]."
    )
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    data: list[Any] | None = Field(None, description="Absent when sent as binary data.")
    parameters: dict[str, Scalar] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[V2OutputTensor]


class V2Error(BaseModel):
    error: str


class PinBody(BaseModel):
    version: str | None = Field(description="Version to serve; null follows the alias again.")
    model: str | None = None


class ReloadBody(BaseModel):
    model: str | None = None


class ClockBody(BaseModel):
    at: float | None = Field(
        description="The data clock's time now (epoch seconds); null: the wall clock again."
    )


_NATIVE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 500, 503)
}
_V2_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V2Error} for code in (400, 401, 404, 413, 415, 422, 500, 503)
}
_MLFLOW_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": MlflowError} for code in (400, 401, 413, 415, 500, 503)
}
_V2_INFER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON; with outputs asked for as binary data, the binary tensor data "
        "extension: the JSON header (Inference-Header-Content-Length bytes), then the bytes.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **_V2_ERRORS,
}


def _front_only() -> FlywheelError:
    return FlywheelError("This route is answered by the REST front (flywheel.serving.rest).")


# --------------------------------------------------------------------------- app


def _error_response(
    request: Request, exc: FlywheelError, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": exc.message} if request.url.path.startswith("/v2") else exc.to_dict()
    # the kind on every error answer, as the raw front's (gRPC: trailing metadata)
    headers = {**(headers or {}), "flywheel-error-kind": exc.kind}
    return JSONResponse(body, status_code=exc.status, headers=headers)


class _AdminBodies:
    """The body rule (``wire.media_type``) on the ``/admin/*`` routes FastAPI answers: a
    body without Content-Type is read as JSON (FastAPI would read it as no JSON and answer
    422), another type is a 415 naming the header, and a Content-Encoding other than
    identity is a 415 (admin bodies are a few bytes: sent plain)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        admin = scope["type"] == "http" and scope["method"] == "POST"
        if not (admin and scope["path"].startswith("/admin/")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            wire.media_type(headers.get(b"content-type", b"").decode("latin-1"), (wire.JSON,))
            coding = headers.get(b"content-encoding", b"").decode("latin-1").strip()
            if coding and coding.lower() != "identity":
                raise UnsupportedMediaType(
                    f"Content-Encoding {coding[:32]!r} is not taken on /admin routes: send "
                    "the JSON body plain.",
                    content_encoding=coding[:32],
                    rule="encoding",
                )
        except FlywheelError as exc:
            kind = {"flywheel-error-kind": exc.kind}
            await JSONResponse(exc.to_dict(), status_code=exc.status, headers=kind)(
                scope, receive, send
            )
            return
        if b"content-type" not in headers:
            json_type = (b"content-type", b"application/json")
            scope = {**scope, "headers": [*scope["headers"], json_type]}
        await self.app(scope, receive, send)


def install_errors(api: FastAPI) -> None:
    """flywheel's error answers on ``api``: the error shape, the ``flywheel-error-kind``
    header, validation errors as 422 naming the field (also the console alone's)."""

    @api.exception_handler(FlywheelError)
    async def flywheel_error(request: Request, exc: FlywheelError) -> JSONResponse:
        return _error_response(request, exc)

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        err: FlywheelError
        if first.get("type") == "json_invalid":  # a 400, as on every route
            err = BadRequest("The body is not valid JSON. Send a JSON object.", rule="json")
        else:
            err = InvalidInput(
                f"Invalid request: {where}: {first.get('msg', 'invalid')}.",
                field=where,
                rule=first.get("type", "invalid"),
            )
        return _error_response(request, err)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = FlywheelError(str(exc.detail))
        err.status = exc.status_code
        err.kind = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http"
        )
        return _error_response(request, err, getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        rid = uuid.uuid4().hex
        log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
        return _error_response(request, InternalError(rid))


def _admin_guard(config: ServingConfig) -> Any:
    token = secret_bytes(config.admin_token)

    def check(authorization: str | None = Header(None)) -> None:
        if token is None:
            raise Forbidden("Admin routes are disabled: set FLYWHEEL_ADMIN_TOKEN to enable them.")
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("Admin routes need 'Authorization: Bearer <FLYWHEEL_ADMIN_TOKEN>'.")
        if not hmac.compare_digest(authorization[7:].strip().encode(), token):
            raise Forbidden("The admin token is wrong.")

    return check


def build_api(predictor: Predictor, config: ServingConfig) -> FastAPI:
    api = FastAPI(
        title="flywheel serving",
        version=flywheel.__version__,
        description="Native /v1, MLflow /invocations and Open Inference Protocol /v2 routes. "
        "See docs/serving.md.",
    )
    install_errors(api)
    api.add_middleware(_AdminBodies)
    _declare_hot_routes(api)
    _typed_openapi(api, predictor)
    _metadata_routes(api, predictor)
    _admin_routes(api, predictor, config)
    from flywheel.console.routes import console_routes  # the console at /ui (docs/console.md)

    console_routes(api, predictor, config)
    return api


def _declare_hot_routes(api: FastAPI) -> None:
    """Schema-only declarations: RestFront answers these paths before FastAPI sees them."""

    @api.post(
        "/v1/predict",
        response_model=V1Response,
        responses=_NATIVE_ERRORS,
        tags=["predict"],
        summary="Predict (JSON, Arrow IPC or Parquet body)",
    )
    async def v1_predict(payload: V1Records = Body(...)) -> Any:
        raise _front_only()

    @api.post(
        "/invocations",
        response_model=MlflowResponse,
        responses=_MLFLOW_ERRORS,
        tags=["mlflow"],
        summary="MLflow scoring protocol (JSON, CSV, Parquet)",
    )
    async def invocations(
        payload: MlflowSplit | MlflowRecords | MlflowInstances | MlflowInputs = Body(...),
    ) -> Any:
        raise _front_only()

    @api.post(
        "/v2/models/{name}/infer",
        response_model=V2InferResponse,
        responses=_V2_INFER,
        tags=["v2"],
        summary="Open Inference Protocol v2 infer",
    )
    async def v2_infer(name: str, payload: V2InferRequest = Body(...)) -> Any:
        raise _front_only()

    @api.post(
        "/v2/models/{name}/versions/{version}/infer",
        response_model=V2InferResponse,
        responses=_V2_INFER,
        tags=["v2"],
        summary="v2 infer on a given version",
    )
    async def v2_infer_version(name: str, version: str, payload: V2InferRequest = Body(...)) -> Any:
        raise _front_only()

    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}

    @api.get(
        "/ping",
        tags=["health"],
        summary="MLflow health (200 once a model is loaded)",
        response_class=Response,
        responses={200: text, 503: text},
    )
    async def ping() -> Any:
        raise _front_only()

    @api.get(
        "/health",
        tags=["health"],
        summary="Same as /ping",
        response_class=Response,
        responses={200: text, 503: text},
    )
    async def health() -> Any:
        raise _front_only()

    @api.get("/v2/health/live", tags=["health"], summary="Liveness: the process answers")
    async def live() -> dict[str, bool]:
        raise _front_only()

    @api.get(
        "/v2/health/ready",
        tags=["health"],
        responses={503: {"model": dict[str, bool]}},
        summary="Readiness: every served model is loaded",
    )
    async def ready() -> dict[str, bool]:
        raise _front_only()

    @api.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics (text format)",
        response_class=Response,
    )
    async def metrics() -> Any:
        raise _front_only()


def _record_schema(predictor: Predictor) -> dict[str, Any] | None:
    """JSON schema of one row for the first served model (None until it is loaded)."""
    try:
        model = predictor.model()
    except FlywheelError:
        return None
    limit = 3.4028234663852886e38
    numeric = {"type": ["number", "boolean", "null"], "minimum": -limit, "maximum": limit}
    categorical = {"type": ["string", "number", "boolean", "null"]}
    return {
        "type": "object",
        "properties": {
            s.name: numeric if s.kind == "numeric" else categorical for s in model.schema.specs
        },
        "required": list(model.schema.names),
        "additionalProperties": False,
    }


def _typed_openapi(api: FastAPI, predictor: Predictor) -> None:
    """Generate the schema on request, with the served model's features filled in, so that
    schema-valid requests are exactly those the model accepts."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        schema = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        record = _record_schema(predictor)
        if record is None:
            return schema
        rows = {
            "type": "array",
            "items": record,
            "minItems": 1,
            "maxItems": predictor.config.max_rows_per_request,
        }
        comps = schema["components"]["schemas"]
        comps["V1Records"]["properties"]["records"] = rows
        comps["V1Records"]["not"] = {"required": ["columns"]}  # rows one way only
        loose = {**rows, "items": {**record, "additionalProperties": True}}  # MLflow drops extras
        comps["MlflowRecords"]["properties"]["dataframe_records"] = loose
        comps["MlflowInstances"]["properties"]["instances"] = loose
        comps["MlflowInputs"]["properties"]["inputs"] = loose
        forms = {
            "MlflowSplit": "dataframe_split",
            "MlflowRecords": "dataframe_records",
            "MlflowInstances": "instances",
            "MlflowInputs": "inputs",
        }
        for component, key in forms.items():  # exactly one form; other keys are ignored
            comps[component].pop("additionalProperties", None)
            comps[component]["not"] = {
                "anyOf": [{"required": [k]} for k in forms.values() if k != key]
            }
        names = list(record["properties"])
        comps["DataframeSplit"] = {
            "type": "object",
            "required": ["columns", "data"],
            "additionalProperties": False,
            "properties": {
                "columns": {"const": names},
                "index": {"type": "array", "items": {}},
                "data": {
                    **rows,
                    "items": {
                        "type": "array",
                        "minItems": len(names),
                        "maxItems": len(names),
                        "prefixItems": [record["properties"][n] for n in names],
                    },
                },
            },
        }
        _typed_v2(schema, predictor, record)
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


_SCALARS = {"type": ["string", "number", "boolean"]}


def _v2_params(**known: Any) -> dict[str, Any]:
    """An OIP ``parameters`` object (or null): scalar values, ``known`` keys typed."""
    return {"type": ["object", "null"], "properties": known, "additionalProperties": _SCALARS}


def _v2_data(value: dict[str, Any]) -> dict[str, Any]:
    """Tensor data: values, flat or nested one level (row-major). That it holds prod(shape)
    values, the same rows in every tensor, is a rule JSON Schema cannot state (422)."""
    return {
        "type": "array",
        "minItems": 1,
        "items": {"anyOf": [value, {"type": "array", "items": value}]},
    }


def _v2_inputs(predictor: Predictor, record: dict[str, Any]) -> dict[str, Any]:
    """The two forms of ``inputs`` the served model takes (see _tensors)."""
    model = predictor.model()
    names, limit = list(model.schema.names), predictor.config.max_rows_per_request
    rows = {"type": "integer", "minimum": 1, "maximum": limit}
    params = _v2_params(binary_data_size=False)  # binary_data_size: the binary extension only
    required = ["name", "shape", "datatype", "data"]
    per_feature = [
        {
            "type": "object",
            "required": required,
            "properties": {
                "name": {"const": spec.name},
                "shape": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 2,
                    "prefixItems": [rows, {"const": 1}],
                },
                "datatype": {
                    "enum": list(tensors.NUMERIC if spec.kind == "numeric" else tensors.DATATYPES)
                },
                "data": _v2_data(record["properties"][spec.name]),
                "parameters": params,
            },
        }
        for spec in model.schema.specs
    ]
    value = {"type": ["string", "number", "boolean", "null"]}
    matrix = {
        "type": "object",
        "required": required,
        "properties": {
            "name": {"type": "string", "not": {"enum": names}},
            "shape": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "prefixItems": [rows, {"const": len(names)}],
            },
            "datatype": {
                "enum": [*tensors.NUMERIC, "BYTES"] if all(model.schema.numeric) else ["BYTES"]
            },
            "data": _v2_data(value),
            "parameters": params,
        },
    }
    return {
        "description": "One tensor per feature (shape [n] or [n, 1]), or one [n, features] "
        f"tensor with the features in model order {names[:50]} (values by position follow "
        "each feature's rule; a numeric feature in a BYTES matrix may be numeric text).",
        "oneOf": [
            {
                "type": "array",
                "minItems": len(names),
                "maxItems": len(names),
                "items": {"anyOf": per_feature},
                "allOf": [
                    {
                        "contains": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"const": n}},
                        }
                    }
                    for n in names
                ],
            },
            {"type": "array", "minItems": 1, "maxItems": 1, "items": matrix},
        ],
    }


def _typed_v2(schema: dict[str, Any], predictor: Predictor, record: dict[str, Any]) -> None:
    """The v2 infer body, the served model names and version, and its outputs filled in."""
    model = predictor.model()
    comps = schema["components"]["schemas"]
    request = comps["V2InferRequest"]["properties"]
    request["id"] = {"type": ["string", "null"]}
    request["parameters"] = _v2_params(binary_data_output={"type": "boolean"})
    request["inputs"] = _v2_inputs(predictor, record)
    comps["V2RequestedOutput"]["properties"]["name"] = {"enum": list(model.output_names)}
    comps["V2RequestedOutput"]["properties"]["parameters"] = _v2_params(
        binary_data={"type": "boolean"},
        classification=False,  # the extension is not offered
    )
    loaded = [m for m in predictor.models() if m["ready"]]
    served = {
        "name": [m["name"] for m in loaded],
        "version": sorted({m["version"] for m in loaded}),
    }
    for path, item in schema["paths"].items():
        if not path.startswith("/v2/models/"):
            continue
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param.get("in") == "path" and param["name"] in served:
                    param["schema"] = {"type": "string", "enum": served[param["name"]]}


def _metadata_routes(api: FastAPI, predictor: Predictor) -> None:
    @api.get("/version", tags=["mlflow"], summary="Server version")
    async def version() -> str:
        return flywheel.__version__

    @api.get("/v1/models", tags=["predict"], summary="Served models and their versions")
    async def models() -> list[dict[str, Any]]:
        return predictor.models()

    @api.get("/v2", tags=["v2"], summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {
            "name": "flywheel",
            "version": flywheel.__version__,
            "extensions": ["binary_tensor_data"],
        }

    @api.get("/v2/models/{name}", tags=["v2"], responses=_V2_ERRORS, summary="Model metadata")
    async def model_metadata(name: str) -> dict[str, Any]:
        return predictor.metadata(name, None)

    @api.get(
        "/v2/models/{name}/versions/{version}",
        tags=["v2"],
        responses=_V2_ERRORS,
        summary="Model version metadata",
    )
    async def version_metadata(name: str, version: str) -> dict[str, Any]:
        return predictor.metadata(name, version)

    async def _ready(name: str, version: str | None) -> JSONResponse:
        try:
            predictor.metadata(name, version)
        except ModelNotReady:
            return JSONResponse({"name": name, "ready": False}, status_code=503)
        return JSONResponse({"name": name, "ready": True})

    @api.get("/v2/models/{name}/ready", tags=["v2"], responses=_V2_ERRORS, summary="Model ready")
    async def model_ready(name: str) -> Any:
        return await _ready(name, None)

    @api.get(
        "/v2/models/{name}/versions/{version}/ready",
        tags=["v2"],
        responses=_V2_ERRORS,
        summary="Model version ready",
    )
    async def version_ready(name: str, version: str) -> Any:
        return await _ready(name, version)


def _admin_routes(api: FastAPI, predictor: Predictor, config: ServingConfig) -> None:
    guard = Depends(_admin_guard(config))
    errors: dict[int | str, dict[str, Any]] = {
        c: {"model": ErrorBody} for c in (400, 401, 403, 404, 409, 415, 422, 500)
    }
    from flywheel.serving._rollout_api import rollout_routes

    rollout_routes(api, predictor, guard, errors)

    @api.post(
        "/admin/reload",
        dependencies=[guard],
        responses=errors,
        tags=["admin"],
        summary="Follow the alias now (hot swap)",
    )
    async def reload(body: ReloadBody | None = None) -> dict[str, Any]:
        name = body.model if body else None
        version = await predictor.reload(name)
        return {"model": name or predictor.default_model, "version": version}

    @api.api_route(
        "/admin/clock",
        methods=["GET", "POST"],
        dependencies=[guard],
        responses=errors,
        tags=["admin"],
        summary="The data clock that stamps predictions and labels; POST sets it (a replay's "
        "simulated time; at: null goes back to the wall clock)",
    )
    async def clock(request: Request, body: ClockBody | None = Body(None)) -> dict[str, Any]:
        # one route for both methods: separate GET and POST routes on one path make
        # Starlette's 405 name only one of them in its Allow header
        if request.method == "POST":
            if body is None:
                raise BadRequest('POST /admin/clock needs a JSON body {"at": EPOCH or null}.')
            predictor.clock.set(body.at)
        return predictor.clock.describe()

    @api.post(
        "/admin/pin",
        dependencies=[guard],
        responses=errors,
        tags=["admin"],
        summary="Serve a given version (null: follow the alias again)",
    )
    async def pin(body: PinBody) -> dict[str, Any]:
        version = await predictor.pin(body.model, body.version)
        return {
            "model": body.model or predictor.default_model,
            "version": version,
            "pinned": body.version is not None,
        }
