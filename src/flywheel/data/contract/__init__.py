"""Data contracts: inferred on first ingest as reviewable YAML, enforced on every snapshot.

A contract is a small set of rules per column (type, nullability, range, allowed
categories, uniqueness) plus a key (columns whose combination must be unique). It is
inferred from the first snapshot, saved as a commented YAML file the user reviews and
edits, and every later snapshot is validated against it with pandera.
``validate_frame`` never raises: it returns a :class:`ValidationReport` and callers raise
:class:`~flywheel.errors.ContractViolation` (see :meth:`ValidationReport.raise_if_failed`).

One module per job: ``schema`` (the contract model and the pydantic schema of its YAML
form), ``file`` (reading and writing the YAML), ``infer`` (a contract from a snapshot) and
``validate`` (a frame against a contract). The YAML format and every rule are described in
``docs/contracts.md``.
"""

from __future__ import annotations

from flywheel.data.contract.file import load_contract, save_contract
from flywheel.data.contract.infer import infer_contract
from flywheel.data.contract.schema import (
    DTYPES,
    ColumnRule,
    Contract,
    contract_path,
    contract_version,
)
from flywheel.data.contract.validate import (
    ValidationReport,
    Violation,
    format_report,
    validate_frame,
)

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
