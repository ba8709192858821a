"""Schemathesis fuzz of the REST app's OpenAPI schema, in-process (the schema is truthful:
schema-valid requests succeed, invalid ones are refused, nothing answers a 5xx)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.models import StaticSource
from flywheel.serving.predictor import Predictor
from flywheel.serving.rest import create_app
from tests.unit.serving_models import build


@pytest.mark.slow
def test_rest_schema_fuzz(tmp_path: Path) -> None:
    import schemathesis

    files = build(tmp_path, family="logreg")
    predictor = Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0, admin_token="t"),
        {"churn": StaticSource({"1": files}, {"champion": "1"})},
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(predictor))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=10,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate()

        check()
    assert predictor.ready and predictor.batch_stats().batches > 0  # real predictions ran
