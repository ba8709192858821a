"""Load test: under concurrent load on a real socket, the prediction log holds exactly one
row per answered request (matched by request id), across REST, MLflow and v2 routes, in both
durabilities; and a client reusing its X-Request-ID hides no answer from the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from flywheel.predlog import open_prediction_log
from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.predictor import Predictor
from flywheel.serving.rest import create_app
from flywheel.serving.sources import StaticSource
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


@pytest.mark.parametrize("durability", ["async", "commit"])
def test_log_has_one_row_per_answer_under_load(tmp_path: Path, durability: str) -> None:
    files = build(tmp_path, family="logreg")
    plog = open_prediction_log(
        f"sqlite:///{tmp_path}/predictions.db", batch_size=100, durability=durability
    )
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


def test_a_client_reusing_its_request_id_gets_every_answer_logged(tmp_path: Path) -> None:
    """Four answers to one X-Request-ID: four rows, each under the server's own id, the
    client's id beside it; the reused id is too ambiguous to label, the server's ids are not."""
    files = build(tmp_path, family="logreg")
    plog = open_prediction_log(f"sqlite:///{tmp_path}/predictions.db", flush_interval_s=0.02)
    predictor = Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({"1": files}, {"champion": "1"})},
        sink=plog,
    )
    body = {"records": rows(1)}
    with uvicorn_in_thread(create_app(predictor, sink=plog)) as url:
        answers = [
            httpx.post(f"{url}/v1/predict", json=body, headers={"X-Request-ID": "same"}).json()
            for _ in range(4)
        ]
        server_ids = [a["request_id"] for a in answers]
        feedback = httpx.post(
            f"{url}/v1/feedback",
            json={"items": [{"request_id": "same", "label": 1}, *[
                {"request_id": rid, "label": 0} for rid in server_ids[:2]
            ]]},
        ).json()  # fmt: skip
    plog.close()
    assert len(set(server_ids)) == 4 and "same" not in server_ids
    assert [a.get("client_id") for a in answers] == ["same"] * 4
    logged = {r["request_id"]: (r["client_id"], r["label"]) for r in plog.read()}
    assert logged == {
        server_ids[0]: ("same", 0),
        server_ids[1]: ("same", 0),
        server_ids[2]: ("same", None),
        server_ids[3]: ("same", None),
    }
    assert feedback == {"accepted": 2, "unknown": ["same"]}
