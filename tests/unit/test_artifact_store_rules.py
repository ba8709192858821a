"""The pure rules behind three user-test fixes: which S3 endpoint MLflow's artifact store
gets (`flywheel.workspace.mlflow_s3_endpoint`), which failures are the artifact store's and
how they read; a classifier's class checks before the split; metrics that scikit-learn
calls undefined are left out without its warnings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel import workspace
from flywheel.config import Settings, load_settings
from flywheel.errors import StoreError, TrainingError
from flywheel.training.metrics import score
from flywheel.training.prepare import check_classes
from flywheel.workspace import (
    S3_ENDPOINT_VAR,
    Workspace,
    is_artifact_store_failure,
    mlflow_s3_endpoint,
)

ENDPOINT = "http://127.0.0.1:5123"


def _settings(tmp_path: Path, artifacts: str | None, endpoint: str | None = ENDPOINT) -> Settings:
    tracking = {"artifact_location": artifacts} if artifacts else {}
    return load_settings(
        home=tmp_path / "fw",
        store={"url": "s3://b/flywheel", "endpoint_url": endpoint},
        tracking=tracking,
    )


@pytest.fixture
def no_endpoint_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLFLOW_S3_ENDPOINT_URL, and none remembered as flywheel's (both restored after)."""
    monkeypatch.setenv(S3_ENDPOINT_VAR, "x")
    monkeypatch.delenv(S3_ENDPOINT_VAR)
    monkeypatch.setattr(workspace, "_s3_endpoint_set", None)


@pytest.mark.parametrize(
    ("artifacts", "endpoint", "expected"),
    [
        ("s3://b/mlartifacts", ENDPOINT, ENDPOINT),  # one endpoint for snapshots and models
        ("s3://b/mlartifacts", None, None),  # AWS: MLflow's own default
        (None, ENDPOINT, None),  # artifacts in <home>/mlartifacts
        ("/srv/mlartifacts", ENDPOINT, None),
    ],
)
def test_mlflow_gets_the_store_endpoint_for_s3_artifacts(
    tmp_path: Path, artifacts: str | None, endpoint: str | None, expected: str | None
) -> None:
    assert mlflow_s3_endpoint(_settings(tmp_path, artifacts, endpoint)) == expected


def test_the_client_sets_the_variable_and_the_users_own_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_endpoint_var: None
) -> None:
    import os

    with Workspace(_settings(tmp_path / "a", "s3://b/mlartifacts")) as ws:
        assert ws.client is not None
    assert os.environ[S3_ENDPOINT_VAR] == ENDPOINT
    # a later workspace on another endpoint re-points what flywheel set...
    other = "http://127.0.0.1:6000"
    with Workspace(_settings(tmp_path / "b", "s3://b/m", other)) as ws:
        assert ws.client is not None
    assert os.environ[S3_ENDPOINT_VAR] == other
    # ...but never what the user set
    monkeypatch.setenv(S3_ENDPOINT_VAR, "http://users-own:9000")
    with Workspace(_settings(tmp_path / "c", "s3://b/m")) as ws:
        assert ws.client is not None
    assert os.environ[S3_ENDPOINT_VAR] == "http://users-own:9000"


def test_artifact_store_failures_are_told_apart() -> None:
    import requests
    from botocore.exceptions import EndpointConnectionError
    from mlflow.exceptions import MlflowException

    boto = EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/k")
    assert is_artifact_store_failure(boto)
    try:
        try:
            raise boto
        except EndpointConnectionError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_artifact_store_failure(outer)
    assert is_artifact_store_failure(NotADirectoryError(20, "Not a directory"))
    summary = "The following failures occurred while downloading one or more artifacts from x"
    assert is_artifact_store_failure(MlflowException(summary))
    # the tracking store's (a server that does not answer, a bad value) are not
    assert not is_artifact_store_failure(requests.exceptions.ConnectionError("refused"))
    # as MLflow's REST client raises it: the refused socket at the bottom of the chain is
    # the tracking server's, not the artifact store's
    try:
        try:
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except ConnectionRefusedError as refused:
                raise requests.exceptions.ConnectionError("Max retries exceeded") from refused
        except requests.exceptions.ConnectionError as lost:
            raise MlflowException("API request to http://tracking:5000 failed") from lost
    except MlflowException as chained:
        assert not is_artifact_store_failure(chained)
    assert not is_artifact_store_failure(MlflowException("RESOURCE_DOES_NOT_EXIST"))
    assert not is_artifact_store_failure(ValueError("x"))


def test_artifact_store_error_names_location_endpoint_and_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_endpoint_var: None
) -> None:
    ws = Workspace(_settings(tmp_path, "s3://b/mlartifacts"))
    cause = OSError("Could not connect to the endpoint URL")
    assert ws.client is not None  # sets MLFLOW_S3_ENDPOINT_URL to store.endpoint_url
    error = ws.artifact_store_error(cause, "write the training run")
    assert isinstance(error, StoreError) and error.exit_code == 6
    assert error.message.startswith(
        "Cannot write the training run in MLflow's artifact store 's3://b/mlartifacts' at the "
        f"S3 endpoint {ENDPOINT} (store.endpoint_url): Could not connect"
    )
    assert error.details == {"artifact_location": "s3://b/mlartifacts", "endpoint": ENDPOINT}
    monkeypatch.setenv(S3_ENDPOINT_VAR, "http://elsewhere:1")
    assert "(MLFLOW_S3_ENDPOINT_URL)" in ws.artifact_store_error(cause, "x").message
    monkeypatch.delenv(S3_ENDPOINT_VAR)
    assert "at AWS S3 (no endpoint set" in ws.artifact_store_error(cause, "x").message
    local = ws.artifact_store_error(cause, "x", "/srv/art")
    assert "'/srv/art'" in local.message and "endpoint" not in local.details
    ws.close()


def test_check_classes() -> None:
    check_classes("y", pd.Series([0, 1, 0, 1]), "snap-1")
    with pytest.raises(TrainingError, match="has only one class in the 3 labelled rows"):
        check_classes("y", pd.Series(["a", "a", "a"]), "snap-1")
    with pytest.raises(TrainingError, match=r"Class 'c' of target 'y' has only 1 row"):
        check_classes("y", pd.Series(["a", "a", "b", "b", "c"]), "snap-1")
    with pytest.raises(TrainingError, match=r"Classes 2, 3 of target 'y' have only 1 row"):
        check_classes("y", pd.Series([0, 0, 1, 1, 2, 3]), "snap-1")


def test_undefined_metrics_are_left_out_without_warnings() -> None:
    """pytest turns warnings into errors here: none may escape."""
    y = np.zeros(6, dtype=int)
    proba = np.column_stack([np.full(6, 0.7), np.full(6, 0.3)])
    out = score("classification", y, np.zeros(6, dtype=int), proba)
    assert "roc_auc" not in out and "pr_auc" not in out  # one class: undefined
    assert out["accuracy"] == 1.0


def test_multiclass_roc_auc_is_over_present_classes_and_float32_sums_are_fine() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    raw = rng.random((40, 3)).astype(np.float32)
    proba = (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)  # sums off by ~1e-7
    y = np.arange(40) % 3
    full = score("classification", y, proba.argmax(axis=1), proba, n_classes=3)
    expected = roc_auc_score(y, proba.astype("float64"), multi_class="ovr", labels=[0, 1, 2])
    assert full["roc_auc"] == pytest.approx(expected, abs=1e-6)
    assert "log_loss" in full
    two = y < 2  # class 2 absent from these rows
    part = score("classification", y[two], proba[two].argmax(axis=1), proba[two], n_classes=3)
    per_class = [roc_auc_score(y[two] == c, proba[two][:, c]) for c in (0, 1)]
    assert part["roc_auc"] == pytest.approx(float(np.mean(per_class)))
