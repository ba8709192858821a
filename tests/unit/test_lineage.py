"""Lineage's two halves that need no registry: what names a version, and a prediction found
in the log by its server id or its client id, on SQLite and on PostgreSQL (the whole chain,
through the CLI: tests/e2e/test_lineage_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.errors import NotFound, UsageError
from flywheel.pipelines.lineage import find_request, lineage, version_ref
from flywheel.predlog import PredictionRecord, open_prediction_log
from flywheel.workspace import Workspace
from tests.integration.conftest import pg_url  # noqa: F401  (the fixture, for the PostgreSQL case)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("3", ("churn", "3")),
        (" v12 ", ("churn", "12")),
        ("cancer/4", ("cancer", "4")),
        ("cancer/v4", ("cancer", "4")),
        ("@champion", ("churn", "@champion")),
        ("30ad62da737e000000000001", None),  # the server's request id
        ("123456789012345678901234", None),  # one that happens to be all digits
        ("order/abc", None),
        ("/3", None),
        ("@", None),
        ("client-7", None),
    ],
)
def test_what_names_a_version(target: str, expected: tuple[str, str] | None) -> None:
    assert version_ref(target, "churn") == expected


def _record(rid: str, version: str, client: str | None, role: str | None) -> PredictionRecord:
    return PredictionRecord(
        request_id=rid,
        ts=1_800_000_000.0,
        model="churn",
        version=version,
        protocol="rest",
        inputs={"tenure": [3]},
        outputs={"labels": [1]},
        latency_ms=1.5,
        client_id=client,
        role=role,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A log holding: request "r1" answered by v1 (champion) and scored by v2 (shadow),
    sent with client id "c-1" and labelled 1; "r2" and "r3" both sent as "shared"."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    plog = open_prediction_log(url)
    try:
        for record in (
            _record("r1", "1", "c-1", "champion"),
            _record("r1", "2", "c-1", "shadow"),
            _record("r2", "1", "shared", None),
            _record("r3", "1", "shared", None),
        ):
            assert plog.append(record)
        plog.flush()
        assert plog.label([("r1", 1)], ts=1_800_000_060.0).accepted == 1
    finally:
        plog.close()
    return url


def test_a_request_by_its_server_id_names_the_version_that_answered(log_url: str) -> None:
    found = find_request(log_url, "r1")
    assert found == {
        "id": "r1",
        "client_id": "c-1",
        "ts": "2027-01-15T08:00:00+00:00",
        "protocol": "rest",
        "role": "champion",
        "model": "churn",
        "version": "1",
        "shadows": ["2"],
        "label": 1,
        "label_ts": "2027-01-15T08:01:00+00:00",
    }


def test_a_client_id_resolves_when_one_request_carries_it(log_url: str) -> None:
    found = find_request(log_url, "c-1")
    assert found is not None and (found["id"], found["version"]) == ("r1", "1")
    assert find_request(log_url, "nobody") is None
    with pytest.raises(UsageError) as shared:
        find_request(log_url, "shared")
    assert "r2, r3" in shared.value.message and shared.value.details["request_ids"] == ["r2", "r3"]
    unlabelled = find_request(log_url, "r2")
    assert unlabelled is not None and unlabelled["label"] is None and unlabelled["role"] is None


def test_a_missing_sqlite_log_is_read_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "predictions.db"
    assert find_request(f"sqlite:///{path}", "r1") is None
    assert not path.exists() and not path.parent.exists()


def test_an_unknown_target_says_what_was_searched(ws: Workspace) -> None:
    with pytest.raises(NotFound) as missing:
        lineage(ws, "no-such-id")
    message = missing.value.message
    assert "'no-such-id'" in message and "prediction log" in message
    assert "predictions.db" in message and "flywheel registry list" in message
    assert missing.value.details["target"] == "no-such-id"
    with pytest.raises(UsageError):
        lineage(ws, "  ")
