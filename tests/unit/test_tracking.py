"""flywheel.tracking: MLflow set-up for new training runs vs work on existing runs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from flywheel.config import Settings
from flywheel.tracking import configure_mlflow, use_tracking


def _db(settings: Settings) -> Path:
    return Path((settings.tracking.uri or "").removeprefix("sqlite:///"))


def test_use_tracking_creates_a_missing_store_with_the_experiment(settings: Settings) -> None:
    assert not _db(settings).exists()
    use_tracking(settings)
    assert _db(settings).exists()
    assert mlflow.get_tracking_uri() == settings.tracking.uri
    assert mlflow.get_experiment_by_name(settings.tracking.experiment) is not None


def test_use_tracking_does_not_look_up_the_experiment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = configure_mlflow(settings)
    mlflow.set_tracking_uri("sqlite:///elsewhere.db")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the experiment was looked up")

    monkeypatch.setattr(mlflow, "get_experiment_by_name", refuse)
    monkeypatch.setattr(mlflow, "set_experiment", refuse)
    use_tracking(settings)
    assert mlflow.get_tracking_uri() == settings.tracking.uri
    experiment = mlflow.MlflowClient().get_experiment(experiment_id)
    assert experiment.name == settings.tracking.experiment
