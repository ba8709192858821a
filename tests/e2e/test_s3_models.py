"""Models on an S3-compatible endpoint, through the installed `flywheel` as a user runs it,
against moto in server mode (a real S3 API process on 127.0.0.1; never the internet).

With ``store.url: s3://…``, ``store.endpoint_url`` and ``tracking.artifact_location:
s3://…``, snapshots reached the endpoint but MLflow's artifacts went to AWS
(``https://<bucket>.s3.amazonaws.com``): MLflow reads its endpoint from
``MLFLOW_S3_ENDPOINT_URL`` only. `flywheel train` exited 10 and left a FAILED run in
mlflow.db; `flywheel serve` crashed with exit 70 on the download. Now MLflow uses
``store.endpoint_url`` (a user's own ``MLFLOW_S3_ENDPOINT_URL`` wins), a failed upload
leaves no run behind, and an artifact store that does not answer is a store error (exit 6)
naming the endpoint."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import boto3
import httpx
import pandas as pd

from tests.e2e.conftest import (
    FLYWHEEL_BIN,
    cancer_folder,
    flywheel,
    newcomer_env,
    start_serve,
    stop_serve,
)
from tests.integration.conftest import S3Server, free_port, s3_server

__all__ = ["s3_server"]  # the moto server fixture of the integration tests, reused here

# One connection attempt per request: an endpoint that does not answer fails fast.
FAST_FAIL = {"AWS_MAX_ATTEMPTS": "1"}


def _flat(text: str) -> str:
    """``text`` on one line: the console wraps long messages."""
    return " ".join(text.split())


def _s3_folder(cwd: Path, s3: S3Server) -> None:
    """`cancer_folder` with its snapshots and its MLflow artifacts in the moto bucket."""
    cancer_folder(
        cwd,
        store={"url": f"s3://{s3.bucket}/flywheel", "endpoint_url": s3.endpoint},
        tracking={"artifact_location": f"s3://{s3.bucket}/mlartifacts"},
    )
    (cwd / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")


def _keys(s3: S3Server, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return [str(o["Key"]) for o in listed.get("Contents", [])]


def _tracked(cwd: Path) -> tuple[list[tuple[str, str]], int]:
    """(run id, status) of every run in mlflow.db, and the number of logged models."""
    with sqlite3.connect(cwd / ".flywheel" / "mlflow.db") as con:
        runs = [(str(r[0]), str(r[1])) for r in con.execute("SELECT run_uuid, status FROM runs")]
        models = int(con.execute("SELECT count(*) FROM logged_models").fetchone()[0])
    con.close()
    return runs, models


def test_models_go_to_the_store_endpoint_and_serve_from_it(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """train → registry → serve, every artifact on the moto endpoint; then, with the
    endpoint gone, `registry export` exits 6 and `serve` stays up not ready, both naming it."""
    s3 = s3_server
    _s3_folder(tmp_path, s3)
    out = flywheel(tmp_path, "train", "--params", "params.yaml").stdout
    assert "registered cancer version 1" in out
    assert any(k.endswith("/model.onnx") for k in _keys(s3, "mlartifacts/")), "no ONNX on S3"
    assert not (tmp_path / ".flywheel" / "mlartifacts").exists()  # nothing local instead
    flywheel(tmp_path, "promote", "1", "--reason", "first on S3")

    # serving downloads the version from the endpoint (no local copy to start from)
    shutil.rmtree(tmp_path / ".flywheel" / "models", ignore_errors=True)
    port = free_port()
    server = start_serve([FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"], tmp_path, port)
    try:
        row = pd.read_csv(tmp_path / "cancer.csv").drop(columns=["target"]).iloc[0].to_dict()
        answer = json.loads(
            flywheel(
                tmp_path, "predict", "--json", json.dumps(row), "--url", f"http://127.0.0.1:{port}"
            ).stdout
        )
        assert len(answer["predictions"]) == 1
    finally:
        stop_serve(server)

    # the endpoint does not answer: a store error naming it, never exit 70
    dead = f"http://127.0.0.1:{free_port()}"
    gone = {"FLYWHEEL_STORE__ENDPOINT_URL": dead, **FAST_FAIL}
    shutil.rmtree(tmp_path / ".flywheel" / "models", ignore_errors=True)
    err = _flat(
        flywheel(tmp_path, "registry", "export", "--out", "bundle", code=6, env=gone).stderr
    )
    assert "error (store)" in err and "Cannot download cancer v1" in err, err
    assert f"at the S3 endpoint {dead} (store.endpoint_url)" in err, err
    assert f"s3://{s3.bucket}/mlartifacts/" in err, err

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"],
            cwd=tmp_path,
            env=newcomer_env(gone),
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 120
            ready = None
            while ready is None or "not loaded" not in log.read_text():
                assert proc.poll() is None, log.read_text()  # it used to exit 70 here
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
                try:  # the port opens once the first load is over
                    ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=10)
                except httpx.HTTPError:
                    ready = None
            assert ready.status_code == 503
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "Traceback" not in text, text
    assert f"at the S3 endpoint {dead} (store.endpoint_url)" in _flat(text), text


def test_the_users_endpoint_wins_and_a_failed_upload_leaves_no_run(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """``MLFLOW_S3_ENDPOINT_URL`` set by the user is what MLflow uses; when it does not
    answer, the upload fails (exit 6, naming that endpoint and variable) and the run it had
    begun is removed: no FAILED run, no logged model, nothing in the bucket."""
    s3 = s3_server
    _s3_folder(tmp_path, s3)
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"MLFLOW_S3_ENDPOINT_URL": dead, **FAST_FAIL}
    err = _flat(flywheel(tmp_path, "train", "--params", "params.yaml", code=6, env=env).stderr)
    assert "error (store)" in err and "Cannot write the training run" in err, err
    assert f"at the S3 endpoint {dead} (MLFLOW_S3_ENDPOINT_URL)" in err, err
    assert f"'s3://{s3.bucket}/mlartifacts'" in err, err
    assert _tracked(tmp_path) == ([], 0)
    assert _keys(s3, "mlartifacts/") == []
    # the same folder trains once the endpoint answers (store.endpoint_url again)
    out = flywheel(tmp_path, "train", "--params", "params.yaml").stdout
    assert "registered cancer version 1" in out
    runs, _ = _tracked(tmp_path)
    assert [status for _, status in runs] == ["FINISHED"]


def test_a_local_artifact_store_that_cannot_be_written_leaves_no_run(tmp_path: Path) -> None:
    """The same rule without S3: an artifact folder that cannot be made (its parent is a
    file) is a store error (exit 6) naming it, and no half-logged run is left."""
    (tmp_path / "not-a-folder").write_text("a file")
    cancer_folder(tmp_path, tracking={"artifact_location": str(tmp_path / "not-a-folder" / "a")})
    (tmp_path / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    err = _flat(flywheel(tmp_path, "train", "--params", "params.yaml", code=6).stderr)
    assert "error (store)" in err and "Cannot write the training run" in err, err
    assert "not-a-folder" in err, err
    assert _tracked(tmp_path) == ([], 0)
