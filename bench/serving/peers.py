"""The ASGI peers, each run by ``uvicorn --factory`` in its own process (one worker,
uvloop + httptools, log level warning, no access log).

- ``fastapi_app``: the tutorial FastAPI service: a pydantic model of the record, a DataFrame,
  ``predict_proba`` on the joblib-loaded sklearn pipeline (``BENCH_FASTAPI_MODE=predict``), or
  the same app answering a constant after parsing the body (``BENCH_FASTAPI_MODE=constant``);
- ``bare_app``: a raw ASGI callable, no framework: orjson in, a constant out
  (``BENCH_BARE_MODE=constant``) or onnxruntime on the registered ONNX graph (``onnx``).

The record's fields come from ``BENCH_FEATURES`` (JSON: name -> "float" | "string").
"""

# No `from __future__ import annotations`: FastAPI must see the dynamic Record class.
import json
import os
from typing import Any

import orjson


def _features() -> dict[str, str]:
    return json.loads(os.environ["BENCH_FEATURES"])


def fastapi_app() -> Any:
    import pandas as pd
    from fastapi import FastAPI
    from pydantic import create_model

    fields: dict[str, Any] = {
        name: ((str | None) if kind == "string" else (float | None), None)
        for name, kind in _features().items()
    }
    Record = create_model("Record", **fields)
    app = FastAPI(title="churn")
    if os.environ.get("BENCH_FASTAPI_MODE", "predict") == "constant":

        @app.post("/predict")
        def predict_constant(record: Record) -> dict[str, float]:  # type: ignore[valid-type]
            return {"churn_probability": 0.5}

        return app

    import joblib

    model = joblib.load(os.environ["BENCH_MODEL_JOBLIB"])

    @app.post("/predict")
    def predict(record: Record) -> dict[str, float]:  # type: ignore[valid-type]
        frame = pd.DataFrame([record.model_dump()])  # type: ignore[attr-defined]
        return {"churn_probability": float(model.predict_proba(frame)[0, 1])}

    return app


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


_HEADERS = [(b"content-type", b"application/json")]


def bare_app() -> Any:
    mode = os.environ.get("BENCH_BARE_MODE", "constant")
    predict = _onnx_predictor() if mode == "onnx" else None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan: nothing to set up
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    await send({"type": message["type"] + ".complete"})
                    if message["type"] == "lifespan.shutdown":
                        return
            return
        record = orjson.loads(await _read_body(receive))
        answer = {"churn_probability": 0.5 if predict is None else predict(record)}
        body = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_HEADERS, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def _onnx_predictor() -> Any:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        os.environ["BENCH_ONNX_PATH"], options, providers=["CPUExecutionProvider"]
    )
    inputs = [(i.name, i.type == "tensor(string)") for i in session.get_inputs()]
    outputs = ["probabilities"]

    def predict(record: dict[str, Any]) -> float:
        feeds = {
            name: np.array([[record.get(name) or ""]], dtype=object)
            if text
            else np.array(
                [[np.nan if record.get(name) is None else record[name]]], dtype=np.float32
            )
            for name, text in inputs
        }
        return float(session.run(outputs, feeds)[0][0, 1])

    return predict
