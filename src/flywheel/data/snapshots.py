"""Content-addressed, immutable snapshots: Parquet parts + a JSON manifest in the object store.

Layout below the store root::

    datasets/<dataset>/parts/<sha256>.parquet       new rows of one ingest (zstd, immutable)
    datasets/<dataset>/snapshots/<id>.json          manifest: the ordered parts = the full table
    datasets/<dataset>/validations/<id>.json        latest contract validation of that snapshot

An ingest stages the new rows in a local temporary Parquet file, validates parent + new rows
against the dataset's contract, then uploads the part, the validation record and, last, the
manifest. A snapshot exists only once its manifest exists; a failure before that leaves at
most an unreferenced, content-addressed part behind (never a half-written object).
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import io
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.config import Settings, absolute_sqlite_url, mask_url
from flywheel.data import contract as contracts
from flywheel.data.contract import Contract, ValidationReport, Violation
from flywheel.data.files import stage_file
from flywheel.data.sources import base_query, extract_to_parquet, incremental_query, parquet_sha256
from flywheel.data.store import ObjectStore, open_store
from flywheel.errors import ContractViolation, DataError, NotFound

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
    "require_valid",
    "validate_snapshot",
]

log = logging.getLogger("flywheel.data.snapshots")


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
    sha256: str  # hash over the dataset name and the ordered part hashes
    parts: list[Part]
    parent: str | None = None
    target: str | None = None
    timestamp_column: str | None = None
    key_columns: list[str] = field(default_factory=list)
    time_range: tuple[str, str] | None = None
    source: dict[str, Any] = field(default_factory=dict)  # url (masked), query or file, mode
    contract_version: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        raw["columns"] = [ColumnInfo(**c) for c in raw["columns"]]
        raw["parts"] = [Part(**p) for p in raw["parts"]]
        if raw.get("time_range") is not None:
            raw["time_range"] = tuple(raw["time_range"])
        return cls(**raw)


@dataclass
class IngestResult:
    manifest: Manifest
    created: bool  # False when the data was unchanged and an existing snapshot was returned
    new_rows: int
    validation: ValidationReport | None = None
    contract_created: bool = False


@dataclass
class _Stage:
    """New rows staged in a local Parquet file, plus what the manifest needs to know."""

    path: Path
    rows: int
    schema: pa.Schema
    time_range: tuple[str, str] | None
    source: dict[str, Any]
    parent: Manifest | None = None
    timestamp_column: str | None = None


# ---------------------------------------------------------------- keys and small helpers


def _prefix(dataset: str) -> str:
    return f"datasets/{dataset}"


def _manifest_key(dataset: str, snapshot_id: str) -> str:
    return f"{_prefix(dataset)}/snapshots/{snapshot_id}.json"


def _validation_key(dataset: str, snapshot_id: str) -> str:
    return f"{_prefix(dataset)}/validations/{snapshot_id}.json"


def _open(settings: Settings) -> ObjectStore:
    """The store with a fresh view: fsspec shares one S3 filesystem (and its listing cache)
    per process, so a snapshot written by another process would otherwise stay invisible."""
    store = open_store(settings)
    if not store.is_local:
        store.fs.invalidate_cache()
    return store


def _snapshot_hash(dataset: str, parts: list[Part]) -> str:
    """What a snapshot's id is made of: its dataset and its ordered parts. The dataset is in
    it so that the same rows ingested as two datasets are two snapshots with two ids."""
    lines = [f"dataset:{dataset}", *(p.sha256 for p in parts)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _legacy_hash(parts: list[Part]) -> str:
    """The hash of snapshots written before the dataset was part of it (parts only)."""
    return hashlib.sha256("\n".join(p.sha256 for p in parts).encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


# ---------------------------------------------------------------- catalog


def _datasets(store: ObjectStore) -> list[str]:
    return [k.rsplit("/", 1)[-1] for k in store.list("datasets")]


def _snapshot_keys(store: ObjectStore, dataset: str | None) -> list[str]:
    return [key for _, _, key in _catalog(store, dataset)]


def _catalog(store: ObjectStore, dataset: str | None) -> list[tuple[str, str, str]]:
    """(dataset, snapshot id, manifest key) of every snapshot (of one dataset, or all)."""
    names = [dataset] if dataset else _datasets(store)
    found: list[tuple[str, str, str]] = []
    for name in names:
        for key in store.list(f"{_prefix(name)}/snapshots"):
            if key.endswith(".json"):
                found.append((name, key.rsplit("/", 1)[-1].removesuffix(".json"), key))
    return found


def list_snapshots(settings: Settings, dataset: str | None = None) -> list[Manifest]:
    """Every snapshot (of one dataset, or all), oldest first, newest last."""
    store = _open(settings)
    manifests = [Manifest.from_json(store.get_bytes(k)) for k in _snapshot_keys(store, dataset)]
    return sorted(manifests, key=lambda m: (m.created_at, m.id))


def get_snapshot(settings: Settings, snapshot_id: str) -> Manifest:
    """The snapshot with this id or unique id prefix, optionally as ``<dataset>/<id>``;
    :class:`NotFound` lists near ids.

    Snapshots stored before ids included the dataset name can share an id across datasets
    (same rows ingested as two datasets): such an id means the configured dataset's
    (``source.dataset``) snapshot; ``<dataset>/<id>`` names any of them.
    """
    store = _open(settings)
    wanted = snapshot_id.strip()
    dataset, _, ref = wanted.rpartition("/")
    if dataset and dataset not in _datasets(store):  # also keeps "../" out of the store
        catalog = []
    else:
        catalog = _catalog(store, dataset or None)
    matches = [e for e in catalog if e[1] == ref] or [e for e in catalog if e[1].startswith(ref)]
    if len(matches) > 1 and len({i for _, i, _ in matches}) == 1:  # one id, several datasets
        mine = [e for e in matches if e[0] == settings.source.dataset]
        if mine:
            matches = mine
        else:
            # an old id names the same rows in each (ids did not include the dataset): the
            # rows are what callers read, and the ids recorded in runs and tags are bare, so
            # take one rather than fail a lookup no one can fix; said in the log
            found = sorted(matches)
            manifests = [Manifest.from_json(store.get_bytes(key)) for _, _, key in found]
            if len({tuple(p.sha256 for p in m.parts) for m in manifests}) == 1:
                log.warning(
                    "snapshot id %s names the same rows in datasets %s; reading %s/%s (pass "
                    "<dataset>/<id> to choose)",
                    ref,
                    [d for d, _, _ in found],
                    found[0][0],
                    found[0][1],
                )
                return manifests[0]
    if len(matches) == 1:
        return Manifest.from_json(store.get_bytes(matches[0][2]))
    shared = len({i for _, i, _ in matches}) < len(matches)
    if shared:
        near = sorted(f"{d}/{i}" for d, i, _ in matches)
    else:
        ids = sorted({i for _, i, _ in catalog})
        near = sorted(i for _, i, _ in matches) or difflib.get_close_matches(ref, ids, 5, 0.5)
    reason = "matches several snapshots" if matches else "matches no snapshot"
    fix = "pass <dataset>/<id>" if shared else "pass a full id from `flywheel data list`"
    raise NotFound(
        f"Snapshot id {snapshot_id!r} {reason} in {store.url!r}; near ids: {sorted(near)}. "
        f"Fix: {fix}.",
        snapshot=snapshot_id,
        near=sorted(near),
    )


def latest_snapshot(settings: Settings, dataset: str) -> Manifest | None:
    """The newest snapshot of ``dataset``, or None."""
    snapshots = list_snapshots(settings, dataset)
    return snapshots[-1] if snapshots else None


def _resolve(settings: Settings, snapshot: str | Manifest) -> Manifest:
    return snapshot if isinstance(snapshot, Manifest) else get_snapshot(settings, snapshot)


def _read_part(store: ObjectStore, part: Part) -> pa.Table:
    data = store.get_bytes(part.key)
    actual = hashlib.sha256(data).hexdigest()
    if actual != part.sha256:
        raise DataError(
            f"Snapshot part {part.key!r} is corrupt: sha256 {actual} differs from the "
            f"recorded {part.sha256}. "
            "Fix: restore the object from a backup or re-ingest with --full.",
            key=part.key,
        )
    return pq.read_table(io.BytesIO(data))


def _read_table(store: ObjectStore, parts: list[Part], extra: Path | None = None) -> pa.Table:
    tables = [_read_part(store, p) for p in parts]
    if extra is not None:
        tables.append(pq.read_table(extra))
    return pa.concat_tables(tables)


def read_snapshot(settings: Settings, snapshot: str | Manifest) -> pd.DataFrame:
    """The full table of a snapshot; each part's sha256 is checked on read."""
    manifest = _resolve(settings, snapshot)
    return _read_table(_open(settings), manifest.parts).to_pandas()


# ---------------------------------------------------------------- contracts and validation


def _contract_file(settings: Settings, dataset: str) -> Path:
    return contracts.contract_path(settings.contracts_dir, dataset)


def _current_contract(settings: Settings, dataset: str) -> Contract:
    path = _contract_file(settings, dataset)
    if not path.exists():
        raise NotFound(
            f"No data contract for dataset {dataset!r} at {str(path)!r}. "
            "Fix: ingest the dataset once to infer one, or restore the YAML file.",
            dataset=dataset,
        )
    return contracts.load_contract(path)


def _violation_text(v: Violation) -> str:
    return f"column {v.column!r} rule {v.rule!r}: {v.count} rows, e.g. {v.examples[:5]!r}"


def _violation_error(report: ValidationReport, what: str, path: Path) -> ContractViolation:
    lines = "; ".join(_violation_text(v) for v in report.violations)
    return ContractViolation(
        f"{what} of dataset {report.dataset!r} breaks its data contract "
        f"(version {report.contract_version}): {lines}. Fix: correct the source data, or edit "
        f"{str(path)!r} if the change is intended.",
        violations=[asdict(v) for v in report.violations],
        report=report,
    )


def _record(report: ValidationReport, snapshot_id: str) -> bytes:
    body = {
        "snapshot": snapshot_id,
        "dataset": report.dataset,
        "contract_version": report.contract_version,
        "rows": report.rows,
        "passed": report.passed,
        "violations": [asdict(v) for v in report.violations],
        "validated_at": _now(),
    }
    return json.dumps(body, indent=2, sort_keys=True, default=str).encode()


def _load_record(store: ObjectStore, manifest: Manifest) -> ValidationReport | None:
    key = _validation_key(manifest.dataset, manifest.id)
    if not store.exists(key):
        return None
    raw = json.loads(store.get_bytes(key))
    return ValidationReport(
        dataset=raw["dataset"],
        contract_version=raw["contract_version"],
        rows=raw["rows"],
        violations=[Violation(**v) for v in raw["violations"]],
    )


def validate_snapshot(settings: Settings, snapshot: str | Manifest) -> ValidationReport:
    """Re-validate a snapshot against the dataset's current contract and record the result."""
    manifest = _resolve(settings, snapshot)
    contract = _current_contract(settings, manifest.dataset)
    store = _open(settings)
    report = contracts.validate_frame(_read_table(store, manifest.parts).to_pandas(), contract)
    store.put_bytes(_validation_key(manifest.dataset, manifest.id), _record(report, manifest.id))
    log.info("validated %s: passed=%s", manifest.id, report.passed)
    return report


def require_valid(settings: Settings, manifest: Manifest) -> ValidationReport:
    """The snapshot's validation report; raises unless it passed against the CURRENT contract."""
    contract = _current_contract(settings, manifest.dataset)
    path = _contract_file(settings, manifest.dataset)
    store = _open(settings)
    report = _load_record(store, manifest)
    if report is None or report.contract_version != contract.version:
        seen = None if report is None else report.contract_version
        raise ContractViolation(
            f"Snapshot {manifest.id!r} has no validation against the current contract version "
            f"{contract.version} (last validated against: {seen}). "
            f"Fix: run `flywheel data validate {_reference(settings, store, manifest)}`.",
            violations=[],
            report=report,
        )
    if not report.passed:
        raise _violation_error(report, f"Snapshot {manifest.id}", path)
    return report


def _reference(settings: Settings, store: ObjectStore, manifest: Manifest) -> str:
    """What to pass on the command line for ``manifest``: its id, or ``<dataset>/<id>`` when
    the id alone would name another dataset's snapshot (an id stored before ids included
    the dataset name)."""
    others = [d for d, i, _ in _catalog(store, None) if i == manifest.id]
    if len(others) > 1 and manifest.dataset != settings.source.dataset:
        return f"{manifest.dataset}/{manifest.id}"
    return manifest.id


# ---------------------------------------------------------------- ingest: staging


def _part_schema(store: ObjectStore, parent: Manifest) -> pa.Schema:
    with store.open_read(parent.parts[0].key) as fh:
        return pq.read_schema(fh).remove_metadata()


def _incremental_parent(settings: Settings, dataset: str, sql: str, full: bool) -> Manifest | None:
    """The snapshot to extend, or None for a full (root) extraction."""
    if full:
        return None
    parent = latest_snapshot(settings, dataset)
    ts = settings.source.timestamp_column
    if parent is None or parent.time_range is None or parent.timestamp_column != ts:
        return None
    # a snapshot made before paths were resolved recorded sqlite:///relative.db: the same
    # source when it resolves (from this folder) to today's URL
    same_url = absolute_sqlite_url(parent.source.get("url")) == _masked_url(settings)
    if parent.source.get("query") != sql or not same_url:
        log.info("source query changed since %s; extracting in full", parent.id)
        return None
    return parent


def _masked_url(settings: Settings) -> str:
    return mask_url(settings.source.url or "")


def _column_type(schema: pa.Schema, name: str | None) -> pa.DataType | None:
    return schema.field(name).type if name and name in schema.names else None


def _stage_sql(
    settings: Settings, store: ObjectStore, dataset: str, query: str | None, full: bool, tmp: Path
) -> _Stage:
    url = settings.source.url or ""
    sql = base_query(settings.source.table, query or settings.source.query)
    parent = _incremental_parent(settings, dataset, sql, full)
    ts = settings.source.timestamp_column
    out = tmp / "part.parquet"
    if parent is not None and parent.time_range is not None and ts:
        schema = _part_schema(store, parent)
        stats = extract_to_parquet(
            url,
            incremental_query(url, sql, ts),
            out,
            since=parent.time_range[1],
            since_type=_column_type(schema, ts),
            schema=schema,
            timestamp_column=ts,
            batch_rows=settings.source.batch_rows,
        )
    else:
        stats = extract_to_parquet(
            url, sql, out, timestamp_column=ts, batch_rows=settings.source.batch_rows
        )
    mode = "incremental" if parent else "full"
    ts_col = ts if ts and ts in stats.schema.names else None
    return _Stage(
        path=out,
        rows=stats.rows,
        schema=stats.schema,
        time_range=stats.time_range,
        source={"url": mask_url(url), "query": sql, "mode": mode},
        parent=parent,
        timestamp_column=ts_col,
    )


def _stage_file(settings: Settings, file: Path, target: str | None, tmp: Path) -> _Stage:
    out = tmp / "part.parquet"
    ts = settings.source.timestamp_column
    staged = stage_file(
        file, out, target=target, timestamp_column=ts, batch_rows=settings.source.batch_rows
    )
    stats = staged.stats
    return _Stage(
        path=out,
        rows=stats.rows,
        schema=stats.schema,
        time_range=stats.time_range,
        source={"file": staged.name, "sha256": staged.sha256, "mode": "file"},
        timestamp_column=ts if ts and ts in stats.schema.names else None,
    )


# ---------------------------------------------------------------- ingest: commit


def _time_range(stage: _Stage) -> tuple[str, str] | None:
    parent_range = stage.parent.time_range if stage.parent else None
    if parent_range is None or stage.time_range is None:
        return stage.time_range or parent_range
    return (parent_range[0], stage.time_range[1])  # new rows are all newer than the parent's


def _build_manifest(
    stage: _Stage, dataset: str, part: Part, target: str | None, key_columns: list[str]
) -> Manifest:
    parts = [*(stage.parent.parts if stage.parent else []), part]
    digest = _snapshot_hash(dataset, parts)
    return Manifest(
        id=f"snap-{digest[:16]}",
        dataset=dataset,
        created_at=_now(),
        rows=sum(p.rows for p in parts),
        columns=[ColumnInfo(f.name, str(f.type)) for f in stage.schema],
        sha256=digest,
        parts=parts,
        parent=stage.parent.id if stage.parent else None,
        target=target,
        timestamp_column=stage.timestamp_column,
        key_columns=key_columns,
        time_range=_time_range(stage),
        source=stage.source,
    )


def _check_contract(
    settings: Settings, store: ObjectStore, stage: _Stage, manifest: Manifest
) -> tuple[Contract, ValidationReport, bool]:
    """Validate parent + new rows; infer the contract when the dataset has none yet."""
    frame = _read_table(store, stage.parent.parts if stage.parent else [], stage.path).to_pandas()
    path = _contract_file(settings, manifest.dataset)
    created = not path.exists()
    if created:
        contract = contracts.infer_contract(
            frame,
            dataset=manifest.dataset,
            target=manifest.target,
            key_columns=manifest.key_columns,
        )
    else:
        contract = contracts.load_contract(path)
    report = contracts.validate_frame(frame, contract)
    if not report.passed:
        raise _violation_error(report, "The new snapshot", path)
    return contract, report, created


def _upload(store: ObjectStore, local: Path, key: str) -> None:
    if store.exists(key):  # content-addressed: the same bytes are already there
        return
    with open(local, "rb") as src, store.open_write(key) as dst:
        while block := src.read(8 << 20):
            dst.write(block)


def _existing(store: ObjectStore, manifest: Manifest) -> Manifest | None:
    """The stored snapshot of the same dataset with the same parts, if any: under its id, or
    under the id it had before ids included the dataset name."""
    legacy = f"snap-{_legacy_hash(manifest.parts)[:16]}"
    for snapshot_id in (manifest.id, legacy):
        key = _manifest_key(manifest.dataset, snapshot_id)
        if store.exists(key):
            found = Manifest.from_json(store.get_bytes(key))
            if [p.sha256 for p in found.parts] == [p.sha256 for p in manifest.parts]:
                return found
    return None


def _unchanged(store: ObjectStore, manifest: Manifest) -> IngestResult:
    log.info("data unchanged: snapshot %s already exists", manifest.id)
    return IngestResult(
        manifest, created=False, new_rows=0, validation=_load_record(store, manifest)
    )


def _resolve_target(stage: _Stage, target: str | None, default: str) -> str | None:
    if target is not None and target not in stage.schema.names:
        raise DataError(
            f"The target column {target!r} is not in the extracted data; its columns are "
            f"{stage.schema.names}. Fix: pass a target that the query returns.",
            column=target,
        )
    chosen = target or default
    return chosen if chosen in stage.schema.names else None


def _commit(
    settings: Settings, store: ObjectStore, stage: _Stage, dataset: str, target: str | None
) -> IngestResult:
    sha = parquet_sha256(stage.path)
    part = Part(key=f"{_prefix(dataset)}/parts/{sha}.parquet", sha256=sha, rows=stage.rows)
    keys = [c for c in settings.source.key_columns if c in stage.schema.names]
    manifest = _build_manifest(stage, dataset, part, target, keys)
    existing = _existing(store, manifest)
    if existing is not None:
        return _unchanged(store, existing)
    contract, report, created = _check_contract(settings, store, stage, manifest)
    manifest = replace(manifest, contract_version=contract.version)
    _upload(store, stage.path, part.key)
    store.put_bytes(_validation_key(dataset, manifest.id), _record(report, manifest.id))
    if created:
        contracts.save_contract(contract, _contract_file(settings, dataset))
    store.put_bytes(_manifest_key(dataset, manifest.id), manifest.to_json())  # commit point
    log.info("snapshot %s: %s rows (%s new)", manifest.id, manifest.rows, stage.rows)
    return IngestResult(manifest, True, stage.rows, validation=report, contract_created=created)


def ingest(
    settings: Settings,
    *,
    query: str | None = None,
    file: Path | None = None,
    target: str | None = None,
    dataset: str | None = None,
    full: bool = False,
) -> IngestResult:
    """Extract new rows (SQL, incremental by default) or a file into a new immutable snapshot.

    Unchanged data returns the existing snapshot with ``created=False``. The dataset's data
    contract is inferred on the first ingest and enforced on every one: a violation raises
    :class:`ContractViolation` and writes nothing.
    """
    name = dataset or settings.source.dataset
    store = _open(settings)
    with tempfile.TemporaryDirectory(prefix="flywheel-ingest-") as tmp:
        if file is not None:
            stage = _stage_file(settings, Path(file), target, Path(tmp))
        else:
            stage = _stage_sql(settings, store, name, query, full, Path(tmp))
        if stage.rows == 0 and stage.parent is not None:
            return _unchanged(store, stage.parent)
        if stage.rows == 0:
            raise DataError(
                f"The extraction for dataset {name!r} returned no rows "
                f"(source: {stage.source}). Fix: check the query/table, or load data first.",
                dataset=name,
            )
        resolved = _resolve_target(stage, target, settings.source.target)
        return _commit(settings, store, stage, name, resolved)
