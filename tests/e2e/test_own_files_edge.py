"""Bringing one's own file, at the edges, through the installed `flywheel` as a user runs it:
empty cells, "n/a", a date column, unnamed columns, the same rows as two datasets, and an
object store that is not there."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.e2e.conftest import flywheel
from tests.integration.conftest import S3Server, free_port, s3_server

__all__ = ["s3_server"]  # the moto server fixture of the integration tests, reused here


def _flat(text: str) -> str:
    """``text`` on one line: the console wraps long messages."""
    return " ".join(text.split())


def _contract(cwd: Path, dataset: str) -> dict[str, dict[str, object]]:
    data = yaml.safe_load((cwd / ".flywheel" / "contracts" / f"{dataset}.yaml").read_text())
    columns: dict[str, dict[str, object]] = data["columns"]
    return columns


def test_empty_csv_cells_are_missing_as_in_parquet(tmp_path: Path) -> None:
    """An empty cell in a text column used to be "": the contract allowed '' and refused
    the same rows saved as Parquet (real nulls) with exit 5, rule nullable."""
    rows = {
        "id": list(range(1, 13)),
        "region": ["east", None, "north", "south", None, "east"] * 2,
        "score": [1.5, 2.5, None, 3.0, 4.0, 5.0] * 2,
        "label": [0, 1] * 6,
    }
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "awkward.csv", index=False)
    frame.to_parquet(tmp_path / "awkward.parquet", index=False)
    flywheel(tmp_path, "ingest", "--file", "awkward.csv", "--target", "label", "--dataset", "aw")
    region = _contract(tmp_path, "aw")["region"]
    assert region["nullable"] is True and region["allowed"] == ["east", "north", "south"]
    out = flywheel(
        tmp_path, "ingest", "--file", "awkward.parquet", "--target", "label", "--dataset", "aw"
    ).stdout
    assert "snapshot snap-" in out or "unchanged" in out


def test_n_a_in_a_number_column_is_a_dtype_violation(tmp_path: Path) -> None:
    """Only an empty cell is missing: "n/a" used to be read as null (reported as nullable)."""
    (tmp_path / "ages.csv").write_text("age,label\n31,0\n45,1\n52,0\n60,1\n")
    flywheel(tmp_path, "ingest", "--file", "ages.csv", "--target", "label", "--dataset", "ages")
    assert _contract(tmp_path, "ages")["age"]["dtype"] == "int"
    (tmp_path / "ages2.csv").write_text("age,label\n31,0\nn/a,1\n")
    err = _flat(
        flywheel(
            tmp_path,
            "ingest",
            "--file",
            "ages2.csv",
            "--target",
            "label",
            "--dataset",
            "ages",
            code=5,
        ).stderr
    )
    assert "'dtype'" in err and "n/a" in err and "'nullable'" not in err


def test_date_column_is_a_datetime_in_the_contract(tmp_path: Path) -> None:
    """A CSV date column was stored as date32 but inferred as a string: a later "unknown"
    passed, and training then took the column as a categorical feature."""
    days = pd.date_range("2024-01-01", periods=40, freq="D").strftime("%Y-%m-%d")
    pd.DataFrame(
        {"visit date": days, "spend": [float(i % 7) for i in range(40)], "label": [0, 1] * 20}
    ).to_csv(tmp_path / "visits.csv", index=False)
    flywheel(tmp_path, "ingest", "--file", "visits.csv", "--target", "label", "--dataset", "v")
    rule = _contract(tmp_path, "v")["visit date"]
    assert rule["dtype"] == "datetime" and str(rule["min"]).startswith("2023-12-")
    (tmp_path / "visits2.csv").write_text(
        "visit date,spend,label\n2024-03-01,1.0,0\nunknown,2.0,1\n"
    )
    err = _flat(
        flywheel(
            tmp_path,
            "ingest",
            "--file",
            "visits2.csv",
            "--target",
            "label",
            "--dataset",
            "v",
            code=5,
        ).stderr
    )
    assert "'visit date'" in err and "'dtype'" in err and "unknown" in err
    (tmp_path / "visits3.csv").write_text(
        "visit date,spend,label\n2024-03-01,1.0,0\n2024-03-02,2.0,1\n"
    )
    flywheel(tmp_path, "ingest", "--file", "visits3.csv", "--target", "label", "--dataset", "v")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("a,b,,label", "column 3 has no name"),
        (",a,b,label", "column 1 has no name"),
        ("a,b,a,label", "column 3 is named 'a' like column 1"),
    ],
)
def test_unnamed_or_repeated_column_is_refused(tmp_path: Path, header: str, message: str) -> None:
    """An empty header used to be accepted (contract key '') and failed at ONNX export."""
    (tmp_path / "odd.csv").write_text(f"{header}\n1,2,3,0\n4,5,6,1\n")
    err = _flat(
        flywheel(
            tmp_path, "ingest", "--file", "odd.csv", "--target", "label", "--dataset", "odd", code=4
        ).stderr
    )
    assert message in err
    assert not (tmp_path / ".flywheel" / "contracts").exists()


@pytest.mark.slow
def test_same_rows_as_two_datasets_are_two_snapshots(tmp_path: Path) -> None:
    """The same content as dataset `wine` and `t10` shared one snapshot id: `data validate`
    re-validated wine's copy, and `train --dataset t10` stayed stuck on "no validation
    against the current contract"."""
    from sklearn.datasets import load_wine

    load_wine(as_frame=True).frame.to_csv(tmp_path / "wine.txt", index=False)
    (tmp_path / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    ids = {}
    for name in ("wine", "t10"):
        flywheel(tmp_path, "ingest", "--file", "wine.txt", "--target", "target", "--dataset", name)
        listed = json.loads(flywheel(tmp_path, "data", "list", "--dataset", name, "--json").stdout)
        ids[name] = listed[-1]["id"]
    assert ids["wine"] != ids["t10"]
    shown = json.loads(flywheel(tmp_path, "data", "show", ids["t10"], "--json").stdout)
    assert shown["dataset"] == "t10"
    contract = tmp_path / ".flywheel" / "contracts" / "t10.yaml"
    contract.write_text(contract.read_text().replace("nullable: false", "nullable: true", 1))
    err = _flat(
        flywheel(
            tmp_path,
            "train",
            "--dataset",
            "t10",
            "--params",
            "params.yaml",
            "--no-register",
            code=5,
        ).stderr
    )
    assert f"flywheel data validate {ids['t10']}" in err
    flywheel(tmp_path, "data", "validate", ids["t10"])
    record = tmp_path / ".flywheel/store/datasets/t10/validations" / f"{ids['t10']}.json"
    assert json.loads(record.read_text())["dataset"] == "t10"
    flywheel(tmp_path, "train", "--dataset", "t10", "--params", "params.yaml", "--no-register")


def test_unreachable_store_is_a_store_error(tmp_path: Path) -> None:
    """`data list/show/validate` crashed with exit 70 (botocore EndpointConnectionError)."""
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        "FLYWHEEL_STORE__URL": "s3://somebucket/x",
        "FLYWHEEL_STORE__ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",  # fail fast: the retries only cost time here
    }
    for args in (["data", "list"], ["data", "show", "snap-1"], ["data", "validate", "snap-1"]):
        err = _flat(flywheel(tmp_path, *args, code=6, env=env).stderr)
        assert endpoint in err and "store" in err, err


@pytest.mark.integration
def test_missing_bucket_says_to_create_it(tmp_path: Path, s3_server: S3Server) -> None:
    """A misspelled bucket listed as an empty table (exit 0); ingest exited 6 without
    saying the bucket must be created."""
    env = {
        "FLYWHEEL_STORE__URL": "s3://nobucket/x",
        "FLYWHEEL_STORE__ENDPOINT_URL": s3_server.endpoint,
    }
    err = _flat(flywheel(tmp_path, "data", "list", code=6, env=env).stderr)
    assert "'nobucket'" in err and "does not exist" in err and "create the bucket" in err
    (tmp_path / "d.csv").write_text("a,label\n1,0\n2,1\n")
    err = _flat(
        flywheel(tmp_path, "ingest", "--file", "d.csv", "--target", "label", code=6, env=env).stderr
    )
    assert "'nobucket'" in err and "create the bucket" in err
    assert not (tmp_path / ".flywheel" / "contracts").exists()
    env["FLYWHEEL_STORE__URL"] = f"s3://{s3_server.bucket}/x"  # the bucket that exists
    assert json.loads(flywheel(tmp_path, "data", "list", "--json", env=env).stdout) == []


def test_train_without_the_dataset_named_lists_the_datasets_there(tmp_path: Path) -> None:
    """Only `wine` ingested, no source.dataset: train said "Dataset 'churn' has no snapshot
    yet. Fix: run `flywheel ingest`" although the user had just done so."""
    pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "label": [0, 1, 0, 1]}).to_csv(
        tmp_path / "wine.csv", index=False
    )
    flywheel(tmp_path, "ingest", "--file", "wine.csv", "--target", "label", "--dataset", "wine")
    err = _flat(flywheel(tmp_path, "train", code=3).stderr)
    assert "Dataset 'churn' has no snapshot yet. Snapshots exist for 'wine'" in err, err
    assert "FLYWHEEL_SOURCE__DATASET" in err, err
