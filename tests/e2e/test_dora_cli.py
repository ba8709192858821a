"""DORA figures through the installed `flywheel` entry point, and the server's gauges over the
same folder.

One folder, no ``FLYWHEEL_*`` variable: scikit-learn's breast-cancer table is ingested and a
logistic regression trained twice (versions 1 and 2, a few seconds each); version 1 is
promoted, then version 2, then rolled back. `flywheel registry dora --json` must count two
deployments and one rollback, with lead times from the runs' start times; the collector the
server registers must agree, reading MLflow's SQL tables instead of MLflow's client.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from flywheel.serving.dora_gauges import DoraGauges
from tests.e2e.conftest import copy_folder, flywheel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(cancer_ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 promoted, v2 promoted, then rolled back (champion v1 again)."""
    # cancer.csv ingested (the session's `cancer_ingested`, copied), the default gates
    cwd = copy_folder(cancer_ingested, tmp_path_factory.mktemp("dora") / "f")
    settings = {
        "source": {"dataset": "cancer"},
        "registry": {"model_name": "cancer"},
        "training": {"params_file": "params.yaml"},
    }
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    (cwd / "params.yaml").write_text("family: logreg\ncv_folds: 3\n")
    for version in ("1", "2"):
        assert f"registered cancer version {version}" in flywheel(cwd, "train").stdout
    flywheel(cwd, "promote", "1", "--reason", "first champion")
    flywheel(cwd, "promote", "2", "--reason", "retrained")
    flywheel(cwd, "rollback", "--reason", "incident 7")
    return cwd


def _at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["at"])


def _run_starts(folder: Path) -> dict[str, datetime]:
    """``{version: start of its run}``, asked of MLflow's own client."""
    from mlflow import MlflowClient

    uri = json.loads(flywheel(folder, "config", "show", "--json").stdout)["tracking"]["uri"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = json.loads(flywheel(folder, "registry", "list", "--json").stdout)
    return {
        v["version"]: datetime.fromtimestamp(
            client.get_run(v["run_id"]).info.start_time / 1000, UTC
        )
        for v in versions
    }


def test_dora_json_counts_the_deployments_and_the_rollback(folder: Path) -> None:
    history = json.loads(flywheel(folder, "registry", "history", "--json").stdout)
    promotes = [e for e in history if e["action"] == "promote"]
    registers = {e["to_version"]: e for e in history if e["action"] == "register"}
    (rollback,) = [e for e in history if e["action"] == "rollback"]

    out = json.loads(flywheel(folder, "registry", "dora", "--json").stdout)
    assert out["model"] == "cancer"
    assert out["period_days"] == pytest.approx(30)
    deployments = out["deployments"]
    assert deployments["count"] == 2
    assert deployments["per_day"] == pytest.approx(2 / 30)
    assert deployments["per_week"] == pytest.approx(2 / 30 * 7)
    assert [(d["id"], d["version"]) for d in deployments["list"]] == [
        (e["id"], e["to_version"]) for e in promotes
    ]
    started = _run_starts(folder)
    for d, promote in zip(deployments["list"], promotes, strict=True):
        assert d["lead_time_from"] == "run"
        expected = (_at(promote) - started[d["version"]]).total_seconds()
        assert d["lead_time_s"] == pytest.approx(expected)
        # the run started before its registration
        assert expected > (_at(promote) - _at(registers[d["version"]])).total_seconds() > 0
    lead = [d["lead_time_s"] for d in deployments["list"]]
    assert out["lead_time_seconds"]["median"] == pytest.approx(sum(lead) / 2)
    assert out["change_failure_rate"] == pytest.approx(0.5)
    assert out["rollbacks"]["count"] == 1
    (restore,) = out["rollbacks"]["list"]
    assert (restore["from_version"], restore["deployment_id"]) == ("2", promotes[1]["id"])
    restore_s = (_at(rollback) - _at(promotes[1])).total_seconds()
    assert out["time_to_restore_seconds"]["median"] == pytest.approx(restore_s)
    assert out["rollouts_stopped"] == 0


def test_dora_table_and_the_since_option(folder: Path) -> None:
    table = flywheel(folder, "registry", "dora", "--since", "1h").stdout
    assert "deployments" in table and "2 in 1.0 h" in table
    assert "change failure rate" in table and "50%" in table
    assert "rollbacks (by self-healing)" in table and "1 (0)" in table
    err = flywheel(folder, "registry", "dora", "--since", "3 weeks", code=2).stderr
    assert "--since" in err and "3 weeks" in err
    future = flywheel(folder, "registry", "dora", "--since", "2999-01-01", "--json", code=2)
    assert "before now" in future.stderr


def test_the_collector_agrees_with_the_cli(folder: Path) -> None:
    config = json.loads(flywheel(folder, "config", "show", "--json").stdout)
    out = json.loads(flywheel(folder, "registry", "dora", "--json").stdout)
    gauges = DoraGauges(config["registry"]["audit_url"], config["tracking"]["uri"])
    samples = {
        (family.name, sample.name): sample.value
        for family in gauges.collect()
        for sample in family.samples
        if sample.labels == {"model": "cancer"}
    }
    assert samples[("flywheel_dora_deployments", "flywheel_dora_deployments_total")] == 2
    figures = {name: value for (family, name), value in samples.items()}
    assert figures["flywheel_dora_deployment_frequency_per_day"] == pytest.approx(2 / 30)
    assert figures["flywheel_dora_change_failure_rate"] == pytest.approx(0.5)
    assert figures["flywheel_dora_lead_time_seconds"] == pytest.approx(
        out["lead_time_seconds"]["median"]
    )
    assert figures["flywheel_dora_time_to_restore_seconds"] == pytest.approx(
        out["time_to_restore_seconds"]["median"]
    )
