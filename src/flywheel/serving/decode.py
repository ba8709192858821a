"""Decode request rows straight into per-feature columns in signature order.

No DataFrame on the hot path: a JSON record becomes one short Python list per feature;
the micro-batcher turns the lists of every request in a batch into one ``[n, 1]`` array per
ONNX input. Bulk bodies (Arrow IPC, Parquet, NumPy columns) take a vectorised path.

Rules (the same as :func:`flywheel.training.features.prepare_frame`, which training used):

- every feature must be present (a missing key is an error); unknown fields are an error
  unless the caller asks to ignore them (MLflow's ``/invocations`` does);
- numeric: a JSON number or ``null``/NaN (a missing value: the model imputes it); ``inf`` and
  values beyond float32's range are refused; booleans count as 0/1; strings are refused;
- categorical: a string, or ``null`` (sent as ``""``, the missing-category convention);
  numbers are turned into their string form; lists and objects are refused.

Errors name the field, the row and the rule, and never echo the payload.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.schema import InputSchema
from flywheel.serving.errors import BadRequest, InvalidInput

__all__ = ["Decoded", "InputSchema", "decode_arrow", "decode_columns", "decode_records"]

F32_MAX = float(np.finfo(np.float32).max)
_NAN = float("nan")


@dataclass(slots=True)
class Decoded:
    """``columns[i]`` holds feature ``i``'s values (a list or a 1-D array), ``rows`` long."""

    columns: list[Any]
    rows: int


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _bad(name: str, row: int, rule: str, message: str) -> InvalidInput:
    return InvalidInput(f"Field {name!r} (row {row}) {message}", field=name, row=row, rule=rule)


def _numeric(value: Any, name: str, row: int) -> float:
    kind = type(value)
    if kind is float or kind is int:
        if -F32_MAX <= value <= F32_MAX:
            return value
        if value != value:  # NaN: a missing value
            return _NAN
        raise _bad(
            name,
            row,
            "finite",
            "must be a finite float32 number (or null); got "
            f"{'inf' if math.isinf(value) else 'a value beyond float32 range'}.",
        )
    if value is None:
        return _NAN
    if kind is bool:
        return float(value)
    if isinstance(value, (int, float)):  # numpy scalars and other number types
        return _numeric(float(value), name, row)
    raise _bad(name, row, "type", f"must be a number or null; got {_type_name(value)}.")


def _categorical(value: Any, name: str, row: int) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, (str, int, float)):
        return str(value)
    raise _bad(name, row, "type", f"must be a string or null; got {_type_name(value)}.")


def _listed(names: list[str], shown: int = 10) -> str:
    """``['a', 'b']``, or the first ``shown`` and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{names[:shown]}{more}"


def _field_errors(record: Mapping[str, Any], schema: InputSchema, row: int, extra: str) -> None:
    if not isinstance(record, Mapping):
        raise InvalidInput(
            f"Row {row} must be an object of feature values; got {_type_name(record)}.",
            row=row,
            rule="type",
        )
    missing = [n for n in schema.names if n not in record]
    if missing:
        known = set(schema.names)
        unknown = [str(k)[:64] for k in record if k not in known]
        also = f"; it has unknown field(s) {_listed(unknown)} (misspelt?)" if unknown else ""
        raise InvalidInput(
            f"Row {row} is missing required field(s) {_listed(missing)}{also}; the model "
            f"needs {len(schema.names)} fields: {list(schema.names[:50])}.",
            field=missing[0],
            fields=missing[:10],
            row=row,
            rule="required",
        )
    if extra == "forbid":
        known = set(schema.names)
        unknown = [str(k)[:64] for k in record if k not in known]
        if unknown:
            raise InvalidInput(
                f"Row {row} has unknown field(s) {_listed(unknown)}; the model takes "
                f"{list(schema.names[:50])}. Remove them.",
                field=unknown[0],
                fields=unknown[:10],
                row=row,
                rule="unknown",
            )


def decode_records(
    records: Sequence[Mapping[str, Any]], schema: InputSchema, *, extra: str = "forbid"
) -> Decoded:
    """Rows as ``{feature: value}`` objects -> per-feature lists (validated)."""
    if len(records) == 1:  # the common request: one list per feature, built directly
        return Decoded([[v] for v in _values(records[0], schema, extra, 0)], 1)
    rows = [_values(record, schema, extra, row) for row, record in enumerate(records)]
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in schema.names]
    return Decoded(columns, len(records))


def _values(record: Mapping[str, Any], schema: InputSchema, extra: str, row: int) -> list[Any]:
    """One record's validated values in input order."""
    # Fast check: exactly the right number of keys and all present -> no extras.
    if type(record) is not dict or (len(record) != len(schema.names) and extra == "forbid"):
        _field_errors(record, schema, row, extra)
    try:
        values = schema.values_of(record)  # one C call: every feature's value, in order
    except KeyError:
        _field_errors(record, schema, row, extra)
        raise
    out: list[Any] = []
    # the common types are accepted inline; anything else goes through the full rules
    for (is_numeric, name), value in zip(schema.kinds, values, strict=True):
        if is_numeric:
            if type(value) is float and -F32_MAX <= value <= F32_MAX:
                out.append(value)
            else:
                out.append(_numeric(value, name, row))
        elif type(value) is str:
            out.append(value)
        else:
            out.append(_categorical(value, name, row))
    return out


def _column_length(name: str, values: Any) -> int:
    try:
        return len(values)
    except TypeError:
        raise InvalidInput(
            f"Field {name!r} must be a list of values (one per row); got {_type_name(values)}.",
            field=name,
            rule="type",
        ) from None


def _numeric_array(name: str, values: np.ndarray) -> np.ndarray:
    if values.dtype.kind not in "fiub":
        raise InvalidInput(
            f"Field {name!r} must hold numbers; got an array of {values.dtype}.",
            field=name,
            rule="type",
        )
    as64 = values.astype(np.float64, copy=False)
    bad = np.flatnonzero(np.abs(as64) > F32_MAX)
    if bad.size:
        raise _bad(
            name,
            int(bad[0]),
            "finite",
            "must be a finite float32 number (or null); got inf or a value beyond range.",
        )
    return as64.astype(np.float32)


def _categorical_array(name: str, values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "US":
        return values.astype(str).astype(object)
    return np.array([_categorical(v, name, row) for row, v in enumerate(values)], dtype=object)


def decode_columns(
    columns: Mapping[str, Any], schema: InputSchema, *, extra: str = "forbid"
) -> Decoded:
    """``{feature: list | 1-D array}`` -> per-feature lists/arrays (validated)."""
    if not isinstance(columns, Mapping):
        raise BadRequest(f"Columns must be an object of feature lists; got {_type_name(columns)}.")
    _field_errors(columns, schema, 0, extra)
    rows = -1
    out: list[Any] = []
    for spec in schema.specs:
        values = columns[spec.name]
        n = _column_length(spec.name, values)
        if rows >= 0 and n != rows:
            raise InvalidInput(
                f"Field {spec.name!r} has {n} values but earlier fields have {rows}; every "
                "column must have one value per row.",
                field=spec.name,
                rule="length",
            )
        rows = n
        if isinstance(values, np.ndarray):
            values = values.reshape(-1)
            out.append(
                _numeric_array(spec.name, values)
                if spec.kind == "numeric"
                else _categorical_array(spec.name, values)
            )
        elif spec.kind == "numeric":
            out.append([_numeric(v, spec.name, r) for r, v in enumerate(values)])
        else:
            out.append([_categorical(v, spec.name, r) for r, v in enumerate(values)])
    return Decoded(out, max(rows, 0))


def decode_arrow(table: Any, schema: InputSchema, *, extra: str = "forbid") -> Decoded:
    """A ``pyarrow.Table`` -> per-feature arrays (vectorised; nulls as NaN / ``""``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = table.column_names
    _field_errors(dict.fromkeys(names), schema, 0, extra)
    out: list[Any] = []
    for spec in schema.specs:
        column = table.column(spec.name)
        try:
            if spec.kind == "numeric":
                as64 = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
                out.append(_numeric_array(spec.name, as64))
            else:
                text = pc.fill_null(pc.cast(column, pa.string()), "")
                out.append(text.to_numpy(zero_copy_only=False).astype(object))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InvalidInput(
                f"Field {spec.name!r} has Arrow type {column.type}, which cannot be read as "
                f"{spec.kind}: send {'numbers' if spec.kind == 'numeric' else 'strings'}.",
                field=spec.name,
                rule="type",
            ) from exc
    return Decoded(out, table.num_rows)
