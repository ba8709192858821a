"""The same loop against the real services, by configuration alone.

PostgreSQL (this machine) is the source database, the audit log store and the MLflow
server's backend; the object store is an S3 API server process (moto in server mode) reached
through the same s3fs client code as AWS or MinIO; MLflow artifacts are proxied by the
server to that S3. Nothing is mocked.
"""

from __future__ import annotations

import boto3
import pytest

from flywheel.config import load_settings
from flywheel.data.snapshots import read_snapshot
from flywheel.pipelines.steps import run_loop
from flywheel.registry.aliases import list_versions
from flywheel.registry.artifacts import load_champion
from flywheel.training.params import TrainParams
from flywheel.workspace import Workspace
from tests.integration.conftest import MlflowServer, S3Server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_loop_on_postgres_s3_and_mlflow_server(
    pg_url: str, s3_server: S3Server, mlflow_server: MlflowServer, tmp_path: object
) -> None:
    settings = load_settings(
        home=tmp_path,
        source={"url": pg_url},
        store={"url": f"s3://{s3_server.bucket}/flywheel", "endpoint_url": s3_server.endpoint},
        tracking={"uri": mlflow_server.uri},
        registry={"audit_url": pg_url},
        # A small world for speed: this test is about the services, not model quality.
        gates={"min_metrics": {"roc_auc": 0.6}, "max_slice_gap": {"roc_auc": 0.5}},
    )
    ws = Workspace(settings)
    result = run_loop(ws, days=200, customers=1200, params=TrainParams(cv_folds=2))

    assert result.outcome.version == "1"
    assert result.outcome.promoted
    # The snapshot lives in S3 and reads back.
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_server.endpoint).list_objects_v2(
            Bucket=s3_server.bucket
        )["Contents"]
    ]
    assert any(k.startswith("flywheel/datasets/churn/parts/") for k in keys)
    assert any(k.startswith("mlartifacts/") and k.endswith("model.onnx") for k in keys)
    assert len(read_snapshot(settings, result.snapshot_id)) > 1000
    # The registry answers through the MLflow server, and the champion's ONNX verifies.
    versions = list_versions(ws)
    assert [v.version for v in versions] == ["1"]
    assert "champion" in versions[0].aliases
    champion = load_champion(ws)
    assert champion is not None and champion.version == "1"
