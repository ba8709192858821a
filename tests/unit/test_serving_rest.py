"""The REST adapter in-process (httpx ASGITransport): every route, every dialect's errors."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.logs import JsonFormatter
from flywheel.serving.predictor import Predictor
from flywheel.serving.rest import RestFront, create_app
from flywheel.serving.sources import ModelFiles, StaticSource
from tests.unit.serving_models import build, rows

Check = Callable[[httpx.AsyncClient], Awaitable[None]]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFiles]:
    tmp = tmp_path_factory.mktemp("models")
    return {
        "1": build(tmp, family="logreg", version="1"),
        "2": build(tmp, family="random_forest", version="2"),
    }


class CountingSink:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def append(self, record: Any) -> None:
        self.records.append(record)

    def depth(self) -> int:
        return 0

    def dropped(self) -> int:
        return 0


def app_for(files: dict[str, ModelFiles], sink: Any = None, **config: Any) -> RestFront:
    source = StaticSource(dict(files), {"champion": "1"})
    options = {"models": (ServedModel("churn"),), "poll_interval_s": 0.0, **config}
    predictor = Predictor(ServingConfig(**options), {"churn": source}, sink=sink)
    return create_app(predictor)


def serve(app: RestFront, check: Check, *, start: bool = True) -> None:
    async def main() -> None:
        if start:
            await app.predictor.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await check(client)

    asyncio.run(main())


def arrow_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def assert_native_error(response: httpx.Response, status: int, kind: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"kind", "message", "details"}
    assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["details"], dict)
    if kind:
        assert body["error"]["kind"] == kind
    assert "Traceback" not in response.text and "SECRET" not in response.text


# --------------------------------------------------------------------------- native /v1


def test_v1_predict_json_shapes(files: dict[str, ModelFiles]) -> None:
    data = rows(3)

    async def check(c: httpx.AsyncClient) -> None:
        many = await c.post(
            "/v1/predict", json={"records": data}, headers={"x-request-id": "abc-1"}
        )
        assert many.status_code == 200
        body = many.json()
        assert (body["model"], body["version"], body["client_id"]) == ("churn", "1", "abc-1")
        assert many.headers["x-request-id"] == "abc-1"  # the client's id is echoed...
        assert len(body["request_id"]) == 24 and body["request_id"] != "abc-1"  # ...not the key
        assert len(body["predictions"]) == 3 and len(body["probabilities"][0]) == 2
        assert body["classes"] == [0, 1]
        answer = await c.post("/v1/predict", json=data[0])
        single = answer.json()
        assert "client_id" not in single  # none sent: the header echoes the server's id
        assert answer.headers["x-request-id"] == single["request_id"] != body["request_id"]
        assert single["probabilities"][0] == body["probabilities"][0]
        columns = {k: [r[k] for r in data] for k in data[0]}
        by_col = (await c.post("/v1/predict", json={"columns": columns})).json()
        assert by_col["probabilities"] == body["probabilities"]

    serve(app_for(files), check)


@pytest.mark.parametrize("kind", ["arrow", "parquet"])
def test_v1_predict_bulk_bodies(files: dict[str, ModelFiles], kind: str) -> None:
    data = rows(50)
    table = pa.Table.from_pylist(data)
    body, ctype = (
        (arrow_bytes(table), "application/vnd.apache.arrow.stream")
        if kind == "arrow"
        else (parquet_bytes(table), "application/vnd.apache.parquet")
    )

    async def check(c: httpx.AsyncClient) -> None:
        bulk = await c.post("/v1/predict", content=body, headers={"content-type": ctype})
        assert bulk.status_code == 200, bulk.text
        as_json = await c.post("/v1/predict", json={"records": data})
        assert bulk.json()["probabilities"] == as_json.json()["probabilities"]
        broken = await c.post("/v1/predict", content=b"not arrow", headers={"content-type": ctype})
        assert_native_error(broken, 400, "bad_request")

    serve(app_for(files), check)


def test_every_native_error_has_one_shape(files: dict[str, ModelFiles]) -> None:
    row = rows(1)[0]
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (
            "/v1/predict",
            {"content": b"{not json SECRET", "headers": {"content-type": "application/json"}},
            400,
            "bad_request",
        ),
        ("/v1/predict", {"json": "SECRET string"}, 400, "bad_request"),
        ("/v1/predict", {"json": {"records": [{"tenure": 1}]}}, 422, "invalid_input"),
        (
            "/v1/predict",
            {"json": {"records": [{**row, "charges": "SECRET"}]}},
            422,
            "invalid_input",
        ),
        ("/v1/predict", {"json": {"records": rows(6)}}, 422, "too_many_rows"),
        ("/v1/predict", {"json": {"records": []}}, 422, "invalid_input"),
        (
            "/v1/predict",
            {"content": b"x" * 5000, "headers": {"content-type": "application/json"}},
            413,
            "payload_too_large",
        ),
        (
            "/v1/predict",
            {"content": b"SECRET", "headers": {"content-type": "text/xml"}},
            415,
            "unsupported_media_type",
        ),
        ("/v1/predict", {"json": {"records": [row], "model": "nope"}}, 404, "model_not_found"),
        ("/v1/predict", {"json": {"records": [row], "version": "7"}}, 404, "model_not_found"),
        ("/nowhere", {"json": {}}, 404, "not_found"),
        ("/admin/reload", {}, 401, "unauthorized"),
        ("/admin/reload", {"headers": {"authorization": "Bearer wrong"}}, 403, "forbidden"),
        (
            "/admin/pin",
            {"json": {"version": ["x"]}, "headers": {"authorization": "Bearer t0ken"}},
            422,
            "invalid_input",
        ),
        (
            "/admin/pin",
            {"json": {"version": "99"}, "headers": {"authorization": "Bearer t0ken"}},
            404,
            "not_found",
        ),
    ]

    async def check(c: httpx.AsyncClient) -> None:
        for path, kwargs, status, kind in cases:
            assert_native_error(await c.post(path, **kwargs), status, kind)

    serve(app_for(files, max_rows_per_request=5, max_body_bytes=4096, admin_token="t0ken"), check)


def test_internal_errors_hide_the_stack_trace(
    files: dict[str, ModelFiles], caplog: pytest.LogCaptureFixture
) -> None:
    app = app_for(files)

    async def boom(request: Any) -> Any:
        raise RuntimeError("SECRET internals")

    async def check(c: httpx.AsyncClient) -> None:
        app.predictor.predict = boom  # type: ignore[method-assign]
        for path in ("/v1/predict", "/invocations", "/v2/models/churn/infer"):
            body = (
                {"records": rows(1)}
                if path == "/v1/predict"
                else (
                    {"dataframe_records": rows(1)}
                    if path == "/invocations"
                    else {
                        "inputs": [
                            {
                                "name": "x",
                                "shape": [1, 3],
                                "datatype": "BYTES",
                                "data": [list(rows(1)[0].values())],
                            }
                        ]
                    }
                )
            )
            answer = await c.post(path, json=body)
            assert answer.status_code == 500
            assert "SECRET" not in answer.text and "Traceback" not in answer.text
        assert_native_error(await c.post("/v1/predict", json={"records": rows(1)}), 500, "internal")

    with caplog.at_level(logging.ERROR, logger="flywheel.serving"):
        serve(app, check)
    assert any("SECRET internals" in (r.exc_text or "") for r in caplog.records)


# --------------------------------------------------------------------------- MLflow


def test_invocations_accepts_every_mlflow_format(files: dict[str, ModelFiles]) -> None:
    data = rows(3)
    names = list(data[0])
    columns = {k: [r[k] for r in data] for k in names}
    split = {"columns": names, "data": [[r[k] for k in names] for r in data]}
    csv = (
        "tenure,charges,plan,extra\n"
        + "\n".join(f"{r['tenure']},{r['charges']},{r['plan']},x" for r in data)
    ).encode()
    bodies: list[dict[str, Any]] = [
        {"json": {"dataframe_split": split}},
        {"json": {"dataframe_records": data}},
        {"json": {"instances": data}},
        {"json": {"instances": columns}},
        {"json": {"inputs": columns}},
        {"json": {"inputs": [[r[k] for k in names] for r in data]}},
        {"json": {"dataframe_records": [{**r, "id": 7} for r in data]}},  # extras dropped
        {"content": csv, "headers": {"content-type": "text/csv"}},
        {
            "content": parquet_bytes(pa.Table.from_pylist(data)),
            "headers": {"content-type": "application/vnd.apache.parquet"},
        },
    ]

    async def check(c: httpx.AsyncClient) -> None:
        expected = (await c.post("/v1/predict", json={"records": data})).json()["predictions"]
        for kwargs in bodies:
            answer = await c.post("/invocations", **kwargs)
            assert answer.status_code == 200, (kwargs, answer.text)
            assert answer.json() == {"predictions": expected}

    serve(app_for(files), check)


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"content": b"{bad json", "headers": {"content-type": "application/json"}}, 400),
        ({"json": [1, 2]}, 400),
        ({"json": {"dataframe_records": [], "instances": []}}, 400),
        ({"json": {"records": []}}, 400),
        ({"json": {"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}}, 400),
        ({"json": {"dataframe_records": [{"tenure": 1}]}}, 400),
        ({"content": b"a", "headers": {"content-type": "text/xml"}}, 415),
        ({"content": b"a", "headers": {"content-type": "application/json; charset=latin-1"}}, 415),
        ({"content": b"a", "headers": {"content-type": "application/json; format=pandas"}}, 415),
    ],
)
def test_invocations_status_codes(
    files: dict[str, ModelFiles], kwargs: dict[str, Any], status: int
) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        answer = await c.post("/invocations", **kwargs)
        assert answer.status_code == status, answer.text
        if status == 400:
            body = answer.json()
            assert body["error_code"] == "BAD_REQUEST" and body["message"]

    serve(app_for(files), check)


def test_mlflow_health_and_version(files: dict[str, ModelFiles]) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        assert (await c.get("/ping")).status_code == 200
        assert (await c.get("/health")).status_code == 200
        version = await c.get("/version")
        assert version.status_code == 200 and version.json()

    serve(app_for(files), check)


# --------------------------------------------------------------------------- Open Inference v2


def test_v2_metadata_health_and_infer(files: dict[str, ModelFiles]) -> None:
    data = rows(4)
    per_column = {
        "id": "r-9",
        "inputs": [
            {
                "name": k,
                "shape": [4, 1],
                "datatype": "BYTES" if k == "plan" else "FP32",
                "data": [[r[k]] for r in data],
            }
            for k in data[0]
        ],
    }
    two_d = {
        "inputs": [
            {
                "name": "x",
                "shape": [4, 3],
                "datatype": "BYTES",
                "data": [v for r in data for v in r.values()],
            }
        ]
    }

    async def check(c: httpx.AsyncClient) -> None:
        assert (await c.get("/v2/health/live")).json() == {"live": True}
        assert (await c.get("/v2/health/ready")).json() == {"ready": True}
        assert (await c.get("/v2")).json()["name"] == "flywheel"
        meta = (await c.get("/v2/models/churn")).json()
        assert [i["name"] for i in meta["inputs"]] == ["tenure", "charges", "plan"]
        assert (await c.get("/v2/models/churn/versions/1")).json()["versions"] == ["1"]
        assert (await c.get("/v2/models/churn/ready")).json()["ready"] is True
        assert (await c.get("/v2/models/churn/versions/1/ready")).status_code == 200
        a = await c.post("/v2/models/churn/infer", json=per_column)
        b = await c.post("/v2/models/churn/versions/1/infer", json=two_d)
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        assert a.json()["id"] == "r-9" and a.json()["model_version"] == "1"
        assert a.json()["outputs"] == b.json()["outputs"]
        label, proba = a.json()["outputs"]
        assert label["shape"] == [4] and proba["shape"] == [4, 2] and len(proba["data"]) == 8
        for path, body, status in [
            ("/v2/models/churn/versions/7/infer", two_d, 404),
            ("/v2/models/nope/infer", two_d, 404),
            ("/v2/models/churn/infer", {"inputs": "x"}, 400),
            ("/v2/models/churn/infer", {"inputs": []}, 400),
            (  # datatype is required (OIP)
                "/v2/models/churn/infer",
                {"inputs": [{"name": "x", "shape": [4, 3], "data": [1] * 12}]},
                400,
            ),
            (
                "/v2/models/churn/infer",
                {"inputs": [{"name": "x", "shape": [4, 2], "datatype": "BYTES", "data": [1] * 8}]},
                422,
            ),
        ]:
            answer = await c.post(path, json=body)
            assert answer.status_code == status
            assert isinstance(answer.json()["error"], str)
        missing = await c.get("/v2/models/nope")
        assert missing.status_code == 404 and isinstance(missing.json()["error"], str)

    serve(app_for(files), check)


def test_liveness_and_readiness_differ(files: dict[str, ModelFiles]) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        assert (await c.get("/v2/health/live")).status_code == 200
        assert (await c.get("/v2/health/ready")).status_code == 503
        assert (await c.get("/ping")).status_code == 503
        assert (await c.get("/v2/models/churn/ready")).status_code == 503
        assert_native_error(
            await c.post("/v1/predict", json={"records": rows(1)}), 503, "not_ready"
        )

    serve(app_for(files), check, start=False)


# --------------------------------------------------------------------------- safety


def test_admin_reload_and_pin_need_the_token(files: dict[str, ModelFiles]) -> None:
    auth = {"authorization": "Bearer t0ken"}

    async def check(c: httpx.AsyncClient) -> None:
        assert_native_error(await c.post("/admin/pin", json={"version": "2"}), 401)
        pinned = await c.post("/admin/pin", json={"version": "2"}, headers=auth)
        assert pinned.json() == {"model": "churn", "version": "2", "pinned": True}
        assert (await c.post("/v1/predict", json=rows(1)[0])).json()["version"] == "2"
        assert (await c.post("/admin/reload", headers=auth)).json()["version"] == "2"
        back = await c.post("/admin/pin", json={"version": None}, headers=auth)
        assert back.json()["version"] == "1"

    serve(app_for(files, admin_token="t0ken"), check)


def test_admin_is_disabled_without_a_token(files: dict[str, ModelFiles]) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        answer = await c.post("/admin/reload", headers={"authorization": "Bearer x"})
        assert_native_error(answer, 403, "forbidden")
        assert "FLYWHEEL_ADMIN_TOKEN" in answer.json()["error"]["message"]

    serve(app_for(files), check)


def test_api_key_guards_prediction_routes(files: dict[str, ModelFiles]) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        assert_native_error(await c.post("/v1/predict", json=rows(1)[0]), 401, "unauthorized")
        wrong = await c.post("/v1/predict", json=rows(1)[0], headers={"x-api-key": "nope"})
        assert wrong.status_code == 401
        assert (
            await c.post("/v1/predict", json=rows(1)[0], headers={"x-api-key": "k3y"})
        ).status_code == 200
        assert (
            await c.post(
                "/invocations",
                json={"dataframe_records": rows(1)},
                headers={"authorization": "Bearer k3y"},
            )
        ).status_code == 200
        assert (await c.get("/v2/health/live")).status_code == 200  # probes stay open

    serve(app_for(files, api_key="k3y"), check)


# --------------------------------------------------------------------------- metrics, docs, logs


def test_metrics_exposes_the_series(files: dict[str, ModelFiles]) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        await c.post("/v1/predict", json={"records": rows(3)})
        await c.post("/invocations", json={"dataframe_records": rows(1)})
        await c.post("/v1/predict", json={"records": [{"tenure": 1}]})
        text = (await c.get("/metrics")).text
        for series in (
            'flywheel_requests_total{protocol="rest",route="/v1/predict",status="200"} 1.0',
            'flywheel_requests_total{protocol="mlflow",route="/invocations",status="200"} 1.0',
            'flywheel_request_duration_seconds_bucket{le="+Inf",protocol="rest"',
            'flywheel_batch_rows_bucket{le="4.0",model="churn"} 2.0',
            'flywheel_prediction_score_count{model="churn",version="1"} 4.0',
            'flywheel_model_info{model="churn",sha256="',
            'flywheel_errors_total{kind="invalid_input",protocol="rest"} 1.0',
            'flywheel_model_reloads_total{model="churn",outcome="loaded"} 1.0',
            "flywheel_predlog_queue_depth 0.0",
            "flywheel_predlog_dropped_total 0.0",
        ):
            assert series in text, series

    sink = CountingSink()
    serve(app_for(files, sink=sink), check)
    assert len(sink.records) == 2


def test_openapi_declares_the_hot_routes(files: dict[str, ModelFiles]) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        assert (await c.get("/docs")).status_code == 200
        paths = (await c.get("/openapi.json")).json()["paths"]
        for path in (
            "/v1/predict",
            "/invocations",
            "/v2/models/{name}/infer",
            "/v2/models/{name}/versions/{version}/infer",
            "/v2/health/ready",
            "/admin/reload",
            "/admin/pin",
        ):
            assert path in paths, path

    serve(app_for(files), check)


def test_json_log_lines_carry_request_ids() -> None:
    record = logging.LogRecord(
        "flywheel.serving", logging.ERROR, __file__, 1, "failed %s", ("x",), None
    )
    record.request_id = "abc"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed x" and line["request_id"] == "abc"
    assert line["level"] == "ERROR" and line["ts"].endswith("Z")
