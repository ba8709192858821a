"""Infer a contract from a snapshot: dtypes, nullability, widened ranges, categories, the key."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import pandas as pd

from flywheel.data.contract._coerce import coerce
from flywheel.data.contract.schema import ColumnRule, Contract, contract_version
from flywheel.errors import ConfigError, DataError

__all__ = [
    "MAX_CATEGORIES",
    "MAX_CATEGORY_SHARE",
    "RANGE_MARGIN",
    "UPPER_RANGE_MARGIN",
    "infer_contract",
]

logger = logging.getLogger("flywheel.data.contract")

#: Inferred numeric ranges are widened below the minimum by this share of the observed range...
RANGE_MARGIN = 0.10
#: ...and above the maximum by this share: many operational features grow with time (tenure,
#: totals, days since an event), so a later month's normal data exceeds an early maximum;
#: the bound still catches absurd values (an order of magnitude off, unit mix-ups).
UPPER_RANGE_MARGIN = 1.0
#: A string column gets an ``allowed`` rule when it has at most this many distinct values...
MAX_CATEGORIES = 50
#: ...and the distinct values are at most this share of the non-null rows.
MAX_CATEGORY_SHARE = 0.5

# A string column is a datetime only if every value is an ISO 8601 date or timestamp that
# starts with a full YYYY-MM-DD date: "2024", "1" or "12/01/2024" also parse as dates, but
# they are ambiguous, so such columns stay strings.
_ISO_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?"
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?"
)


def infer_contract(
    df: pd.DataFrame, *, dataset: str, target: str | None, key_columns: list[str]
) -> Contract:
    """Infer rules for every column of ``df``: dtype, nullability, widened numeric ranges,
    allowed categories for low-cardinality strings, and the key ``key_columns``."""
    if df.empty:
        raise DataError(
            f"cannot infer a contract for dataset {dataset!r} from a frame with no rows; "
            "ingest at least one row first",
            dataset=dataset,
        )
    _check_named_columns(df, dataset, target, key_columns)
    columns = {str(name): _infer_rule(df[name]) for name in df.columns}
    for key in key_columns:
        # Keys are identifiers: new customers (larger ids, new codes) are expected in later
        # snapshots, so a key keeps its type and nullability but gets no upper bound and no
        # category list. Its lower bound (e.g. non-negative ids) stays.
        columns[key].max = None
        columns[key].allowed = None
    if len(key_columns) == 1:
        columns[key_columns[0]].unique = True
    contract = Contract(
        dataset=dataset,
        version="",
        columns=columns,
        target=target,
        key_columns=list(key_columns),
    )
    contract.version = contract_version(contract)
    logger.info(
        "inferred contract %s for dataset %s: %d columns", contract.version, dataset, len(columns)
    )
    return contract


def _check_named_columns(
    df: pd.DataFrame, dataset: str, target: str | None, key_columns: list[str]
) -> None:
    named = [("target", target)] if target is not None else []
    named += [("key_columns", name) for name in key_columns]
    for key, name in named:
        if name not in df.columns:
            raise ConfigError(
                f"{key} names column {name!r}, which is not in the data for dataset "
                f"{dataset!r} (columns: {', '.join(map(str, df.columns))}); fix source.{key}",
                key=f"source.{key}",
                value=name,
            )


def _infer_rule(series: pd.Series) -> ColumnRule:
    dtype = _infer_dtype(series)
    values, _ = coerce(series, dtype)
    rule = ColumnRule(dtype=dtype, nullable=bool(series.isna().any()))
    present = values.dropna()
    if present.empty:
        return rule
    if dtype in ("int", "float"):
        rule.min, rule.max = _widened_range(float(present.min()), float(present.max()), dtype)
    elif dtype == "datetime":
        rule.min = _widened_start(present.min(), present.max())
    elif dtype == "string":
        rule.allowed = _categories(present)
    return rule


def _infer_dtype(series: pd.Series) -> str:
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(series.cat.categories.dtype)
    kind = series.dtype
    if pd.api.types.is_bool_dtype(kind):
        return "bool"
    if pd.api.types.is_integer_dtype(kind):
        return "int"
    if pd.api.types.is_float_dtype(kind):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(kind):
        return "datetime"
    inferred = pd.api.types.infer_dtype(series, skipna=True)
    if inferred in ("floating", "mixed-integer-float", "decimal"):
        return "float"
    if inferred == "string" and _all_iso_datetimes(series):
        return "datetime"
    # "date": Arrow date32 columns (a CSV's 2024-01-01, a PostgreSQL date) arrive in pandas
    # as datetime.date objects; they are dates, not text.
    kinds = {"boolean": "bool", "integer": "int", "datetime": "datetime", "date": "datetime"}
    return kinds.get(inferred, "string")


def _all_iso_datetimes(series: pd.Series) -> bool:
    present = series.dropna()
    head = present.iloc[:1000]
    if present.empty or not head.str.fullmatch(_ISO_DATETIME).all():
        return False  # cheap rejection on a sample before scanning every value
    if not present.str.fullmatch(_ISO_DATETIME).all():
        return False
    return bool(pd.to_datetime(present, errors="coerce", format="ISO8601", utc=True).notna().all())


def _widened_range(low: float, high: float, dtype: str) -> tuple[float, float]:
    if dtype == "int" and low >= 0 and high <= 1:
        return 0, 1  # 0/1 flags and labels keep exactly these bounds
    span = high - low
    margin = span * RANGE_MARGIN if span > 0 else max(abs(high) * RANGE_MARGIN, 1.0)
    upper = span * UPPER_RANGE_MARGIN if span > 0 else max(abs(high) * UPPER_RANGE_MARGIN, 1.0)
    new_low, new_high = (
        _round_out(low - margin, margin, math.floor),
        _round_out(high + upper, upper, math.ceil),
    )
    new_low = max(new_low, 0.0) if low >= 0 else new_low  # non-negative stays non-negative
    new_high = min(new_high, 0.0) if high <= 0 else new_high
    if dtype == "int":
        return math.floor(new_low), math.ceil(new_high)
    return new_low, new_high


def _round_out(value: float, margin: float, direction: Callable[[float], int]) -> float:
    """Round ``value`` outward to the margin's order of magnitude, for readable bounds."""
    exponent = math.floor(math.log10(margin))
    step = 10.0**exponent
    return round(direction(value / step) * step, max(0, -exponent))


def _widened_start(low: pd.Timestamp, high: pd.Timestamp) -> str:
    # Only a lower bound: time moves forward, so a later snapshot's newer timestamps must
    # pass; the bound catches absurd old values (e.g. 1970-01-01 defaults).
    margin = (high - low) * RANGE_MARGIN
    return str((low - margin).floor("D").isoformat())


def _categories(present: pd.Series) -> list[str] | None:
    distinct = present.unique()
    if len(distinct) > MAX_CATEGORIES or len(distinct) > MAX_CATEGORY_SHARE * len(present):
        return None
    return sorted(str(value) for value in distinct)
