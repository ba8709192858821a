"""Self-healing's window judgement (``heal_breach``): a limit counts as passed only beyond
chance, so a healthy champion is not rolled back on a small window's noise, and a broken
promotion still is on its first window."""

from __future__ import annotations

import numpy as np

from flywheel.config import RolloutSettings
from flywheel.rollout.counters import ArmCounter, ArmCounts
from flywheel.serving.rollout_agent import heal_breach


def _window(requests: int, errors: int, slow: int = 0, slow_ms: float = 400.0) -> ArmCounts:
    counter = ArmCounter()
    for i in range(requests - errors):
        counter.answered(slow_ms if i < slow else 2.0)
    for _ in range(errors):
        counter.failed()
    return counter.snapshot()


def test_a_window_just_over_the_error_limit_waits_a_broken_promotion_heals() -> None:
    settings = RolloutSettings()  # 5%, heal_alpha 0.01
    assert heal_breach(_window(100, 6), settings) is None  # 6%: the old threshold healed here
    breach = heal_breach(_window(20, 20), settings)
    assert breach is not None and breach.startswith("error rate 100.00% > 5.00%"), breach
    assert "20 of 20 requests in 60 s" in breach and "always-valid p" in breach
    assert heal_breach(_window(100, 20), settings) is not None
    assert heal_breach(_window(20, 20), RolloutSettings(heal_max_error_rate=1.0)) is None
    assert heal_breach(ArmCounts(), settings) is None  # an empty window


def test_a_healthy_champion_is_not_healed_within_the_hour_a_bad_one_is_at_once() -> None:
    """60 windows of 100 requests (an hour of heal_window_s 60 s): a champion failing 3%
    (under the 5% limit) was healed in every simulated hour by the plain threshold; failing
    20%, it is healed, nearly always on the first window."""
    settings = RolloutSettings()
    rng = np.random.default_rng(0)
    hours = 100

    def first_heal(rate: float) -> int | None:
        for window, errors in enumerate(rng.binomial(100, rate, 60)):
            counts = ArmCounts(requests=100, errors=int(errors))
            if heal_breach(counts, settings) is not None:
                return window
        return None

    healthy = [first_heal(0.03) for _ in range(hours)]
    plain = sum(
        any(e > 5 for e in rng.binomial(100, 0.03, 60)) for _ in range(hours)
    )  # the old rule: error rate > 5% in any window
    assert plain >= 0.9 * hours, plain
    assert sum(h is not None for h in healthy) <= 0.01 * hours, healthy
    broken = [first_heal(0.20) for _ in range(hours)]
    assert all(h is not None for h in broken), broken
    assert sum(h == 0 for h in broken) >= 0.9 * hours and max(broken) <= 3, broken


def test_p99_heals_on_many_slow_answers_not_on_two_stalls() -> None:
    settings = RolloutSettings(heal_max_p99_ms=100.0)
    assert heal_breach(_window(100, 0, slow=0), settings) is None
    assert heal_breach(_window(100, 0, slow=2), settings) is None  # p99 = 400 ms, 2 stalls
    breach = heal_breach(_window(100, 0, slow=30), settings)
    assert breach is not None and breach.startswith("p99 ") and "30 of 100 answers" in breach
    assert heal_breach(_window(100, 0, slow=30), RolloutSettings()) is None  # p99 off
