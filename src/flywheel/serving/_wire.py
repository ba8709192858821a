"""Protocol translation for the REST front: body parsing and answer encoding per dialect.

Pure functions from bytes/dicts to :class:`PredictRequest` and from
:class:`PredictResponse` to bytes, shared by the raw ASGI hot path and the FastAPI routes,
and the one content-type rule (:func:`media_type`) and content-coding rule
(:func:`decode_content`) of every route that takes a body.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import orjson

from flywheel.schema import InputSchema
from flywheel.serving import _tensors as tensors
from flywheel.serving.errors import (
    BadRequest,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from flywheel.serving.types import PredictRequest, PredictResponse, json_array

__all__ = [
    "ARROW_TYPES",
    "BINARY",
    "CSV",
    "JSON",
    "JSON_OPTS",
    "PARQUET_TYPES",
    "V2Outputs",
    "decode_content",
    "encode_native",
    "encode_v2",
    "loads",
    "media_type",
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
JSON = "application/json"
CSV = "text/csv"
BINARY = "application/octet-stream"  # the v2 binary tensor data extension


# --------------------------------------------------------------------------- the body rules


def media_type(header: str, accepted: Sequence[str]) -> str:
    """The content-type rule of every route that takes a body, decided here once.

    A missing Content-Type is read as JSON (OIP clients such as tritonclient send none);
    otherwise its type (case-insensitive) must be one the route takes, and its only parameter
    may be ``charset=utf-8`` (MLflow's scoring server rule). Raises
    :class:`UnsupportedMediaType` (415) naming the header, the value and what to send."""
    if header == JSON or not header:
        return JSON
    mime, _, rest = header.partition(";")
    mime = mime.strip().lower()
    for param in rest.split(";"):
        key, _, value = param.partition("=")
        key, value = key.strip().lower(), value.strip().strip('"').lower()
        if not key:
            continue
        if key != "charset":
            raise UnsupportedMediaType(
                f"Content-Type parameter {key[:32]!r} is not supported; the only one allowed is "
                "charset=utf-8.",
                content_type=header[:64],
                rule="parameter",
            )
        if value != "utf-8":
            raise UnsupportedMediaType(
                f"Content-Type charset {value[:32]!r} is not supported; send UTF-8 "
                "(charset=utf-8, or no charset).",
                content_type=header[:64],
                rule="charset",
            )
    if mime not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type {mime[:64]!r} is not supported here; send one of {list(accepted)}.",
            content_type=header[:64],
            rule="type",
        )
    return mime


_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """A body sent with ``Content-Encoding: gzip`` or ``deflate`` (zlib), decompressed to at most
    ``limit`` bytes (413 beyond); ``identity`` or none is the body itself; others are 415."""
    coding = encoding.strip().lower()
    if not coding or coding == "identity":
        return body
    wbits = _DECODERS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"Content-Encoding {coding[:32]!r} is not supported; send gzip, deflate or identity.",
            content_encoding=coding[:32],
            rule="encoding",
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"The body is not valid {coding} data ({exc}).", rule="encoding") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"The decompressed body exceeds {limit} bytes (serving.max_body_bytes).", limit=limit
        )
    if not inflater.eof:
        raise BadRequest(f"The body is truncated {coding} data.", rule="encoding")
    return out


def loads(body: bytes | str) -> Any:
    """JSON as Python's ``json`` reads it: orjson, or, for a body holding the tokens
    ``NaN``/``Infinity`` that orjson refuses, the standard library. MLflow's client, pandas
    and ``json.dumps`` write a missing number as ``NaN``, and MLflow's scoring server takes
    it; a NaN is a missing value here too (an infinity is refused by the input rules).
    Raises ``orjson.JSONDecodeError`` (the first parser's) when neither reads it."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raw = body.encode() if isinstance(body, str) else body
        if b"NaN" not in raw and b"Infinity" not in raw:
            raise
        try:  # UTF-8 only, as orjson; a nesting too deep for it is refused as orjson's is
            return json.loads(bytes(raw).decode("utf-8"))
        except (ValueError, RecursionError):
            pass
        raise


def parse_json(body: bytes) -> Any:
    try:
        return loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"The body is not valid JSON ({str(exc).split(':')[0]}, at byte {exc.pos}). "
            "Send a JSON object.",
            rule="json",
        ) from None


# --------------------------------------------------------------------------- native /v1


def native_request(
    data: Any,
    protocol: str = "rest",
    *,
    request_id: str | None = None,
    client_id: str | None = None,
) -> PredictRequest:
    """``{"records": [...]}``, ``{"columns": {...}}``, a single record object, or a list.
    ``request_id``/``client_id``: the front's :class:`~flywheel.serving.cycle.Call` ids."""
    if isinstance(data, dict):
        model, version = data.get("model"), data.get("version")
        if "records" in data and "columns" in data:
            raise BadRequest(
                "The body has both 'records' and 'columns'; send the rows one way: "
                '{"records": [...]} or {"columns": {...}}.',
                field="records",
                fields=["records", "columns"],
                rule="exclusive",
            )
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
                client_id=client_id,
                protocol=protocol,
            )
        if "columns" in data:
            return PredictRequest(
                columns=data["columns"],
                model=model,
                version=version,
                request_id=request_id,
                client_id=client_id,
                protocol=protocol,
            )
        rows: Any = [data]
    elif isinstance(data, list):
        rows = data
    else:
        raise BadRequest(
            'The body must be a JSON object: {"records": [...]} or one record.', rule="shape"
        )
    return PredictRequest(
        records=rows, request_id=request_id, client_id=client_id, protocol=protocol
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

V2Outputs = list[tuple[str, bool]]  # (output name, answer it as binary data)
_SCALAR = (str, int, float, bool)


def _params(value: Any, where: str) -> dict[str, Any]:
    """An OIP ``parameters`` object (or null): string, number or boolean values."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, _SCALAR) for v in value.values()):
        raise BadRequest(
            f"{where} must be an object of string, number or boolean values.", field=where
        )
    return value


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where}.{key} must be true or false.", field=f"{where}.{key}")
    return value


def _split_body(body: bytes, header_length: int) -> tuple[bytes, bytes | None]:
    """(JSON header, binary data) of a v2 body; ``header_length`` -1: all JSON, no binary;
    -2: the header was not a length."""
    if header_length == -1:
        return body, None
    if header_length < 0:
        raise BadRequest(
            "Inference-Header-Content-Length must be the JSON header's length in bytes (a "
            "non-negative integer).",
            field="Inference-Header-Content-Length",
            rule="binary",
        )
    if header_length > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length is {header_length} but the body has "
            f"{len(body)} bytes.",
            field="Inference-Header-Content-Length",
            rule="binary",
        )
    return body[:header_length], body[header_length:]


def _flatten(data: Any, i: int) -> list[Any]:
    """OIP tensor data: flat, or nested one level (rows); row-major."""
    if type(data) is not list:
        raise BadRequest(f"inputs[{i}].data must be a list.", field=f"inputs[{i}].data")
    for item in data:
        if type(item) is list:
            return [v for item in data for v in (item if type(item) is list else (item,))]
    return data


def _shape(value: Any, i: int) -> tuple[int, ...]:
    if type(value) is list:
        for d in value:
            if type(d) is not int:
                break
        else:
            return tuple(value)
    raise BadRequest(f"inputs[{i}].shape must be a list of integers.", field=f"inputs[{i}].shape")


def _v2_inputs(items: Any, binary: bytes | None) -> list[tensors.Tensor]:
    if type(items) is not list or not items:
        raise BadRequest(
            "The body must be an object with a non-empty 'inputs' list.", field="inputs"
        )
    out: list[tensors.Tensor] = []
    pos = 0
    for i, item in enumerate(items):
        if type(item) is not dict or "shape" not in item:
            raise _no_tensor(i)
        name, datatype = item.get("name"), item.get("datatype")
        if type(name) is not str or type(datatype) is not str:
            raise _no_tensor(i)
        tensor = tensors.Tensor(name[:64], datatype, _shape(item["shape"], i))
        params = item.get("parameters")
        size = (
            None
            if params is None
            else _params(params, f"inputs[{i}].parameters").get("binary_data_size")
        )
        if size is None:
            if "data" not in item:
                raise BadRequest(f"inputs[{i}] has no 'data'.", field=f"inputs[{i}].data")
            tensor.data = _flatten(item["data"], i)
        elif "data" in item or binary is None or type(size) is not int or size < 0:
            raise BadRequest(
                f"inputs[{i}].parameters.binary_data_size is only for the binary tensor data "
                "extension: a body with an Inference-Header-Content-Length header, the tensor's "
                "bytes after the JSON, and no 'data'.",
                field=f"inputs[{i}].parameters.binary_data_size",
                rule="binary",
            )
        else:
            tensor.raw, pos = binary[pos : pos + size], pos + size
        out.append(tensor)
    if binary is not None and pos != len(binary):
        raise BadRequest(
            f"The body has {len(binary)} bytes of binary data after the JSON header but the "
            f"inputs' binary_data_size add up to {pos}.",
            field="Inference-Header-Content-Length",
            rule="binary",
        )
    return out


def _no_tensor(i: int) -> BadRequest:
    return BadRequest(
        f"inputs[{i}] must be an object with 'name' and 'datatype' (strings), 'shape' and "
        "'data' (or parameters.binary_data_size).",
        field=f"inputs[{i}]",
    )


def _v2_outputs(
    items: Any, default_binary: bool, available: Sequence[str], model: str
) -> V2Outputs:
    if items is None or items == []:  # none asked for: every output
        return [(name, default_binary) for name in available]
    if not isinstance(items, list):
        raise BadRequest("outputs must be a list (or null).", field="outputs")
    names: list[str] = []
    binary: dict[str, bool] = {}
    for i, item in enumerate(items):
        where = f"outputs[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"{where} must be an object with a 'name'.", field=where)
        params = _params(item.get("parameters"), f"{where}.parameters")
        if "classification" in params:
            raise BadRequest(
                f"{where}.parameters.classification: the classification extension is not "
                "supported; ask for 'label' (and 'probabilities').",
                field=f"{where}.parameters.classification",
                rule="unsupported",
            )
        flag = _flag(params, "binary_data", f"{where}.parameters")
        names.append(item["name"])
        binary.setdefault(item["name"], default_binary if flag is None else flag)
    chosen = tensors.pick_outputs(names, available, model)
    return [(name, binary.get(name, default_binary)) for name in chosen]


def v2_request(
    body: bytes,
    header_length: int,
    schema: InputSchema,
    outputs: Sequence[str],
    model: str,
    check_rows: tensors.RowCheck,
) -> tuple[PredictRequest, V2Outputs]:
    """An OIP v2 infer body -> the core request and the outputs to answer.

    JSON, or the binary tensor data extension (``header_length`` >= 0: the JSON header, then
    each binary input's ``binary_data_size`` bytes in input order). Tensor rules:
    :mod:`flywheel.serving._tensors` (shared with gRPC)."""
    header, binary = _split_body(body, header_length)
    data = parse_json(header)
    if not isinstance(data, dict):
        raise BadRequest(
            "The body must be an object with a non-empty 'inputs' list.", field="inputs"
        )
    rid = data.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("id must be a string.", field="id")
    params = _params(data.get("parameters"), "parameters")
    default_binary = bool(_flag(params, "binary_data_output", "parameters"))
    inputs = _v2_inputs(data.get("inputs"), binary)
    wanted = _v2_outputs(data.get("outputs"), default_binary, outputs, model)
    columns = tensors.to_columns(inputs, schema, check_rows)
    return PredictRequest(columns=columns, client_id=rid, protocol="v2"), wanted


def encode_v2(response: PredictResponse, outputs: V2Outputs) -> tuple[bytes, int]:
    """(body, JSON header length or -1): outputs asked for as binary data follow the JSON."""
    arrays = {"label": response.labels, "probabilities": response.probabilities}
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in outputs:
        values = arrays.get(name)
        if values is None:
            continue
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": tensors.datatype_of(values),
            "shape": list(values.shape),
        }
        if binary:
            blobs.append(tensors.raw_bytes(values))
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            tensor["data"] = json_array(values.reshape(-1))
        described.append(tensor)
    header = orjson.dumps(
        {
            "model_name": response.model,
            "model_version": response.version,
            "id": response.client_id or response.request_id,
            "parameters": {"request_id": response.request_id},
            "outputs": described,
        },
        option=JSON_OPTS,
    )
    if not blobs:
        return header, -1
    return header + b"".join(blobs), len(header)
