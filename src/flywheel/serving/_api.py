"""The FastAPI half of the REST app: docs, metadata, admin; declares the hot routes for the
OpenAPI schema (they are answered by :class:`flywheel.serving.rest.RestFront`)."""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import Any

from fastapi import Body, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import flywheel
from flywheel.errors import FlywheelError
from flywheel.serving.config import ServingConfig
from flywheel.serving.errors import (
    Forbidden,
    InternalError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Unauthorized,
)
from flywheel.serving.predictor import Predictor

__all__ = ["build_api"]

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
    version: str | None = Field(None, description="Must equal the served version if given.")


class V1Columns(BaseModel):
    columns: dict[str, list[Any]] = Field(description="{feature: [values, one per row]}.")
    model: str | None = None
    version: str | None = None


class V1Response(BaseModel):
    model: str
    version: str
    request_id: str
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


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="FP32, INT64, BYTES, ...")
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(description="One tensor per feature, or one [n, features].")
    outputs: list[dict[str, Any]] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[V2Tensor]


class V2Error(BaseModel):
    error: str


class PinBody(BaseModel):
    version: str | None = Field(description="Version to serve; null follows the alias again.")
    model: str | None = None


class ReloadBody(BaseModel):
    model: str | None = None


_NATIVE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 500, 503)
}
_V2_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V2Error} for code in (400, 401, 404, 413, 415, 422, 500, 503)
}
_MLFLOW_ERRORS: dict[int | str, dict[str, Any]] = {
    **{code: {"model": MlflowError} for code in (400, 401, 413, 500, 503)},
    415: {"content": {"text/plain": {"schema": {"type": "string"}}}},
}


def _front_only() -> FlywheelError:
    return FlywheelError("This route is answered by the REST front (flywheel.serving.rest).")


# --------------------------------------------------------------------------- app


def _error_response(
    request: Request, exc: FlywheelError, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": exc.message} if request.url.path.startswith("/v2") else exc.to_dict()
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _install_errors(api: FastAPI) -> None:
    @api.exception_handler(FlywheelError)
    async def flywheel_error(request: Request, exc: FlywheelError) -> JSONResponse:
        return _error_response(request, exc)

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
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
    token = config.admin_token.encode() if config.admin_token else None

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
    _install_errors(api)
    _declare_hot_routes(api)
    _typed_openapi(api, predictor)
    _metadata_routes(api, predictor)
    _admin_routes(api, predictor, config)
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
        responses=_V2_ERRORS,
        tags=["v2"],
        summary="Open Inference Protocol v2 infer",
    )
    async def v2_infer(name: str, payload: V2InferRequest = Body(...)) -> Any:
        raise _front_only()

    @api.post(
        "/v2/models/{name}/versions/{version}/infer",
        response_model=V2InferResponse,
        responses=_V2_ERRORS,
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
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


def _v2_metadata(predictor: Predictor, name: str, version: str | None) -> dict[str, Any]:
    model = predictor.model(name)
    if version is not None and version != model.version:
        raise ModelNotFound(
            f"Model {name!r} version {version[:32]!r} is not served (serving {model.version}).",
            model=name,
        )
    outputs = [
        {
            "name": "label",
            "datatype": "BYTES"
            if model.classes and isinstance(model.classes[0], str)
            else ("INT64" if model.task == "classification" else "FP32"),
            "shape": [-1],
        }
    ]
    if model.task == "classification":
        outputs.append(
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.classes or [])]}
        )
    return {
        "name": name,
        "versions": [model.version],
        "platform": "onnxruntime",
        "inputs": [
            {
                "name": s.name,
                "datatype": "FP32" if s.kind == "numeric" else "BYTES",
                "shape": [-1, 1],
            }
            for s in model.schema.specs
        ],
        "outputs": outputs,
        "parameters": {"task": model.task, "classes": model.classes, "sha256": model.sha256},
    }


def _metadata_routes(api: FastAPI, predictor: Predictor) -> None:
    @api.get("/version", tags=["mlflow"], summary="Server version")
    async def version() -> str:
        return flywheel.__version__

    @api.get("/v1/models", tags=["predict"], summary="Served models and their versions")
    async def models() -> list[dict[str, Any]]:
        return predictor.models()

    @api.get("/v2", tags=["v2"], summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "flywheel", "version": flywheel.__version__, "extensions": []}

    @api.get("/v2/models/{name}", tags=["v2"], responses=_V2_ERRORS, summary="Model metadata")
    async def model_metadata(name: str) -> dict[str, Any]:
        return _v2_metadata(predictor, name, None)

    @api.get(
        "/v2/models/{name}/versions/{version}",
        tags=["v2"],
        responses=_V2_ERRORS,
        summary="Model version metadata",
    )
    async def version_metadata(name: str, version: str) -> dict[str, Any]:
        return _v2_metadata(predictor, name, version)

    async def _ready(name: str, version: str | None) -> JSONResponse:
        try:
            _v2_metadata(predictor, name, version)
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
    from fastapi import Depends

    guard = Depends(_admin_guard(config))
    errors: dict[int | str, dict[str, Any]] = {
        c: {"model": ErrorBody} for c in (400, 401, 403, 404, 409, 422, 500)
    }

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
