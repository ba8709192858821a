"""Drift scenarios: named changes to the world that start on a chosen day."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from flywheel.errors import ConfigError

__all__ = ["SCENARIOS", "SOURCE_ONLY", "Scenario", "parse_scenario"]

SCENARIOS: dict[str, str] = {
    "price_rise": "List prices of every plan rise by 15% (new catalogue rows); bills and "
    "price-driven churn go up.",
    "new_contract": "A new contract type 'flex_monthly' is sold: 35% of new customers and 20% "
    "of renewals pick it.",
    "ticket_churn": "Support tickets weigh far more on churn (hazard coefficient 0.45 -> 1.1 "
    "per ticket in the last 90 days) and network tickets become 50% more frequent.",
    "lost_churn_events": "A broken CRM export loses 60% of churn events: those customers look "
    "active (and not churned) from then on, in the source and in the labels fed back; a model "
    "retrained on it under-predicts churn.",
    "cancellation_tickets": "The CRM logs each churn as an 'account' support ticket, and the "
    "warehouse export backdates it to the eve of the billing period the churn falls in: in the "
    "SQL source a churner's last row shows a ticket the day before (the future leaking into "
    "the features), while live requests carry the true history. Source only: a model "
    "retrained on recent rows learns the leak, aces the source's own holdout and fails live.",
}

# Scenarios that break only the copy of the world the SQL source holds: the world itself
# (the traffic a replay sends, the outcomes it feeds back) goes on without them.
SOURCE_ONLY: frozenset[str] = frozenset({"cancellation_tickets"})

_SPEC = re.compile(r"^\s*([A-Za-z_]+)\s*@\s*(\S+)\s*$")


@dataclass(frozen=True, order=True)
class Scenario:
    """A drift scenario active from ``day`` (days after the world's start date) onwards."""

    day: int
    name: str

    def date(self, start: dt.date) -> dt.date:
        """The calendar date the scenario starts on."""
        return start + dt.timedelta(days=self.day)

    def spec(self) -> str:
        """The ``NAME@DAY`` form, the inverse of :func:`parse_scenario`."""
        return f"{self.name}@{self.day}"


def parse_scenario(spec: str, start: dt.date) -> Scenario:
    """Parse ``NAME@DAY`` (day number from ``start``) or ``NAME@YYYY-MM-DD``."""
    match = _SPEC.match(spec)
    if not match:
        raise ConfigError(
            f"Bad drift scenario {spec!r}: expected NAME@DAY or NAME@YYYY-MM-DD, "
            f"e.g. 'price_rise@180'. Valid names: {', '.join(SCENARIOS)}.",
            key="scenarios",
            value=spec,
        )
    name, when = match.group(1), match.group(2)
    if name not in SCENARIOS:
        raise ConfigError(
            f"Unknown drift scenario {name!r} in {spec!r}. Valid names: {', '.join(SCENARIOS)}.",
            key="scenarios",
            value=spec,
        )
    return Scenario(day=_parse_day(when, spec, start), name=name)


def _parse_day(when: str, spec: str, start: dt.date) -> int:
    if when.isdigit():
        return int(when)
    try:
        day = (dt.date.fromisoformat(when) - start).days
    except ValueError:
        raise ConfigError(
            f"Bad day {when!r} in drift scenario {spec!r}: use a day number from the start "
            "(e.g. 180) or an ISO date (e.g. 2025-07-01).",
            key="scenarios",
            value=spec,
        ) from None
    if day < 0:
        raise ConfigError(
            f"Drift scenario {spec!r} starts before the world's start date {start.isoformat()}. "
            "Fix: use a date on or after the start.",
            key="scenarios",
            value=spec,
        )
    return day
