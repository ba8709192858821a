"""Load test: under concurrent load on a real socket, the prediction log holds exactly one
row per answered request (matched by request id), across REST, MLflow and v2 routes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.models import StaticSource
from flywheel.serving.predictor import Predictor
from flywheel.serving.predlog import open_prediction_log
from flywheel.serving.rest import create_app
from tests.integration.conftest import uvicorn_in_thread
from tests.unit.serving_models import build, rows

pytestmark = pytest.mark.integration

REQUESTS = 600
CONCURRENCY = 32


async def _load(url: str) -> list[str]:
    """Fire REQUESTS requests, CONCURRENCY at a time, over three routes; return answer ids."""
    bodies = rows(REQUESTS)
    ids: list[str] = []
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with limit:
            if i % 3 == 0:
                r = await client.post("/v1/predict", json={"records": [bodies[i]]})
            elif i % 3 == 1:
                r = await client.post("/invocations", json={"dataframe_records": [bodies[i]]})
            else:
                r = await client.post("/v1/predict", json=bodies[i])
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-request-id"])

    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=httpx.Limits(max_connections=CONCURRENCY)
    ) as client:
        await asyncio.gather(*(one(client, i) for i in range(REQUESTS)))
    return ids


def test_log_has_one_row_per_answer_under_load(tmp_path: Path) -> None:
    files = build(tmp_path, family="logreg")
    plog = open_prediction_log(f"sqlite:///{tmp_path}/predictions.db", batch_size=100)
    predictor = Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({"1": files}, {"champion": "1"})},
        sink=plog,
    )
    with uvicorn_in_thread(create_app(predictor, sink=plog)) as url:
        answered = asyncio.run(_load(url))
    plog.close()

    logged = [r["request_id"] for r in plog.read()]
    assert len(answered) == REQUESTS
    assert len(set(answered)) == REQUESTS, "request ids must be unique"
    assert sorted(logged) == sorted(answered)  # exactly one row per answered request
    assert plog.dropped() == 0
    assert predictor.batch_stats().batches > 0
