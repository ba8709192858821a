"""`flywheel train` on targets a classifier cannot learn from, through the installed
`flywheel` as a user runs it: one class only (it crashed with exit 70, an IndexError in the
metrics after a raw scikit-learn warning), a class of one row (no stratified holdout), a
class with fewer training rows than CV folds. Each is a training error (exit 7) before any
fit, naming the class, its rows and the fix; nothing is recorded in MLflow."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from tests.e2e.conftest import flywheel


def _flat(text: str) -> str:
    """``text`` on one line: the console wraps long messages."""
    return " ".join(text.split())


def _ingest(cwd: Path, name: str, labels: np.ndarray) -> dict[str, str]:
    """``name.csv`` (x, y, label) ingested as dataset ``name``; the environment that trains
    it as model ``name``."""
    rng = np.random.default_rng(7)
    n = len(labels)
    # x separates the classes, so a model that trains passes the default gates
    frame = pd.DataFrame({"x": labels * 3.0 + rng.normal(size=n), "y": rng.normal(size=n)})
    frame["label"] = labels
    frame.to_csv(cwd / f"{name}.csv", index=False)
    flywheel(cwd, "ingest", "--file", f"{name}.csv", "--target", "label", "--dataset", name)
    return {"FLYWHEEL_SOURCE__DATASET": name, "FLYWHEEL_REGISTRY__MODEL_NAME": name}


def _runs(cwd: Path) -> list[tuple[str, str]]:
    db = cwd / ".flywheel" / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT run_uuid, status FROM runs").fetchall()
    con.close()
    return [(str(r[0]), str(r[1])) for r in rows]


def test_one_class_is_a_training_error_before_training(tmp_path: Path) -> None:
    env = _ingest(tmp_path, "one", np.zeros(120, dtype=int))
    proc = flywheel(tmp_path, "train", code=7, env=env)
    err = _flat(proc.stderr)
    assert "error (training)" in err, err
    assert "Target 'label' has only one class" in err, err
    assert "a classifier needs at least two classes" in err, err
    assert "Warning" not in proc.stderr, proc.stderr  # no raw scikit-learn warning
    assert _runs(tmp_path) == []


def test_a_class_of_one_row_cannot_be_held_out(tmp_path: Path) -> None:
    labels = np.arange(120) % 2
    labels[0] = 2
    env = _ingest(tmp_path, "single", labels)
    err = _flat(flywheel(tmp_path, "train", code=7, env=env).stderr)
    assert "Class 2 of target 'label' has only 1 row" in err, err
    assert "stratified holdout needs at least 2 rows of every class" in err, err
    assert _runs(tmp_path) == []


def test_a_class_with_fewer_rows_than_cv_folds_names_the_fix(tmp_path: Path) -> None:
    """Three rows of class 2: five stratified folds cannot each hold one of them
    (scikit-learn only warned; some folds then validated without the class). With the
    folds the message suggests, the same data trains."""
    labels = np.arange(120) % 2
    labels[:3] = 2
    env = _ingest(tmp_path, "rare", labels)
    err = _flat(flywheel(tmp_path, "train", code=7, env=env).stderr)
    found = re.search(r"Class 2 of target 'label' has (\d) rows in the training part", err)
    assert found is not None, err
    assert "fewer than cv_folds=5" in err, err
    assert f"set cv_folds to {found[1]} or less" in err, err
    assert _runs(tmp_path) == []
    (tmp_path / "params.yaml").write_text(f"family: logreg\ncv_folds: {found[1]}\n")
    out = flywheel(tmp_path, "train", "--params", "params.yaml", "--no-register", env=env)
    assert "Warning" not in out.stderr, out.stderr
    assert [status for _, status in _runs(tmp_path)] == ["FINISHED"]
