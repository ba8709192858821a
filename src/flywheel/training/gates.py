"""Quality gates: metric floors/ceilings, slice gaps, not worse than the champion.

INTERFACE STUB — implemented by the training work item.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.config import GateSettings
from flywheel.training.evaluate import Evaluation

__all__ = ["GateReport", "GateResult", "check_gates"]


@dataclass(frozen=True)
class GateResult:
    gate: str  # "min_metric" | "max_metric" | "max_slice_gap" | "vs_champion"
    metric: str
    passed: bool
    value: float
    threshold: float
    detail: str  # human sentence incl. by how much it failed


@dataclass
class GateReport:
    passed: bool
    results: list[GateResult]

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]


def check_gates(gates: GateSettings, evaluation: Evaluation) -> GateReport:
    raise NotImplementedError
