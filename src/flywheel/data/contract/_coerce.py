"""A contract's dtypes are semantic; this coerces a column to one canonical form per dtype.

pandera checks physical dtypes ("int64" vs "Int64" vs "object"), but a contract's dtype is
semantic: an int column may arrive as int64, nullable Int64, float64 with NaN (SQLite), or
digit strings. So each column is coerced here to one canonical form and the values that do
not fit are counted as `dtype` violations; pandera then checks the coerced frame. pandera's
own coerce=True reports such values too, but as one opaque "coerce_dtype" error whose
cases depend on the source dtype. Inference uses the same coercion to read ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

__all__ = ["Coerced", "coerce"]

Coerced = tuple[pd.Series, pd.Series]  # (values, bad: non-null values that do not fit)

_BOOL_VALUES: dict[Any, bool] = {
    True: True,
    False: False,
    "true": True,
    "false": False,
    "True": True,
    "False": False,
    "TRUE": True,
    "FALSE": False,
    "1": True,
    "0": False,
}


def coerce(series: pd.Series, dtype: str) -> Coerced:
    """``series`` as ``dtype``'s canonical form, with the values that do not fit masked."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(series.cat.categories.dtype)
    values, bad = _COERCERS[dtype](series)
    if bad.any():
        values = values.mask(bad)
    return values, bad


def _coerce_int(series: pd.Series) -> Coerced:
    values, bad = _coerce_float(series)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values, bad
    bad = bad | (values.notna() & (values % 1 != 0))  # fractions and infinities
    return values.mask(bad).astype("Int64"), bad


def _coerce_float(series: pd.Series) -> Coerced:
    if pd.api.types.is_bool_dtype(series.dtype):
        series = series.astype("Int64" if series.hasnans else "int64")
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series, _no_bad(series)
    values = pd.to_numeric(series, errors="coerce")
    return values, series.notna() & values.isna()


def _coerce_string(series: pd.Series) -> Coerced:
    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return series, _no_bad(series)
    return series.astype("str"), _no_bad(series)


def _coerce_bool(series: pd.Series) -> Coerced:
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("boolean"), _no_bad(series)
    if pd.api.types.is_numeric_dtype(series.dtype):
        bad = series.notna() & ~series.isin([0, 1])
        return series.where(~bad).astype("Float64").astype("boolean"), bad
    values = series.map(_BOOL_VALUES).astype("boolean")
    return values, series.notna() & values.isna()


def _coerce_datetime(series: pd.Series) -> Coerced:
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        values = series
    elif pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        empty = pd.Series(pd.NaT, index=series.index, dtype="datetime64[us]")
        return empty, series.notna()
    else:
        values = pd.to_datetime(series, errors="coerce", format="ISO8601", utc=True)
    if values.dt.tz is not None:  # compare in UTC, stored without a zone
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values, series.notna() & values.isna()


def _no_bad(series: pd.Series) -> pd.Series:
    return pd.Series(False, index=series.index)


_COERCERS: dict[str, Callable[[pd.Series], Coerced]] = {
    "int": _coerce_int,
    "float": _coerce_float,
    "string": _coerce_string,
    "bool": _coerce_bool,
    "datetime": _coerce_datetime,
}
