"""The REST app's body rules, in-process: one content-type and content-coding rule on every route
that takes a body, records-or-columns, limits in each route family's error shape, and the Open
Inference Protocol binary tensor data extension (bodies built and read by tritonclient itself)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as thttp

from flywheel.predlog import PredictionLog, open_prediction_log
from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.predictor import Predictor
from flywheel.serving.rest import create_app
from flywheel.serving.sources import ModelFiles, StaticSource
from tests.unit.serving_models import build, frame, rows

Check = Callable[[httpx.AsyncClient], Awaitable[None]]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return build(tmp_path_factory.mktemp("rules"), family="logreg")


def serve(files: ModelFiles, check: Check, sink: Any = None, **config: Any) -> None:
    options = {"models": (ServedModel("churn"),), "poll_interval_s": 0.0, **config}
    source = StaticSource({"1": files}, {"champion": "1"})
    predictor = Predictor(ServingConfig(**options), {"churn": source}, sink=sink)
    app = create_app(predictor, sink=sink)

    async def main() -> None:
        await predictor.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await check(client)
        await predictor.close()

    asyncio.run(main())


V2 = "/v2/models/churn/infer"
ROW = rows(1)[0]
JSON_BODIES = {
    "/v1/predict": {"records": [ROW]},
    "/invocations": {"dataframe_records": [ROW]},
    V2: {
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": list(ROW.values())}]
    },
}


def error_shape(path: str, response: httpx.Response) -> str:
    """The route family's one error shape; returns its message."""
    body = response.json()
    if path == "/invocations":
        assert set(body) == {"error_code", "message"}
        return str(body["message"])
    if path.startswith("/v2"):
        assert set(body) == {"error"} and isinstance(body["error"], str)
        return str(body["error"])
    assert set(body) == {"error"} and set(body["error"]) == {"kind", "message", "details"}
    return str(body["error"]["message"])


# --------------------------------------------------------------------------- content type


@pytest.mark.parametrize("path", list(JSON_BODIES))
@pytest.mark.parametrize(
    "ctype",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; Charset=UTF-8",
    ],
)
def test_json_content_types_every_route_takes(
    files: ModelFiles, path: str, ctype: str | None
) -> None:
    import orjson

    headers = {} if ctype is None else {"content-type": ctype}

    async def check(c: httpx.AsyncClient) -> None:
        answer = await c.post(path, content=orjson.dumps(JSON_BODIES[path]), headers=headers)
        assert answer.status_code == 200, answer.text

    serve(files, check)


@pytest.mark.parametrize(
    "path", [*JSON_BODIES, "/v1/feedback", "/admin/reload", "/admin/clock", "/admin/rollout/pause"]
)
@pytest.mark.parametrize(
    ("ctype", "words"),
    [
        ("application/json; charset=latin-1", "charset 'latin-1'"),
        ("application/json; format=pandas", "parameter 'format'"),
        ("text/xml", "'text/xml' is not supported"),
        ("application/x-www-form-urlencoded", "is not supported"),
    ],
)
def test_one_content_type_rule_refuses_alike(
    files: ModelFiles, tmp_path: Path, path: str, ctype: str, words: str
) -> None:
    plog = open_prediction_log(f"sqlite:///{tmp_path}/p.db")

    async def check(c: httpx.AsyncClient) -> None:
        answer = await c.post(
            path,
            content=b'{"items": []}',
            headers={"content-type": ctype, "authorization": "Bearer t0ken"},
        )
        assert answer.status_code == 415, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["flywheel-error-kind"] == "unsupported_media_type"
        assert words in error_shape(path, answer)
        if path == "/invocations":
            assert answer.json()["error_code"] == "BAD_REQUEST"

    try:
        # the same token as admin token and labels key: every route here accepts it
        serve(files, check, sink=plog, admin_token="t0ken", labels_key="t0ken")
    finally:
        plog.close()


def test_admin_bodies_follow_the_rule_and_every_error_names_its_kind(files: ModelFiles) -> None:
    """An admin body with no Content-Type is JSON (FastAPI answered 422 to it), an encoded
    one is refused; the routes FastAPI answers put the error's kind in a header too."""
    bearer = {"authorization": "Bearer t0ken"}

    async def check(c: httpx.AsyncClient) -> None:
        plain = await c.post("/admin/clock", content=b'{"at": 1700000000}', headers=bearer)
        assert plain.status_code == 200 and plain.json()["simulated"] is True, plain.text
        packed = gzip.compress(b'{"at": null}')
        refused = await c.post(
            "/admin/clock", content=packed, headers={**bearer, "content-encoding": "gzip"}
        )
        assert refused.status_code == 415 and "Content-Encoding 'gzip'" in refused.text
        for answer, kind in (
            (await c.get("/no/such/route"), "not_found"),
            (await c.get("/v1/predict"), "method_not_allowed"),
            (await c.post("/admin/reload", json={}), "unauthorized"),
        ):
            assert answer.headers.get("flywheel-error-kind") == kind, (answer, answer.text)

    serve(files, check, admin_token="t0ken")


def test_a_nan_token_is_a_missing_number_on_every_json_route(files: ModelFiles) -> None:
    """MLflow's client, pandas and json.dumps write a missing number as the token NaN (orjson
    refuses it: a 400 before); an Infinity token is refused by the input rules."""
    import json

    row = {**ROW, "tenure": None}

    async def check(c: httpx.AsyncClient) -> None:
        for path, body in (
            ("/v1/predict", {"records": [row]}),
            ("/invocations", {"dataframe_records": [row]}),
        ):
            as_null = await c.post(path, content=json.dumps(body))
            as_nan = await c.post(path, content=json.dumps(body).replace("null", "NaN"))
            assert as_nan.status_code == 200, as_nan.text
            assert as_nan.json()["predictions"] == as_null.json()["predictions"]
        inf = json.dumps({"records": [row]}).replace("null", "Infinity")
        refused = await c.post("/v1/predict", content=inf)
        assert refused.status_code == 422 and "tenure" in refused.text, refused.text
        broken = await c.post("/v1/predict", content=b'{"records": [NaN')
        assert broken.status_code == 400, broken.text
        deep = b"[" * 5000 + b"NaN" + b"]" * 5000  # the fallback reader's recursion: a 400
        assert (await c.post("/v1/predict", content=deep)).status_code == 400

    serve(files, check)


def test_content_encoding(files: ModelFiles) -> None:
    import orjson

    body = orjson.dumps({"records": rows(3)})

    async def check(c: httpx.AsyncClient) -> None:
        plain = (await c.post("/v1/predict", content=body)).json()
        for coding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
            answer = await c.post(
                "/v1/predict", content=packed, headers={"content-encoding": coding}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["probabilities"] == plain["probabilities"]
        refused = await c.post("/v1/predict", content=body, headers={"content-encoding": "br"})
        assert refused.status_code == 415 and "Content-Encoding 'br'" in refused.text
        broken = await c.post("/v1/predict", content=b"xx", headers={"content-encoding": "gzip"})
        assert broken.status_code == 400 and "not valid gzip" in broken.text
        bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")  # small packed, large unpacked
        assert len(bomb) < 4096
        big = await c.post("/invocations", content=bomb, headers={"content-encoding": "gzip"})
        assert big.status_code == 413, big.text
        assert big.json()["error_code"] == "RESOURCE_LIMIT_EXCEEDED"

    serve(files, check, max_body_bytes=4096)


# --------------------------------------------------------------------------- bodies and limits


def test_records_and_columns_together_are_refused(files: ModelFiles) -> None:
    data = rows(2)
    both = {"records": data, "columns": {k: [r[k] for r in data] for k in data[0]}}

    async def check(c: httpx.AsyncClient) -> None:
        native = await c.post("/v1/predict", json=both)
        assert native.status_code == 400
        error = native.json()["error"]
        assert error["kind"] == "bad_request" and error["details"]["rule"] == "exclusive"
        assert "'records' and 'columns'" in error["message"]
        mlflow = await c.post("/invocations", json=both)
        assert mlflow.status_code == 400 and mlflow.json()["error_code"] == "BAD_REQUEST"
        assert "['records', 'columns']" in mlflow.json()["message"]

    serve(files, check)


def test_limits_say_so_on_every_route_family(files: ModelFiles) -> None:
    big = b'{"records": [' + b" " * 5000 + b"]}"

    async def check(c: httpx.AsyncClient) -> None:
        for path in JSON_BODIES:
            answer = await c.post(path, content=big)
            assert answer.status_code == 413, answer.text
            assert "max_body_bytes" in error_shape(path, answer)
        mlflow = await c.post("/invocations", content=big)
        assert mlflow.json()["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
        rows_over = await c.post("/invocations", json={"dataframe_records": rows(6)})
        assert rows_over.status_code == 400
        assert rows_over.json()["error_code"] == "RESOURCE_LIMIT_EXCEEDED"

    serve(files, check, max_body_bytes=4096, max_rows_per_request=5)


def test_feedback_follows_the_body_rules(files: ModelFiles, tmp_path: Path) -> None:
    plog: PredictionLog = open_prediction_log(f"sqlite:///{tmp_path}/p.db")

    async def check(c: httpx.AsyncClient) -> None:
        rid = (await c.post("/v1/predict", json=ROW)).json()["request_id"]
        huge = 12345678901234567890123  # beyond 64 bits: read as orjson reads it (a float)
        ok = await c.post("/v1/feedback", json={"items": [{"request_id": rid, "label": huge}]})
        assert ok.status_code == 200 and ok.json() == {"accepted": 1, "unknown": []}
        listed = {"items": [{"request_id": "nope", "label": [1, None, "a", True]}]}  # per row
        assert (await c.post("/v1/feedback", json=listed)).json()["unknown"] == ["nope"]
        for content, status, kind in [
            (b"\xa1y\x92{", 400, "bad_request"),
            (b"{not json", 400, "bad_request"),
            (b'{"items": []}', 422, "invalid_input"),
            (b'{"items": [{"label": 1}]}', 422, "invalid_input"),
            # null would erase a real label (the latest wins); a list is no label
            (b'{"items": [{"request_id": "r", "label": null}]}', 422, "invalid_input"),
            (b'{"items": [{"request_id": "r", "label": {"a": [1]}}]}', 422, "invalid_input"),
            (b'{"items": [{"request_id": "r", "label": NaN}]}', 422, "invalid_input"),
            (b'{"items": [' + b" " * 5000 + b"]}", 413, "payload_too_large"),
        ]:
            answer = await c.post("/v1/feedback", content=content)
            assert answer.status_code == status, answer.text
            assert answer.json()["error"]["kind"] == kind
            assert answer.headers["flywheel-error-kind"] == kind
            if b"label" in content and status == 422 and b"request_id" in content:
                assert "items.0.label:" in answer.text, answer.text  # named, one rule
        assert "items" in (await c.post("/v1/feedback", content=b"{}")).json()["error"]["message"]
        # every answer counted in /metrics, as the doors count theirs
        metrics = (await c.get("/metrics")).text
        route = 'protocol="rest",route="/v1/feedback"'
        for status, n in [(200, 2), (400, 2), (413, 1), (422, 6)]:
            assert f'flywheel_requests_total{{{route},status="{status}"}} {n}.0' in metrics
        for kind, n in [("bad_request", 2), ("invalid_input", 6), ("payload_too_large", 1)]:
            assert f'flywheel_errors_total{{kind="{kind}",protocol="rest"}} {n}.0' in metrics

    try:
        serve(files, check, sink=plog, max_body_bytes=4096)
        plog.flush()
        assert [r["label"] for r in plog.read(labelled_only=True)] == [1.2345678901234568e22]
    finally:
        plog.close()


# --------------------------------------------------------------------------- v2 binary data


def _triton_inputs(n: int = 4, seed: int = 3) -> list[Any]:
    df = frame(n, seed=seed)
    columns = [
        ("tenure", df["tenure"].to_numpy(np.float64), "FP64"),
        ("charges", df["charges"].to_numpy(np.float32).reshape(-1, 1), "FP32"),
        ("plan", df["plan"].to_numpy(object), "BYTES"),
    ]
    out = []
    for name, values, datatype in columns:
        tensor = thttp.InferInput(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        out.append(tensor)
    return out


async def _binary_infer(
    c: httpx.AsyncClient, inputs: list[Any], outputs: list[Any] | None = None
) -> Any:
    body, json_size = thttp.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    answer = await c.post(
        V2, content=body, headers={"inference-header-content-length": str(json_size)}
    )
    assert answer.status_code == 200, answer.text
    length = answer.headers.get("inference-header-content-length")
    if length is not None:
        assert answer.headers["content-type"] == "application/octet-stream"
    return thttp.InferenceServerClient.parse_response_body(
        answer.content, header_length=None if length is None else int(length)
    )


def test_v2_binary_requests_and_answers_equal_json(files: ModelFiles) -> None:
    df = frame(4, seed=3)
    as_json = {
        "inputs": [
            {"name": "tenure", "shape": [4], "datatype": "FP64", "data": df["tenure"].tolist()},
            {
                "name": "charges",
                "shape": [4, 1],
                "datatype": "FP32",
                "data": [[float(np.float32(v))] for v in df["charges"]],
            },
            {"name": "plan", "shape": [4], "datatype": "BYTES", "data": df["plan"].tolist()},
        ]
    }

    async def check(c: httpx.AsyncClient) -> None:
        want = (await c.post(V2, json=as_json)).json()["outputs"]
        label, proba = np.array(want[0]["data"]), np.array(want[1]["data"]).reshape(4, 2)
        # binary in, binary out (no outputs named: binary_data_output)
        result = await _binary_infer(c, _triton_inputs())
        np.testing.assert_array_equal(result.as_numpy("label"), label)
        np.testing.assert_allclose(result.as_numpy("probabilities"), proba, rtol=1e-6)
        assert result.as_numpy("probabilities").dtype == np.float32
        # outputs chosen one by one: label as JSON, probabilities binary
        outputs = [
            thttp.InferRequestedOutput("label", binary_data=False),
            thttp.InferRequestedOutput("probabilities"),
        ]
        result = await _binary_infer(c, _triton_inputs(), outputs)
        assert "data" in result.get_output("label")
        assert "binary_data_size" in result.get_output("probabilities")["parameters"]
        np.testing.assert_array_equal(result.as_numpy("label"), label)
        # JSON inputs mixed with binary ones; JSON outputs only: no binary header in the answer
        mixed = _triton_inputs()
        mixed[2].set_data_from_numpy(df["plan"].to_numpy(object), binary_data=False)
        json_out = [thttp.InferRequestedOutput("label", binary_data=False)]
        result = await _binary_infer(c, mixed, json_out)
        np.testing.assert_array_equal(result.as_numpy("label"), label)

    serve(files, check)


def _binary_body(header: dict[str, Any], data: bytes, length: int | None = None) -> dict[str, Any]:
    import orjson

    head = orjson.dumps(header)
    size = len(head) if length is None else length
    return {"content": head + data, "headers": {"inference-header-content-length": str(size)}}


PLAN = {"name": "plan", "shape": [1], "datatype": "BYTES"}
NUMS = [{"name": n, "shape": [1], "datatype": "FP32", "data": [1.0]} for n in ("tenure", "charges")]


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        (  # the header is longer than the body
            _binary_body({"inputs": []}, b"", length=999),
            400,
            "Inference-Header-Content-Length is 999",
        ),
        (
            {"content": b"{}", "headers": {"inference-header-content-length": "x"}},
            400,
            "non-negative integer",
        ),
        (  # 9 bytes follow the JSON, the sizes add up to 5
            _binary_body(
                {"inputs": [*NUMS, {**PLAN, "parameters": {"binary_data_size": 5}}]},
                b"\x01\x00\x00\x00a" + b"extra",
            ),
            400,
            "add up to 5",
        ),
        (  # binary_data_size without the binary extension
            {"json": {"inputs": [*NUMS, {**PLAN, "parameters": {"binary_data_size": 5}}]}},
            400,
            "binary_data_size is only for",
        ),
        (
            _binary_body(
                {"inputs": [*NUMS, {**PLAN, "parameters": {"binary_data_size": 5}}]},
                b"\x09\x00\x00\x00a",
            ),
            422,
            "length-prefixed",
        ),
        (
            _binary_body(
                {
                    "inputs": [
                        {"name": "tenure", "shape": [1], "datatype": "FP32"}
                        | {"parameters": {"binary_data_size": 3}},
                        *NUMS[1:],
                        {**PLAN, "data": ["pro"]},
                    ]
                },
                b"\x00\x00\x00",
            ),
            422,
            "holds 3 bytes",
        ),
        (
            {
                "json": {
                    "inputs": [*NUMS, {**PLAN, "data": ["pro"]}],
                    "outputs": [{"name": "label", "parameters": {"classification": 2}}],
                }
            },
            400,
            "classification extension is not supported",
        ),
        (
            {
                "json": {
                    "inputs": [*NUMS, {**PLAN, "data": ["pro"]}],
                    "parameters": {"binary_data_output": "yes"},
                }
            },
            400,
            "binary_data_output must be true or false",
        ),
        (
            {"json": {"inputs": [*NUMS, {**PLAN, "data": ["pro"]}], "id": 7}},
            400,
            "id must be a string",
        ),
        (
            {"json": {"inputs": [*NUMS, {**PLAN, "datatype": "TEXT", "data": ["pro"]}]}},
            422,
            "datatype 'TEXT'",
        ),
        (
            {"json": {"inputs": [*NUMS, {**PLAN, "shape": [2], "data": ["pro"]}]}},
            422,
            "(2 values) but data holds 1",
        ),
    ],
)
def test_v2_body_errors_name_the_field(
    files: ModelFiles, kwargs: dict[str, Any], status: int, words: str
) -> None:
    async def check(c: httpx.AsyncClient) -> None:
        answer = await c.post(V2, **kwargs)
        assert answer.status_code == status, answer.text
        assert words in error_shape(V2, answer)

    serve(files, check)
