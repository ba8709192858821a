"""`flywheel predict --file` on ordinary bad input, through the installed `flywheel` as a user
runs it: a missing file, an empty one, a folder, text that is no CSV or JSON, a broken
Parquet file. Each used to crash with exit 70 (FileNotFoundError, EmptyDataError,
IsADirectoryError, UnicodeDecodeError); each is now a data error (exit 4: a CSV or Parquet
file is read by ingest's own reader, with its errors) naming the file and the problem. A Parquet file of records, which
`ingest` takes, is sent like a JSON or CSV one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.conftest import FLYWHEEL_BIN, copy_folder, flywheel, start_serve, stop_serve
from tests.integration.conftest import free_port


def _flat(text: str) -> str:
    """``text`` on one line: the console wraps long messages."""
    return " ".join(text.split())


def _write(name: str, data: bytes) -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        (folder / name).write_bytes(data)
        return name

    return make


def _folder(folder: Path) -> str:
    (folder / "rows").mkdir()
    return "rows"


def _missing(folder: Path) -> str:
    return "examples/customers.json"  # quickstart.md's file, outside a repository checkout


def _parquet_as_json(folder: Path) -> str:
    pd.DataFrame({"a": [1.0, 2.0]}).to_parquet(folder / "rows.json")
    return "rows.json"


# (how the file is made, words the error must hold)
BAD_FILES = {
    "missing": (_missing, ["No file at 'examples/customers.json'", "check the path"]),
    "empty csv": (_write("rows.csv", b""), ["'rows.csv' is empty"]),
    "blank csv": (_write("rows.csv", b"\n\n"), ["Cannot read 'rows.csv'", "Empty CSV"]),
    "header only": (_write("rows.csv", b"a,b\n"), ["'rows.csv' holds no records"]),
    "folder": (_folder, ["'rows' is a folder", "JSON, CSV or Parquet"]),
    "binary csv": (_write("rows.csv", b"\xff\xfe\x00a,b\n"), ["Cannot read 'rows.csv'", "utf-8"]),
    "binary json": (_write("rows.json", b"\xff\xfe\x00{}"), ["'rows.json' is not UTF-8"]),
    "bad json": (_write("rows.json", b"{bad"), ["'rows.json' is not valid JSON"]),
    "empty list": (_write("rows.json", b"[]"), ["'rows.json' holds no records"]),
    "not records": (_write("rows.json", b"[1, 2]"), ["list of objects (in 'rows.json')"]),
    "broken parquet": (_write("rows.parquet", b"PAR1 not really"), ["Cannot read 'rows.parquet'"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_a_data_error_naming_it(tmp_path: Path, case: str) -> None:
    make, words = BAD_FILES[case]
    name = make(tmp_path)
    # an address where nothing listens: the file must be refused before any request
    url = f"http://127.0.0.1:{free_port()}"
    err = _flat(flywheel(tmp_path, "predict", "--file", name, "--url", url, code=4).stderr)
    assert "error (data)" in err, err
    for word in words:
        assert word in err, err
    assert "internal" not in err and "crash" not in err, err


def test_a_parquet_file_is_read_by_its_bytes_whatever_its_name(tmp_path: Path) -> None:
    """Parquet bytes in a ``.json`` file used to be a UnicodeDecodeError; they are read as
    Parquet and sent (here to an address where nothing listens: the remote error, exit 12,
    shows the records were read)."""
    name = _parquet_as_json(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    err = _flat(flywheel(tmp_path, "predict", "--file", name, "--url", url, code=12).stderr)
    assert "error (remote)" in err, err


def test_parquet_csv_and_json_files_get_the_same_answers(
    cancer_champion: Path, tmp_path: Path
) -> None:
    """The same rows as JSON, CSV and Parquet files get the same answer from a served
    champion (missing cells sent as null)."""
    cwd = copy_folder(cancer_champion, tmp_path / "f")
    rows = pd.read_csv(cwd / "cancer.csv").drop(columns=["target"]).head(5)
    rows.iloc[0, 0] = None  # a missing cell
    rows.to_csv(cwd / "rows.csv", index=False)
    rows.to_parquet(cwd / "rows.parquet", index=False)
    records = json.loads(rows.to_json(orient="records", double_precision=15))
    (cwd / "rows.json").write_text(json.dumps(records))
    port = free_port()
    server = start_serve([FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"], cwd, port)
    try:
        url = f"http://127.0.0.1:{port}"
        answers = {
            name: json.loads(flywheel(cwd, "predict", "--file", name, "--url", url).stdout)
            for name in ("rows.json", "rows.csv", "rows.parquet")
        }
    finally:
        stop_serve(server)
    labels = answers["rows.json"]["predictions"]
    assert len(labels) == 5
    assert answers["rows.csv"]["predictions"] == labels
    assert answers["rows.parquet"]["predictions"] == labels
