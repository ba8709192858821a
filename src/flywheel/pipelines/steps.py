"""The loop's steps wired together: train → evaluate → gates → register, and the full run.

Each step is a plain typed function from another package; this module only sequences them,
so the CLI, an orchestrator or a test can call the same thing with one
:class:`~flywheel.workspace.Workspace`. The snapshot is resolved once and carried as its
manifest; evaluation and registration use what training holds in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel.errors import GateFailed
from flywheel.training.evaluate import Evaluation
from flywheel.training.gates import GateReport
from flywheel.training.params import TrainParams
from flywheel.training.train import Progress, TrainResult
from flywheel.workspace import Workspace

if TYPE_CHECKING:
    from flywheel.data.snapshots import Manifest

__all__ = [
    "LoopResult",
    "TrainOutcome",
    "apply_gates",
    "run_loop",
    "train_evaluate_register",
    "write_card",
]

log = logging.getLogger("flywheel.pipelines")

StepHook = Callable[[str], None]


def _noop(_: str) -> None:
    return None


@dataclass
class TrainOutcome:
    result: TrainResult
    evaluation: Evaluation
    gates: GateReport
    version: str | None = None  # registered version, when registered
    card_path: Path | None = None
    promoted: bool = False


@dataclass
class LoopResult:
    snapshot_id: str
    snapshot_created: bool
    outcome: TrainOutcome
    simulated_days: int = 0
    notes: list[str] = field(default_factory=list)


def train_evaluate_register(
    ws: Workspace,
    snapshot: str | Manifest,
    params: TrainParams,
    *,
    trials: int | None = None,
    storage: str | None = None,
    register: bool = True,
    on_step: StepHook = _noop,
    progress: Progress | None = None,
) -> TrainOutcome:
    """Train on a snapshot (an id, or the manifest already resolved), score against the
    champion, apply gates, register if they pass.

    ``progress`` is a ``(phase, done, total)`` callback for the training's folds and trials.
    Raises :class:`GateFailed` (after recording the gate report on the run) when a gate
    fails; the registry is then unchanged.
    """
    from flywheel.registry.artifacts import load_champion
    from flywheel.registry.register import register as register_version
    from flywheel.training.evaluate import evaluate
    from flywheel.training.train import train

    on_step("train")
    result = train(ws, snapshot, params, trials=trials, storage=storage, progress=progress)
    on_step("evaluate")
    champion = load_champion(ws)
    evaluation = evaluate(ws, result, champion=champion)
    report = apply_gates(ws, result.run_id, evaluation)
    outcome = TrainOutcome(result=result, evaluation=evaluation, gates=report)
    if register:
        on_step("register")
        registered = register_version(ws, result, evaluation=evaluation, gate_report=report)
        outcome.version = registered.version
        outcome.card_path = write_card(
            ws, registered.name, registered.version, registered.card_markdown
        )
    return outcome


def apply_gates(ws: Workspace, run_id: str, evaluation: Evaluation) -> GateReport:
    """Check the gates on an evaluation and record them on the run; raises
    :class:`GateFailed` (the registry unchanged) when one fails."""
    from flywheel.training.gates import check_gates, record_gates

    report = check_gates(ws.settings.gates, evaluation)
    record_gates(ws, run_id, report)
    if not report.passed:
        raise GateFailed(
            "Quality gates failed; the registry is unchanged: "
            + "; ".join(f.detail for f in report.failures),
            run_id=run_id,
            failures=[f.detail for f in report.failures],
        )
    return report


def write_card(ws: Workspace, name: str, version: str, markdown: str) -> Path:
    """A local copy of the model card for people (the canonical one is in MLflow)."""
    path = ws.settings.home / "cards" / f"{name}-v{version}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown, encoding="utf-8")
    return path


def run_loop(
    ws: Workspace,
    *,
    days: int | None = None,
    customers: int = 5000,
    params: TrainParams | None = None,
    trials: int | None = None,
    promote_first: bool = True,
    on_step: StepHook = _noop,
    progress: Progress | None = None,
) -> LoopResult:
    """simulate → ingest → validate → train → evaluate → gates → register (→ first champion).

    The world is simulated when the source is empty (365 days) or when ``days`` is given
    (that many more days are appended). Ingest is incremental from the last snapshot.
    """
    from flywheel.data.snapshots import ingest
    from flywheel.registry.aliases import promote
    from flywheel.registry.artifacts import load_champion
    from flywheel.simulate import simulate, world_exists

    settings = ws.settings
    simulated = 0
    if days is not None or not world_exists(settings):
        on_step("simulate")
        n = days if days is not None else 365
        simulate(settings, days=n, customers=customers)
        simulated = n
    on_step("ingest")
    ingested = ingest(settings)
    on_step("validate")  # ingest validated the snapshot against its contract before commit
    outcome = train_evaluate_register(
        ws,
        ingested.manifest,  # carried: not resolved again
        params or TrainParams(),
        trials=trials,
        on_step=on_step,
        progress=progress,
    )
    result = LoopResult(ingested.manifest.id, ingested.created, outcome, simulated)
    if outcome.version and promote_first and load_champion(ws) is None:
        on_step("promote")
        done = promote(ws, outcome.version, reason="bootstrap: first model to pass the gates")
        outcome.promoted = not done.pending
        result.notes.append(
            "promotion is waiting for approval"
            if done.pending
            else f"version {outcome.version} is the first champion"
        )
    return result
