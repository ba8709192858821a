"""Snapshots on an S3 API: a real moto server process, the same code as a local store."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest

from flywheel.config import Settings, load_settings
from flywheel.data.snapshots import Manifest, get_snapshot, ingest, list_snapshots, read_snapshot
from flywheel.data.store import open_store

pytestmark = pytest.mark.integration

BUCKET = "flywheel-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer at {url} within {deadline_s}s")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_settings(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[Settings, boto3.client]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"{BUCKET}-{tmp_path.name.lower().replace('_', '-')[-20:]}"
    client.create_bucket(Bucket=bucket)
    monkeypatch.setenv("FLYWHEEL_STORE__URL", f"s3://{bucket}/prefix")
    monkeypatch.setenv("FLYWHEEL_STORE__ENDPOINT_URL", s3_endpoint)
    return load_settings(home=tmp_path / "fw"), client


def _simulated_like(db: Path, n: int) -> None:
    rows = [
        (i % 60, f"2024-02-{1 + i // 24:02d}T{i % 24:02d}:00:00", 18 + i % 60, 9.5 + i % 100, i % 2)
        for i in range(n)
    ]
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS churn_features (customer_id INTEGER, observed_at TEXT, "
            "age INTEGER, monthly REAL, churned INTEGER)"
        )
        conn.executemany("INSERT INTO churn_features VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()


def _assert_same_as_local(s3: Settings, local: Settings, m: Manifest, client: object) -> None:
    local_m = list_snapshots(local, m.dataset)[-1]
    assert local_m.sha256 == m.sha256 and [p.key for p in local_m.parts] == [p.key for p in m.parts]
    s3_store, local_store = open_store(s3), open_store(local)
    bucket, prefix = s3.store.url.removeprefix("s3://").split("/", 1)  # type: ignore[union-attr]
    for part in m.parts:
        raw = client.get_object(Bucket=bucket, Key=f"{prefix}/{part.key}")["Body"].read()  # type: ignore[attr-defined]
        assert raw == local_store.get_bytes(part.key) == s3_store.get_bytes(part.key)
    pd.testing.assert_frame_equal(read_snapshot(s3, m), read_snapshot(local, local_m))
    key = f"{prefix}/datasets/{m.dataset}/snapshots/{m.id}.json"
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    assert Manifest.from_json(body) == m == get_snapshot(s3, m.id)
    assert json.loads(body)["parts"][0]["sha256"] == m.parts[0].sha256


def test_snapshots_on_s3_read_back_byte_identical(
    s3_settings: tuple[Settings, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, client = s3_settings
    settings.home.mkdir(parents=True)
    _simulated_like(settings.home / "source.db", 120)
    csv = tmp_path / "users.csv"
    pd.DataFrame({"age": [30, 41, 25], "plan": ["a", "b", "a"], "churned": [0, 1, 0]}).to_csv(
        csv, index=False
    )
    table = ingest(settings)
    users = ingest(settings, file=csv, target="churned", dataset="users")
    _simulated_like(settings.home / "source.db", 0)
    with sqlite3.connect(settings.home / "source.db") as conn:
        conn.execute("UPDATE churn_features SET monthly = monthly")  # no new rows
    assert not ingest(settings).created

    monkeypatch.delenv("FLYWHEEL_STORE__URL")
    monkeypatch.delenv("FLYWHEEL_STORE__ENDPOINT_URL")
    local = load_settings(home=tmp_path / "local")
    local.home.mkdir(parents=True)
    (local.home / "source.db").write_bytes((settings.home / "source.db").read_bytes())
    ingest(local)
    ingest(local, file=csv, target="churned", dataset="users")

    _assert_same_as_local(settings, local, table.manifest, client)
    _assert_same_as_local(settings, local, users.manifest, client)
    assert {m.dataset for m in list_snapshots(settings)} == {"churn", "users"}
