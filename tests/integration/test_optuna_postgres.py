"""Optuna trials shared through a real PostgreSQL database (``pg_url``), as workers would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from flywheel.config import Settings
from flywheel.data.snapshots import ingest
from flywheel.training.params import SearchParams, TrainParams
from flywheel.training.search import storage_url
from flywheel.training.train import train
from flywheel.workspace import Workspace

pytestmark = pytest.mark.integration

WORKER = textwrap.dedent(
    """
    import sys
    from flywheel.training.params import SearchParams
    from flywheel.training.search import run_search

    url, name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    search = SearchParams(space={"x": {"type": "float", "low": -5.0, "high": 5.0}})
    outcome = run_search(
        lambda p: {"rmse_cv_mean": (p["x"] - 1.0) ** 2}, search, name=name, metric="rmse",
        higher_is_better=False, trials=5, seed=seed, storage=url,
    )
    print(outcome.trials_run, outcome.trials_total)
    """
)


def test_storage_url_uses_psycopg3() -> None:
    assert storage_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert storage_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage_url("sqlite:///x.db") == "sqlite:///x.db"
    assert storage_url(None) is None


@pytest.mark.slow
def test_two_processes_fill_one_study(pg_url: str) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, pg_url, "shared-study", "42"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    assert all(out.split()[0] == "5" for out, _ in outputs)
    study = optuna.load_study(study_name="shared-study", storage=storage_url(pg_url))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 10
    assert sorted(t.number for t in complete) == list(range(10))
    assert study.best_value == min(t.value for t in complete)
    # workers started together still sample different points (per-process sampler offset)
    assert len({t.params["x"] for t in complete}) == 10
    # each worker's last reported total includes the other worker's trials
    assert max(int(out.split()[1]) for out, _ in outputs) == 10


def _snapshot(settings: Settings, tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    n = 500
    df = pd.DataFrame(
        {"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(["x", "y"], n)}
    )
    df["y"] = ((df.a + 0.5 * df.b + rng.normal(0, 0.5, n)) > 0).astype(int)
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    return ingest(settings, file=path, target="y", dataset="t").manifest.id


@pytest.mark.slow
def test_two_train_calls_join_the_same_study(
    settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    snapshot_id = _snapshot(settings, tmp_path)
    space = {
        "max_leaf_nodes": {"type": "int", "low": 4, "high": 16},
        "learning_rate": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
    }
    params = TrainParams(
        hyperparams={"max_iter": 15}, cv_folds=2, search=SearchParams(trials=5, space=space)
    )
    first = train(Workspace(settings), snapshot_id, params, trials=2, storage=pg_url)
    settings.training.optuna_storage = pg_url  # the second worker finds it in the settings
    second = train(Workspace(settings), snapshot_id, params, trials=2)
    assert first.best_trial is not None and second.best_trial is not None
    assert first.best_trial["study"] == second.best_trial["study"]
    assert (first.best_trial["trials_total"], second.best_trial["trials_total"]) == (2, 4)
    study = optuna.load_study(study_name=second.best_trial["study"], storage=storage_url(pg_url))
    values = [t.value for t in study.trials if t.value is not None]
    assert second.best_trial["value"] == pytest.approx(max(values))  # roc_auc: maximised
    # the second worker did not replay the first worker's start-up points
    points = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(points)) == 4
