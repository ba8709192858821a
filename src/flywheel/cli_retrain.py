"""``flywheel retrain``: the retraining pipeline now, by hand (docs/continuous-training.md).

Registered in :mod:`flywheel.cli`; imports that module's helpers lazily, like the rollout
commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from flywheel.pipelines.runner import PipelineRun

__all__ = ["retrain"]


def retrain(
    reason: Annotated[str, typer.Option(help="Why (the trigger's reason, in the ledger).")] = (
        "by hand"
    ),
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the rollout's decision (promote/roll back).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as JSON.")] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start a new run instead of resuming an unfinished one.")
    ] = False,
) -> None:
    """Retrain now: ingest → validate → train → evaluate and gate against the champion →
    register → start the configured rollout. Resumes an unfinished run (killed or failed)
    unless --fresh. Exit 5: the new data breaks the contract; 8: a gate failed."""
    from flywheel.cli import _emit_json, _progress, _workspace, console, err_console
    from flywheel.errors import GateFailed, PipelineBusy
    from flywheel.pipelines import retrain as pipeline

    ws = _workspace()
    unfinished = None if fresh else pipeline.latest_unfinished(ws)
    trigger = None if unfinished else pipeline.manual_trigger(reason)
    run_id = unfinished.id if unfinished else None
    if unfinished is not None and not as_json:
        console.print(f"resuming pipeline run {unfinished.id}")
    try:
        if as_json:
            run = pipeline.run_retrain(ws, trigger=trigger, run_id=run_id)
        else:
            with _progress() as (on_step, _):
                run = pipeline.run_retrain(ws, trigger=trigger, run_id=run_id, on_step=on_step)
    except PipelineBusy:
        raise  # nothing of this process's run was started
    except Exception:
        failed = run_id or _run_of(ws, trigger)
        if failed:
            err_console.print(f"pipeline run {failed} failed (record: {_where(ws, failed)})")
        raise
    decision = _decide(ws, run, wait, quiet=as_json)
    if as_json:
        _emit_json({**run.to_dict(), "decision": decision})
    else:
        _show(run, decision)
    if run.status == "gated":
        raise typer.Exit(GateFailed.exit_code)


def _run_of(ws: Any, trigger: dict[str, Any] | None) -> str | None:
    from flywheel.pipelines.runner import all_runs

    key = (trigger or {}).get("key")
    found = [r.id for r in all_runs(ws.settings.home) if key and r.key == key]
    return found[-1] if found else None


def _where(ws: Any, run_id: str) -> str:
    from flywheel.pipelines.runner import runs_dir

    return str(runs_dir(ws.settings.home) / f"{run_id}.json")


def _decide(ws: Any, run: PipelineRun, wait: bool, *, quiet: bool) -> str | None:
    from flywheel.cli import console, err_console
    from flywheel.pipelines.retrain import await_decision

    if not wait or not run.rollout_id:
        return None
    if not quiet:
        console.print(f"waiting for rollout {run.rollout_id}'s decision (the server decides)…")

    def warn(text: str) -> None:
        err_console.print(f"[yellow]warning[/]: {text}", highlight=False)

    return await_decision(ws, run.rollout_id, warn=warn)


def _show(run: PipelineRun, decision: str | None) -> None:
    from flywheel.cli import _table, console

    table = _table("step", "status", "attempts", "seconds", "detail")
    for name, step in run.steps.items():
        out = step.output or {}
        detail = (
            step.error
            or out.get("skipped")
            or ", ".join(
                f"{k} {out[k]}"
                for k in ("snapshot_id", "run_id", "version", "rollout_id")
                if k in out
            )
        )
        table.add_row(name, step.status, str(step.attempts), f"{step.seconds:.2f}", str(detail))
    console.print(table)
    for label, value in (
        ("pipeline run", run.id),
        ("snapshot", run.snapshot_id),
        ("MLflow run", run.run_id),
        ("version", run.version),
        ("rollout", run.rollout_id),
        ("decision", decision),
    ):
        if value is not None:
            console.print(f"{label + ':':14}{value}")
    colour = {"finished": "green", "gated": "yellow"}.get(run.status, "red")
    console.print(f"{'status:':14}[{colour}]{run.status}[/]")
    if run.error:
        console.print(f"{'':14}{run.error['step']}: {run.error['message']}", highlight=False)
