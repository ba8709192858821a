"""Protocol translation for the REST front: body parsing and answer encoding per dialect.

Pure functions from bytes/dicts to :class:`PredictRequest` and from
:class:`PredictResponse` to bytes, shared by the raw ASGI hot path and the FastAPI routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from flywheel.serving.decode import InputSchema
from flywheel.serving.errors import BadRequest, InvalidInput, UnsupportedMediaType
from flywheel.serving.types import PredictRequest, PredictResponse, json_array

__all__ = [
    "ARROW_TYPES",
    "JSON_OPTS",
    "PARQUET_TYPES",
    "encode_native",
    "encode_v2",
    "mlflow_request",
    "native_request",
    "parse_json",
    "read_arrow",
    "read_csv",
    "v2_request",
]

JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
ARROW_TYPES = frozenset(
    {"application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file"}
)
PARQUET_TYPES = frozenset(
    {"application/vnd.apache.parquet", "application/x-parquet", "application/parquet"}
)
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"The body is not valid JSON ({str(exc).split(':')[0]}, at byte {exc.pos}). "
            "Send a JSON object.",
            rule="json",
        ) from None


# --------------------------------------------------------------------------- native /v1


def native_request(data: Any, request_id: str | None, protocol: str = "rest") -> PredictRequest:
    """``{"records": [...]}``, ``{"columns": {...}}``, a single record object, or a list."""
    if isinstance(data, dict):
        model, version = data.get("model"), data.get("version")
        if "records" in data or "columns" in data:
            if not isinstance(model, str | None) or not isinstance(version, str | int | None):
                raise BadRequest(
                    "'model' and 'version' must be strings (or null).",
                    field="model" if not isinstance(model, str | None) else "version",
                )
            version = None if version is None else str(version)
        if "records" in data:
            return PredictRequest(
                records=data["records"],
                model=model,
                version=version,
                request_id=request_id,
                protocol=protocol,
            )
        if "columns" in data:
            return PredictRequest(
                columns=data["columns"],
                model=model,
                version=version,
                request_id=request_id,
                protocol=protocol,
            )
        return PredictRequest(records=[data], request_id=request_id, protocol=protocol)
    if isinstance(data, list):
        return PredictRequest(records=data, request_id=request_id, protocol=protocol)
    raise BadRequest(
        'The body must be a JSON object: {"records": [...]} or one record.', rule="shape"
    )


def encode_native(response: PredictResponse) -> bytes:
    return orjson.dumps(response.to_dict(), option=JSON_OPTS)


# --------------------------------------------------------------------------- bulk bodies


def read_arrow(body: bytes, mime: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if mime in PARQUET_TYPES:
            return pq.read_table(pa.BufferReader(body))
        if mime.endswith(".file"):
            return pa.ipc.open_file(pa.BufferReader(body)).read_all()
        return pa.ipc.open_stream(pa.BufferReader(body)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        kind = "Parquet" if mime in PARQUET_TYPES else "Arrow IPC"
        raise BadRequest(
            f"The body is not a readable {kind} stream: {str(exc)[:200]}", rule="body"
        ) from None


def read_csv(body: bytes) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        return pacsv.read_csv(pa.BufferReader(body))
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise BadRequest(
            f"The body is not readable CSV with a header row: {str(exc)[:200]}", rule="csv"
        ) from None


# --------------------------------------------------------------------------- MLflow


def _split_columns(split: Any) -> dict[str, list[Any]]:
    if not isinstance(split, dict) or not isinstance(split.get("columns"), list):
        raise BadRequest(
            "dataframe_split must be an object with 'columns' and 'data'.", field="dataframe_split"
        )
    unknown = sorted(str(k)[:32] for k in split if k not in ("columns", "data", "index"))
    if unknown:
        raise BadRequest(
            f"dataframe_split has unexpected key(s) {unknown[:5]}; it takes "
            "'columns', 'data' and optionally 'index'.",
            field="dataframe_split",
        )
    if not isinstance(split.get("index", []), list):
        raise BadRequest("dataframe_split.index must be a list.", field="dataframe_split.index")
    columns, data = split["columns"], split.get("data", [])
    if not isinstance(data, list) or any(
        not isinstance(r, list) or len(r) != len(columns) for r in data
    ):
        raise BadRequest(
            f"dataframe_split.data must be a list of rows of {len(columns)} values.",
            field="dataframe_split.data",
        )
    return {str(c): [row[i] for row in data] for i, c in enumerate(columns)}


def _tensor_rows(value: Any, schema: InputSchema, key: str) -> PredictRequest:
    """``instances``/``inputs``: records, a dict of columns, or rows of values in order."""
    if isinstance(value, dict):
        return PredictRequest(columns=value)
    if isinstance(value, list) and all(isinstance(r, dict) for r in value):
        return PredictRequest(records=value)
    if isinstance(value, list) and all(isinstance(r, list) for r in value):
        return PredictRequest(columns=_positional(value, schema, key))
    raise BadRequest(
        f"{key} must be a list of records, an object of columns or a list of rows.", field=key
    )


def _positional(rows: Sequence[Sequence[Any]], schema: InputSchema, key: str) -> dict[str, Any]:
    width = len(schema.names)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InvalidInput(
                f"{key} row {i} has {len(row)} values; the model takes {width} in this order: "
                f"{list(schema.names[:50])}.",
                field=key,
                row=i,
                rule="width",
            )
    return {name: [row[j] for row in rows] for j, name in enumerate(schema.names)}


def mlflow_request(data: Any, schema: InputSchema) -> PredictRequest:
    """MLflow's scoring JSON: exactly one of ``dataframe_split``, ``dataframe_records``,
    ``instances``, ``inputs`` (extra fields are dropped, as MLflow does)."""
    if not isinstance(data, dict):
        raise BadRequest(
            "The input must be a JSON dictionary with exactly one of the input "
            f"fields {set(MLFLOW_FORMATS)}. Received a {type(data).__name__}."
        )
    keys = [k for k in MLFLOW_FORMATS if k in data]
    if len(keys) != 1:
        raise BadRequest(
            "The input must be a JSON dictionary with exactly one of the input fields "
            f"{set(MLFLOW_FORMATS)}. Received dictionary with input fields: "
            f"{[str(k)[:64] for k in list(data)[:10]]}."
        )
    if not isinstance(data.get("params"), dict | None):
        raise BadRequest("params must be an object (or null).", field="params")
    key = keys[0]
    value = data[key]
    if key == "dataframe_split":
        request = PredictRequest(columns=_split_columns(value))
    elif key == "dataframe_records":
        if not isinstance(value, list):
            raise BadRequest("dataframe_records must be a list of records.", field=key)
        request = PredictRequest(records=value)
    else:
        request = _tensor_rows(value, schema, key)
    request.extra_fields = "ignore"
    request.protocol = "mlflow"
    return request


# --------------------------------------------------------------------------- Open Inference v2

_V2_TYPES = {"f": "FP32", "i": "INT64", "u": "UINT64", "b": "BOOL"}


def _flat(values: Any, what: str) -> list[Any]:
    if not isinstance(values, list):
        raise BadRequest(f"{what}.data must be a list.", field=what)
    if values and isinstance(values[0], list):
        return [v for row in values for v in (row if isinstance(row, list) else [row])]
    return values


def v2_request(data: Any, schema: InputSchema) -> PredictRequest:
    """One input tensor per feature (``shape`` [n] or [n, 1]) or one 2-D tensor
    ``[n, n_features]`` with the features in model order."""
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) or not data["inputs"]:
        raise BadRequest(
            "The body must be an object with a non-empty 'inputs' list.", field="inputs"
        )
    tensors = data["inputs"]
    if any(not isinstance(t, dict) or "data" not in t for t in tensors):
        raise BadRequest(
            "Each input must be an object with 'name', 'shape', 'datatype', 'data'.", field="inputs"
        )
    rid = data.get("id") if isinstance(data.get("id"), str) else None
    if len(tensors) == 1 and len(schema.names) > 1:
        tensor = tensors[0]
        shape = tensor.get("shape") or []
        width = len(schema.names)
        flat = _flat(tensor["data"], f"inputs[{tensor.get('name')!s:.32}]")
        if len(shape) != 2 or shape[1] != width or len(flat) != shape[0] * width:
            raise InvalidInput(
                f"A single input tensor must have shape [n, {width}] (features in model order: "
                f"{list(schema.names[:50])}) and n*{width} values; got shape {shape!s:.64}.",
                field="inputs",
                rule="shape",
            )
        rows = [flat[i * width : (i + 1) * width] for i in range(shape[0])]
        return PredictRequest(
            columns=_positional(rows, schema, "inputs"), request_id=rid, protocol="v2"
        )
    columns = {
        str(t.get("name")): _flat(t["data"], f"inputs[{str(t.get('name'))[:32]}]") for t in tensors
    }
    return PredictRequest(columns=columns, request_id=rid, protocol="v2")


def _v2_tensor(name: str, values: np.ndarray) -> dict[str, Any]:
    datatype = _V2_TYPES.get(values.dtype.kind, "BYTES")
    if values.dtype.kind == "f" and values.dtype.itemsize == 8:
        datatype = "FP64"
    return {
        "name": name,
        "shape": list(values.shape),
        "datatype": datatype,
        "data": json_array(values.reshape(-1)),
    }


def encode_v2(response: PredictResponse) -> bytes:
    outputs = [_v2_tensor("label", response.labels)]
    if response.probabilities is not None:
        outputs.append(_v2_tensor("probabilities", response.probabilities))
    return orjson.dumps(
        {
            "model_name": response.model,
            "model_version": response.version,
            "id": response.request_id,
            "outputs": outputs,
        },
        option=JSON_OPTS,
    )


def unsupported(mime: str, allowed: Sequence[str]) -> UnsupportedMediaType:
    return UnsupportedMediaType(
        f"Content type {mime[:64]!r} is not supported here; send one of {list(allowed)}.",
        content_type=mime[:64],
    )
