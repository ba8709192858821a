"""A small 5-field cron, in UTC, for ``retrain.schedule``: no dependency, no daemon.

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of
week (0-7 or sun-sat; 0 and 7 are Sunday). Each is ``*``, a value, a range ``1-5``, a step
``*/15`` or ``1-30/2``, or a comma list of these. As in Vixie cron, when both the day of
month and the day of week are restricted (neither starts with ``*``) a day matches when
EITHER does; otherwise both must.

The schedule is read on the data clock: :meth:`Cron.last_tick` answers "did a tick fall in
``(after, until]``, and which was the latest", which is all a trigger needs, and walks back
a month, a day or an hour at a time where those cannot match, so a year-long gap costs a
few hundred steps, not half a million minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flywheel.errors import ConfigError

__all__ = ["Cron", "parse"]

KEY = "retrain.schedule"
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, low, high, names whose index + offset is the value)
_FIELDS = (
    ("minute", 0, 59, (), 0),
    ("hour", 0, 23, (), 0),
    ("day of month", 1, 31, (), 0),
    ("month", 1, 12, _MONTHS, 1),
    ("day of week", 0, 7, _DAYS, 0),
)
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field (weekday 0 = Sunday)."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    def day_matches(self, t: datetime) -> bool:
        dom = t.day in self.days
        dow = (t.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def matches(self, ts: float) -> bool:
        """Whether the minute holding ``ts`` (unix seconds) is a tick."""
        t = datetime.fromtimestamp(math.floor(ts / 60) * 60, UTC)
        return (
            t.month in self.months
            and self.day_matches(t)
            and t.hour in self.hours
            and t.minute in self.minutes
        )

    def last_tick(self, after: float, until: float) -> float | None:
        """The latest tick ``t`` (unix seconds, a whole minute) with ``after < t <= until``;
        None when no tick falls in that range."""
        if until <= after:
            return None
        t = datetime.fromtimestamp(math.floor(until / 60) * 60, UTC)
        floor = datetime.fromtimestamp(max(after, 0.0), UTC)  # no data before 1970
        while t > floor:
            if t.month not in self.months:  # the last minute of the month before
                t = t.replace(day=1, hour=0, minute=0) - _MINUTE
            elif not self.day_matches(t):  # the last minute of the day before
                t = t.replace(hour=0, minute=0) - _MINUTE
            elif t.hour not in self.hours:  # the last minute of the hour before
                t = t.replace(minute=0) - _MINUTE
            else:
                earlier = [m for m in self.minutes if m <= t.minute]
                if not earlier:
                    t = t.replace(minute=0) - _MINUTE
                    continue
                tick = t.replace(minute=max(earlier)).timestamp()
                return tick if tick > after else None
        return None


def _error(expr: str, rule: str) -> ConfigError:
    return ConfigError(
        f"{KEY} {expr!r} is not a cron expression: {rule}. Use five fields, minute hour "
        "day-of-month month day-of-week (UTC), e.g. '0 3 * * 1' (Mondays at 03:00).",
        key=KEY,
        value=expr,
    )


def _value(text: str, field: tuple[str, int, int, tuple[str, ...], int], expr: str) -> int:
    name, low, high, names, offset = field
    if text.lower() in names:
        return names.index(text.lower()) + offset
    if not text.isdigit():
        raise _error(expr, f"the {name} field has {text!r}, not a number")
    value = int(text)
    if not low <= value <= high:
        raise _error(expr, f"the {name} field's {value} is outside {low}-{high}")
    return value


def _part(part: str, field: tuple[str, int, int, tuple[str, ...], int], expr: str) -> set[int]:
    name, low, high = field[0], field[1], field[2]
    base, _, step_text = part.partition("/")
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) == 0:
            raise _error(expr, f"the {name} field's step {step_text!r} is not a positive number")
        step = int(step_text)
    if base == "*":
        lo, hi = low, high
    elif "-" in base:
        a, _, b = base.partition("-")
        lo, hi = _value(a, field, expr), _value(b, field, expr)
        if lo > hi:
            raise _error(expr, f"the {name} field's range {base!r} runs backwards")
    else:
        lo = _value(base, field, expr)
        hi = high if step_text else lo  # "5/15": from 5 to the end, every 15
    return set(range(lo, hi + 1, step))


def parse(expr: str) -> Cron:
    """``expr`` as a :class:`Cron`; :class:`~flywheel.errors.ConfigError` naming
    ``retrain.schedule`` and the broken rule otherwise."""
    fields = expr.split()
    if len(fields) != 5:
        raise _error(expr, f"it has {len(fields)} field(s), not 5")
    values: list[frozenset[int]] = []
    for text, field in zip(fields, _FIELDS, strict=True):
        allowed: set[int] = set()
        for part in text.split(","):
            if not part:
                raise _error(expr, f"the {field[0]} field {text!r} has an empty list item")
            allowed |= _part(part, field, expr)
        values.append(frozenset(allowed))
    weekdays = frozenset(d % 7 for d in values[4])
    return Cron(
        expr=expr,
        minutes=values[0],
        hours=values[1],
        days=values[2],
        months=values[3],
        weekdays=weekdays,
        days_restricted=not fields[2].startswith("*"),
        weekdays_restricted=not fields[4].startswith("*"),
    )
