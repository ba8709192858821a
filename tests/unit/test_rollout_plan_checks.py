"""What a rollout plan and a rollout command refuse, and how: a field of another strategy
(exit 4, naming it, as ``steps`` on a shadow always was), empty or null ``steps``, a plan
naming another model (exit 4, not 10), a blank reason (a usage error: exit 2, HTTP 422);
and how ``rollout status`` words an A/B test's figures."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from rich.console import Console

from flywheel.config import load_settings
from flywheel.errors import DataError, UsageError
from flywheel.rollout import actions
from flywheel.rollout.plan import RolloutPlan, load_plan
from flywheel.workspace import Workspace


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace(load_settings(home=tmp_path / ".flywheel"))


# --------------------------------------------------------------------------- plan fields

OWNER = {"steps": "canary", "split": "ab", "metric": "ab", "max_requests": "ab", "mirror": "shadow"}
OTHERS = [
    ("canary", "split", 30),
    ("canary", "mirror", 10),
    ("canary", "max_requests", 50),
    ("canary", "metric", "accuracy"),  # its default, but written: refused all the same
    ("shadow", "split", 30),
    ("shadow", "metric", "error_rate"),
    ("shadow", "steps", [5, 100]),
    ("ab", "mirror", 50),
    ("ab", "steps", [5, 100]),
    ("bluegreen", "split", 20),
    ("bluegreen", "mirror", 100),
    ("bluegreen", "max_requests", 10),
]


@pytest.mark.parametrize(("strategy", "field", "value"), OTHERS)
def test_a_field_of_another_strategy_is_refused_naming_it(
    strategy: str, field: str, value: object
) -> None:
    with pytest.raises(DataError) as err:
        load_plan({"challenger": "2", "strategy": strategy, field: value})
    assert err.value.exit_code == 4 and err.value.details["field"] == field
    owner = OWNER[field]
    assert f"the plan: {field}: " in err.value.message, err.value.message
    assert f"{owner} only (strategy {strategy})" in err.value.message, err.value.message


def test_a_canary_split_in_a_file_is_refused_not_started_at_5_percent(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text('challenger: "2"\nstrategy: canary\nsplit: 30\n')
    with pytest.raises(DataError, match=r"plan.yaml: split: split applies to ab only"):
        load_plan(path)


def test_each_strategy_takes_its_own_fields_and_the_defaults_of_the_others() -> None:
    ab = load_plan({"challenger": "2", "strategy": "ab", "split": 30, "metric": "error_rate",
                    "max_requests": 500})  # fmt: skip
    assert (ab.split, ab.metric, ab.max_requests, ab.weight_at(0)) == (30, "error_rate", 500, 30)
    shadow = load_plan({"challenger": "2", "strategy": "shadow", "mirror": 10})
    assert shadow.mirror == 10
    canary = load_plan({"challenger": "2", "steps": [10, 100], "guardrails": {"metric": "none"}})
    assert canary.steps == [10, 100]
    for strategy in ("canary", "shadow", "ab", "bluegreen"):  # nothing written: no refusal
        plan = load_plan({"challenger": "2", "strategy": strategy, "interval": "5m"})
        # a stored plan (every field, defaults included) still reads back, as the
        # controller reads it every tick
        assert RolloutPlan.model_validate(plan.to_dict()) == plan


@pytest.mark.parametrize("text", ["steps: []\n", "steps: null\n", "steps:\n"])
def test_empty_or_null_steps_are_refused_not_the_default(tmp_path: Path, text: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text('challenger: "2"\n' + text)
    with pytest.raises(DataError) as err:
        load_plan(path)
    assert err.value.exit_code == 4 and err.value.details["field"] == "steps"
    assert "plan.yaml: steps: " in err.value.message, err.value.message
    assert "leave steps out for the default" in err.value.message
    assert load_plan({"challenger": "2"}).steps == [5, 25, 50, 100]  # left out: the default


# --------------------------------------------------------------------------- the model


def test_a_plan_naming_another_model_is_a_bad_plan(ws: Workspace) -> None:
    with pytest.raises(DataError) as err:
        actions.start(ws, load_plan({"challenger": "2", "model": "nosuch"}), reason="x")
    assert err.value.exit_code == 4 and err.value.details["field"] == "model"
    assert err.value.message.startswith("model: ") and "'nosuch'" in err.value.message


# --------------------------------------------------------------------------- a blank reason


@pytest.mark.parametrize("verb", ["pause", "resume", "promote", "abort", "switch"])
def test_a_blank_reason_is_a_usage_error_locally(ws: Workspace, verb: str) -> None:
    for reason in ("", "  ", None):
        with pytest.raises(UsageError) as err:
            getattr(actions, verb)(ws, reason=reason)
        assert err.value.exit_code == 2 and err.value.details["field"] == "reason"


@pytest.mark.parametrize(
    "args",
    [
        ["rollout", "pause", "--reason", ""],
        ["rollout", "resume", "--reason", "  "],
        ["rollout", "abort", "--reason", "", "--url", "http://127.0.0.1:9"],
        # the registry's own changes too (promote said exit 10, a registry error)
        ["promote", "1", "--reason", ""],
        ["approve", "1", "--reason", " "],
        ["rollback", "--reason", ""],
    ],
)
def test_the_cli_exits_2_on_a_blank_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    from flywheel import cli

    monkeypatch.setattr(sys, "argv", ["flywheel", *args])
    monkeypatch.setenv("FLYWHEEL_ADMIN_TOKEN", "t")
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 2
    shown = capsys.readouterr()
    assert "--reason" in shown.err and "reason is required" in shown.err, shown


def _routes() -> TestClient:
    from flywheel.serving._api import install_errors
    from flywheel.serving._rollout_api import rollout_routes

    api = FastAPI()
    install_errors(api)
    rollout_routes(api, object(), Depends(lambda: None), {})  # type: ignore[arg-type]
    return TestClient(api)


@pytest.mark.parametrize("body", [{"reason": ""}, {"reason": "   "}, {}])
def test_the_admin_routes_answer_422_naming_reason(body: dict[str, Any]) -> None:
    answer = _routes().post("/admin/rollout/resume", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["kind"] == "invalid_input" and error["details"]["field"] == "body.reason"
    assert "--reason" not in error["message"]  # no CLI hint over HTTP


# --------------------------------------------------------------------------- the A/B words


def _status(monkeypatch: pytest.MonkeyPatch, test: dict[str, Any]) -> str:
    from flywheel import cli
    from flywheel.cli_rollout import _print_status

    out = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=out, width=300))
    state = {
        "id": "r1", "strategy": "ab", "challenger": "2", "champion": "1", "status": "running",
        "weight": 50.0, "reason": "", "step": 0, "step_started_at": time.time(), "plan": {},
    }  # fmt: skip
    _print_status({"model": "churn", "rollout": state, "analysis": {"test": test}})
    return out.getvalue()


def test_status_words_a_test_before_labels_and_after(monkeypatch: pytest.MonkeyPatch) -> None:
    none = {"metric": "accuracy", "n_champion": 0, "n_challenger": 0, "champion": None,
            "challenger": None, "low": None, "high": None, "p_value": 1.0}  # fmt: skip
    text = _status(monkeypatch, none)
    assert "test on accuracy: no labelled outcomes yet" in text, text
    assert "interval of the difference ," not in text
    few = {**none, "n_champion": 1, "n_challenger": 1, "champion": 1.0, "challenger": 0.0}
    text = _status(monkeypatch, few)
    assert "too few labelled outcomes for an interval yet" in text, text
    some = {**none, "n_champion": 1526, "n_challenger": 1474, "champion": 0.9145,
            "challenger": 0.9502, "low": 0.0123, "high": 0.0591, "p_value": 0.004}  # fmt: skip
    text = _status(monkeypatch, some)
    assert (
        "challenger 0.9502 vs champion 0.9145, interval of the difference [0.0123, 0.0591], "
        "p = 0.004, n = 1474 challenger, 1526 champion"
    ) in text, text
