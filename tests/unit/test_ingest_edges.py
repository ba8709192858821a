"""Own files at the edges: empty CSV cells, words such as "n/a", date columns, unnamed or
repeated columns, the same rows as two datasets, snapshot ids stored by older versions."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.config import Settings
from flywheel.data import contract as contracts
from flywheel.data.contract import infer_contract, validate_frame
from flywheel.data.files import read_file_table, stage_file
from flywheel.data.snapshots import (
    Manifest,
    get_snapshot,
    ingest,
    list_snapshots,
    read_snapshot,
    require_valid,
    validate_snapshot,
)
from flywheel.data.store import open_store
from flywheel.errors import ContractViolation, DataError, NotFound

CSV = (
    "id,region,score,note,label\n"
    "1,east,1.5,n/a,0\n"
    "2,,2.5,NA,1\n"
    "3,north,,null,0\n"
    '4,south,3.0,"",1\n'
    "5,,4.0,x,0\n"
    "6,east,5.0,y,1\n"
    "7,north,6.0,z,0\n"
    "8,east,7.0,w,1\n"
)


def _frame_as_parquet(path: Path) -> None:
    pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6, 7, 8],
            "region": ["east", None, "north", "south", None, "east", "north", "east"],
            "score": [1.5, 2.5, None, 3.0, 4.0, 5.0, 6.0, 7.0],
            "note": ["n/a", "NA", "null", None, "x", "y", "z", "w"],
            "label": [0, 1, 0, 1, 0, 1, 0, 1],
        }
    ).to_parquet(path, index=False)


def test_empty_csv_cell_is_null_and_words_stay_text(tmp_path: Path) -> None:
    csv = tmp_path / "awkward.csv"
    csv.write_text(CSV)
    parquet = tmp_path / "awkward.parquet"
    _frame_as_parquet(parquet)
    from_csv = read_file_table(csv).to_pydict()
    assert from_csv["region"] == ["east", None, "north", "south", None, "east", "north", "east"]
    assert from_csv["note"][:4] == ["n/a", "NA", "null", None]  # only "" is missing
    assert from_csv["score"][:3] == [1.5, 2.5, None]
    assert from_csv == read_file_table(parquet).to_pydict()


def test_csv_and_parquet_of_the_same_rows_infer_the_same_contract(tmp_path: Path) -> None:
    csv = tmp_path / "awkward.csv"
    csv.write_text(CSV)
    parquet = tmp_path / "awkward.parquet"
    _frame_as_parquet(parquet)
    rules = []
    for path in (csv, parquet):
        out = tmp_path / f"{path.suffix[1:]}.part.parquet"
        stage_file(path, out, target="label")
        contract = infer_contract(
            pq.read_table(out).to_pandas(), dataset="d", target="label", key_columns=[]
        )
        rules.append(contract)
    assert rules[0].columns["region"].nullable is True
    assert rules[0].columns["region"].allowed == ["east", "north", "south"]
    assert rules[0].version == rules[1].version
    assert rules[0].columns == rules[1].columns


def test_n_a_in_a_number_column_is_a_dtype_violation(tmp_path: Path) -> None:
    first = tmp_path / "a.csv"
    first.write_text("age,label\n31,0\n45,1\n52,0\n")
    frame = read_file_table(first).to_pandas()
    contract = infer_contract(frame, dataset="d", target="label", key_columns=[])
    assert contract.columns["age"].dtype == "int" and not contract.columns["age"].nullable
    later = tmp_path / "b.csv"
    later.write_text("age,label\n31,0\nn/a,1\n")
    report = validate_frame(read_file_table(later).to_pandas(), contract)
    assert [(v.column, v.rule, v.examples) for v in report.violations] == [
        ("age", "dtype", ["n/a"])
    ]


def test_date_column_of_a_csv_is_a_datetime_in_the_contract(tmp_path: Path) -> None:
    first = tmp_path / "visits.csv"
    first.write_text(
        "id,visit date,label\n" + "".join(f"{i},2024-01-{i:02d},{i % 2}\n" for i in range(1, 21))
    )
    table = read_file_table(first)
    assert table.schema.field("visit date").type == pa.date32()
    contract = infer_contract(table.to_pandas(), dataset="d", target="label", key_columns=[])
    rule = contract.columns["visit date"]
    assert rule.dtype == "datetime" and rule.min == "2023-12-30T00:00:00" and rule.max is None
    assert validate_frame(table.to_pandas(), contract).passed
    later = tmp_path / "later.csv"
    later.write_text("id,visit date,label\n1,2024-02-01,0\n2,unknown,1\n")
    report = validate_frame(read_file_table(later).to_pandas(), contract)
    assert [(v.column, v.rule, v.examples) for v in report.violations] == [
        ("visit date", "dtype", ["unknown"])
    ]


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["a", "b", "", "label"], "column 3 has no name"),
        (["", "a", "label"], "column 1 has no name .*index=False"),
        (["a", " ", "label"], "column 2 has no name"),
        (["a", "b", "a", "label"], "column 3 is named 'a' like column 1"),
    ],
)
def test_unnamed_or_repeated_columns_are_refused(
    settings: Settings, tmp_path: Path, names: list[str], match: str
) -> None:
    csv = tmp_path / "in.csv"
    csv.write_text(",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n")
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table([pa.array([1])] * len(names), names=names), parquet)
    for path in (csv, parquet):
        with pytest.raises(DataError, match=match) as info:
            ingest(settings, file=path, target="label", dataset="d")
        assert info.value.exit_code == 4 and "Fix" in info.value.message
    assert open_store(settings).list("datasets") == []
    assert not settings.contracts_dir.exists()


# ---------------------------------------------------------------- snapshot ids per dataset


@pytest.fixture
def wine_csv(tmp_path: Path) -> Path:
    path = tmp_path / "wine.txt"
    path.write_text(
        "alcohol,hue,target\n" + "".join(f"{11 + i % 4}.5,{i % 3},{i % 2}\n" for i in range(30))
    )
    return path


def test_same_rows_as_two_datasets_are_two_snapshots(settings: Settings, wine_csv: Path) -> None:
    wine = ingest(settings, file=wine_csv, target="target", dataset="wine").manifest
    t10 = ingest(settings, file=wine_csv, target="target", dataset="t10").manifest
    assert wine.id != t10.id and wine.parts[0].sha256 == t10.parts[0].sha256
    assert t10.id == "snap-" + t10.sha256[:16]
    assert get_snapshot(settings, t10.id).dataset == "t10"
    assert get_snapshot(settings, wine.id).dataset == "wine"
    again = ingest(settings, file=wine_csv, target="target", dataset="t10")
    assert not again.created and again.manifest.id == t10.id
    # t10's own contract changes; re-validating t10's id re-validates t10's snapshot
    path = contracts.contract_path(settings.contracts_dir, "t10")
    path.write_text(path.read_text().replace("nullable: false", "nullable: true", 1))
    with pytest.raises(ContractViolation, match=f"data validate {t10.id}`"):
        require_valid(settings, t10)
    assert validate_snapshot(settings, t10.id).passed
    assert require_valid(settings, t10).passed


def _make_legacy(settings: Settings, m: Manifest) -> Manifest:
    """Rewrite ``m`` as flywheel stored it before ids included the dataset name."""
    store = open_store(settings)
    digest = hashlib.sha256("\n".join(p.sha256 for p in m.parts).encode()).hexdigest()
    old = replace(m, id=f"snap-{digest[:16]}", sha256=digest)
    base = f"datasets/{m.dataset}"
    record = json.loads(store.get_bytes(f"{base}/validations/{m.id}.json"))
    store.put_bytes(
        f"{base}/validations/{old.id}.json", json.dumps({**record, "snapshot": old.id}).encode()
    )
    store.put_bytes(f"{base}/snapshots/{old.id}.json", old.to_json())
    for kind in ("snapshots", "validations"):
        os.remove(store.path(f"{base}/{kind}/{m.id}.json"))
    return old


def test_legacy_ids_keep_working(settings: Settings, wine_csv: Path) -> None:
    old = _make_legacy(
        settings, ingest(settings, file=wine_csv, target="target", dataset="wine").manifest
    )
    assert get_snapshot(settings, old.id) == old
    assert get_snapshot(settings, old.id[:10]) == old
    again = ingest(settings, file=wine_csv, target="target", dataset="wine")
    assert not again.created and again.manifest.id == old.id
    assert [m.id for m in list_snapshots(settings)] == [old.id]
    assert require_valid(settings, old).passed
    assert len(read_snapshot(settings, old.id)) == 30


def test_a_legacy_id_shared_by_two_datasets_is_resolved_within_one(
    settings: Settings, wine_csv: Path
) -> None:
    wine = _make_legacy(
        settings, ingest(settings, file=wine_csv, target="target", dataset="wine").manifest
    )
    t10 = _make_legacy(
        settings, ingest(settings, file=wine_csv, target="target", dataset="t10").manifest
    )
    assert wine.id == t10.id
    # the configured dataset (churn) has neither: the same rows either way, and the ids in
    # runs and tags are bare, so one is read (the first dataset by name), not a dead end
    assert get_snapshot(settings, wine.id) == t10
    assert get_snapshot(settings, f"t10/{t10.id}") == t10
    assert get_snapshot(settings, f"wine/{wine.id[:9]}") == wine
    for ref in (f"nope/{wine.id}", f"../wine/{wine.id}"):
        with pytest.raises(NotFound, match="matches no snapshot"):
            get_snapshot(settings, ref)
    churn_like = settings.model_copy(
        update={"source": settings.source.model_copy(update={"dataset": "t10"})}
    )
    assert get_snapshot(churn_like, t10.id) == t10
    path = contracts.contract_path(settings.contracts_dir, "t10")
    path.write_text(path.read_text().replace("nullable: false", "nullable: true", 1))
    with pytest.raises(ContractViolation, match=f"data validate t10/{t10.id}`"):
        require_valid(settings, t10)
    assert validate_snapshot(settings, f"t10/{t10.id}").passed
    assert require_valid(settings, t10).passed


def test_a_csv_whose_header_is_not_utf8_is_a_data_error(tmp_path: Path) -> None:
    """Reading the column names decoded them outside the error handling: exit 70."""
    from flywheel.errors import DataError

    path = tmp_path / "rows.csv"
    path.write_bytes(b"\xff\xfe\x00a,b\n1,2\n")
    with pytest.raises(DataError, match="Cannot read"):
        read_file_table(path)
