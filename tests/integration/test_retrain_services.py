"""Continuous training against the real services, by configuration alone, through the CLI.

One folder's ``flywheel.yaml`` puts every store on a service: the SQL source, the prediction
log, the audit ledger (and the rollout store in it) and the monitor's windows each in a
PostgreSQL database of their own; tracking and the registry on an ``mlflow server``
(PostgreSQL backend, artifacts proxied to S3); snapshots on ``s3://`` of an S3 API server
(moto in server mode). Then, as a user would: simulate a year and `flywheel run` (the
first champion); `flywheel replay` of 40 days from 2026-01-01 (it starts `flywheel serve`
on the same configuration; the January billing period closes inside it, so the source gets
new rows, its labels come back, and the monthly schedule fires a retrain that runs on new
data); a month more and `flywheel retrain`; `flywheel lineage` of what it registered.
Everything asserted is read back from the CLI's JSON and from the services themselves.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import yaml

from tests.e2e.conftest import SMALL_WORLD_GATES, flywheel
from tests.integration.conftest import PG_ADMIN, MlflowServer, S3Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAYS, PER_DAY = 40, 300
PREFIX = "flywheel"  # the store's prefix in the bucket
STORES = ("source", "predictions", "audit", "monitoring")
AWS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _epoch(day: str) -> float:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tzinfo=dt.UTC).timestamp()


@contextmanager
def _databases(*names: str) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database for each of ``names`` (their URLs), dropped afterwards."""
    made = {n: f"fw_{uuid.uuid4().hex[:10]}_{n}" for n in names}
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for db in made.values():
            conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield {n: f"postgresql://postgres@127.0.0.1:5432/{db}" for n, db in made.items()}
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            for db in made.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _one(url: str, sql: str) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


def _json(cwd: Path, *args: str, code: int = 0) -> Any:
    """``flywheel ARGS`` (with ``--json``): its stdout must be one JSON document."""
    out = flywheel(cwd, *args, code=code, env=AWS).stdout
    try:
        return json.loads(out)
    except ValueError:
        pass
    pytest.fail(f"`flywheel {' '.join(args)}` printed more than JSON on stdout:\n{out[:800]}")


def _detail(entry: dict[str, Any]) -> dict[str, Any]:
    """The JSON line that ends a ledger entry's reason."""
    return json.loads(entry["reason"].splitlines()[-1])  # type: ignore[no-any-return]


def _assert_snapshot_in_s3(s3: S3Server, snapshot_id: str) -> dict[str, Any]:
    """The snapshot's manifest and every part it lists are objects in the bucket."""
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    keys = {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
        for o in page.get("Contents", [])
    }
    manifest_key = f"{PREFIX}/datasets/churn/snapshots/{snapshot_id}.json"
    assert manifest_key in keys, sorted(keys)[:20]
    body = client.get_object(Bucket=s3.bucket, Key=manifest_key)["Body"].read()
    manifest: dict[str, Any] = json.loads(body)
    parts = [f"{PREFIX}/{p['key']}" for p in manifest["parts"]]
    assert parts and set(parts) <= keys, (parts, sorted(keys)[:20])
    return manifest


def _write_config(cwd: Path, urls: dict[str, str], s3: S3Server, mlflow: MlflowServer) -> None:
    settings = {
        "source": {"url": urls["source"]},
        "serving": {"prediction_log_url": urls["predictions"]},
        "registry": {"audit_url": urls["audit"]},
        "monitoring": {"url": urls["monitoring"]},
        "tracking": {"uri": mlflow.uri},
        "store": {"url": f"s3://{s3.bucket}/{PREFIX}", "endpoint_url": s3.endpoint},
        # a small world for speed: this test is about the services, not model quality
        "training": {"params_file": "params.yaml"},
        "gates": {**SMALL_WORLD_GATES, "champion_margin": 1.0},
        # the first of each month, on the data's clock: 2026-02-01 falls inside the replay
        "retrain": {"schedule": "0 0 1 * *"},
    }
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    (cwd / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")


def test_continuous_training_on_postgres_s3_and_an_mlflow_server(
    s3_server: S3Server, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    cwd = tmp_path / "folder"
    cwd.mkdir()
    seconds: dict[str, float] = {}
    with _databases(*STORES) as urls:
        _write_config(cwd, urls, s3_server, mlflow_server)
        t = time.perf_counter()
        flywheel(cwd, "simulate", "--days", "365", "--customers", "1500", env=AWS)
        flywheel(cwd, "run", env=AWS)
        seconds["spine"] = time.perf_counter() - t
        (first,) = _json(cwd, "data", "list", "--json")

        t = time.perf_counter()
        summary = _json(cwd, "replay", "--days", str(DAYS), "--requests-per-day",
                        str(PER_DAY), "--monitor-every", "7", "--json")  # fmt: skip
        seconds["replay"] = time.perf_counter() - t
        run_id = _check_replay(cwd, urls, s3_server, summary, first["id"])

        t = time.perf_counter()
        _abort_any_rollout(cwd)
        flywheel(cwd, "simulate", "--days", "31", env=AWS)
        run = _json(cwd, "retrain", "--reason", "a month of new data", "--json")
        seconds["retrain"] = time.perf_counter() - t
        _check_retrain(cwd, s3_server, mlflow_server, run, run_id)
    print(f"wall seconds: {seconds}; replay's own: {summary['seconds']}")


def _check_replay(
    cwd: Path, urls: dict[str, str], s3: S3Server, summary: dict[str, Any], first: str
) -> str:
    """The replay's summary, the prediction log and labels in PostgreSQL, the retrain in
    the ledger and its new snapshot in S3; returns the pipeline run's id."""
    assert summary["days"] == DAYS and summary["requests"] == DAYS * PER_DAY, summary
    assert summary["errors"] == 0, summary
    assert (summary["first_day"], summary["last_day"]) == ("2026-01-01", "2026-02-09")
    assert summary["champion_before"] == "1" and summary["retrains"] >= 1, summary
    lo, hi = _epoch(summary["first_day"]), _epoch(summary["last_day"]) + 86400
    # the log and the labels are in PostgreSQL, stamped with the simulated clock
    first_ts, last_ts, n = _one(
        urls["predictions"],
        "SELECT MIN(ts), MAX(ts), COUNT(*) FROM prediction_log WHERE role != 'shadow'",
    )
    assert n == DAYS * PER_DAY and lo <= first_ts and last_ts < hi, (first_ts, last_ts, n)
    got, at_lo, at_hi = _one(
        urls["predictions"],
        "SELECT COUNT(*), MIN(received_at), MAX(received_at) FROM prediction_feedback",
    )
    # January's outcomes come back once its period closed plus the 7-day label delay
    assert got >= 31 * PER_DAY * 0.9 and _epoch("2026-02-08") <= at_lo and at_hi < hi
    (windows,) = _one(urls["monitoring"], "SELECT COUNT(*) FROM monitor_windows")
    assert windows >= DAYS - 1  # one daily window per replayed day (the champion's)
    # the ledger (in PostgreSQL too): a trigger on the data clock, then the pipeline
    history = _json(cwd, "registry", "history", "--json")
    (audit_rows,) = _one(urls["audit"], "SELECT COUNT(*) FROM registry_audit")
    assert audit_rows == len(history)
    triggered = [_detail(e) for e in history if e["action"] == "retrain_triggered"]
    assert triggered and lo <= float(triggered[0]["at"]) <= hi, triggered
    started = {_detail(e)["pipeline_run"] for e in history if e["action"] == "pipeline_started"}
    ended = [_detail(e) for e in history if e["action"] == "pipeline_finished"]
    assert ended and {d["pipeline_run"] for d in ended} <= started, [e["action"] for e in history]
    assert {d["trigger"]["key"] for d in ended} <= {t["triggers"][0]["key"] for t in triggered}
    # a trigger before January's period closed finds no new labelled rows: skipped, no
    # retrain; one after it runs on new data (a gate may still keep the champion)
    month_end = _epoch("2026-02-01")
    assert all(d["at"] < month_end for d in ended if d["status"] == "skipped"), ended
    ran = [d for d in ended if d["status"] in ("finished", "gated")]
    assert ran and ran[0]["at"] >= month_end, ended
    done = ran[0]
    assert done["snapshot_id"] and done["snapshot_id"] != first
    manifest = _assert_snapshot_in_s3(s3, done["snapshot_id"])
    assert manifest["parent"] == first
    return str(done["pipeline_run"])


def _abort_any_rollout(cwd: Path) -> None:
    """A canary the replay's retrain started and the last days did not decide is stopped
    (a new retrain's rollout needs none active); its state is in PostgreSQL."""
    state = _json(cwd, "rollout", "status", "--json").get("rollout")
    if state is not None and state["status"] not in ("promoted", "rolled_back", "aborted"):
        flywheel(cwd, "rollout", "abort", "--reason", "the test retrains again", env=AWS)


def _check_retrain(
    cwd: Path, s3: S3Server, mlflow: MlflowServer, run: dict[str, Any], replay_run: str
) -> None:
    """A new snapshot in S3, an MLflow run on the server tagged with the pipeline run, a
    new version whose lineage leads back to both."""
    from mlflow.tracking import MlflowClient

    assert run["id"] != replay_run and run["status"] == "finished", run
    assert run["trigger"]["reason"] == "a month of new data"
    assert all(s["status"] in ("done", "skipped") for s in run["steps"].values()), run
    ingest = run["steps"]["ingest"]["output"]
    assert ingest["created"] and ingest["new_rows"] > 0, ingest
    manifest = _assert_snapshot_in_s3(s3, run["snapshot_id"])
    assert manifest["sha256"] == ingest["sha256"]
    client = MlflowClient(tracking_uri=mlflow.uri)
    experiment = client.get_experiment_by_name("flywheel")
    assert experiment is not None

    def tagged(pipeline_run: str) -> list[tuple[str, str]]:
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`flywheel.pipeline_run` = '{pipeline_run}'",
        )
        return [(r.info.run_id, r.info.status) for r in found]

    assert [status for _, status in tagged(replay_run)] == ["FINISHED"]  # the replay's
    assert tagged(run["id"]) == [(run["run_id"], "FINISHED")]
    versions = client.search_model_versions("name = 'churn'")
    assert run["version"] in {v.version for v in versions if v.run_id == run["run_id"]}
    lineage = _json(cwd, "lineage", run["version"], "--json")
    assert lineage["snapshot"]["id"] == run["snapshot_id"]
    assert lineage["snapshot"]["sha256"] == manifest["sha256"]
    assert lineage["run"]["id"] == run["run_id"]
    assert lineage["pipeline_run"]["id"] == run["id"] and lineage["warnings"] == [], lineage
    assert lineage["trigger"]["reason"] == "a month of new data"
    # the retrain's canary is in the rollout store (the audit database in PostgreSQL)
    state = _json(cwd, "rollout", "status", "--json")["rollout"]
    assert (state["id"], state["challenger"]) == (run["rollout_id"], run["version"]), state
