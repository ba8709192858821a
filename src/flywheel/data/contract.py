"""Data contracts: inferred on first ingest as reviewable YAML, enforced on every snapshot.

A contract is a small set of rules per column (type, nullability, range, allowed
categories, uniqueness) plus a key (columns whose combination must be unique). It is
inferred from the first snapshot, saved as a commented YAML file the user reviews and
edits, and every later snapshot is validated against it with pandera.
``validate_frame`` never raises: it returns a :class:`ValidationReport` and callers raise
:class:`~flywheel.errors.ContractViolation` (see :meth:`ValidationReport.raise_if_failed`).

The YAML format and every rule are described in ``docs/contracts.md``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import yaml
from pandera.errors import SchemaErrors

from flywheel.errors import ConfigError, ContractViolation, DataError, NotFound

__all__ = [
    "DTYPES",
    "ColumnRule",
    "Contract",
    "ValidationReport",
    "Violation",
    "contract_path",
    "contract_version",
    "format_report",
    "infer_contract",
    "load_contract",
    "save_contract",
    "validate_frame",
]

logger = logging.getLogger("flywheel.data.contract")

DTYPES = ("int", "float", "string", "bool", "datetime")
MAX_EXAMPLES = 5
_EXAMPLE_SCAN = 10_000  # examples are picked from the first failing values only
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
_TOP_KEYS = {"dataset", "version", "target", "key_columns", "allow_extra_columns", "columns"}
_RULE_KEYS = {"dtype", "nullable", "min", "max", "allowed", "unique"}

_HEADER = """\
# flywheel data contract for dataset {dataset!r}.
# Inferred from the first snapshot: review it and edit it. Every later snapshot is
# validated against these rules; a snapshot that breaks one is rejected with a report
# naming the column, the rule, how many values broke it and a few examples.
#
# Top-level keys:
#   dataset              the dataset these rules belong to
#   version              short hash of the rules below; recomputed on load, so editing a
#                        rule changes it (the value written here is informational)
#   target               the label column, or null
#   key_columns          columns whose combination must be unique in every snapshot
#   allow_extra_columns  false: a column not listed under `columns` is a violation
#   columns              one entry per column:
#     dtype      int | float | string | bool | datetime
#     nullable   false: a null value is a violation
#     min, max   inclusive bounds: numbers, or ISO 8601 strings for datetime columns
#                (inferred: 10% of the range below the minimum, 100% above the maximum;
#                datetimes and key columns get no max); delete to drop the rule
#     allowed    the only values a string column may take; delete to allow any value
#     unique     true: no value may repeat in that column
# Full reference: docs/contracts.md
"""


@dataclass
class ColumnRule:
    dtype: str  # "int" | "float" | "string" | "bool" | "datetime"
    nullable: bool = True
    min: float | str | None = None  # str for datetimes (ISO)
    max: float | str | None = None
    allowed: list[str] | None = None  # categories for string columns
    unique: bool = False


@dataclass
class Contract:
    dataset: str
    version: str  # short content hash of the rules, recomputed on load
    columns: dict[str, ColumnRule]
    target: str | None = None
    key_columns: list[str] = field(default_factory=list)
    allow_extra_columns: bool = False


@dataclass(frozen=True)
class Violation:
    column: str
    rule: str  # e.g. "dtype", "nullable", "min", "max", "allowed", "unique", "present", "not_empty"
    count: int
    examples: list[Any]
    message: str


@dataclass
class ValidationReport:
    dataset: str
    contract_version: str
    rows: int
    violations: list[Violation]

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: dataset, contract_version, rows, passed, violations."""
        return {
            "dataset": self.dataset,
            "contract_version": self.contract_version,
            "rows": self.rows,
            "passed": self.passed,
            "violations": [asdict(v) for v in self.violations],
        }

    def raise_if_failed(self) -> None:
        """Raise :class:`ContractViolation` (violations in ``details``) unless passed."""
        if self.passed:
            return
        rules = ", ".join(f"{v.column}:{v.rule}" for v in self.violations[:10])
        raise ContractViolation(
            f"data for dataset {self.dataset!r} breaks its contract {self.contract_version} "
            f"with {len(self.violations)} violation(s) ({rules}); fix the data, or edit the "
            "contract YAML if the new values are valid",
            dataset=self.dataset,
            contract_version=self.contract_version,
            violations=[asdict(v) for v in self.violations],
        )


def contract_path(contracts_dir: Path, dataset: str) -> Path:
    """Where a dataset's contract YAML lives."""
    return contracts_dir / f"{dataset}.yaml"


# --------------------------------------------------------------------------- versions


def contract_version(contract: Contract) -> str:
    """Short sha256 (12 hex) of the canonical rules; the dataset name and stored version
    are not part of it, and neither is the order of columns or of allowed values."""
    payload = {
        "columns": {name: _canonical_rule(rule) for name, rule in contract.columns.items()},
        "target": contract.target,
        "key_columns": list(contract.key_columns),
        "allow_extra_columns": contract.allow_extra_columns,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _canonical_rule(rule: ColumnRule) -> dict[str, Any]:
    def bound(value: float | str | None) -> float | str | None:
        # 5 and 5.0 are the same rule; YAML may load either.
        return value if value is None or isinstance(value, str) else float(value)

    return {
        "dtype": rule.dtype,
        "nullable": rule.nullable,
        "min": bound(rule.min),
        "max": bound(rule.max),
        "allowed": None if rule.allowed is None else sorted(rule.allowed),
        "unique": rule.unique,
    }


# --------------------------------------------------------------------------- coercion
# pandera checks physical dtypes ("int64" vs "Int64" vs "object"), but a contract's dtype is
# semantic: an int column may arrive as int64, nullable Int64, float64 with NaN (SQLite), or
# digit strings. So each column is coerced here to one canonical form and the values that do
# not fit are counted as `dtype` violations; pandera then checks the coerced frame. pandera's
# own coerce=True reports such values too, but as one opaque "coerce_dtype" error whose
# cases depend on the source dtype.

Coerced = tuple[pd.Series, pd.Series]  # (values, bad: non-null values that do not fit)


def _coerce(series: pd.Series, dtype: str) -> Coerced:
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


# --------------------------------------------------------------------------- inference


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
    values, _ = _coerce(series, dtype)
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
    return {"boolean": "bool", "integer": "int", "datetime": "datetime"}.get(inferred, "string")


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


# --------------------------------------------------------------------------- YAML


def save_contract(contract: Contract, path: Path) -> None:
    """Write the contract as commented YAML, atomically (temp file + ``os.replace``)."""
    contract.version = contract_version(contract)
    text = _HEADER.format(dataset=contract.dataset) + yaml.dump(
        _to_mapping(contract), Dumper=_Dumper, sort_keys=False, allow_unicode=True
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("saved contract %s for dataset %s to %s", contract.version, contract.dataset, path)


class _Dumper(yaml.SafeDumper):
    """Block style for mappings (one rule per line), flow style for lists (``[a, b]``)."""

    def represent_flow_list(self, data: list[Any]) -> yaml.SequenceNode:
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _Dumper.represent_flow_list)


def _to_mapping(contract: Contract) -> dict[str, Any]:
    return {
        "dataset": contract.dataset,
        "version": contract.version,
        "target": contract.target,
        "key_columns": list(contract.key_columns),
        "allow_extra_columns": contract.allow_extra_columns,
        "columns": {name: _rule_mapping(rule) for name, rule in contract.columns.items()},
    }


def _rule_mapping(rule: ColumnRule) -> dict[str, Any]:
    out: dict[str, Any] = {"dtype": rule.dtype, "nullable": rule.nullable}
    for key in ("min", "max", "allowed"):
        if getattr(rule, key) is not None:
            out[key] = getattr(rule, key)
    if rule.unique:
        out["unique"] = True
    return out


def load_contract(path: Path) -> Contract:
    """Read and check a contract YAML; the version is recomputed from the rules."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(
            f"no data contract at {path}; ingest the dataset once to infer one, or write it",
            path=str(path),
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"contract {path} is not valid YAML ({exc}); fix the syntax, or delete the file "
            "to infer a new contract on the next ingest",
            path=str(path),
        ) from exc
    contract = _Parser(path).contract(data)
    stored = data.get("version")
    if stored is not None and stored != contract.version:
        logger.info("contract %s was edited: version %s is now %s", path, stored, contract.version)
    return contract


class _Parser:
    """Checks the YAML mapping; every error names the file, the key and the rule."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, rule: str, value: Any) -> ConfigError:
        return ConfigError(
            f"contract {self.path}: {key} {rule}, got {value!r}; edit the file to fix it",
            path=str(self.path),
            key=key,
            value=repr(value),
        )

    def contract(self, data: Any) -> Contract:
        if not isinstance(data, dict):
            raise self.fail("(top level)", "must be a mapping of contract keys", data)
        self.known_keys(data, _TOP_KEYS, "(top level)")
        dataset = data.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            raise self.fail("dataset", "must be a non-empty string", dataset)
        columns = self.columns(data.get("columns"))
        contract = Contract(
            dataset=dataset,
            version="",
            columns=columns,
            target=self.target(data.get("target"), columns),
            key_columns=self.key_columns(data.get("key_columns", []), columns),
            allow_extra_columns=self.boolean(
                "allow_extra_columns", data.get("allow_extra_columns", False)
            ),
        )
        contract.version = contract_version(contract)
        return contract

    def known_keys(self, data: Mapping[Any, Any], allowed: set[str], where: str) -> None:
        unknown = sorted(str(key) for key in data if key not in allowed)
        if unknown:
            raise self.fail(
                f"{where}.{unknown[0]}", f"is not a known key (known: {sorted(allowed)})", unknown
            )

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false", value)
        return value

    def columns(self, data: Any) -> dict[str, ColumnRule]:
        if not isinstance(data, dict) or not data:
            raise self.fail("columns", "must be a non-empty mapping of column name to rules", data)
        return {str(name): self.rule(f"columns.{name}", rule) for name, rule in data.items()}

    def rule(self, where: str, data: Any) -> ColumnRule:
        if not isinstance(data, dict):
            raise self.fail(where, "must be a mapping with at least a dtype", data)
        self.known_keys(data, _RULE_KEYS, where)
        dtype = data.get("dtype")
        if dtype not in DTYPES:
            raise self.fail(f"{where}.dtype", f"must be one of {', '.join(DTYPES)}", dtype)
        rule = ColumnRule(
            dtype=dtype,
            nullable=self.boolean(f"{where}.nullable", data.get("nullable", True)),
            min=self.bound(f"{where}.min", dtype, data.get("min")),
            max=self.bound(f"{where}.max", dtype, data.get("max")),
            allowed=self.allowed(f"{where}.allowed", dtype, data.get("allowed")),
            unique=self.boolean(f"{where}.unique", data.get("unique", False)),
        )
        self.ordered(where, rule)
        return rule

    def bound(self, key: str, dtype: str, value: Any) -> float | str | None:
        if value is None:
            return None
        if dtype in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(key, f"must be a number for a {dtype} column", value)
            return value
        if dtype != "datetime":
            raise self.fail(key, f"is not a rule for a {dtype} column (delete it)", value)
        if isinstance(value, dt.date):  # YAML reads unquoted 2024-01-01 as a date
            return pd.Timestamp(value).isoformat()
        if not isinstance(value, str):
            raise self.fail(key, "must be an ISO 8601 date or timestamp", value)
        try:
            return pd.Timestamp(value).isoformat()
        except ValueError as exc:
            raise self.fail(key, "must be an ISO 8601 date or timestamp", value) from exc

    def allowed(self, key: str, dtype: str, value: Any) -> list[str] | None:
        if value is None:
            return None
        if dtype != "string":
            raise self.fail(key, f"is only a rule for string columns, not {dtype}", value)
        if (
            not isinstance(value, list)
            or not value
            or any(isinstance(v, dict | list) for v in value)
        ):
            raise self.fail(
                key, "must be a non-empty list of values (delete it to allow any)", value
            )
        return [str(v) for v in value]

    def ordered(self, where: str, rule: ColumnRule) -> None:
        if rule.min is None or rule.max is None:
            return
        low, high = _bound_value(rule.min), _bound_value(rule.max)
        if low > high:
            raise self.fail(f"{where}.min", f"must not exceed max ({rule.max!r})", rule.min)

    def target(self, value: Any, columns: dict[str, ColumnRule]) -> str | None:
        if value is not None and value not in columns:
            raise self.fail("target", "must be one of the listed columns or null", value)
        return value

    def key_columns(self, value: Any, columns: dict[str, ColumnRule]) -> list[str]:
        if not isinstance(value, list) or any(name not in columns for name in value):
            raise self.fail("key_columns", "must be a list of listed columns", value)
        return [str(name) for name in value]


def _bound_value(value: float | str) -> Any:
    return pd.Timestamp(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------- validation


def validate_frame(df: pd.DataFrame, contract: Contract) -> ValidationReport:
    """Check ``df`` against ``contract``; never raises for bad data, returns the report."""
    violations: list[Violation] = []
    if df.empty:
        violations.append(
            Violation("*", "not_empty", 1, [], "the data has no rows; check the source query")
        )
    frame, bad = _coerced_frame(df, contract)
    violations += [_dtype_violation(df[name], contract.columns[name], mask) for name, mask in bad]
    violations += _pandera_violations(frame, contract, dict(bad))
    order = {name: i for i, name in enumerate(contract.columns)}
    violations.sort(key=lambda v: (order.get(v.column, len(order)), v.rule))
    report = ValidationReport(contract.dataset, contract.version, len(df), violations)
    logger.info(
        "validated %d rows of %s against contract %s: %d violation(s)",
        len(df),
        contract.dataset,
        contract.version,
        len(violations),
    )
    return report


def _coerced_frame(
    df: pd.DataFrame, contract: Contract
) -> tuple[pd.DataFrame, list[tuple[str, np.ndarray]]]:
    """Contract columns coerced, extra columns as they are, on a 0..n-1 index (so failure
    indices are row positions); plus, per column, the positions of values of the wrong type."""
    data: dict[str, Any] = {}
    bad: list[tuple[str, np.ndarray]] = []
    for name in df.columns:
        series = df[name].reset_index(drop=True)
        rule = contract.columns.get(str(name))
        if rule is not None:
            series, mask = _coerce(series, rule.dtype)
            if mask.any():
                bad.append((str(name), np.flatnonzero(mask.to_numpy())))
        data[str(name)] = series
    return pd.DataFrame(data, index=pd.RangeIndex(len(df))), bad


def _dtype_violation(original: pd.Series, rule: ColumnRule, positions: np.ndarray) -> Violation:
    examples = _examples(original.iloc[positions])
    return Violation(
        str(original.name),
        "dtype",
        len(positions),
        examples,
        f"column {original.name!r}: {len(positions)} value(s) are not {rule.dtype} "
        f"(e.g. {examples}); fix the source, or change dtype in the contract",
    )


def _pandera_violations(
    frame: pd.DataFrame, contract: Contract, bad: dict[str, np.ndarray]
) -> list[Violation]:
    schema, check_rules = _schema(contract, frame)
    try:
        schema.validate(frame, lazy=True, inplace=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
    else:
        return []
    is_key = cases["check"] == "multiple_fields_uniqueness"
    out = [_key_violation(frame, contract.key_columns, cases[is_key])] if is_key.any() else []
    out += _column_set_violations(frame, cases)
    per_value = ~is_key & ~cases["check"].isin(list(_COLUMN_SET_CHECKS))
    for (column, check, number), group in cases[per_value].groupby(
        ["column", "check", "check_number"], dropna=False, sort=False
    ):
        rule = check_rules.get((column, number), "") if _is_set(number) else ""
        violation = _translate(contract, str(column), str(check), rule, group, bad)
        if violation.count:
            out.append(violation)
    return out


_COLUMN_SET_CHECKS = {"column_in_dataframe", "column_in_schema"}


def _column_set_violations(frame: pd.DataFrame, cases: pd.DataFrame) -> list[Violation]:
    """Missing and unexpected columns: one failure case (the column name) per column."""
    out: list[Violation] = []
    for check, name in cases[["check", "failure_case"]].itertuples(index=False):
        if check == "column_in_dataframe":
            out.append(_present_violation(str(name)))
        elif check == "column_in_schema":
            out.append(_unexpected_violation(str(name), frame[str(name)]))
    return out


def _is_set(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _schema(
    contract: Contract, frame: pd.DataFrame
) -> tuple[pa.DataFrameSchema, dict[tuple[str, Any], str]]:
    """The pandera schema for the coerced frame, and (column, check_number) -> rule name."""
    columns: dict[str, pa.Column] = {}
    check_rules: dict[tuple[str, Any], str] = {}
    single_key = contract.key_columns if len(contract.key_columns) == 1 else []
    for name, rule in contract.columns.items():
        checks = _checks(rule)
        check_rules.update({(name, i): rule_name for i, (rule_name, _) in enumerate(checks)})
        columns[name] = pa.Column(
            nullable=rule.nullable,
            unique=rule.unique and name not in single_key,  # the key check covers it
            report_duplicates="exclude_first",
            checks=[check for _, check in checks],
        )
    keys = contract.key_columns
    schema = pa.DataFrameSchema(
        columns,
        strict=not contract.allow_extra_columns,
        unique=keys if keys and all(k in frame.columns for k in keys) else None,
        report_duplicates="exclude_first",
    )
    return schema, check_rules


def _checks(rule: ColumnRule) -> list[tuple[str, pa.Check]]:
    checks: list[tuple[str, pa.Check]] = []
    if rule.min is not None:
        checks.append(("min", pa.Check.ge(_bound_value(rule.min))))
    if rule.max is not None:
        checks.append(("max", pa.Check.le(_bound_value(rule.max))))
    if rule.allowed is not None:
        checks.append(("allowed", pa.Check.isin(rule.allowed)))
    return checks


def _translate(
    contract: Contract,
    column: str,
    check: str,
    rule: str,
    cases: pd.DataFrame,
    bad: dict[str, np.ndarray],
) -> Violation:
    if check == "not_nullable":
        return _null_violation(column, cases, bad.get(column))
    if check == "field_uniqueness":
        rule = "unique"
    return _value_violation(column, rule or check, contract.columns.get(column), cases)


def _present_violation(column: str) -> Violation:
    return Violation(
        column,
        "present",
        1,
        [],
        f"column {column!r} is missing from the data; fix the source query, or delete the "
        "column from the contract",
    )


def _unexpected_violation(column: str, values: pd.Series) -> Violation:
    return Violation(
        column,
        "unexpected",
        1,
        _examples(values.dropna().iloc[: MAX_EXAMPLES * 20]),
        f"column {column!r} is not in the contract; add it to the contract's columns, or set "
        "allow_extra_columns: true",
    )


def _key_violation(frame: pd.DataFrame, keys: list[str], cases: pd.DataFrame) -> Violation:
    positions = pd.unique(cases["index"].to_numpy())
    sample = frame.loc[positions[: MAX_EXAMPLES * 20], keys].drop_duplicates()
    examples = [[_plain(v) for v in row] for row in sample.itertuples(index=False)]
    column = ",".join(keys)
    return Violation(
        column,
        "unique",
        len(positions),
        examples[:MAX_EXAMPLES],
        f"key ({column}): {len(positions)} row(s) repeat an earlier row's key "
        f"(e.g. {examples[:MAX_EXAMPLES]}); deduplicate the source, or change key_columns",
    )


def _null_violation(column: str, cases: pd.DataFrame, bad: np.ndarray | None) -> Violation:
    positions = cases["index"].to_numpy()
    if bad is not None:  # values of the wrong type became null; they are reported as dtype
        positions = positions[~np.isin(positions, bad)]
    examples = [int(p) for p in positions[:MAX_EXAMPLES]]
    return Violation(
        column,
        "nullable",
        len(positions),
        examples,
        f"column {column!r}: {len(positions)} null value(s) (at rows {examples}) but the "
        "contract says nullable: false; fix the source, or set nullable: true",
    )


def _value_violation(
    column: str, rule: str, spec: ColumnRule | None, cases: pd.DataFrame
) -> Violation:
    examples = _examples(cases["failure_case"])
    limit = {
        "min": f"below min {spec.min!r}" if spec else "",
        "max": f"above max {spec.max!r}" if spec else "",
        "allowed": "not in allowed",
        "unique": "repeated (unique: true)",
    }.get(rule, f"failing {rule}")
    return Violation(
        column,
        rule,
        len(cases),
        examples,
        f"column {column!r}: {len(cases)} value(s) {limit} (e.g. {examples}); fix the data, "
        f"or edit {rule} in the contract if these values are valid",
    )


def _examples(values: pd.Series) -> list[Any]:
    """Up to MAX_EXAMPLES distinct values (from the first few thousand), JSON-able."""
    out: list[Any] = []
    for value in values.iloc[:_EXAMPLE_SCAN].drop_duplicates().iloc[: MAX_EXAMPLES * 2]:
        plain = _plain(value)
        if plain not in out:
            out.append(plain)
    return out[:MAX_EXAMPLES]


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def format_report(report: ValidationReport) -> str:
    """A readable multi-line summary: a header, then one line per violation."""
    head = f"dataset {report.dataset!r}, contract {report.contract_version}: {report.rows} rows, "
    if report.passed:
        return head + "passed"
    lines = [head + f"FAILED with {len(report.violations)} violation(s)"]
    width = max(len("column"), *(len(v.column) for v in report.violations))
    lines.append(f"  {'column':<{width}}  {'rule':<10}  {'count':>8}  examples")
    for v in report.violations:
        examples = json.dumps(v.examples, default=str)
        lines.append(f"  {v.column:<{width}}  {v.rule:<10}  {v.count:>8}  {examples}")
    return "\n".join(lines)
