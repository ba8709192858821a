"""End-to-end helpers: drive the real `flywheel` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]

FLYWHEEL_BIN = str(Path(sys.prefix) / "bin" / "flywheel")  # the installed entry point


def newcomer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any FLYWHEEL_* or MLFLOW_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    return {**env, "COLUMNS": "200", **(extra or {})}


def flywheel(
    cwd: Path, *args: str, code: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``flywheel ARGS`` in ``cwd`` as a user would (no FLYWHEEL_*
    variables but those in ``env``); assert the exit code and that no traceback shows."""
    proc = subprocess.run(
        [FLYWHEEL_BIN, *args],
        cwd=cwd,
        env=newcomer_env(env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    shown = (
        f"flywheel {' '.join(args)}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{shown}"
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    return proc


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
