"""Content-addressed, immutable snapshots: Parquet parts + a JSON manifest in the object store.

INTERFACE STUB — implemented by the ingest work item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flywheel.config import Settings
from flywheel.data.contract import ValidationReport

__all__ = [
    "ColumnInfo",
    "IngestResult",
    "Manifest",
    "Part",
    "get_snapshot",
    "ingest",
    "latest_snapshot",
    "list_snapshots",
    "read_snapshot",
    "validate_snapshot",
]


@dataclass(frozen=True)
class Part:
    key: str  # object-store key of a Parquet file (zstd), named by its content sha256
    sha256: str
    rows: int


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str  # Arrow type as a string


@dataclass(frozen=True)
class Manifest:
    id: str  # "snap-" + first 16 hex of sha256
    dataset: str
    created_at: str  # ISO 8601 UTC
    rows: int
    columns: list[ColumnInfo]
    sha256: str  # content hash over the ordered part hashes
    parts: list[Part]
    parent: str | None = None
    target: str | None = None
    timestamp_column: str | None = None
    key_columns: list[str] = field(default_factory=list)
    time_range: tuple[str, str] | None = None
    source: dict[str, Any] = field(default_factory=dict)  # url (masked), query or file, mode
    contract_version: str | None = None


@dataclass
class IngestResult:
    manifest: Manifest
    created: bool  # False when the data was unchanged and an existing snapshot was returned
    new_rows: int
    validation: ValidationReport | None = None
    contract_created: bool = False


def ingest(
    settings: Settings,
    *,
    query: str | None = None,
    file: Path | None = None,
    target: str | None = None,
    dataset: str | None = None,
    full: bool = False,
) -> IngestResult:
    raise NotImplementedError


def list_snapshots(settings: Settings, dataset: str | None = None) -> list[Manifest]:
    raise NotImplementedError


def get_snapshot(settings: Settings, snapshot_id: str) -> Manifest:
    raise NotImplementedError


def latest_snapshot(settings: Settings, dataset: str) -> Manifest | None:
    raise NotImplementedError


def read_snapshot(settings: Settings, snapshot: str | Manifest) -> pd.DataFrame:
    raise NotImplementedError


def validate_snapshot(settings: Settings, snapshot: str | Manifest) -> ValidationReport:
    raise NotImplementedError
