"""The seeded churn world: customers, plans, usage, tickets, churn events, drift scenarios.

``simulate(settings, days=N)`` writes (or appends N days to) an operational schema in the
configured SQL source and a ``churn_features`` view that ingest extracts from. Same seed,
same rows, however the days are chunked. See ``docs/simulator.md``.
"""

from __future__ import annotations

from flywheel.simulate._core import (
    SimulationReport,
    WorldInfo,
    feature_rows,
    simulate,
    world_exists,
    world_info,
)
from flywheel.simulate._scenarios import SCENARIOS, SOURCE_ONLY, Scenario, parse_scenario
from flywheel.simulate._schema import FEATURE_COLUMNS

__all__ = [
    "FEATURE_COLUMNS",
    "SCENARIOS",
    "SOURCE_ONLY",
    "Scenario",
    "SimulationReport",
    "WorldInfo",
    "feature_rows",
    "parse_scenario",
    "simulate",
    "world_exists",
    "world_info",
]
