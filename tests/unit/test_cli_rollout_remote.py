"""`flywheel rollout ... --url`: the server's errors exit as the local command's would, and
the CLI's strategy choice matches the plan's."""

from __future__ import annotations

import json
import typing

import pytest

from flywheel.cli_rollout import Strategy, _answered
from flywheel.errors import DataError, NotFound, RegistryError, RemoteError
from flywheel.rollout.plan import STRATEGIES, RolloutPlan
from flywheel.serving._rollout_api import StartBody


def _body(kind: str, **details: object) -> bytes:
    return json.dumps({"error": {"kind": kind, "message": "why", "details": details}}).encode()


@pytest.mark.parametrize(
    ("kind", "cls", "code"),
    [
        ("registry", RegistryError, 10),
        ("not_found", NotFound, 3),
        ("data", DataError, 4),
        ("invalid_input", DataError, 4),  # the body's validation (extra fields): a bad plan
        ("usage", Exception, 2),
    ],
)
def test_a_known_kind_exits_as_locally(kind: str, cls: type, code: int) -> None:
    err = _answered("http://h/admin/rollout/start", 409, _body(kind, rollout="r1"))
    assert isinstance(err, cls) and err.exit_code == code
    assert err.message == "why (http://h/admin/rollout/start answered 409)"
    assert err.details == {"rollout": "r1", "status": 409}


def test_details_that_name_status_or_message_and_unknown_shapes() -> None:
    err = _answered("u", 409, _body("registry", status="x", message="y"))
    assert isinstance(err, RegistryError) and err.details == {"status": 409}
    odd = _answered("u", 418, _body("teapot"))
    assert isinstance(odd, RemoteError) and odd.exit_code == 12 and "why" in odd.message
    raw = _answered("u", 502, b"<html>bad gateway</html>")
    assert isinstance(raw, RemoteError) and "bad gateway" in raw.message


def test_the_strategy_lists_agree() -> None:
    assert {s.value for s in Strategy} == set(STRATEGIES)
    assert set(typing.get_args(RolloutPlan.model_fields["strategy"].annotation)) == set(STRATEGIES)
    start = StartBody.model_fields["strategy"].annotation
    assert set(typing.get_args(typing.get_args(start)[0])) == set(STRATEGIES)
