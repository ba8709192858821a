"""The protocol-free serving core: decoding rules, batching, hot swap, integrity."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.errors import (
    IntegrityError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    TooManyRows,
)
from flywheel.serving.loading import load_model
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import ModelFiles, StaticSource
from flywheel.serving.types import PredictRequest
from tests.unit.serving_models import SPECS, build, rows


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFiles]:
    tmp = tmp_path_factory.mktemp("models")
    return {
        "1": build(tmp, family="logreg", version="1"),
        "2": build(tmp, family="random_forest", version="2"),
        "3": build(tmp, family="linear", task="regression", version="3"),
    }


class ListSink:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def append(self, record: Any) -> None:
        self.records.append(record)


def make(files: dict[str, ModelFiles], champion: str = "1", **config: Any) -> Predictor:
    source = StaticSource({k: v for k, v in files.items()}, {"champion": champion})
    options = {"models": (ServedModel("churn"),), "poll_interval_s": 0.0, **config}
    sink = options.pop("sink", None)
    return Predictor(ServingConfig(**options), {"churn": source}, sink=sink)


def one(**overrides: Any) -> dict[str, Any]:
    return {"tenure": 12.0, "charges": 70.5, "plan": "pro", **overrides}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("record", "field", "rule"),
    [
        (one(charges="SECRET-PAYLOAD-VALUE"), "charges", "type"),
        (one(tenure=math.inf), "tenure", "finite"),
        (one(tenure=-math.inf), "tenure", "finite"),
        (one(tenure=1e39), "tenure", "finite"),
        (one(plan=["SECRET-PAYLOAD-VALUE"]), "plan", "type"),
        ({"tenure": 1.0, "plan": "SECRET-PAYLOAD-VALUE"}, "charges", "required"),
        (one(SECRET_extra="SECRET-PAYLOAD-VALUE"), "SECRET_extra", "unknown"),
    ],
)
def test_validation_names_field_and_row_without_echoing(
    files: dict[str, ModelFiles], record: dict[str, Any], field: str, rule: str
) -> None:
    async def main() -> None:
        predictor = make(files)
        await predictor.start()
        with pytest.raises(InvalidInput) as info:
            await predictor.predict(PredictRequest(records=[one(), record]))
        err = info.value
        assert err.details["field"] == field
        assert err.details["rule"] == rule
        assert err.details["row"] == 1
        assert "row 1" in err.message.lower() and field in err.message
        assert "SECRET-PAYLOAD-VALUE" not in err.message + str(err.to_dict())
        assert err.status == 422

    run(main())


def test_missing_numeric_is_allowed_and_missing_category_is_empty(
    files: dict[str, ModelFiles],
) -> None:
    async def main() -> None:
        predictor = make(files)
        await predictor.start()
        nulls = await predictor.predict(PredictRequest(records=[one(tenure=None, plan=None)]))
        nans = await predictor.predict(PredictRequest(records=[one(tenure=math.nan, plan="")]))
        assert np.array_equal(nulls.probabilities, nans.probabilities)
        assert np.isfinite(nulls.probabilities).all()

    run(main())


def test_numeric_rules_hold_for_arrays_and_arrow(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        predictor = make(files)
        await predictor.start()
        cols = {
            "tenure": np.array([1.0, np.inf]),
            "charges": np.array([1.0, 2.0]),
            "plan": np.array(["a", "b"]),
        }
        with pytest.raises(InvalidInput) as info:
            await predictor.predict(PredictRequest(columns=cols))
        assert info.value.details == {"field": "tenure", "row": 1, "rule": "finite"}
        table = pa.table({"tenure": [1.0, None], "charges": [2.0, 3.0], "plan": ["pro", None]})
        answer = await predictor.predict(PredictRequest(columns=table))
        assert answer.rows == 2
        bad = pa.table({"tenure": ["x", "y"], "charges": [2.0, 3.0], "plan": ["a", "b"]})
        with pytest.raises(InvalidInput, match="'tenure'"):
            await predictor.predict(PredictRequest(columns=bad))

    run(main())


def test_row_limit_and_unknown_model_and_version(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        predictor = make(files, max_rows_per_request=3)
        await predictor.start()
        with pytest.raises(TooManyRows) as info:
            await predictor.predict(PredictRequest(records=rows(4)))
        assert info.value.status == 422
        with pytest.raises(ModelNotFound):
            await predictor.predict(PredictRequest(records=rows(1), model="nope"))
        with pytest.raises(ModelNotFound):
            await predictor.predict(PredictRequest(records=rows(1), version="9"))

    run(main())


def test_not_ready_before_start(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        predictor = make(files)
        assert not predictor.ready
        with pytest.raises(ModelNotReady):
            await predictor.predict(PredictRequest(records=rows(1)))

    run(main())


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("version", ["1", "2", "3"])
def test_batched_equals_unbatched_and_batches_form(
    files: dict[str, ModelFiles], version: str
) -> None:
    async def main() -> None:
        predictor = make(files, champion=version)
        await predictor.start()
        data = rows(48)
        alone = [await predictor.predict(PredictRequest(records=[r])) for r in data]
        assert predictor.batch_stats().max_rows_seen == 1  # sequential: nobody waited
        together = await asyncio.gather(
            *(predictor.predict(PredictRequest(records=[r])) for r in data)
        )
        assert predictor.batch_stats().max_rows_seen > 1  # concurrency made real batches
        bulk = await predictor.predict(PredictRequest(records=data))
        for answers in (together, [bulk]):
            labels = np.concatenate([a.labels for a in answers])
            assert np.array_equal(labels, np.concatenate([a.labels for a in alone]))
            if alone[0].probabilities is not None:
                proba = np.concatenate([a.probabilities for a in answers])
                assert np.array_equal(proba, np.concatenate([a.probabilities for a in alone]))

    run(main())


def test_batch_rows_are_bounded_and_big_batches_use_a_thread(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        predictor = make(files, max_batch_rows=8, inline_max_rows=4)
        await predictor.start()
        data = rows(40)
        answers = await asyncio.gather(
            *(predictor.predict(PredictRequest(records=data[i : i + 2])) for i in range(0, 40, 2))
        )
        assert predictor.batch_stats().max_rows_seen == 8
        bulk = await predictor.predict(PredictRequest(records=data))
        assert np.array_equal(
            np.concatenate([a.probabilities for a in answers]), bulk.probabilities
        )

    run(main())


@pytest.mark.parametrize("turns", [0, 2])
def test_under_load_a_flush_waits_gather_turns_for_requests_already_read(turns: int) -> None:
    from flywheel.serving.batching import BatchStats, MicroBatcher
    from flywheel.serving.decode import Decoded

    def score(feeds: list[np.ndarray]) -> tuple[np.ndarray, None]:
        return np.zeros(len(feeds[0]), dtype=np.int64), None

    async def main() -> list[int]:
        batches: list[int] = []
        batcher = MicroBatcher(
            score, (True,), gather_turns=turns, stats=BatchStats(on_batch=batches.append)
        )
        one = Decoded([[1.0]], 1)
        lone = batcher.submit(one)
        await asyncio.sleep(0)  # one loop turn
        assert lone.done()  # a lone request waits for nobody, whatever gather_turns is
        await asyncio.gather(batcher.submit(one), batcher.submit(one))  # company: under load
        # requests that reach the batcher one loop turn apart, as tasks of sockets read
        # during the previous turns do
        first = batcher.submit(one)
        await asyncio.sleep(0)
        second = batcher.submit(one)
        await asyncio.sleep(0)
        third = batcher.submit(one)
        await asyncio.gather(first, second, third)
        return batches

    batches = run(main())
    assert batches[:2] == [1, 2]
    assert batches[2:] == ([3] if turns == 2 else [1, 1, 1])


def test_on_scored_sees_each_batch_once_and_the_survivors_of_a_failed_one() -> None:
    from flywheel.serving.batching import MicroBatcher
    from flywheel.serving.decode import Decoded

    def score(feeds: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = feeds[0].reshape(-1)
        if np.isnan(x).any():
            raise ValueError("NaN")  # fails the whole batch, then only that request
        return x.astype(np.int64), np.stack([1 - x / 10, x / 10], axis=1)

    async def main() -> list[tuple[list[int], int]]:
        seen: list[tuple[list[int], int]] = []
        batcher = MicroBatcher(
            score,
            (True,),
            on_scored=lambda labels, proba: seen.append((labels.tolist(), len(proba))),
        )
        await batcher.submit(Decoded([[3.0]], 1))  # one row: sent twice, scored once
        await asyncio.gather(
            batcher.submit(Decoded([[1.0, 2.0]], 2)), batcher.submit(Decoded([[4.0]], 1))
        )
        outcome = await asyncio.gather(
            batcher.submit(Decoded([[5.0]], 1)),
            batcher.submit(Decoded([[float("nan")]], 1)),
            batcher.submit(Decoded([[6.0]], 1)),
            return_exceptions=True,
        )
        assert isinstance(outcome[1], ValueError) and outcome[0][0].tolist() == [5]
        return seen

    assert run(main()) == [([3], 1), ([1, 2, 4], 3), ([5], 1), ([6], 1)]


# --------------------------------------------------------------------------- hot swap


def test_hot_swap_under_load_has_no_failures(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        source = StaticSource(dict(files), {"champion": "1"})
        predictor = Predictor(
            ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.02), {"churn": source}
        )
        await predictor.start()
        failures: list[BaseException] = []
        versions: list[str] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    answer = await predictor.predict(PredictRequest(records=rows(2)))
                    versions.append(answer.version)
                except Exception as exc:  # any failure fails the test
                    failures.append(exc)
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(client()) for _ in range(8)]
        await asyncio.sleep(0.05)
        source.set_alias("champion", "2")  # the poller notices
        for _ in range(200):
            await asyncio.sleep(0.01)
            if predictor.model().version == "2":
                break
        await asyncio.sleep(0.05)
        source.set_alias("champion", "1")
        await predictor.reload()  # the admin path
        await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*tasks)
        await predictor.close()
        assert not failures
        assert "2" in versions and versions[-1] == "1"
        assert predictor.metrics.reloads[("churn", "loaded")] == 3

    run(main())


def test_pin_and_unpin(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        predictor = make(files)
        await predictor.start()
        assert await predictor.pin("churn", "2") == "2"
        assert (await predictor.predict(PredictRequest(records=rows(1)))).version == "2"
        assert await predictor.reload() == "2"  # the pin holds against the alias
        assert await predictor.pin("churn", None) == "1"

    run(main())


# --------------------------------------------------------------------------- integrity


def test_sha256_mismatch_is_refused(files: dict[str, ModelFiles], tmp_path: Path) -> None:
    good = files["1"]
    with pytest.raises(IntegrityError, match="sha256") as info:
        load_model(good.model_path, good.feature_specs, "0" * 64)
    assert info.value.details["actual"] == good.onnx_sha256
    with pytest.raises(IntegrityError):
        load_model(good.model_path, good.feature_specs, None)

    async def main() -> None:
        tampered = dataclasses.replace(files["2"], onnx_sha256="f" * 64)
        predictor = make({"1": good, "2": tampered})
        await predictor.start()
        with pytest.raises(IntegrityError):
            await predictor.pin("churn", "2")
        answer = await predictor.predict(PredictRequest(records=rows(1)))
        assert answer.version == "1"  # the old version keeps serving

    run(main())


def test_load_model_reads_specs_from_onnx_metadata(files: dict[str, ModelFiles]) -> None:
    f = files["1"]
    model = load_model(f.model_path, None, f.onnx_sha256, name="m", version="1")
    assert [s.name for s in model.schema.specs] == [s.name for s in f.feature_specs]
    assert model.task == "classification" and model.classes == [0, 1]


# --------------------------------------------------------------------------- prediction log


def test_sink_gets_one_record_per_answer(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        sink = ListSink()
        predictor = make(files, sink=sink)
        await predictor.start()
        answer = await predictor.predict(
            PredictRequest(records=rows(3), request_id="req-1", protocol="grpc")
        )
        [record] = sink.records
        assert record.request_id == "req-1" and record.protocol == "grpc"
        assert (record.model, record.version) == ("churn", answer.version)
        assert list(record.inputs) == ["tenure", "charges", "plan"]
        assert len(record.inputs["plan"]) == 3
        assert np.array_equal(record.outputs["labels"], answer.labels)
        assert record.latency_ms >= 0
        assert record.ts > 0

    run(main())


def test_a_prediction_log_gets_the_encoded_row(
    files: dict[str, ModelFiles], tmp_path: Path
) -> None:
    from flywheel.predlog import open_prediction_log

    plog = open_prediction_log(f"sqlite:///{tmp_path}/p.db", flush_interval_s=0.01)

    async def main() -> Any:
        predictor = make(files, sink=plog)
        await predictor.start()
        return await predictor.predict(
            PredictRequest(records=rows(2), request_id="req-2", protocol="ws")
        )

    answer = run(main())
    plog.close()
    [row] = plog.read()
    assert (row["request_id"], row["protocol"], row["version"]) == ("req-2", "ws", answer.version)
    assert list(row["inputs"]) == ["tenure", "charges", "plan"]
    assert row["inputs"]["plan"] == [r["plan"] for r in rows(2)]
    assert row["outputs"]["labels"] == answer.labels.tolist()
    assert np.allclose(row["outputs"]["probabilities"], answer.probabilities)
    assert row["latency_ms"] == answer.latency_ms
    with sqlite3.connect(tmp_path / "p.db") as conn:  # stored as columns, names kept once
        (stored,) = conn.execute("SELECT inputs FROM prediction_log").fetchone()
        (names,) = conn.execute("SELECT names FROM prediction_inputs").fetchone()
    assert json.loads(names) == ["tenure", "charges", "plan"]
    assert json.loads(stored)[2] == row["inputs"]["plan"]


def test_a_log_that_cannot_register_names_gets_named_inputs(
    files: dict[str, ModelFiles], tmp_path: Path
) -> None:
    from flywheel.predlog import PredictionLog

    class NoNames(PredictionLog):
        def register_inputs(self, model: str, version: str, names: Any) -> bool:
            raise OSError("database is read-only")

    plog = NoNames(f"sqlite:///{tmp_path}/p.db", flush_interval_s=0.01)
    plog.start()

    async def main() -> None:
        predictor = make(files, sink=plog)
        await predictor.start()  # loads despite the failure
        await predictor.predict(PredictRequest(records=rows(1), request_id="r"))

    run(main())
    plog.close()
    with sqlite3.connect(tmp_path / "p.db") as conn:
        (stored,) = conn.execute("SELECT inputs FROM prediction_log").fetchone()
    assert list(json.loads(stored)) == ["tenure", "charges", "plan"]


def test_a_failing_sink_does_not_fail_the_request(files: dict[str, ModelFiles]) -> None:
    class Broken:
        def append(self, record: Any) -> None:
            raise OSError("disk full")

    async def main() -> None:
        predictor = make(files, sink=Broken())
        await predictor.start()
        assert (await predictor.predict(PredictRequest(records=rows(1)))).rows == 1

    run(main())


def test_one_process_serves_several_models(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        source = StaticSource(dict(files), {"champion": "1", "challenger": "2"})
        config = ServingConfig(
            poll_interval_s=0.0,
            models=(ServedModel("churn"), ServedModel("churn-challenger", ref="challenger")),
        )
        predictor = Predictor(config, {"churn": source, "churn-challenger": source})
        await predictor.start()
        a, b = await asyncio.gather(
            predictor.predict(PredictRequest(records=rows(2))),
            predictor.predict(PredictRequest(records=rows(2), model="churn-challenger")),
        )
        assert (a.model, a.version, b.model, b.version) == ("churn", "1", "churn-challenger", "2")
        assert [m["version"] for m in predictor.models()] == ["1", "2"]

    run(main())


def test_batch_of_one_row_requests_assembles_the_same_values() -> None:
    """Many one-row requests take a transposing fast path; its float32 and string feeds
    equal the per-feature path's (a single request carrying the same rows), for columns
    decoded from JSON records and from arrays alike."""
    from flywheel.serving.batching import assemble
    from flywheel.serving.decode import Decoded, InputSchema, decode_columns, decode_records

    schema = InputSchema(tuple(SPECS))
    values = [
        {"tenure": 3, "charges": 70.35, "plan": "pro"},
        {"tenure": None, "charges": float("nan"), "plan": None},
        {"tenure": True, "charges": 1e30, "plan": "basic"},
        {"tenure": 0.1, "charges": -2.5, "plan": ""},
    ]
    items = [decode_records([v], schema) for v in values]
    items.append(
        decode_columns(
            {
                "tenure": np.array([7.5]),
                "charges": np.array([3], dtype=np.int64),
                "plan": np.array(["max"]),
            },
            schema,
        )
    )
    batched = assemble(items, schema.numeric)
    merged = Decoded(
        [
            list(np.concatenate([np.asarray(it.columns[i], dtype=object) for it in items]))
            for i in range(len(SPECS))
        ],
        len(items),
    )
    reference = assemble([merged], schema.numeric)
    assert len(batched) == len(reference) == len(SPECS)
    for got, want, is_numeric in zip(batched, reference, schema.numeric, strict=True):
        assert got.shape == want.shape == (len(items), 1) and got.dtype == want.dtype
        if is_numeric:
            assert got.flags.c_contiguous and np.array_equal(got, want, equal_nan=True)
        else:
            assert got.tolist() == want.tolist()
    # a lone one-row request (a small canary arm's usual batch) is sent as two copies
    for item in items:
        one = assemble([item], schema.numeric)
        twice = Decoded([list(np.asarray(c, dtype=object)) * 2 for c in item.columns], 2)
        want_all = assemble([twice], schema.numeric)
        for got, want, is_numeric in zip(one, want_all, schema.numeric, strict=True):
            assert got.shape == want.shape == (2, 1) and got.dtype == want.dtype
            assert got.flags.c_contiguous
            if is_numeric:
                assert np.array_equal(got, want, equal_nan=True)
            else:
                assert got.tolist() == want.tolist()


def test_score_histogram_bins_few_and_many_values_alike() -> None:
    """Hist.observe_many takes plain Python for up to 32 values and NumPy beyond: both skip
    NaN and infinities and put every other value in the bucket observe() would."""
    from flywheel.serving.metrics import SCORE_BUCKETS, Hist

    rng = np.random.default_rng(3)
    for n in (1, 2, 16, 32, 33, 500):
        values = rng.random(n)
        values[:3] = [0.1, float("nan"), float("inf")][: min(3, n)]
        many, one_by_one = Hist(SCORE_BUCKETS), Hist(SCORE_BUCKETS)
        many.observe_many(values)
        for v in values.tolist():
            if math.isfinite(v):
                one_by_one.observe(v)
        assert many.counts == one_by_one.counts, n
        assert many.total == pytest.approx(one_by_one.total)


def test_a_loaded_model_scores_as_its_session_does(tmp_path: Path) -> None:
    """LoadedModel.run calls the session's binding without InferenceSession.run's per-call
    checks: the same outputs as the public run."""
    from flywheel.serving.batching import assemble
    from flywheel.serving.decode import decode_records

    files = build(tmp_path, family="random_forest", version="1")
    model = load_model(files.model_path, files.feature_specs, files.onnx_sha256)
    assert model._run is not None  # the binding's run is used
    feeds = assemble([decode_records(rows(5), model.schema)], model.schema.numeric)
    labels, proba = model.run(feeds)
    want = model.session.run(model.output_names, dict(zip(model.schema.names, feeds, strict=True)))
    assert np.array_equal(labels, np.asarray(want[0]).reshape(-1))
    assert proba is not None and np.array_equal(proba, want[1])


def test_a_row_missing_many_fields_says_how_many_more_and_names_unknown_ones() -> None:
    from flywheel.schema import FeatureSpec
    from flywheel.serving.decode import InputSchema, decode_records

    schema = InputSchema(tuple(FeatureSpec(f"f{i}", "numeric") for i in range(14)))
    with pytest.raises(InvalidInput) as err:
        decode_records([{"a": 1}], schema)
    message = err.value.message
    assert "['f0', 'f1', 'f2'" in message and "'f9'] and 4 more" in message, message
    assert "unknown field(s) ['a'] (misspelt?)" in message, message
    assert err.value.details["rule"] == "required" and err.value.details["field"] == "f0"
