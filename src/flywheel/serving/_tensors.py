"""Open Inference Protocol (v2) tensors <-> feature columns: the rules the v2 REST route (JSON and
the binary tensor data extension) and the gRPC service share, so both decode a request alike.

A front reads its wire format into :class:`Tensor` objects (name, datatype, shape, and either
``raw`` little-endian bytes or ``data`` values) and calls :func:`to_columns`; the predictor core
then checks every value and names the field and row of a bad one. Rules:

- one tensor per feature, named after it, shape ``[n]`` or ``[n, 1]``; numeric features in a
  numeric datatype, categorical ones in any (``BYTES`` as a rule); or one 2-D tensor
  ``[n, n_features]`` (any name that is not a feature name) with the features in model order,
  ``BYTES`` for any model, a numeric datatype for an all-numeric one;
- a tensor holds exactly ``prod(shape)`` values; raw data is row-major little-endian, a
  ``BYTES`` element a 4-byte little-endian length and then its bytes (UTF-8 text here);
- a numeric feature inside a ``BYTES`` matrix is read from its text ('' is missing).

Protocol-specific checks (gRPC's typed-vs-raw contents, the REST binary header) stay in the fronts.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.serving.errors import InvalidInput

if TYPE_CHECKING:
    from flywheel.schema import InputSchema

__all__ = [
    "DATATYPES",
    "NUMERIC",
    "Tensor",
    "as_bytes",
    "bad",
    "datatype_of",
    "pick_outputs",
    "raw_bytes",
    "to_columns",
]

# Numeric datatypes -> little-endian numpy dtypes (raw data).
NUMERIC: dict[str, str] = {
    "BOOL": "?",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
DATATYPES: tuple[str, ...] = (*NUMERIC, "BYTES")
_KNOWN = frozenset(DATATYPES)
_LENGTH = struct.Struct("<I")
# struct codes of the numeric datatypes (raw data of a few values is read with struct)
STRUCT_CODES: dict[str, str] = {
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
# to_columns(lists=True): up to this many rows, a feature tensor of the feature's own kind
# (numbers for a numeric feature, BYTES for a categorical one) goes to the core as a Python
# list, as a JSON record does, instead of a NumPy array: for a 1-row gRPC request of 14
# features ~5x less CPU in decoding (NumPy's fixed cost per small array, here and again in
# the core's checks). Bigger tensors keep the vectorised path. Same values either way.
LIST_MAX_ROWS = 32

# the core's row limit: raises TooManyRows past serving.max_rows_per_request
RowCheck = Callable[[int], None]


@dataclass(slots=True)
class Tensor:
    """One input tensor as a front read it. ``raw``: little-endian bytes (gRPC
    ``raw_input_contents``, REST binary data); else ``data``: its values, flat. ``typed``: the
    values are of the datatype (gRPC typed contents; read into numpy); JSON values are not
    (they go to the core as they are, which checks each). ``source`` names ``data`` in errors."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Sequence[Any] | None = None
    raw: bytes | None = None
    typed: bool = False
    source: str = "data"


def bad(name: str, message: str, rule: str) -> InvalidInput:
    return InvalidInput(f"Input {name!r} {message}", field=name, rule=rule)


def _shape(tensor: Tensor) -> tuple[int, ...]:
    if tensor.shape and min(tensor.shape) < 0:
        raise bad(tensor.name, f"has shape {list(tensor.shape)}; dimensions must be >= 0.", "shape")
    return tensor.shape


def split_bytes(buf: bytes, count: int, name: str) -> list[bytes]:
    """Raw BYTES data: ``count`` elements, each a 4-byte LE length then the bytes.
    (A loop by necessity: elements have their own lengths.)"""
    out: list[bytes] = []
    pos, end = 0, len(buf)
    unpack = _LENGTH.unpack_from
    for _ in range(count):
        if pos + 4 > end:
            break
        (size,) = unpack(buf, pos)
        pos += 4
        if pos + size > end:
            break
        out.append(buf[pos : pos + size])
        pos += size
    if len(out) != count or pos != end:
        raise bad(
            name,
            f"has raw BYTES data that does not hold {count} length-prefixed "
            "elements (each a 4-byte little-endian length, then the bytes).",
            "raw",
        )
    return out


def _text(items: Sequence[bytes], name: str, as_list: bool = False) -> Any:
    try:
        texts = [b.decode() for b in items]
    except UnicodeDecodeError as exc:
        raise bad(name, "holds BYTES that are not UTF-8 text.", "utf8") from exc
    return texts if as_list else np.array(texts, dtype=object)


def _values(tensor: Tensor, count: int, as_list: bool = False) -> Any:
    """The tensor's ``count`` values, flat: a numpy array (raw or typed data) or the JSON list;
    a Python list of the values when ``as_list`` (see :data:`LIST_MAX_ROWS`)."""
    name, datatype, raw = tensor.name, tensor.datatype, tensor.raw
    if datatype not in _KNOWN:
        raise bad(
            name, f"has datatype {datatype[:16]!r}; use one of {list(DATATYPES)}.", "datatype"
        )
    if raw is not None:
        if datatype == "BYTES":
            return _text(split_bytes(raw, count, name), name, as_list)
        size = np.dtype(NUMERIC[datatype]).itemsize
        if len(raw) != count * size:
            raise bad(
                name,
                f"has shape {list(tensor.shape)} ({count} {datatype} values, "
                f"{count * size} bytes) but its raw data holds {len(raw)} bytes.",
                "shape",
            )
        if as_list:
            return list(struct.unpack(f"<{count}{STRUCT_CODES[datatype]}", raw))
        return np.frombuffer(raw, dtype=NUMERIC[datatype])
    data = tensor.data if tensor.data is not None else ()
    if len(data) != count:
        raise bad(
            name,
            f"has shape {list(tensor.shape)} ({count} values) but {tensor.source} holds {len(data)}.",
            "shape",
        )
    if not tensor.typed:
        return data
    if datatype == "BYTES":
        return _text(data, name, as_list)
    return list(data) if as_list else np.array(data, dtype=NUMERIC[datatype])


def _numeric_text(values: Any, name: str) -> Any:
    """A numeric feature inside a BYTES matrix: text is read as a number ('' is missing); JSON
    numbers and nulls go to the core as they are."""
    if isinstance(values, np.ndarray):
        try:
            return values.astype(str).astype(np.float64)
        except ValueError:
            pass
    out: list[Any] = []
    for row, value in enumerate(values):
        if not isinstance(value, str):
            out.append(value)
            continue
        try:
            out.append(float(value) if value.strip() else math.nan)
        except ValueError:
            raise InvalidInput(
                f"Field {name!r} (row {row}) must be a number (or empty); the "
                "BYTES value is not one.",
                field=name,
                row=row,
                rule="type",
            ) from None
    return np.array(out, dtype=np.float64) if isinstance(values, np.ndarray) else out


def _matrix_columns(tensor: Tensor, schema: InputSchema, check_rows: RowCheck) -> dict[str, Any]:
    name, width = tensor.name, len(schema.names)
    shape = _shape(tensor)
    if len(shape) != 2 or shape[1] != width:
        raise bad(
            name,
            f"has shape {list(shape)}; a single input tensor must be "
            f"[n, {width}] with the features in model order {list(schema.names[:50])} "
            "(or send one tensor per feature, named after it).",
            "shape",
        )
    check_rows(shape[0])
    if tensor.datatype != "BYTES" and not all(schema.numeric):
        categorical = [n for n, num in zip(schema.names, schema.numeric, strict=True) if not num]
        raise bad(
            name,
            f"is {tensor.datatype[:16]}, but the model has categorical features "
            f"{categorical[:10]}: send a BYTES matrix, or one tensor per feature.",
            "datatype",
        )
    flat = _values(tensor, shape[0] * width)
    columns: dict[str, Any] = {}
    for i, (feature, numeric) in enumerate(zip(schema.names, schema.numeric, strict=True)):
        column = flat[i::width]
        if numeric and tensor.datatype == "BYTES":
            column = _numeric_text(column, feature)
        columns[feature] = column
    return columns


def to_columns(
    tensors: Sequence[Tensor], schema: InputSchema, check_rows: RowCheck, *, lists: bool = False
) -> dict[str, Any]:
    """Input tensors -> ``{feature: flat values}`` for ``PredictRequest(columns=...)``.

    Checks names, shapes, datatypes and value counts; ``check_rows`` is the core's row limit
    (:meth:`Predictor.check_rows`), applied before anything is decoded; the core then checks
    the values. ``lists``: a feature tensor of the feature's own kind with at most
    :data:`LIST_MAX_ROWS` rows comes out as a Python list (what the core checks fastest)
    rather than a NumPy array; the values are the same.
    Raises :class:`InvalidInput` / :class:`TooManyRows`."""
    if not tensors:
        raise InvalidInput(
            f"The request has no inputs; send one tensor per feature {list(schema.names[:50])}.",
            field="inputs",
            rule="required",
        )
    numeric = dict(zip(schema.names, schema.numeric, strict=True))
    if len(tensors) == 1 and tensors[0].name not in numeric:
        return _matrix_columns(tensors[0], schema, check_rows)
    columns: dict[str, Any] = {}
    for tensor in tensors:
        name = tensor.name
        if name in columns:
            raise bad(name, "is sent twice; send each feature once.", "duplicate")
        shape = _shape(tensor)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise bad(
                name, f"has shape {list(shape)}; a feature tensor must be [n] or [n, 1].", "shape"
            )
        check_rows(shape[0])
        is_numeric = numeric.get(name)
        if is_numeric and tensor.datatype == "BYTES":
            raise bad(
                name,
                "is a numeric feature but was sent as BYTES; send FP32 (or FP64, INT32, INT64).",
                "datatype",
            )
        as_list = lists and shape[0] <= LIST_MAX_ROWS and is_numeric is not None
        columns[name] = _values(
            tensor, shape[0], as_list and is_numeric == (tensor.datatype != "BYTES")
        )
    return columns


def pick_outputs(names: Sequence[str], available: Sequence[str], model: str) -> tuple[str, ...]:
    """The outputs to answer, in request order and once each (all when none is named)."""
    if not names:
        return tuple(available)
    for i, name in enumerate(names):
        if name not in available:
            raise InvalidInput(
                f"outputs[{i}] asks for {name[:64]!r}; model {model!r} has outputs {list(available)}.",
                field=f"outputs[{i}]",
                rule="unknown",
            )
    return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------- outputs


def datatype_of(values: np.ndarray) -> str:
    kind, size = values.dtype.kind, values.dtype.itemsize
    if kind == "f":
        return {2: "FP16", 8: "FP64"}.get(size, "FP32")
    if kind in "iu":
        return f"{'U' if kind == 'u' else ''}INT{size * 8}"
    return "BOOL" if kind == "b" else "BYTES"


def as_bytes(values: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in values.reshape(-1)]


def raw_bytes(values: np.ndarray) -> bytes:
    """A tensor's raw data: little-endian, row-major; BYTES elements length-prefixed."""
    if datatype_of(values) == "BYTES":
        return b"".join(_LENGTH.pack(len(b)) + b for b in as_bytes(values))
    return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
