"""The loop so far, through the CLI: run → data catalog → registry → promote/rollback → audit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, copy_folder

pytestmark = pytest.mark.slow


SMALL_WORLD = ["--days", "240", "--customers", "1500"]
# A small world trains fast but sits near the default 0.70 AUC floor; these tests check the
# loop's mechanics, so they lower the floor and widen the champion margin.
GATES = {
    "FLYWHEEL_GATES__MIN_METRICS": '{"roc_auc": 0.6}',
    "FLYWHEEL_GATES__MAX_SLICE_GAP": '{"roc_auc": 0.5}',
    "FLYWHEEL_GATES__CHAMPION_MARGIN": "0.05",
}


@pytest.fixture
def loop(cli: Cli) -> Cli:
    """The CLI with this module's gate settings."""

    def run(*args: str, env: dict[str, str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
        return cli(*args, env={**GATES, **(env or {})}, **kw)

    return run


def _small_world_home(small_world: tuple[Path, str], tmp_path: Path) -> str:
    """The session's `flywheel run` on ``SMALL_WORLD`` (the same command, seed and gates as
    this module's) copied as the ``cli`` fixture's home; returns that run's stdout."""
    folder, out = small_world
    copy_folder(folder, tmp_path / "small-world", to_home=tmp_path / "fw")
    return out


def test_run_registers_a_champion_and_registry_commands_work(
    loop: Cli, tmp_path: Path, small_world: tuple[Path, str]
) -> None:
    cli = loop
    out = _small_world_home(small_world, tmp_path)  # `cli("run", *SMALL_WORLD)`, done once
    assert "registered churn version 1" in out
    assert "version 1 is the first champion" in out
    assert "mlflow ui --backend-store-uri" in out
    card = Path(re.search(r"model card:\s+(\S+\.md)", out).group(1))  # type: ignore[union-attr]
    text = card.read_text()
    assert "snap-" in text and "roc_auc" in text

    listing = cli("data", "list").stdout
    assert "snap-" in listing

    # Nothing new in the source: the same data makes no new snapshot.
    assert "unchanged" in cli("ingest").stdout

    # A second run on 60 more days trains a challenger, compared against the champion.
    out2 = cli("run", "--days", "60").stdout
    assert "registered churn version 2" in out2

    cli("promote", "2", "--reason", "better on recent data")
    versions = cli("registry", "list").stdout
    assert re.search(r"2\s+│\s+[\w,]*champion", versions), versions
    cli("rollback", "--reason", "incident 42")
    versions = cli("registry", "list").stdout
    assert re.search(r"1\s+│\s+[\w,]*champion", versions), versions

    history = cli("registry", "history", "--verify").stdout
    for action in ("register", "promote", "rollback"):
        assert action in history
    assert "incident 42" in history
    assert "audit chain intact" in history


def test_bad_promotion_is_a_clean_error(
    loop: Cli, tmp_path: Path, small_world: tuple[Path, str]
) -> None:
    cli = loop
    _small_world_home(small_world, tmp_path)  # `cli("run", *SMALL_WORLD)`, done once
    proc = cli("promote", "99", "--reason", "typo", ok=False)
    assert proc.returncode != 0
    assert "99" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_same_seed_same_snapshot_and_metrics(
    loop: Cli, tmp_path: Path, small_world: tuple[Path, str]
) -> None:
    """Two runs in two homes: the session's small world (run once for every module that
    needs it) and a fresh one here, with the same seed."""
    cli = loop

    def one(home: str) -> tuple[str, str]:
        env = {"FLYWHEEL_HOME": str(tmp_path / home)}
        if home == "a":
            out = small_world[1]
            copy_folder(small_world[0], tmp_path / "small-world", to_home=tmp_path / home)
        else:
            out = cli("run", *SMALL_WORLD, env=env).stdout
        snap = re.search(r"snapshot:\s+(snap-\w+)", out).group(1)  # type: ignore[union-attr]
        sha = re.search(r'"sha256": "(\w+)"', cli("data", "show", snap, env=env).stdout)
        auc = re.search(r"roc_auc\s+│\s+([0-9.]+)", out)
        assert sha and auc, out
        return sha.group(1), auc.group(1)

    assert one("a") == one("b")
