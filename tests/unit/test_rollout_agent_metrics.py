"""The rollout agent's Prometheus counters: rollouts seen ending (by final status) and
self-heals, exported from 0 so that Prometheus's increase() sees the first one
(deploy/prometheus/alerts.yml: FlywheelRolloutRolledBack, FlywheelSelfHealed)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flywheel.config import RolloutSettings
from flywheel.serving.rollout_agent import RolloutAgent


class _Predictor:
    """What the agent's `_apply` and `collect` use of the predictor, nothing more."""

    default_model = "churn"

    def __init__(self) -> None:
        self.live: Any = None
        self.ended: list[tuple[str | None, str | None]] = []

    def rollout(self, name: str | None = None) -> Any:
        return self.live

    def end_rollout(self, name: str | None, promoted: str | None = None) -> None:
        self.ended.append((name, promoted))
        self.live = None


def _agent() -> tuple[RolloutAgent, _Predictor]:
    predictor = _Predictor()
    ws = SimpleNamespace(
        settings=SimpleNamespace(
            registry=SimpleNamespace(model_name="churn"), rollout=RolloutSettings()
        )
    )
    return RolloutAgent(predictor, ws), predictor  # type: ignore[arg-type]


def _samples(agent: RolloutAgent) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(agent)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_start_at_zero_for_every_final_status() -> None:
    agent, _ = _agent()
    samples = _samples(agent)
    for status in ("promoted", "rolled_back", "aborted"):
        key = ("flywheel_rollout_ended_total", (("model", "churn"), ("status", status)))
        assert samples[key] == 0.0
    assert samples[("flywheel_self_heals_total", (("model", "churn"),))] == 0.0


def test_a_rollout_seen_ending_is_counted_by_its_status() -> None:
    agent, predictor = _agent()
    for status in ("rolled_back", "rolled_back", "aborted"):
        predictor.live = SimpleNamespace(id="r1")  # a rollout this replica routes
        ended = SimpleNamespace(status=status, challenger="2")
        asyncio.run(agent._apply(None, ended=ended))  # type: ignore[arg-type]
    asyncio.run(agent._apply(None))  # nothing live here: nothing ended here, nothing counted
    assert predictor.ended == [("churn", None)] * 3
    samples = _samples(agent)
    ended_total = {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "flywheel_rollout_ended_total"
    }
    assert ended_total == {"promoted": 0.0, "rolled_back": 2.0, "aborted": 1.0}
