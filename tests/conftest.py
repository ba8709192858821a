"""Shared fixtures: every test gets a clean FLYWHEEL_* environment and its own home folder;
``ws`` is the workspace built from those settings, as the CLI and the pipelines build it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.config import Settings, load_settings
from flywheel.workspace import Workspace


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("FLYWHEEL_") or key.startswith("MLFLOW_"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FLYWHEEL_CONFIG", os.devnull)  # read no settings file
    monkeypatch.setenv("GIT_PYTHON_REFRESH", "quiet")
    yield


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings rooted in a per-test folder."""
    return load_settings(home=tmp_path / "fw")


@pytest.fixture
def ws(settings: Settings) -> Iterator[Workspace]:
    """The workspace of ``settings`` (closed after the test)."""
    with Workspace(settings) as workspace:
        yield workspace
