"""One API-key rule for every protocol (X-API-Key or Authorization: Bearer, constant-time), and
the labels key of /v1/feedback, through the ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel.predlog import open_prediction_log
from flywheel.serving.auth import credential, key_ok
from flywheel.serving.config import ServedModel, ServingConfig, secret_bytes
from flywheel.serving.predictor import Predictor
from flywheel.serving.rest import create_app
from flywheel.serving.sources import ModelFiles, StaticSource
from tests.unit.serving_models import build, rows

Check = Callable[[httpx.AsyncClient], Awaitable[None]]


def test_credential_from_asgi_bytes_and_grpc_strings() -> None:
    assert credential([(b"x-api-key", b"k1")]) == b"k1"
    assert credential([(b"authorization", b"Bearer k2")]) == b"k2"
    assert credential([("authorization", "bearer k3")]) == b"k3"  # scheme is case-insensitive
    assert credential([("X-API-Key", "k4")]) == b"k4"
    assert credential([(b"authorization", b"Basic abc")]) is None
    assert credential([]) is None


def test_key_ok() -> None:
    assert key_ok(None, None)  # no key configured: open
    assert key_ok(b"k", b"k")
    assert not key_ok(None, b"k")
    assert not key_ok(b"wrong", b"k")


# --------------------------------------------------------------------------- /v1/feedback


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return build(tmp_path_factory.mktemp("auth"), family="logreg")


def _serve(files: ModelFiles, tmp_path: Path, check: Check, **config: Any) -> None:
    """The ASGI app with a prediction log, in-process; ``config`` is ServingConfig's."""
    plog = open_prediction_log(f"sqlite:///{tmp_path}/p.db", flush_interval_s=0.01)
    options = {"models": (ServedModel("churn"),), "poll_interval_s": 0.0, **config}
    predictor = Predictor(
        ServingConfig(**options),
        {"churn": StaticSource({"1": files}, {"champion": "1"})},
        sink=plog,
    )

    async def main() -> None:
        await predictor.start()
        transport = httpx.ASGITransport(app=create_app(predictor, sink=plog))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await check(client)
        await predictor.close()

    try:
        asyncio.run(main())
    finally:
        plog.close()


def _label(rid: str) -> dict[str, Any]:
    return {"items": [{"request_id": rid, "label": 1}]}


def test_feedback_takes_the_labels_key_not_a_prediction_key(
    model_files: ModelFiles, tmp_path: Path
) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        answer = await c.post("/v1/predict", json=rows(1)[0], headers={"x-api-key": "pk"})
        rid = answer.json()["request_id"]
        refused = await c.post("/v1/feedback", json=_label(rid), headers={"x-api-key": "pk"})
        assert refused.status_code == 403 and refused.json()["error"]["kind"] == "forbidden"
        assert "prediction keys are refused" in refused.json()["error"]["message"]
        bearer_pk = {"authorization": "Bearer pk"}
        assert (
            await c.post("/v1/feedback", json=_label(rid), headers=bearer_pk)
        ).status_code == 403
        missing = await c.post("/v1/feedback", json=_label(rid))
        assert missing.status_code == 401 and missing.json()["error"]["kind"] == "unauthorized"
        ok = await c.post("/v1/feedback", json=_label(rid), headers={"x-api-key": "lk"})
        assert ok.status_code == 200 and ok.json() == {"accepted": 1, "unknown": []}
        ok = await c.post("/v1/feedback", json=_label(rid), headers={"authorization": "Bearer lk"})
        assert ok.status_code == 200
        # ... and the labels key opens no prediction route
        as_labels = await c.post("/v1/predict", json=rows(1)[0], headers={"x-api-key": "lk"})
        assert as_labels.status_code == 401

    _serve(model_files, tmp_path, check, api_key="pk", labels_key="lk")


def test_feedback_is_closed_when_auth_is_on_and_no_labels_key_is_set(
    model_files: ModelFiles, tmp_path: Path
) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        rid = (await c.post("/v1/predict", json=rows(1)[0])).json()["request_id"]
        for headers in ({}, {"authorization": "Bearer admin-t"}):  # not even the admin token
            answer = await c.post("/v1/feedback", json=_label(rid), headers=headers)
            assert answer.status_code == 403, answer.text
            assert "FLYWHEEL_SERVING__LABELS_KEY" in answer.json()["error"]["message"]

    _serve(model_files, tmp_path, check, admin_token="admin-t")


def test_feedback_stays_open_without_any_auth(model_files: ModelFiles, tmp_path: Path) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        rid = (await c.post("/v1/predict", json=rows(1)[0])).json()["request_id"]
        answer = await c.post("/v1/feedback", json=_label(rid))
        assert answer.status_code == 200 and answer.json()["accepted"] == 1

    _serve(model_files, tmp_path, check)


def test_the_labels_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel.config import load_settings

    monkeypatch.setenv("FLYWHEEL_SERVING__LABELS_KEY", "from-env")
    settings = load_settings()
    config = ServingConfig.from_settings(settings)
    assert secret_bytes(config.labels_key) == b"from-env"
    assert "from-env" not in repr(config)  # a secret still, in the server's config
    assert "from-env" not in str(settings.show()) and "from-env" not in repr(settings)
