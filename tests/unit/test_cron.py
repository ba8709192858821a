"""The retrain schedule's cron: fields, the day-of-month/day-of-week OR rule, last_tick."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest

from flywheel.errors import ConfigError
from flywheel.pipelines.cron import parse


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def test_steps_ranges_and_weekdays() -> None:
    cron = parse("*/15 9-17 * * 1-5")  # every 15 minutes, office hours, Monday to Friday
    assert cron.matches(ts(2026, 1, 5, 9, 45))  # a Monday
    assert cron.matches(ts(2026, 1, 9, 17, 0))  # a Friday
    assert not cron.matches(ts(2026, 1, 5, 9, 46))
    assert not cron.matches(ts(2026, 1, 5, 18, 0))
    assert not cron.matches(ts(2026, 1, 10, 10, 0))  # a Saturday
    assert cron.minutes == frozenset({0, 15, 30, 45})


def test_lists_names_range_steps_and_sunday_as_seven() -> None:
    cron = parse("0,30 3 * jan,jul sun")
    assert cron.matches(ts(2026, 1, 4, 3, 30))  # a Sunday in January
    assert not cron.matches(ts(2026, 2, 1, 3, 0))  # a Sunday in February
    assert parse("0 0 * * 7").weekdays == frozenset({0})
    assert parse("0 0 * * 0").weekdays == frozenset({0})
    assert parse("1-30/10 * * * *").minutes == frozenset({1, 11, 21})
    assert parse("5/20 * * * *").minutes == frozenset({5, 25, 45})


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    both = parse("0 0 13 * 5")  # the 13th, or any Friday (Vixie cron)
    assert both.matches(ts(2026, 1, 13))  # a Tuesday, the 13th
    assert both.matches(ts(2026, 1, 16))  # a Friday, the 16th
    assert not both.matches(ts(2026, 1, 14))  # a Wednesday, the 14th
    only_dom = parse("0 0 13 * *")
    assert only_dom.matches(ts(2026, 1, 13))
    assert not only_dom.matches(ts(2026, 1, 16))
    stepped = parse("0 0 */2 * 5")  # a day field starting with * is not "restricted": AND
    assert stepped.matches(ts(2026, 1, 23))  # odd day (1, 3, ... 23) and a Friday
    assert not stepped.matches(ts(2026, 1, 16))  # a Friday, but an even day


def test_last_tick_across_a_month_gap_and_its_bounds() -> None:
    monthly = parse("0 3 1 * *")
    assert monthly.last_tick(ts(2026, 1, 15), ts(2026, 3, 10)) == ts(2026, 3, 1, 3)
    tick = ts(2026, 3, 1, 3)
    assert monthly.last_tick(tick, ts(2026, 3, 10)) is None  # after is excluded
    assert monthly.last_tick(tick - 1, tick) == tick  # until is included
    assert monthly.last_tick(ts(2026, 3, 1, 4), ts(2026, 3, 31)) is None
    weekly = parse("0 3 * * 1")
    assert weekly.last_tick(ts(2026, 1, 1), ts(2026, 2, 1)) == ts(2026, 1, 26, 3)


def test_last_tick_over_years_is_quick() -> None:
    leap = parse("0 0 29 2 *")
    started = time.perf_counter()
    assert leap.last_tick(ts(2021, 1, 1), ts(2031, 1, 1)) == ts(2028, 2, 29)
    assert leap.last_tick(ts(2029, 1, 1), ts(2031, 1, 1)) is None
    assert time.perf_counter() - started < 0.5  # months and days skipped, not minutes walked


@pytest.mark.parametrize(
    "expr",
    ["*/7 * * * *", "0 */5 * * *", "30 2 1-10 * 0,6", "0 12 15 * 3", "*/20 1,13 * 2-4 *"],
)
def test_last_tick_agrees_with_a_minute_by_minute_scan(expr: str) -> None:
    cron = parse(expr)
    rng = random.Random(expr)
    for _ in range(5):
        until = ts(2026, 1, 1) + rng.randrange(0, 200 * 86400)
        after = until - rng.randrange(60, 4 * 86400)
        expected = None
        t = (until // 60) * 60
        while t > after:
            if cron.matches(t):
                expected = t
                break
            t -= 60
        assert cron.last_tick(after, until) == expected


@pytest.mark.parametrize(
    ("expr", "rule"),
    [
        ("* * * *", "4 field(s), not 5"),
        ("60 * * * *", "outside 0-59"),
        ("*/0 * * * *", "step '0'"),
        ("5-1 * * * *", "runs backwards"),
        ("x * * * *", "'x', not a number"),
        ("* * 0 * *", "outside 1-31"),
        ("1,,2 * * * *", "empty list item"),
        ("0 0 * foo *", "'foo', not a number"),
    ],
)
def test_a_bad_expression_names_the_setting_and_the_rule(expr: str, rule: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(expr)
    assert "retrain.schedule" in caught.value.message
    assert rule in caught.value.message
    assert caught.value.details["key"] == "retrain.schedule"
    assert caught.value.exit_code == 2
