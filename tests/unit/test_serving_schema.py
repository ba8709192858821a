"""Schemathesis fuzz of the REST app's OpenAPI schema, in-process (the ASGI app, no socket).

It runs what ``schemathesis run`` runs (its engine: the examples, coverage and fuzzing phases,
positive and negative cases) with every default check: not_a_server_error,
status_code_conformance, content_type_conformance, response_headers_conformance,
response_schema_conformance, positive_data_acceptance, negative_data_rejection, ... Seeded and
deterministic, with a bounded number of examples per operation.

The schema is generated with the served model filled in, so schema-valid bodies are those the
model takes. One rule of the v2 infer body is beyond JSON Schema: a tensor holds prod(shape)
values, the same rows in every tensor, each value of a flat [n, features] matrix valid for its
feature. :func:`_agree` makes each generated *positive* v2 body keep that rule (negative ones are
left alone); every other part is generated from the schema.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flywheel.predlog import open_prediction_log
from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.predictor import Predictor
from flywheel.serving.rest import RestFront, create_app
from flywheel.serving.sources import StaticSource
from tests.unit.serving_models import SPECS, build

CONFIG = {
    "seed": 20261206,
    "generation": {"mode": "all", "deterministic": True, "max-examples": 30, "database": "none"},
    "phases": {"stateful": {"enabled": False}},  # the schema declares no links
}
CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
}
PREDICT = ("POST /v1/predict", "POST /invocations", "POST /v2/models/{name}/infer")
NAMES = [s.name for s in SPECS]
NUMERIC = [s.kind == "numeric" for s in SPECS]
F32_MAX = 3.4028234663852886e38


@pytest.fixture
def app(tmp_path: Path) -> Iterator[RestFront]:
    tmp = tmp_path
    plog = open_prediction_log(f"sqlite:///{tmp}/predictions.db")
    predictor = Predictor(
        # No auth: /v1/feedback is open (with any auth on it takes the labels key only, tested
        # in test_serving_auth.py), so positive feedback cases reach the log.
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({"1": build(tmp, family="logreg")}, {"champion": "1"})},
        sink=plog,
    )
    yield create_app(predictor, sink=plog)
    plog.close()


def _flat(data: list[Any]) -> list[Any]:
    return [v for item in data for v in (item if type(item) is list else (item,))]


def _valid(value: Any, numeric: bool) -> bool:
    if not numeric or value is None or isinstance(value, bool):
        return True
    return isinstance(value, int | float) and abs(value) <= F32_MAX


def _agree(body: dict[str, Any]) -> None:
    """Make a positive v2 body keep the rule JSON Schema cannot state (see the module doc)."""
    inputs, width = body["inputs"], len(NAMES)
    if len(inputs) == 1 and inputs[0]["name"] not in NAMES:  # one [n, features] matrix
        tensor = inputs[0]
        flat = _flat(tensor["data"])
        n = max(1, len(flat) // width)
        flat = (flat + [None] * width)[: n * width]
        tensor["data"] = [v if _valid(v, NUMERIC[i % width]) else None for i, v in enumerate(flat)]
        tensor["shape"] = [n, width]
        return
    flats = [_flat(t["data"]) or [None] for t in inputs]
    n = min(len(f) for f in flats)
    for tensor, flat in zip(inputs, flats, strict=True):
        tensor["data"], tensor["shape"] = flat[:n], [n, *tensor["shape"][1:]]


def _fuzz(app: RestFront) -> tuple[list[str], collections.Counter[tuple[str, str, int]], set[str]]:
    """Run the engine; return (failures, answers by (operation, mode, status), checks run)."""
    import schemathesis
    from schemathesis import engine
    from schemathesis.engine import Status, events

    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)

    @schema.hook
    def map_case(context: Any, case: Any) -> Any:
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        if positive and case.operation.path.endswith("/infer") and isinstance(case.body, dict):
            _agree(case.body)
        return case

    failures: dict[tuple[str, str], str] = {}
    answers: collections.Counter[tuple[str, str, int]] = collections.Counter()
    checks: set[str] = set()
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.NonFatalError | events.FatalError):
            failures[("engine", str(event))] = repr(event)
        if not isinstance(event, events.ScenarioFinished):
            continue
        recorder = event.recorder
        for case_id, interaction in recorder.interactions.items():
            case = recorder.cases[case_id].value
            if interaction.response is not None and case.meta is not None:
                mode = case.meta.generation.mode.value
                answers[(str(event.label), mode, interaction.response.status_code)] += 1
        for nodes in recorder.checks.values():
            for node in nodes:
                checks.add(node.name)
                if node.status == Status.FAILURE and node.failure_info is not None:
                    failure = node.failure_info.failure
                    key = (str(event.label), node.name)
                    failures.setdefault(
                        key, f"{key}: {failure.title}\n{node.failure_info.code_sample}"
                    )
    return list(failures.values()), answers, checks


@pytest.mark.slow
def test_rest_schema_fuzz(app: RestFront) -> None:
    failures, answers, checks = _fuzz(app)
    assert not failures, "\n\n".join(failures)
    assert checks >= CHECKS
    for operation in PREDICT:  # real predictions ran, and schema-invalid bodies were refused
        assert answers[(operation, "positive", 200)] >= 10, (operation, answers)
        refused = sum(
            v for (op, mode, status), v in answers.items()
            if op == operation and mode == "negative" and 400 <= status < 500
        )  # fmt: skip
        assert refused >= 10, (operation, answers)
    assert answers[("POST /v1/feedback", "positive", 200)] > 0
    assert app.predictor.batch_stats().batches > 0


def test_schema_states_what_the_v2_route_refuses(app: RestFront) -> None:
    """The fuzz's first findings, pinned: an empty ``inputs`` list and ``binary_data_size``
    without the binary extension are schema-invalid (and refused); path parameters list what
    is served; /v1/predict documents records-or-columns; /v1/feedback documents its 400."""
    import asyncio

    import httpx

    async def schema() -> dict[str, Any]:
        await app.predictor.start()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            return (await client.get("/openapi.json")).json()  # type: ignore[no-any-return]

    doc = asyncio.run(schema())
    comps = doc["components"]["schemas"]
    inputs = comps["V2InferRequest"]["properties"]["inputs"]
    per_feature, matrix = inputs["oneOf"]
    assert per_feature["minItems"] == per_feature["maxItems"] == len(NAMES)
    assert matrix["minItems"] == 1
    feature = per_feature["items"]["anyOf"][0]["properties"]
    assert feature["parameters"]["properties"]["binary_data_size"] is False
    assert feature["datatype"]["enum"][-1] != "BYTES"  # a numeric feature is never BYTES
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["parameters"][0]["schema"]["enum"] == ["churn"]
    assert "application/octet-stream" in infer["responses"]["200"]["content"]
    assert comps["V1Records"]["not"] == {"required": ["columns"]}
    feedback = doc["paths"]["/v1/feedback"]["post"]["responses"]
    assert {"400", "413", "415", "422"} <= set(feedback)
    assert "415" in doc["paths"]["/invocations"]["post"]["responses"]
