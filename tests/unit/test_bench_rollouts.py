"""The rollout mode of the serving benchmark (bench/serving/rollouts.py) and its sampler:
the plans it starts are valid flywheel plans that hold a canary at 10%, the ratios are per
round against the same round's one-version figures, the verdict follows a distribution-free
interval for their median, a status is read into arm counts, and the sampler attributes a
busy thread's stack to the current label."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from bench.serving.rollouts import (
    GOAL_RATIO,
    arms_of,
    median_interval,
    plan_for,
    profiled_argv,
    shadow_cost,
    summarise,
    verdict,
)
from bench.serving.sampler import Sampler

from flywheel.rollout.plan import load_plan


def test_plans_are_valid_and_hold_the_canary_at_ten_percent() -> None:
    canary = load_plan(plan_for("canary", "2", "accuracy"))  # type: ignore[arg-type]
    shadow = load_plan(plan_for("shadow", "2", "none"))  # type: ignore[arg-type]
    assert plan_for("one", "2", "accuracy") is None
    assert canary.weight_at(0) == 10.0 and canary.last_step == 1
    assert canary.interval == 3600.0
    assert shadow.strategy == "shadow" and shadow.mirror == 100.0
    assert shadow.weight_at(0) == 0.0 and shadow.guardrails.metric == "none"


def _door(rps: float, cpu: float) -> dict[str, Any]:
    return {
        "rps": rps,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "server_cpu_us": cpu,
        "batch_rows": 4.0,
        "errors": 0,
    }


def test_ratios_are_per_round_against_the_same_rounds_one_version() -> None:
    # the machine's speed drifts between rounds; each round's ratio cancels it
    rounds = []
    for speed in (1000.0, 2000.0, 4000.0, 3000.0, 500.0, 2500.0, 1500.0):
        modes = {
            "one": (speed, 100.0),
            "canary": ((GOAL_RATIO + 0.05) * speed, 104.0),
            "shadow": (speed / 2, 250.0),
        }
        rounds.append({m: {"c16": _door(*v), "c64": _door(*v)} for m, v in modes.items()})
    out = summarise(rounds)
    for key in ("c16", "c64"):
        canary, shadow = out[key]["canary"], out[key]["shadow"]
        assert canary["ratios"] == pytest.approx([GOAL_RATIO + 0.05] * 7)
        assert canary["verdict"] == "PASS" and canary["capacity_verdict"] == "PASS"
        assert shadow["ratio"] == pytest.approx(0.5) and shadow["verdict"] == "MISS"
        assert shadow["capacity_ratio"] == pytest.approx(100.0 / 250.0)
        assert shadow["cpu_extra_us"] == pytest.approx(150.0)
        assert out[key]["one"]["rps"] == 2000.0  # the median round


def test_the_medians_interval_is_distribution_free_and_decides_the_verdict() -> None:
    ten = [0.80, 0.85, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.99, 1.30]
    found = median_interval(ten)
    # n = 10: the 2nd and 9th values, coverage 1 - 2 P(Binomial(10, 1/2) <= 1) = 0.9785
    assert found is not None
    assert (found["low"], found["high"]) == (0.85, 0.99)
    assert found["coverage"] == pytest.approx(1 - 2 * 11 / 1024)
    assert verdict(found) == "UNDECIDED"  # 0.85 < 0.90 <= 0.99
    assert verdict(median_interval([v + 0.06 for v in ten])) == "PASS"
    assert verdict(median_interval([v - 0.2 for v in ten])) == "MISS"
    # five rounds cannot give 95% (the range covers 93.75%): never a verdict either way
    five = median_interval([1.5, 1.6, 1.7, 1.8, 1.9])
    assert five is not None and five["coverage"] == pytest.approx(0.9375)
    assert verdict(five) == "UNDECIDED"
    assert median_interval([]) is None and verdict(None) is None


def test_shadow_cost_is_read_off_the_whole_runs_status() -> None:
    arms = {"status": "running", "champion_requests": 1000, "shadow_scored": 990}
    cost = shadow_cost(arms)
    assert cost["not_scored"] == 10 and cost["scored_share"] == pytest.approx(0.99)
    assert cost["status"] == "running"


def test_arms_of_a_shadow_counts_what_it_did_not_score() -> None:
    status = {
        "rollout": {"id": "r1", "status": "running", "strategy": "shadow", "reason": "x"},
        "weights": {"champion": 100.0, "challenger": 0.0},
        "arms": {"champion": {"requests": 1000}, "challenger": {"requests": 940, "errors": 0}},
    }
    arms = arms_of(status)
    assert arms["shadow_scored"] == 940 and arms["shadow_not_scored"] == 60
    canary = arms_of(
        {
            "rollout": {"strategy": "canary"},
            "arms": {"champion": {"requests": 900}, "challenger": {"requests": 100}},
        }
    )
    assert canary["challenger_share"] == pytest.approx(0.1)


def test_profiled_argv_wraps_a_module_command() -> None:
    argv = ["python", "-m", "flywheel", "serve", "--port", "1"]
    wrapped = profiled_argv(argv, Path("out.json"), Path("label"))
    assert wrapped[:3] == ["python", "-m", "bench.serving.sampler"]
    assert wrapped[-5:] == argv[1:]
    with pytest.raises(SystemExit):
        profiled_argv(["flywheel", "serve"], Path("o"), Path("l"))


def _spin_in_a_known_function(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def test_sampler_counts_a_busy_thread_under_the_current_label(tmp_path: Path) -> None:
    label = tmp_path / "label"
    label.write_text("canary")
    sampler = Sampler(tmp_path / "profile.json", label)
    sampler._read_label()
    stop = threading.Event()
    worker = threading.Thread(target=_spin_in_a_known_function, args=(stop,), name="spinner_0")
    worker.start()
    try:
        for _ in range(50):
            sampler._sample(threading.get_ident())
            time.sleep(0.001)
    finally:
        stop.set()
        worker.join()
    sampler.dump()
    found = sampler.inclusive["canary"]
    assert any(k.startswith("_spin_in_a_known_function") for k in found)
    assert sampler.threads["canary"]["spinner"] > 0
    assert (tmp_path / "profile.json").exists()
