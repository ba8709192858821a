"""The predictor's router in-process: canary split and stickiness, an explicit version, the
shadow's mirror (same answers, its own log rows), a step's fresh counts, a promotion."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flywheel.rollout.plan import RolloutPlan
from flywheel.rollout.store import RolloutState
from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import ModelFiles, StaticSource
from flywheel.serving.types import PredictRequest
from tests.unit.serving_models import build, rows


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFiles]:
    tmp: Path = tmp_path_factory.mktemp("rollout-models")
    return {
        "1": build(tmp, family="logreg", version="1"),
        "2": build(tmp, family="random_forest", version="2"),
    }


class ListSink:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def append(self, record: Any) -> None:
        self.records.append(record)


def _predictor(files: dict[str, ModelFiles], sink: Any = None) -> Predictor:
    source = StaticSource(dict(files), {"champion": "1"})
    config = ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0)
    return Predictor(config, {"churn": source}, sink=sink)


def _state(
    strategy: str = "canary", weight: float = 30.0, step: int = 0, **plan: Any
) -> RolloutState:
    now = time.time()
    body = RolloutPlan(challenger="2", strategy=strategy, **plan).to_dict()  # type: ignore[arg-type]
    return RolloutState(
        id="r-test", model="churn", status="running", strategy=strategy, champion="1",
        challenger="2", step=step, weight=weight, plan=body, started_at=now,
        step_started_at=now, updated_at=now, revision=1 + step, reason="", evidence={}, who="t",
    )  # fmt: skip


def test_canary_splits_by_key_and_keeps_each_key_on_its_version(
    files: dict[str, ModelFiles],
) -> None:
    async def main() -> None:
        predictor = _predictor(files)
        await predictor.start()
        await predictor.apply_rollout(None, _state(weight=30.0))
        seen: dict[str, set[str]] = {}
        for i in range(1200):
            key = f"user-{i % 400}"
            answer = await predictor.predict(PredictRequest(records=rows(2), client_id=key))
            seen.setdefault(key, set()).add(answer.version)
        assert all(len(v) == 1 for v in seen.values())  # sticky
        share = sum("2" in v for v in seen.values()) / len(seen)
        assert 0.22 < share < 0.38, share
        # a request naming a version gets that one, whatever its key says, and counts on
        # neither arm: it was not assigned (300 pinned to the champion paused an A/B on SRM)
        for version in ("1", "2"):
            named = await predictor.predict(PredictRequest(records=rows(1), version=version))
            assert named.version == version
        counts = {arm: c.snapshot() for arm, c in predictor.rollout().counters.items()}  # type: ignore[union-attr]
        assert counts["champion"].requests + counts["challenger"].requests == 1200
        # nor its rows: score drift and the distinct inputs see only the arms' own
        assert counts["champion"].rows + counts["challenger"].rows == 2400
        assert sum(counts["champion"].score_hist) + sum(counts["challenger"].score_hist) == 2400
        assert counts["challenger"].units == sum("2" in v for v in seen.values())
        # the next step: a new router, fresh counts, the same warm challenger object
        challenger = predictor.rollout().challenger  # type: ignore[union-attr]
        await predictor.apply_rollout(None, _state(weight=60.0, step=1))
        live = predictor.rollout()
        assert live is not None and live.challenger is challenger and live.router.weight == 60
        assert live.counters["champion"].snapshot().requests == 0
        # /metrics' model_info: both loaded versions during the rollout, one after it
        info = predictor.metrics.render().decode()
        assert 'model="churn",sha256="' in info and 'version="2"' in info, info
        assert info.count("flywheel_model_info{") == 2, info
        predictor.end_rollout(None, promoted="2")
        assert (await predictor.predict(PredictRequest(records=rows(1)))).version == "2"
        assert predictor.metrics.render().decode().count("flywheel_model_info{") == 1
        await predictor.close()

    run(main())


def test_requests_without_a_key_are_split_at_the_weight_and_each_is_a_unit(
    files: dict[str, ModelFiles],
) -> None:
    """No client id: each request is drawn afresh; the arms' counters see every answered
    request (each its own unit) and, binned once per micro-batch by the arm's batcher, every
    row's score; once the rollout ends no batcher keeps the rollout's hooks."""

    async def main() -> None:
        predictor = _predictor(files)
        await predictor.start()
        champion = predictor.model()
        await predictor.apply_rollout(None, _state(weight=30.0))
        live = predictor.rollout()
        assert live is not None
        answers = await asyncio.gather(
            *(predictor.predict(PredictRequest(records=rows(1 + i % 3))) for i in range(900))
        )
        by_version = Counter(a.version for a in answers)
        rows_of = Counter()
        for a in answers:
            rows_of[a.version] += len(a.labels)
        assert 0.24 < by_version["2"] / 900 < 0.36, by_version
        counts = {arm: c.snapshot() for arm, c in live.counters.items()}
        for arm, version in (("champion", "1"), ("challenger", "2")):
            assert counts[arm].requests == counts[arm].units == by_version[version]
            assert counts[arm].rows == sum(counts[arm].score_hist) == rows_of[version]
        assert champion.batcher.arm is live.counters["champion"]
        assert champion.batcher.partner is live.challenger.batcher
        predictor.end_rollout(None, promoted="2")
        for model in (champion, live.challenger):
            assert model.batcher.arm is None and model.batcher.partner is None
        await predictor.close()

    run(main())


def test_repeated_rows_cost_a_hash_a_batch_and_varied_rows_saturate_at_once(
    files: dict[str, ModelFiles], stable_hashes: list[tuple[Any, ...]]
) -> None:
    """The distinct-inputs count (score drift's few-rows rule) under load, 64 in flight: the
    same three rows again and again are found, at about one hash per micro-batch (it hashed
    every row, ~4 µs a row, for as long as the traffic stayed on a few rows: for ever); new
    rows reach the cap in the first batch."""
    from flywheel.rollout import counters

    three = [rows(1, seed=s) for s in (1, 2, 3)]

    async def main(varied: bool) -> tuple[int, int]:
        predictor = _predictor(files)
        await predictor.start()
        await predictor.apply_rollout(None, _state(weight=30.0))
        live = predictor.rollout()
        assert live is not None
        for wave in range(10):
            await asyncio.gather(
                *(
                    predictor.predict(
                        PredictRequest(
                            records=rows(1, seed=100 + wave * 64 + i) if varied else three[i % 3]
                        )
                    )
                    for i in range(64)
                )
            )
        seen = len(live.counters["champion"].inputs)
        batches = predictor.batch_stats().batches
        await predictor.close()
        return seen, batches

    seen, batches = run(main(varied=False))
    assert seen == 3
    assert len(stable_hashes) <= batches + 2 * 3 < 640, (len(stable_hashes), batches)
    assert run(main(varied=True))[0] == counters.DISTINCT_INPUTS


def test_a_shadow_counts_each_lone_row_once(files: dict[str, ModelFiles]) -> None:
    """One request at a time: each shadow batch is one one-row request, scored as two copies
    (see assemble); the challenger's rows and score histogram count it once."""

    async def main() -> None:
        predictor = _predictor(files)
        await predictor.start()
        await predictor.apply_rollout(None, _state(strategy="shadow", weight=0.0, mirror=100.0))
        live = predictor.rollout()
        assert live is not None
        for _ in range(40):
            await predictor.predict(PredictRequest(records=rows(1)))
            while live.shadow_pending:
                await asyncio.sleep(0.005)
        for arm in ("champion", "challenger"):
            counts = live.counters[arm].snapshot()
            assert counts.requests == counts.rows == sum(counts.score_hist) == 40, arm
        await predictor.close()

    run(main())


def test_a_feature_key_routes_rows_of_one_customer_together(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        predictor = _predictor(files)
        await predictor.start()
        await predictor.apply_rollout(None, _state(weight=50.0, sticky="feature:plan"))
        versions: dict[str, set[str]] = {}
        for i, record in enumerate(rows(300)):
            answer = await predictor.predict(PredictRequest(records=[record], client_id=str(i)))
            versions.setdefault(record["plan"], set()).add(answer.version)
        assert all(len(v) == 1 for v in versions.values()), versions
        await predictor.close()

    run(main())


def test_shadow_answers_as_the_champion_and_logs_a_shadow_row(
    files: dict[str, ModelFiles],
) -> None:
    async def main() -> None:
        sink = ListSink()
        predictor = _predictor(files, sink)
        await predictor.start()
        batch = rows(5)
        before = await predictor.predict(PredictRequest(records=batch, request_id="a"))
        await predictor.apply_rollout(None, _state("shadow", weight=0.0))
        answers = [
            await predictor.predict(PredictRequest(records=batch, request_id=f"r{i}"))
            for i in range(50)
        ]
        live = predictor.rollout()
        assert live is not None
        while live.shadow_pending:
            await asyncio.sleep(0.01)
        for answer in answers:
            assert answer.version == "1"
            np.testing.assert_array_equal(answer.labels, before.labels)
            np.testing.assert_array_equal(answer.probabilities, before.probabilities)
        roles = Counter((r.role, r.version) for r in sink.records[1:])
        assert roles == {("champion", "1"): 50, ("shadow", "2"): 50}, roles
        shadow_ids = sorted(r.request_id for r in sink.records if r.role == "shadow")
        assert shadow_ids == sorted(f"r{i}" for i in range(50))
        assert sink.records[0].role is None  # before the rollout: no role
        assert live.counters["challenger"].snapshot().requests == 50
        await predictor.close()

    run(main())


def test_two_arms_batchers_flush_in_the_same_loop_turn() -> None:
    """A rollout's two arms are two models with a batcher each; partnered, a flush of one
    takes the other's queue in the same turn, so both arms' answers leave in one wave. When
    the small arm's request comes first in a wave (its own last batch: one request), its
    flush still waits the turns the big arm gathers for, so the big arm's batch stays whole."""
    from flywheel.serving.batching import BatchStats, MicroBatcher
    from flywheel.serving.decode import Decoded

    def score(feeds: list[np.ndarray]) -> tuple[np.ndarray, None]:
        return np.zeros(len(feeds[0]), dtype=np.int64), None

    async def main(partnered: bool, challenger_first: bool = False) -> list[tuple[str, int]]:
        turns = 0
        flushes: list[tuple[str, int]] = []

        async def count_turns() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        counter = asyncio.ensure_future(count_turns())
        a = MicroBatcher(
            score, (True,), stats=BatchStats(on_batch=lambda n: flushes.append(("a", turns)))
        )
        b = MicroBatcher(
            score, (True,), stats=BatchStats(on_batch=lambda n: flushes.append(("b", turns)))
        )
        if partnered:
            a.partner, b.partner = b, a
        one = Decoded([[1.0]], 1)
        await asyncio.gather(a.submit(one), a.submit(one))  # under load from here on
        flushes.clear()
        await asyncio.sleep(0)
        arms = (b, a) if challenger_first else (a, b)
        first = arms[0].submit(one)  # the wave's first request ...
        await asyncio.sleep(0)
        second = arms[1].submit(one)  # ... and the other arm's, a turn later
        await asyncio.gather(first, second)
        counter.cancel()
        return flushes

    apart = run(main(False))
    together = run(main(True))
    assert len({t for _, t in together}) == 1 and {n for n, _ in together} == {"a", "b"}, together
    assert len({t for _, t in apart}) == 2, apart
    small_first = run(main(True, challenger_first=True))
    assert len({t for _, t in small_first}) == 1, small_first
    assert {n for n, _ in small_first} == {"a", "b"}, small_first


def test_what_a_rollout_or_a_new_version_loads_is_frozen_out_of_the_collectors_reach(
    files: dict[str, ModelFiles],
) -> None:
    """Once the server has frozen its heap (``gc.freeze`` after start-up), a challenger
    loaded on it and a version a reload swaps in leave the cyclic collector's generations
    too: otherwise every full collection walks them again (measured on a canary started
    under load, 64 connections: ~190 ms per full collection, p99 ~200 ms). A process that
    never froze (the predictor as a library, start-up itself) is left alone."""

    def tracked(obj: object) -> bool:  # gc.get_objects() leaves the frozen generation out
        return any(o is obj for o in gc.get_objects())

    async def main() -> None:
        predictor = _predictor(files)
        await predictor.start()
        try:
            gc.unfreeze()  # nothing frozen yet: the predictor freezes nothing
            await predictor.apply_rollout(None, _state(weight=10.0))
            live = predictor.rollout()
            assert live is not None and tracked(live.challenger)
            predictor.end_rollout(None)
            gc.freeze()  # as the REST front does once start-up is done
            await predictor.apply_rollout(None, _state(weight=10.0))
            live = predictor.rollout()
            assert live is not None and not tracked(live.challenger)
            assert not tracked(live.router)
            predictor.end_rollout(None)
            gc.unfreeze()
            gc.freeze()
            await predictor.pin(None, "2")
            assert predictor.model().version == "2" and not tracked(predictor.model())
        finally:
            await predictor.close()
            gc.unfreeze()

    run(main())


def test_a_request_both_arms_refuse_is_the_client_s_error_not_an_arm_s(
    files: dict[str, ModelFiles], tmp_path: Path
) -> None:
    """An unknown field is refused by both versions of one schema: no arm's error rate counts
    it (the outside-user test saw 900 such requests lift the champion's to 10.9%, which
    widened the guardrail at the 100% step). A challenger of another schema refusing what
    the champion takes is its own regression: counted."""
    from flywheel.serving.errors import InvalidInput
    from flywheel.training.features import FeatureSpec

    async def refusals(predictor: Predictor) -> dict[str, int]:
        await predictor.start()
        await predictor.apply_rollout(None, _state(weight=50.0))
        for i in range(40):
            bad = [{**rows(1)[0], "customer_id": i}]
            with pytest.raises(InvalidInput, match="customer_id"):
                await predictor.predict(PredictRequest(records=bad, client_id=f"c-{i}"))
        good = [await predictor.predict(PredictRequest(records=rows(1))) for _ in range(40)]
        live = predictor.rollout()
        assert live is not None
        counts = {arm: c.snapshot() for arm, c in live.counters.items()}
        await predictor.close()
        assert {a.version for a in good} >= {"1"}
        return {arm: c.errors for arm, c in counts.items()}

    assert run(refusals(_predictor(files))) == {"champion": 0, "challenger": 0}

    narrower = (FeatureSpec("tenure", "numeric"), FeatureSpec("plan", "categorical"))
    other = {"1": files["1"], "2": build(tmp_path, family="logreg", version="2", specs=narrower)}

    async def regression() -> dict[str, int]:
        predictor = _predictor(other)
        await predictor.start()
        await predictor.apply_rollout(None, _state(weight=50.0))
        answered = 0
        for i in range(60):  # rows with charges: the champion takes them, v2 refuses them
            try:
                await predictor.predict(PredictRequest(records=rows(1, seed=i), client_id=f"k{i}"))
                answered += 1
            except InvalidInput:
                pass
        live = predictor.rollout()
        assert live is not None
        errors = {arm: c.snapshot().errors for arm, c in live.counters.items()}
        await predictor.close()
        assert answered + errors["challenger"] == 60
        return errors

    errors = run(regression())
    assert errors["champion"] == 0 and errors["challenger"] > 10, errors


def test_self_healing_counts_a_refusal_only_when_the_replaced_version_would_not_refuse(
    files: dict[str, ModelFiles], tmp_path: Path
) -> None:
    """After a promotion the champion is watched; an unknown field the version it replaced
    refuses alike is the client's error, not the new champion's. A new champion of a
    narrower schema refusing what the old one took is its regression: it counts."""
    from flywheel.serving.errors import InvalidInput
    from flywheel.training.features import FeatureSpec

    narrower = (FeatureSpec("tenure", "numeric"), FeatureSpec("plan", "categorical"))
    versions = {**files, "3": build(tmp_path, family="logreg", version="3", specs=narrower)}

    async def errors_after_promoting(version: str, record: dict[str, Any]) -> int:
        source = StaticSource(dict(versions), {"champion": "1"})
        config = ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0)
        predictor = Predictor(config, {"churn": source}, sink=None)
        await predictor.start()
        source.set_alias("champion", version)
        assert await predictor.reload(None) == version
        for _ in range(20):
            with pytest.raises(InvalidInput):
                await predictor.predict(PredictRequest(records=[record]))
        errors = predictor._slot(None).health.snapshot().errors
        await predictor.close()
        return errors

    unknown = {**rows(1)[0], "customer_id": 7}
    assert run(errors_after_promoting("2", unknown)) == 0  # v1 refuses it too: the client's
    assert run(errors_after_promoting("3", rows(1)[0])) == 20  # v1 took charges: v3's fault


def test_self_healing_judges_a_new_champion_on_its_own_answers(
    files: dict[str, ModelFiles],
) -> None:
    """The window's counts are reset when the served version changes: the old version's
    successes diluted a failing promotion (1,193 of 11,125 requests, 10.7%, for a version
    failing every one)."""

    async def main() -> None:
        source = StaticSource(dict(files), {"champion": "1"})
        config = ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0)
        predictor = Predictor(config, {"churn": source}, sink=None)
        await predictor.start()
        for _ in range(30):
            await predictor.predict(PredictRequest(records=rows(1)))
        assert predictor._slot(None).health.snapshot().requests == 30
        source.set_alias("champion", "2")
        assert await predictor.reload(None) == "2"
        assert predictor._slot(None).health.snapshot().requests == 0
        await predictor.predict(PredictRequest(records=rows(1)))
        assert predictor._slot(None).health.snapshot().requests == 1
        await predictor.close()

    run(main())
