"""The workspace: cheap to build, every part made on first use, and one command resolves its
snapshot once and reads its rows once (counted through the real loop)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.config import Settings, load_settings
from flywheel.data import snapshots
from flywheel.data.snapshots import Manifest, ingest
from flywheel.errors import NotFound
from flywheel.workspace import Workspace


def test_importing_the_workspace_loads_no_heavy_library() -> None:
    code = (
        "import sys, flywheel.workspace; "
        "heavy = ('mlflow', 'sklearn', 'pandas', 'pyarrow', 'sqlalchemy', 'onnxruntime'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_building_one_opens_nothing(settings: Settings) -> None:
    ws = Workspace(settings)
    assert ws.settings is settings
    assert not settings.home.exists()  # no store, tracking database, audit or prediction log
    assert repr(ws) == f"Workspace(home={str(settings.home)!r})"
    assert Workspace.of(ws) is ws and Workspace.of(settings).settings is settings


def test_parts_are_made_once_and_closed(ws: Workspace) -> None:
    assert ws.audit is ws.audit and ws.store is ws.store
    log = ws.predlog
    assert log is ws.predlog
    assert (ws.settings.home / "predictions.db").exists()
    ws.close()
    assert ws.predlog is not log  # closed, and opened again on the next use
    ws.close()


def _churn(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "observed_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), "h"),
            "tenure_months": rng.integers(1, 72, n),
            "support_tickets": rng.poisson(1.5, n),
            "region": rng.choice(["north", "south"], n),
        }
    )
    logit = -1 + 0.6 * df.support_tickets - 0.04 * df.tenure_months
    df["churned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df


def _snapshot(settings: Settings, tmp_path: Path) -> Manifest:
    path = tmp_path / "churn.parquet"
    _churn().to_parquet(path)
    return ingest(settings, file=path, target="churned").manifest


def _count(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts of manifests parsed (an id turned into a manifest) and snapshot tables read."""
    counts: Counter[str] = Counter()
    parse, read = Manifest.from_json.__func__, snapshots.read_snapshot  # type: ignore[attr-defined]

    def from_json(cls: type[Manifest], data: bytes) -> Manifest:
        counts["manifests"] += 1
        return parse(cls, data)  # type: ignore[no-any-return]

    def read_snapshot(*args: object, **kwargs: object) -> pd.DataFrame:
        counts["reads"] += 1
        return read(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Manifest, "from_json", classmethod(from_json))
    monkeypatch.setattr(snapshots, "read_snapshot", read_snapshot)
    return counts


def test_a_snapshot_is_resolved_once_and_read_once(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _snapshot(ws.settings, tmp_path)
    counts = _count(monkeypatch)
    manifest = ws.snapshot(made.id)
    assert manifest == made
    assert ws.snapshot(made.id) is manifest and ws.snapshot(made.id[:10]) is manifest
    assert ws.snapshot(manifest) is manifest
    assert counts["manifests"] == 2  # the id and its prefix: one catalogue look-up each
    frame = ws.read_snapshot(made.id)
    assert ws.read_snapshot(manifest) is frame and len(frame) == 300
    assert counts["reads"] == 1
    assert ws.snapshot().id == made.id  # the dataset's latest


def test_no_snapshot_yet_says_what_to_do(ws: Workspace) -> None:
    with pytest.raises(NotFound, match=r"Dataset 'churn' has no snapshot yet.*flywheel ingest"):
        ws.snapshot()


@pytest.mark.slow
def test_one_train_resolves_its_snapshot_once_and_reads_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`flywheel train` without a snapshot id, as the CLI runs it: the latest manifest is
    resolved once and carried; its rows are read once, and evaluation, the champion's
    training rows (same snapshot) and registration reuse them. Before the workspace, one
    such command turned the id into a manifest 4 times (5 with a champion) and read the
    rows 2 times (3). MLflow's global tracking URI is left as it was."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from flywheel.pipelines.steps import train_evaluate_register
    from flywheel.registry.aliases import promote
    from flywheel.training.params import TrainParams

    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    lenient = {"min_metrics": {}, "max_slice_gap": {}, "champion_margin": 1.0}
    settings = load_settings(home=tmp_path / "fw", gates=lenient)
    _snapshot(settings, tmp_path)
    params = TrainParams(family="hist_gb", hyperparams={"max_iter": 20}, cv_folds=2)
    with Workspace(settings) as first:
        train_evaluate_register(first, first.snapshot(), params)
        promote(first, "1", reason="first")

    counts = _count(monkeypatch)
    with Workspace(settings) as ws:  # a new command: champion v1 on the same snapshot
        outcome = train_evaluate_register(ws, ws.snapshot(), params)
    assert outcome.version == "2" and outcome.evaluation.champion_version == "1"
    assert outcome.evaluation.comparison_rows is not None  # the champion's rows were used
    assert counts == {"manifests": 1, "reads": 1}
    assert not tracking_utils.is_tracking_uri_set()
    assert "MLFLOW_TRACKING_URI" not in os.environ
