"""`flywheel lineage` as a user runs it, in a git-tracked folder with no FLYWHEEL_* variable.

A small churn world is simulated into the SQL source and ingested, version 1 trained and
promoted; 31 more days make a second snapshot (its parent the first) and version 2; a canary
of version 2 is started and aborted; the server answers one prediction by its own id and
one sent with a client id (labelled later). Lineage must lead from each prediction back to
the version, its MLflow run (the registry's run id, the git commit of the folder), the
snapshot (the manifest's id and sha256), the source query and its time range; forward to
the rollout and the promotion; and a retraining pipeline's record, when there is one, names
the trigger.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import FLYWHEEL_BIN, flywheel, start_serve, stop_serve
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

CLIENT_ID = "shop-order-4711"


def _json(cwd: Path, *args: str) -> Any:
    return json.loads(flywheel(cwd, *args).stdout)


def _features(cwd: Path) -> dict[str, Any]:
    """One customer's features as a client sends them (the source's row, label and keys
    dropped)."""
    with sqlite3.connect(cwd / ".flywheel" / "source.db") as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM churn_features LIMIT 1").fetchone())
    for key in ("churned", "customer_id", "observed_at"):
        row.pop(key)
    return row


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("lineage")
    git = ["git", "-c", "user.name=lineage", "-c", "user.email=lineage@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=cwd, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "start"], cwd=cwd, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()
    settings = {
        "training": {"params_file": "params.yaml"},
        "gates": {
            "champion_margin": 1.0,
            "min_metrics": {"roc_auc": 0.5},
            "max_slice_gap": {"roc_auc": 1.0},
        },
    }
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    (cwd / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    flywheel(cwd, "simulate", "--days", "120", "--customers", "500")
    flywheel(cwd, "ingest")
    flywheel(cwd, "train")
    flywheel(cwd, "promote", "1", "--reason", "first champion")
    flywheel(cwd, "simulate", "--days", "31")
    flywheel(cwd, "ingest")
    flywheel(cwd, "train")
    flywheel(cwd, "rollout", "start", "--challenger", "2", "--strategy", "canary", "--reason", "v2")
    flywheel(cwd, "rollout", "abort", "--reason", "lineage test stops it")

    port = free_port()
    server = start_serve([FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"], cwd, port)
    try:
        url = f"http://127.0.0.1:{port}"
        record = json.dumps(_features(cwd))
        # host:port without a scheme, as curl takes it (it exited 12)
        answer = _json(cwd, "predict", "--url", f"127.0.0.1:{port}", "--json", record)
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"records": [json.loads(record)]}
            sent = client.post("/v1/predict", json=body, headers={"X-Request-ID": CLIENT_ID})
            assert sent.status_code == 200, sent.text
            fed = client.post(
                "/v1/feedback", json={"items": [{"request_id": CLIENT_ID, "label": 1}]}
            )
            assert fed.status_code == 200, fed.text
    finally:
        stop_serve(server)
    return {
        "cwd": cwd,
        "head": head,
        "request_id": answer["request_id"],
        "client_request_id": sent.json()["request_id"],
        "versions": {v["version"]: v for v in _json(cwd, "registry", "list", "--json")},
        "snapshots": {s["id"]: s for s in _json(cwd, "data", "list", "--json")},
        "history": _json(cwd, "registry", "history", "--json"),
        "rollout": _json(cwd, "rollout", "status", "--json")["rollout"],
    }


def _check_version(found: dict[str, Any], folder: dict[str, Any], version: str) -> None:
    """The version's run and snapshot are the registry's, the manifest's and git's."""
    registered = folder["versions"][version]
    assert (found["model"], found["version"]) == ("churn", version)
    assert found["aliases"] == registered["aliases"]
    assert found["sha256"] == registered["tags"]["flywheel.onnx_sha256"]
    run = found["run"]
    assert run["id"] == registered["run_id"]
    assert run["git_commit"] == folder["head"]
    assert run["params"]["family"] == "logreg" and run["params"]["cv_folds"] == "0"
    assert 0.5 < run["metrics"]["holdout_roc_auc"] <= 1.0
    snap = found["snapshot"]
    assert snap["id"] == registered["tags"]["flywheel.snapshot_id"]
    manifest = _json(folder["cwd"], "data", "show", snap["id"])
    assert snap["sha256"] == manifest["sha256"] == registered["tags"]["flywheel.snapshot_sha256"]
    assert snap["rows"] == manifest["rows"]
    assert snap["time_range"] == list(manifest["time_range"]) and len(snap["time_range"]) == 2
    assert snap["time_range"][0] < snap["time_range"][1]
    assert "churn_features" in snap["source"]["query"]
    assert snap["source"]["url"].startswith("sqlite:///")
    assert found["warnings"] == []


def test_a_prediction_leads_back_to_its_version_run_and_snapshot(folder: dict[str, Any]) -> None:
    found = _json(folder["cwd"], "lineage", folder["request_id"], "--json")
    request = found["request"]
    assert request["id"] == folder["request_id"]
    assert (request["version"], request["protocol"], request["role"]) == ("1", "rest", None)
    assert request["client_id"] is None and request["label"] is None
    _check_version(found, folder, "1")
    assert found["snapshot"]["parent"] is None
    (promoted,) = [e for e in folder["history"] if e["action"] == "promote"]
    assert found["promoted_at"] == promoted["at"]
    assert found["trigger"]["reason"] == "by hand (flywheel train/run)"
    assert found["pipeline_run"] is None
    (rollout,) = found["rollouts"]  # v1 was the champion of the aborted canary
    assert (rollout["id"], rollout["role"], rollout["status"]) == (
        folder["rollout"]["id"],
        "champion",
        "aborted",
    )


def test_a_client_id_resolves_to_its_request_and_label(folder: dict[str, Any]) -> None:
    found = _json(folder["cwd"], "lineage", CLIENT_ID, "--json")
    request = found["request"]
    assert request["id"] == folder["client_request_id"] != folder["request_id"]
    assert request["client_id"] == CLIENT_ID
    assert request["label"] == 1 and request["label_ts"] is not None
    assert found["run"]["id"] == folder["versions"]["1"]["run_id"]


def test_a_version_shows_its_snapshot_parent_and_its_rollout(folder: dict[str, Any]) -> None:
    found = _json(folder["cwd"], "lineage", "churn/v2", "--json")
    assert found["request"] is None
    _check_version(found, folder, "2")
    first, second = folder["snapshots"]
    assert (found["snapshot"]["id"], found["snapshot"]["parent"]) == (second, first)
    assert found["promoted_at"] is None
    (rollout,) = found["rollouts"]
    assert rollout == {
        **rollout,
        "id": folder["rollout"]["id"],
        "role": "challenger",
        "strategy": "canary",
        "status": "aborted",
        "outcome": "lineage test stops it",
    }
    assert [e["action"] for e in found["history"]] == ["register"]


def test_the_tree_for_people(folder: dict[str, Any]) -> None:
    out = flywheel(folder["cwd"], "lineage", folder["request_id"]).stdout
    registered = folder["versions"]["1"]
    for shown in (
        folder["request_id"],
        "churn v1",
        registered["run_id"],
        registered["tags"]["flywheel.snapshot_id"],
        'SELECT * FROM "churn_features"',
        "by hand (flywheel train/run)",
        folder["head"],
        folder["rollout"]["id"],
    ):
        assert shown in out, (shown, out)


def test_a_pipeline_record_names_the_trigger(folder: dict[str, Any]) -> None:
    """A version the retraining pipeline produced: its run record (as the pipeline writes it
    under <home>/pipelines/runs/) gives the trigger and the run; lineage checks it agrees."""
    v2 = folder["versions"]["2"]
    record = {
        "id": "pr-0001",
        "trigger": {"kind": "drift", "at": "2025-07-01T00:00:00+00:00", "reason": "drift"},
        "status": "finished",
        "steps": [{"name": "ingest", "status": "done"}, {"name": "train", "status": "done"}],
        "snapshot_id": v2["tags"]["flywheel.snapshot_id"],
        "run_id": v2["run_id"],
        "version": 2,
        "rollout_id": folder["rollout"]["id"],
    }
    runs = folder["cwd"] / ".flywheel" / "pipelines" / "runs"
    runs.mkdir(parents=True)
    try:
        (runs / "pr-0001.json").write_text(json.dumps(record))
        (runs / "pr-0000.json").write_text(json.dumps({**record, "id": "pr-0000", "version": 9}))
        found = _json(folder["cwd"], "lineage", "2", "--json")
        assert found["trigger"] == record["trigger"]
        assert found["pipeline_run"]["id"] == "pr-0001"
        assert found["pipeline_run"]["run_id"] == found["run"]["id"]
        assert [r["id"] for r in found["rollouts"]] == [folder["rollout"]["id"]]
        assert found["warnings"] == []
        (runs / "pr-0001.json").write_text(json.dumps({**record, "run_id": "another"}))
        (warning,) = _json(folder["cwd"], "lineage", "2", "--json")["warnings"]
        assert "pr-0001" in warning and "another" in warning
    finally:
        for path in runs.glob("*.json"):
            path.unlink()


def test_an_unknown_id_is_not_found(folder: dict[str, Any]) -> None:
    err = " ".join(flywheel(folder["cwd"], "lineage", "no-such-request", code=3).stderr.split())
    assert "no-such-request" in err and "prediction log" in err and "predictions.db" in err
    err = " ".join(flywheel(folder["cwd"], "lineage", "7", "--json", code=3).stderr.split())
    assert "no version '7'" in err and "['1', '2']" in err
