"""Data contracts: inferred on first ingest as reviewable YAML, enforced on every snapshot.

INTERFACE STUB — implemented by the contract work item. Signatures and dataclasses are the
contract other modules code against; keep them (add fields only with defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "ColumnRule",
    "Contract",
    "ValidationReport",
    "Violation",
    "contract_path",
    "infer_contract",
    "load_contract",
    "save_contract",
    "validate_frame",
]


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


def contract_path(contracts_dir: Path, dataset: str) -> Path:
    """Where a dataset's contract YAML lives."""
    return contracts_dir / f"{dataset}.yaml"


def infer_contract(
    df: pd.DataFrame, *, dataset: str, target: str | None, key_columns: list[str]
) -> Contract:
    raise NotImplementedError


def save_contract(contract: Contract, path: Path) -> None:
    raise NotImplementedError


def load_contract(path: Path) -> Contract:
    raise NotImplementedError


def validate_frame(df: pd.DataFrame, contract: Contract) -> ValidationReport:
    raise NotImplementedError
