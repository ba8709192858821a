"""Ingest a user's CSV or Parquet file: read, check, and rewrite it as a normalised Parquet part.

A file is a whole table, so a file ingest makes a root snapshot (no parent). Its columns are
normalised exactly like SQL extractions (see :mod:`flywheel.data.sources`).

A CSV's empty cell is a null (missing value) whatever the column's type, as a Parquet null
is; every other text, "NA", "n/a" and "null" included, is a value. So the same rows as CSV
and as Parquet give the same snapshot values and the same inferred contract.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flywheel.data.sources import ExtractStats, normalise_schema, parquet_sha256, write_batches
from flywheel.errors import DataError

__all__ = ["FileStage", "read_file_table", "stage_file"]

log = logging.getLogger("flywheel.data.files")

_CSV = (".csv", ".txt", ".tsv")
_PARQUET = (".parquet", ".pq")

# Only an empty cell (quoted or not) is missing: pyarrow's default list ("NA", "n/a",
# "null", "NaN", ...) would silently turn text into nulls in number columns, and would keep
# empty cells as "" in text columns (a CSV and a Parquet file of the same rows then differ).
_CSV_CONVERT = pacsv.ConvertOptions(null_values=[""], strings_can_be_null=True)


@dataclass
class FileStage:
    """A user's file rewritten as a Parquet part in a temporary folder."""

    stats: ExtractStats
    name: str
    sha256: str  # of the user's original file


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"Cannot read {str(path)!r}: {exc}. Fix: pass a well-formed CSV (with a header row) "
        "or Parquet file.",
        file=str(path),
    )


def read_file_table(path: Path, *, parquet: bool | None = None) -> pa.Table:
    """Read a CSV or Parquet file as an Arrow table; errors become :class:`DataError`.
    ``parquet``: the kind, when the caller knows it from the bytes (default: the suffix)."""
    if not path.is_file():
        raise DataError(
            f"No file at {str(path)!r}. Fix: check the path (relative paths are from the "
            "current folder).",
            file=str(path),
        )
    if path.stat().st_size == 0:
        raise DataError(
            f"The file {str(path)!r} is empty. Fix: pass a file with data.", file=str(path)
        )
    suffix = path.suffix.lower()
    if parquet is None and suffix not in _CSV + _PARQUET:
        raise DataError(
            f"Unsupported file type {suffix!r} for {str(path)!r}. "
            "Fix: pass a .csv or .parquet file.",
            file=str(path),
        )
    try:
        if parquet or (parquet is None and suffix in _PARQUET):
            _check_names(path, pq.read_schema(path).names)
            return pq.read_table(path)
        delimiter = "\t" if suffix == ".tsv" else ","
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=_CSV_CONVERT,
        )
        names = table.column_names  # decodes the header: a non-UTF-8 one raises here
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise _unreadable(path, exc) from exc
    _check_names(path, names)
    _check_text(path, table)
    return table


def _check_names(path: Path, names: list[str]) -> None:
    """Every column needs a name of its own: an unnamed or repeated column becomes an
    unusable contract key and, much later, a model input that cannot be exported."""
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if not name.strip():
            hint = (
                " (a CSV saved by pandas with its index has an unnamed first column: save it "
                "with index=False)"
                if position == 1
                else ""
            )
            raise DataError(
                f"In {str(path)!r}, column {position} has no name{hint}. Fix: give every "
                "column a header.",
                file=str(path),
                position=position,
            )
        if name in seen:
            raise DataError(
                f"In {str(path)!r}, column {position} is named {name!r} like column "
                f"{seen[name]}. Fix: give every column a different header.",
                file=str(path),
                column=name,
                position=position,
            )
        seen[name] = position


def _check_text(path: Path, table: pa.Table) -> None:
    """pyarrow reads a CSV column with invalid UTF-8 as binary: that is a garbled file."""
    for f in table.schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            raise _unreadable(path, ValueError(f"column {f.name!r} is not valid UTF-8 text"))


def _check_table(path: Path, table: pa.Table, target: str | None) -> None:
    if table.num_rows == 0:
        raise DataError(
            f"The file {str(path)!r} has no rows (columns: {table.column_names}). "
            "Fix: pass a file with at least one data row.",
            file=str(path),
        )
    if target is not None and target not in table.column_names:
        raise DataError(
            f"The target column {target!r} is not in {str(path)!r}; its columns are "
            f"{table.column_names}. Fix: pass --target with one of them.",
            file=str(path),
            column=target,
        )


def stage_file(
    path: Path,
    out: Path,
    *,
    target: str | None,
    timestamp_column: str | None = None,
    batch_rows: int = 100_000,
) -> FileStage:
    """Read and check ``path``; write it as a normalised, deterministic Parquet file at ``out``."""
    path = Path(path)
    table = read_file_table(path)
    _check_table(path, table, target)
    schema = normalise_schema(table.schema)
    ts = timestamp_column if timestamp_column in table.column_names else None
    try:
        stats = write_batches(
            table.combine_chunks().to_batches(max_chunksize=batch_rows),
            out,
            schema,
            timestamp_column=ts,
        )
    except pa.ArrowException as exc:
        raise _unreadable(path, exc) from exc
    log.debug("staged %s rows from %s", stats.rows, path)
    return FileStage(stats=stats, name=path.name, sha256=parquet_sha256(path))
