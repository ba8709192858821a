"""The contract model, and the schema of its YAML form.

:class:`Contract` and :class:`ColumnRule` are what inference builds and validation reads.
:class:`ContractSpec` and :class:`ColumnSpec` are pydantic models of the YAML file: they check
what ``yaml.safe_load`` returns (unknown keys refused, types and ranges checked) and build the
model. Each field's ``description`` is the rule a bad value breaks, worded for the user.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

__all__ = [
    "DTYPES",
    "ColumnRule",
    "ColumnSpec",
    "Contract",
    "ContractSpec",
    "bound_value",
    "contract_path",
    "contract_version",
    "describe_error",
]

DTYPES = ("int", "float", "string", "bool", "datetime")
Dtype = Literal["int", "float", "string", "bool", "datetime"]


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


def contract_path(contracts_dir: Path, dataset: str) -> Path:
    """Where a dataset's contract YAML lives."""
    return contracts_dir / f"{dataset}.yaml"


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


def bound_value(value: float | str) -> Any:
    """A ``min``/``max`` as a comparable value: ISO strings (datetime bounds) as Timestamps."""
    return pd.Timestamp(value) if isinstance(value, str) else value


# --------------------------------------------------------------------------- the YAML form

_BOOL = "must be true or false"


def _rule_error(rule: str, value: Any, key: str | None = None) -> PydanticCustomError:
    """An error worded as the contract's rule; ``key`` names the sub-key a model-level check
    is about (pydantic locates those errors at the model, not at the key)."""
    context: dict[str, Any] = {"rule": rule, "value": value}
    if key is not None:
        context["key"] = key
    return PydanticCustomError("contract_rule", "{rule}", context)


class ColumnSpec(BaseModel):
    """One entry under ``columns``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    dtype: Dtype = Field(description=f"must be one of {', '.join(DTYPES)}")
    nullable: bool = Field(True, description=_BOOL)
    min: float | str | None = Field(None, description="must be a number or an ISO 8601 date")
    max: float | str | None = Field(None, description="must be a number or an ISO 8601 date")
    allowed: list[str] | None = Field(None, description="must be a non-empty list of values")
    unique: bool = Field(False, description=_BOOL)

    @field_validator("min", "max", mode="plain")
    @classmethod
    def _bound(cls, value: Any, info: ValidationInfo) -> Any:
        dtype = info.data.get("dtype")
        if value is None or dtype is None:  # no rule, or a bad dtype (reported on its own)
            return value
        if dtype in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _rule_error(f"must be a number for a {dtype} column", value)
            return value
        if dtype != "datetime":
            raise _rule_error(f"is not a rule for a {dtype} column (delete it)", value)
        if not isinstance(value, str | dt.date):  # YAML reads unquoted 2024-01-01 as a date
            raise _rule_error("must be an ISO 8601 date or timestamp", value)
        try:
            stamp = pd.Timestamp(value)
        except ValueError:
            stamp = pd.NaT
        if stamp is pd.NaT:  # pd.Timestamp("") is NaT, not an error
            raise _rule_error("must be an ISO 8601 date or timestamp", value)
        return stamp.isoformat()

    @field_validator("allowed", mode="plain")
    @classmethod
    def _allowed(cls, value: Any, info: ValidationInfo) -> list[str] | None:
        dtype = info.data.get("dtype")
        if value is None:
            return None
        if dtype is not None and dtype != "string":
            raise _rule_error(f"is only a rule for string columns, not {dtype}", value)
        if (
            not isinstance(value, list)
            or not value
            or any(isinstance(v, dict | list) for v in value)
        ):
            raise _rule_error("must be a non-empty list of values (delete it to allow any)", value)
        return [str(v) for v in value]  # YAML reads codes such as 1 or yes as a number or a bool

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        low, high = self.min, self.max
        if low is not None and high is not None and bound_value(low) > bound_value(high):
            raise _rule_error(f"must not exceed max ({high!r})", low, key="min")
        return self

    def to_rule(self) -> ColumnRule:
        return ColumnRule(
            dtype=self.dtype,
            nullable=self.nullable,
            min=self.min,
            max=self.max,
            allowed=self.allowed,
            unique=self.unique,
        )


class ContractSpec(BaseModel):
    """The whole file."""

    model_config = ConfigDict(strict=True, extra="forbid")

    dataset: str = Field(min_length=1, description="must be a non-empty string")
    version: Any = Field(None, description="is informational (recomputed on load)")
    target: str | None = Field(None, description="must be one of the listed columns or null")
    key_columns: list[str] = Field(
        default_factory=list, description="must be a list of listed columns"
    )
    allow_extra_columns: bool = Field(False, description=_BOOL)
    columns: dict[str, ColumnSpec] = Field(
        min_length=1, description="must be a non-empty mapping of column name to rules"
    )

    @field_validator("columns", mode="before")
    @classmethod
    def _column_names(cls, value: Any) -> Any:
        # YAML reads a column named `2024:` as an int; a column name is text.
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _named_columns_are_listed(self) -> Self:
        if self.target is not None and self.target not in self.columns:
            raise _rule_error(
                "must be one of the listed columns or null", self.target, key="target"
            )
        if any(name not in self.columns for name in self.key_columns):
            raise _rule_error(
                "must be a list of listed columns", self.key_columns, key="key_columns"
            )
        return self

    def to_contract(self) -> Contract:
        """The model, with its version computed from the rules (the stored one is ignored)."""
        contract = Contract(
            dataset=self.dataset,
            version="",
            columns={name: spec.to_rule() for name, spec in self.columns.items()},
            target=self.target,
            key_columns=list(self.key_columns),
            allow_extra_columns=self.allow_extra_columns,
        )
        contract.version = contract_version(contract)
        return contract


def describe_error(error: ErrorDetails) -> tuple[tuple[str | int, ...], str, str, Any]:
    """One pydantic error as (path in the file, key as the user reads it, rule, bad value).

    The key is dotted (``columns.age.max``), with ``(top level)`` for the document itself
    and its unknown keys (``(top level).allow_extra``).
    """
    loc, ctx = tuple(error["loc"]), error.get("ctx") or {}
    value = error.get("input")
    if error["type"] == "contract_rule":
        path = loc + ((ctx["key"],) if "key" in ctx else ())
        return path, _key(path), str(ctx["rule"]), ctx["value"]
    in_column = len(loc) >= 2 and loc[0] == "columns"
    model: type[BaseModel] = ColumnSpec if in_column else ContractSpec
    if error["type"] in ("extra_forbidden", "invalid_key"):
        known = sorted(model.model_fields)
        key = _key(loc) if in_column else f"(top level).{loc[-1]}"
        return loc, key, f"is not a known key (known: {known})", loc[-1]
    if error["type"] == "missing":
        value = None
    return loc, _key(loc), _rule(loc, model) or error["msg"], value


def _key(path: tuple[str | int, ...]) -> str:
    if not path:
        return "(top level)"
    if path[0] == "columns":
        return ".".join(str(part) for part in path[:3])
    return str(path[0])  # key_columns.0 is reported as key_columns


def _rule(loc: tuple[str | int, ...], model: type[BaseModel]) -> str | None:
    if not loc:
        return "must be a mapping of contract keys"
    if loc[0] == "columns" and len(loc) == 2:
        return "must be a mapping with at least a dtype"
    name = loc[2] if model is ColumnSpec else loc[0]
    found = model.model_fields.get(str(name))
    return found.description if found is not None else None
