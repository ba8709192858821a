"""The WebSocket adapter /v1/stream, in-process (Starlette's ASGI test client)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import ModelFiles, StaticSource
from flywheel.serving.types import PredictRequest, PredictResponse
from flywheel.serving.ws import websocket_app
from tests.unit.serving_models import build, rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return build(tmp_path_factory.mktemp("ws-models"), family="logreg")


def make_predictor(files: ModelFiles) -> Predictor:
    return Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({"1": files}, {"champion": "1"})},
    )


class Tracking:
    """Wraps a Predictor: slows each call a little and records rows in flight."""

    def __init__(self, inner: Predictor, delay_s: float = 0.005) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.config = inner.config
        self.rows_in_flight = 0
        self.peak = 0
        self.calls = inner.calls  # the request cycle the fronts run
        self.predictions = 0

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def predict(self, request: PredictRequest) -> PredictResponse:
        n = len(request.records or ())
        self.predictions += 1
        self.rows_in_flight += n
        self.peak = max(self.peak, self.rows_in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return await self.inner.predict(request)
        finally:
            self.rows_in_flight -= n


def client_for(predictor: Any, **options: Any) -> TestClient:
    return TestClient(websocket_app(predictor, **options))


def recv(ws: Any) -> dict[str, Any]:
    return orjson.loads(ws.receive_text())


def test_one_record_gets_its_answer(model_dir: ModelFiles) -> None:
    record = rows(1)[0]
    with (
        client_for(make_predictor(model_dir)) as client,
        client.websocket_connect("/v1/stream") as ws,
    ):
        ws.send_text(orjson.dumps({"id": "a1", "record": record}).decode())
        answer = recv(ws)
    assert answer["id"] == "a1"
    assert answer["prediction"] in (0, 1)
    assert answer["classes"] == [0, 1]
    assert sum(answer["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert (answer["model"], answer["version"]) == ("churn", "1")


def test_many_records_per_message_each_its_own_request_scored_together(
    model_dir: ModelFiles,
) -> None:
    """Each record is a request of its own (its own request id for /v1/feedback: one id
    for a whole message labelled every record of it), and the micro-batcher still scores a
    message's records together."""
    inner = make_predictor(model_dir)
    predictor = Tracking(inner, delay_s=0)
    records = rows(60)
    with client_for(predictor) as client, client.websocket_connect("/v1/stream") as ws:
        for m in range(3):
            items = [{"id": f"m{m}-{n}", "record": r} for n, r in enumerate(records[m * 20 :][:20])]
            ws.send_bytes(orjson.dumps({"items": items, "model": "churn"}))
        answers = [recv(ws) for _ in range(60)]
        # the same records scored singly agree with the batched answers
        ws.send_text(orjson.dumps({"id": 7, "record": records[0]}).decode())
        single = recv(ws)
    assert sorted(a["id"] for a in answers) == sorted(
        f"m{m}-{n}" for m in range(3) for n in range(20)
    )
    assert predictor.predictions == 61  # one request per record
    assert len({a["request_id"] for a in answers}) == 60
    stats = inner.batch_stats()
    assert stats.rows == 61 and stats.max_rows_seen >= 10, stats  # batched, not 1 by 1
    first = next(a for a in answers if a["id"] == "m0-0")
    assert single["id"] == 7
    assert single["probabilities"] == pytest.approx(first["probabilities"], abs=1e-6)


def test_bad_messages_get_error_frames_and_the_socket_stays_open(model_dir: ModelFiles) -> None:
    good = rows(2)
    predictor = make_predictor(model_dir)
    with client_for(predictor) as client, client.websocket_connect("/v1/stream") as ws:
        ws.send_text("{not json")
        bad_json = recv(ws)
        ws.send_text(orjson.dumps({"record": good[0]}).decode())
        no_id = recv(ws)
        ws.send_text(orjson.dumps({"id": "r", "record": [1, 2]}).decode())
        bad_record = recv(ws)
        ws.send_text(orjson.dumps({"id": "v", "record": {**good[0], "tenure": "x"}}).decode())
        invalid = recv(ws)
        mixed = {
            "items": [
                {"id": "ok1", "record": good[0]},
                {"id": "bad", "record": {**good[1], "plan": ["x"]}},
                {"record": good[1]},
                {"id": "ok2", "record": good[1]},
            ]
        }
        ws.send_text(orjson.dumps(mixed).decode())
        frames = {f["id"]: f for f in (recv(ws) for _ in range(4))}
        ws.send_text(orjson.dumps({"id": "after", "record": good[0]}).decode())
        after = recv(ws)
    assert bad_json["id"] is None and bad_json["error"]["kind"] == "bad_request"
    assert "not valid JSON" in bad_json["error"]["message"]
    assert no_id["id"] is None and no_id["error"]["details"]["field"] == "id"
    assert bad_record["id"] == "r" and bad_record["error"]["details"]["field"] == "record"
    assert invalid["id"] == "v" and invalid["error"]["kind"] == "invalid_input"
    assert "tenure" in invalid["error"]["message"]
    assert "prediction" in frames["ok1"] and "prediction" in frames["ok2"]
    assert frames["bad"]["error"]["kind"] == "invalid_input"
    assert frames[None]["error"]["details"]["field"] == "id"
    assert after["id"] == "after" and "prediction" in after
    # each error frame is counted as the other doors count theirs: the message's own (bad
    # JSON, no id, a record not an object, an item without id) and the records' (422)
    metrics = predictor.metrics.render().decode()
    assert 'flywheel_errors_total{kind="bad_request",protocol="ws"} 4.0' in metrics
    assert 'flywheel_errors_total{kind="invalid_input",protocol="ws"} 2.0' in metrics
    assert 'flywheel_requests_total{protocol="ws",route="/v1/stream",status="400"} 4.0' in metrics


def test_fast_sender_is_held_to_the_in_flight_bound(model_dir: ModelFiles) -> None:
    predictor = Tracking(make_predictor(model_dir), delay_s=0.01)
    seen: list[int] = []
    inner = websocket_app(predictor, max_in_flight=8)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def watched() -> Any:  # in flight at every read: reading stops at the bound
            stream = scope.get("state", {}).get("flywheel_stream")
            if stream is not None:
                seen.append(stream.in_flight)
            return await receive()

        await inner(scope, watched, send)

    records = rows(4)
    with TestClient(app) as client, client.websocket_connect("/v1/stream") as ws:
        for m in range(50):  # send everything before reading anything
            items = [{"id": f"{m}-{n}", "record": r} for n, r in enumerate(records[: 1 + m % 4])]
            ws.send_text(orjson.dumps({"items": items}).decode())
        expected = sum(1 + m % 4 for m in range(50))
        answers = [recv(ws) for _ in range(expected)]
        ws.send_text(
            orjson.dumps({"items": [{"id": n, "record": records[0]} for n in range(9)]}).decode()
        )
        too_big = [recv(ws) for _ in range(9)]
    assert len({a["id"] for a in answers}) == expected
    assert all("prediction" in a for a in answers)
    assert predictor.peak <= 8
    assert seen and max(seen) < 8
    assert all(
        f["error"]["kind"] == "bad_request" and "limit per message is 8" in f["error"]["message"]
        for f in too_big
    )


def test_api_key_is_required_when_set(model_dir: ModelFiles) -> None:
    with client_for(make_predictor(model_dir), api_key="s3cret") as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/v1/stream"):
            pass
        assert refused.value.code == 1008
        with client.websocket_connect("/v1/stream", headers={"X-API-Key": "s3cret"}) as ws:
            ws.send_text(orjson.dumps({"id": 1, "record": rows(1)[0]}).decode())
            assert recv(ws)["id"] == 1


def test_unknown_model_errors_every_id(model_dir: ModelFiles) -> None:
    with (
        client_for(make_predictor(model_dir)) as client,
        client.websocket_connect("/v1/stream") as ws,
    ):
        ws.send_text(
            orjson.dumps(
                {
                    "model": "nope",
                    "items": [{"id": 1, "record": rows(1)[0]}, {"id": 2, "record": rows(1)[0]}],
                }
            ).decode()
        )
        frames = [recv(ws), recv(ws)]
    assert sorted(f["id"] for f in frames) == [1, 2]
    assert {f["error"]["kind"] for f in frames} == {"model_not_found"}
