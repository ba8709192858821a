"""Validate a frame against a contract with pandera, and report each broken rule.

``validate_frame`` never raises for bad data: it returns a :class:`ValidationReport` and
callers raise :class:`~flywheel.errors.ContractViolation` (see
:meth:`ValidationReport.raise_if_failed`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from flywheel.data.contract._coerce import coerce
from flywheel.data.contract.schema import ColumnRule, Contract, bound_value
from flywheel.errors import ContractViolation

__all__ = ["MAX_EXAMPLES", "ValidationReport", "Violation", "format_report", "validate_frame"]

logger = logging.getLogger("flywheel.data.contract")

MAX_EXAMPLES = 5
_EXAMPLE_SCAN = 10_000  # examples are picked from the first failing values only


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
            series, mask = coerce(series, rule.dtype)
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
        checks.append(("min", pa.Check.ge(bound_value(rule.min))))
    if rule.max is not None:
        checks.append(("max", pa.Check.le(bound_value(rule.max))))
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
