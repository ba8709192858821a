"""The train → register benchmark runs end to end on a small world: every column is
measured, MLflow by hand registers its own model, and the verdict is computed from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_register_bench_measures_flywheel_and_mlflow_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "train_register.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    env["FLYWHEEL_CONFIG"] = os.devnull
    # a world this small has noisy slices; the gates are not what this test is about
    env["FLYWHEEL_GATES__MAX_SLICE_GAP"] = "{}"
    env["FLYWHEEL_GATES__MIN_METRICS"] = "{}"
    cmd = [sys.executable, "-m", "bench.train_register", "--rows", "3000", "--folds", "2"]
    cmd += ["--warm", "1", "--out", str(out)]
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    results = record["results"]
    assert set(results) == {
        "first run (new DB)",
        "new process",
        "new process, libraries imported first",
        "warm, median of 1",
    }
    for name, r in results.items():
        assert r["training_s"] > 0 and r["overhead_s"] > 0, name
        assert r["overhead_share"] == pytest.approx(r["overhead_s"] / r["training_s"])
    # a new process pays its imports; importing the libraries first removes most of them
    assert (
        results["new process"]["overhead_s"]
        > results["new process, libraries imported first"]["overhead_s"]
    )
    hand = record["mlflow_by_hand"]
    assert hand["by hand, new process"]["overhead_s"] > 0
    assert hand["by hand, warm"]["registry_s"] > 0
    ratios = record["overhead_ratio_by_hand_to_flywheel"]
    assert ratios["warm"] == pytest.approx(
        hand["by hand, warm"]["overhead_s"] / hand["flywheel, warm"]["overhead_s"]
    )
    assert record["verdict"][0].startswith("goal (issue #2)")
    assert ("PASS" in record["verdict"][1]) == (
        results["warm, median of 1"]["overhead_share"] < 0.10
    )
    assert "MLflow by hand" in proc.stdout
