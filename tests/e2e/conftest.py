"""End-to-end helpers: drive the real `flywheel` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run `python -m flywheel ARGS` with a private home; returns the completed process."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    base_env.update(
        FLYWHEEL_HOME=str(tmp_path / "fw"),
        FLYWHEEL_CONFIG=str(tmp_path / "none.yaml"),
        COLUMNS="200",
        GIT_PYTHON_REFRESH="quiet",
    )

    def run(
        *args: str, env: dict[str, str] | None = None, ok: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "flywheel", *args],
            capture_output=True,
            text=True,
            env={**base_env, **(env or {})},
            cwd=cwd or tmp_path,
            timeout=900,
            check=False,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"flywheel {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )
        return proc

    return run
