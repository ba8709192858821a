"""The workspace's MLflow set-up: an explicit client, the experiment, and the global tracking
URI (which MLflow's fluent API reads) pointed at the workspace only inside ``ws.tracking()``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

from flywheel.config import Settings
from flywheel.workspace import Workspace


@pytest.fixture(autouse=True)
def _global_uri_unset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start (and end) each test with MLflow's process-global tracking URI unset."""
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    yield


def _db(settings: Settings) -> Path:
    return Path((settings.tracking.uri or "").removeprefix("sqlite:///"))


def test_client_creates_a_missing_store_with_the_experiment(ws: Workspace) -> None:
    assert not _db(ws.settings).exists()
    client = ws.client
    assert _db(ws.settings).exists()
    assert client.tracking_uri == ws.settings.tracking.uri
    assert client.get_experiment(ws.experiment_id).name == ws.settings.tracking.experiment
    # nothing was pointed at it process-wide
    assert not tracking_utils.is_tracking_uri_set()
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_client_on_an_existing_store_does_not_look_up_the_experiment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = Workspace(settings).experiment_id

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the experiment was looked up")

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", refuse)
    monkeypatch.setattr(MlflowClient, "create_experiment", refuse)
    again = Workspace(settings)
    assert again.client.get_experiment(experiment_id).name == settings.tracking.experiment


def test_tracking_block_points_the_global_uri_and_puts_it_back(
    ws: Workspace, tmp_path: Path
) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    mlflow.set_tracking_uri(elsewhere)
    with ws.tracking() as client:
        assert mlflow.get_tracking_uri() == ws.settings.tracking.uri
        assert os.environ["MLFLOW_TRACKING_URI"] == ws.settings.tracking.uri
        assert client is ws.client
        with ws.tracking():  # re-entrant: a run that logs a model
            assert mlflow.get_tracking_uri() == ws.settings.tracking.uri
        assert mlflow.get_tracking_uri() == ws.settings.tracking.uri
    assert mlflow.get_tracking_uri() == elsewhere
    assert os.environ["MLFLOW_TRACKING_URI"] == elsewhere


def test_tracking_block_leaves_an_unset_uri_unset_even_on_error(ws: Workspace) -> None:
    with pytest.raises(RuntimeError, match="inside"), ws.tracking():
        assert tracking_utils.is_tracking_uri_set()
        raise RuntimeError("inside")
    assert not tracking_utils.is_tracking_uri_set()
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_a_user_environment_uri_survives_a_tracking_block(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    theirs = f"sqlite:///{tmp_path / 'theirs.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", theirs)
    with ws.tracking():
        assert mlflow.get_tracking_uri() == ws.settings.tracking.uri
    assert os.environ["MLFLOW_TRACKING_URI"] == theirs
    assert mlflow.get_tracking_uri() == theirs
