"""Data no one here wrote: scikit-learn's bundled datasets, exported to CSV, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("loader", "name", "family"),
    [
        (load_breast_cancer, "cancer", "hist_gb"),
        (load_diabetes, "diabetes", "hist_gb"),
        (load_breast_cancer, "cancer_lr", "logreg"),
    ],
)
def test_bundled_dataset_trains_and_registers(
    cli: Cli, tmp_path: Path, loader: object, name: str, family: str
) -> None:
    frame = loader(as_frame=True).frame  # type: ignore[operator]
    csv = tmp_path / f"{name}.csv"
    frame.to_csv(csv, index=False)
    params = tmp_path / "params.yaml"
    params.write_text(f"family: {family}\ncv_folds: 3\n")
    env = {"FLYWHEEL_REGISTRY__MODEL_NAME": name, "FLYWHEEL_SOURCE__DATASET": name}

    out = cli("ingest", "--file", str(csv), "--target", "target", env=env).stdout
    assert "snapshot snap-" in out
    assert "contract inferred" in out
    out = cli("train", "--params", str(params), env=env).stdout
    assert f"registered {name} version 1" in out
    metric = "roc_auc" if name.startswith("cancer") else "r2"
    assert metric in out


def test_csv_with_missing_target_column_is_refused(cli: Cli, tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    load_diabetes(as_frame=True).frame.to_csv(csv, index=False)
    proc = cli("ingest", "--file", str(csv), "--target", "nope", ok=False)
    assert proc.returncode != 0
    assert "nope" in proc.stderr
    assert not (tmp_path / "fw" / "store").exists() or not any(
        (tmp_path / "fw" / "store").rglob("*.json")
    )


def test_retrain_on_your_own_files_trains_on_the_newest_one(
    cancer_champion: Path, tmp_path: Path
) -> None:
    """No SQL source: `flywheel retrain` used to fail (exit 6: "no SQLite database ... run
    `flywheel simulate`"). It trains on the newest file ingested: by hand on the champion's
    own snapshot, then on the file ingested after it."""
    import json

    import yaml

    from tests.e2e.conftest import copy_folder, flywheel

    cwd = copy_folder(cancer_champion, tmp_path / "f")
    settings = yaml.safe_load((cwd / "flywheel.yaml").read_text())
    settings["retrain"] = {"rollout": "none", "cooldown": "0d"}
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    first = json.loads(flywheel(cwd, "retrain", "--reason", "by hand", "--json").stdout)
    assert first["status"] == "finished" and first["version"] == "2", first
    ingested = first["steps"]["ingest"]["output"]
    assert ingested["source"] == "file" and ingested["created"] is False  # the champion's
    frame = load_breast_cancer(as_frame=True).frame
    frame.iloc[:300].to_csv(cwd / "cancer-2.csv", index=False)
    flywheel(cwd, "ingest", "--file", "cancer-2.csv", "--target", "target")
    newest = json.loads(flywheel(cwd, "data", "list", "--json").stdout)[-1]["id"]
    second = json.loads(flywheel(cwd, "retrain", "--reason", "new file", "--json").stdout)
    assert second["status"] == "finished", second
    assert second["snapshot_id"] == newest and second["steps"]["ingest"]["output"]["created"]
