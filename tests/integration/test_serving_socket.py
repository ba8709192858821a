"""The REST server on a real socket (uvicorn + uvloop + httptools on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flywheel.config import Settings
from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.predictor import Predictor
from flywheel.serving.rest import create_app
from flywheel.serving.sources import RegistrySource, StaticSource
from tests.integration.conftest import uvicorn_in_thread
from tests.unit.serving_models import build, rows

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Predictor]]:
    files = build(tmp_path, family="logreg")
    predictor = Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({"1": files}, {"champion": "1"})},
    )
    with uvicorn_in_thread(create_app(predictor)) as url:
        yield url, predictor


def test_real_socket_smoke(server: tuple[str, Predictor]) -> None:
    url, predictor = server
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/v2/health/ready").json() == {"ready": True}
        answer = client.post("/v1/predict", json={"records": rows(2)})
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
        assert client.post("/invocations", json={"dataframe_records": rows(1)}).status_code == 200
        assert client.get("/docs").status_code == 200
        assert "flywheel_requests_total" in client.get("/metrics").text

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            answers = await asyncio.gather(*(client.post("/v1/predict", json=r) for r in rows(64)))
        return [a.status_code for a in answers]

    assert set(asyncio.run(burst())) == {200}
    assert predictor.batch_stats().batches > 0


@pytest.mark.slow
def test_registry_source_resolves_aliases(settings: Settings) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking.uri)
    client.create_registered_model("churn")
    for _ in range(2):
        client.create_model_version("churn", source=str(settings.home / "nowhere"))
    client.set_registered_model_alias("churn", "champion", "2")
    source = RegistrySource(settings, "churn")
    assert source.resolve("champion") == "2"
    assert source.resolve("1") == "1"
    from flywheel.errors import NotFound

    with pytest.raises(NotFound, match="challenger"):
        source.resolve("challenger")
