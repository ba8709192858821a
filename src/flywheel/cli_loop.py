"""Continuous training's commands: ``flywheel replay`` (a year of the churn world in minutes,
the loop running on its clock) and ``flywheel triggers check`` (docs/continuous-training.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["replay", "triggers_app", "worker"]

triggers_app = typer.Typer(
    help="When to retrain: schedule, drift, performance, new labels, by hand.",
    no_args_is_help=True,
)


@triggers_app.command("check")
def triggers_check(
    at: Annotated[
        str | None,
        typer.Option(help="The data clock's time (ISO 8601, UTC); default: now."),
    ] = None,
    manual: Annotated[
        str | None, typer.Option("--manual", help="Ask for a retrain by hand, with this reason.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Decide only: nothing goes to the ledger.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Gather the signals (the monitor's windows, labels, the schedule) and decide whether to
    retrain; the decision and its evidence go to the audit ledger. Exit 0 either way: read
    `fire` (or the text) to act."""
    import datetime as dt

    from flywheel.cli import _emit_json, _workspace, console
    from flywheel.errors import UsageError
    from flywheel.pipelines import triggers

    now = None
    if at is not None:
        try:
            parsed = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"--at {at!r} is not an ISO 8601 time.", option="at") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        now = parsed.timestamp()
    ws = _workspace()
    decision = triggers.check(ws, now=now, manual=manual, record=not dry_run)
    if as_json:
        _emit_json(decision.to_dict())
        return
    verdict = "[green]retrain[/]" if decision.fire else "no retrain"
    if decision.suppressed:
        verdict += f" (held back: {decision.suppressed})"
    console.print(f"{triggers.iso(decision.at)}: {verdict}")
    for t in decision.triggers:
        console.print(f"  {t.kind}: {t.reason}")
    owed = triggers.owed(ws) if decision.fire and not dry_run else None
    if owed is not None and owed.key == decision.run_key:  # (an older --at: a run overtook it)
        console.print(
            "  the retrain is owed: `flywheel worker` runs it at its next tick "
            "(or `flywheel retrain` now)"
        )


def worker(
    every: Annotated[
        str | None,
        typer.Option(help="Time between ticks (e.g. 15m, 1h; default: retrain.check_every)."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One tick, then exit.")] = False,
    healthcheck: Annotated[
        bool,
        typer.Option(
            "--healthcheck",
            help="Exit 0 when a worker on this home ticked recently, 1 otherwise (for a "
            "container's health check); runs nothing.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each tick as a JSON line.")] = (
        False
    ),
) -> None:
    """Run the loop on the wall clock: each tick, the monitor judges the champion's new
    windows, the triggers decide and, when one fires, the retraining pipeline runs and starts
    the rollout (a run killed mid-way resumes first). SIGTERM or Ctrl-C: exit after the
    current tick."""
    import json
    import signal
    import sys
    import threading

    from flywheel.cli import _workspace, console, err_console
    from flywheel.pipelines import triggers
    from flywheel.pipelines import worker as loop

    ws = _workspace()
    if healthcheck:
        ok, why = loop.healthy(ws)
        (console if ok else err_console).print(why)
        raise typer.Exit(0 if ok else 1)
    from flywheel.errors import UsageError
    from flywheel.rollout.plan import parse_duration

    try:
        seconds = parse_duration(every or ws.settings.retrain.check_every, "--every")
    except ValueError as exc:
        raise UsageError(str(exc), option="every") from None
    if seconds <= 0:
        raise UsageError("--every must be longer than 0 s.", option="every")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():  # a second signal: stop now (an unfinished pipeline run resumes)
            raise KeyboardInterrupt
        err_console.print("stopping after the current tick (again to stop now)")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def show(t: loop.Tick) -> None:
        if as_json:
            sys.stdout.write(json.dumps(t.to_dict(), default=str) + "\n")
            sys.stdout.flush()
            return
        parts = [f"{t.windows} window(s), {t.alarms} alarm(s)"]
        if t.rollout:
            parts.append(f"rollout {t.rollout} deciding")
        elif t.decision is not None:
            d = t.decision
            parts.append("retrain" if d["fire"] else f"no retrain{_held(d)}")
            if not d["fire"] and d.get("owed"):
                parts.append(f"retrain owed since {d['owed']}")
        if t.retrain:
            parts.append(f"pipeline {t.retrain.get('run', '')} {t.retrain['status']}")
        console.print(f"{triggers.iso(t.at)}: " + "; ".join(parts), highlight=False)
        for e in t.errors:
            err_console.print(f"  error in {e}", highlight=False)

    if not once and not as_json:
        console.print(f"worker on {ws.settings.home}: a tick every {seconds:g} s")
    loop.loop(ws, seconds, once=once, stop=stop, on_tick=show)


def _held(decision: dict[str, object]) -> str:
    return f" (held back: {decision['suppressed']})" if decision.get("suppressed") else ""


# written out, not read from flywheel.simulate: the CLI's help must not import the simulator
# (tests/unit/test_simulate.py checks it names every scenario)
SCENARIO_NAMES = (
    "Names: price_rise, new_contract, ticket_churn, lost_churn_events, cancellation_tickets "
    "(source only); docs/simulator.md."
)


def replay(
    days: Annotated[int, typer.Option(help="Days to replay after the world's last day.")] = 365,
    drift: Annotated[
        list[str] | None,
        typer.Option(
            help="Drift scenario NAME@DAY (DAY counted from the replay's first day) or "
            "NAME@YYYY-MM-DD; repeatable, e.g. ticket_churn@60. " + SCENARIO_NAMES,
        ),
    ] = None,
    label_delay: Annotated[
        int,
        typer.Option(help="Days after a billing period closes before its outcomes come back."),
    ] = 7,
    url: Annotated[
        str | None,
        typer.Option(
            help="Send the traffic to this running server (its admin token from "
            "FLYWHEEL_ADMIN_TOKEN); default: start `flywheel serve` on this home."
        ),
    ] = None,
    protocol: Annotated[str, typer.Option(help="rest or mlflow.")] = "rest",
    requests_per_day: Annotated[
        int, typer.Option(help="Prediction requests a simulated day.", min=1)
    ] = 2000,
    monitor_every: Annotated[
        int,
        typer.Option(
            help="Run the monitor and the triggers every N days (its windows stay daily).", min=1
        ),
    ] = 7,
    out: Annotated[
        Path | None, typer.Option(help="The timeline's path (default <home>/replay/timeline.html).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Advance the churn world day by day: traffic to the server, outcomes back as feedback
    after the label delay, and the monitor, the triggers, retraining and rollouts on the
    simulated clock. Ends with a timeline (HTML)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flywheel.cli import _emit_json, _workspace, console
    from flywheel.pipelines.replay import ReplayOptions
    from flywheel.pipelines.replay import replay as run_replay

    ws = _workspace()
    options = ReplayOptions(
        days=days,
        drift=list(drift or []),
        label_delay=label_delay,
        url=url,
        protocol=protocol,
        requests_per_day=requests_per_day,
        monitor_every=monitor_every,
        out=out,
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=as_json,
    ) as bar:
        task = bar.add_task("replay", total=days)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total)

        result = run_replay(ws, options, progress=progress)
    if as_json:
        _emit_json(result.summary())
        return
    s = result.summary()
    console.print(
        f"replayed {s['days']} days ({s['first_day']} to {s['last_day']}): "
        f"{s['requests']:,} requests, {s['errors']} errors; {s['retrains']} retrain(s), "
        f"{s['promotions']} promotion(s), {s['rollbacks']} rollback(s); champion "
        f"v{s['champion_before']} -> v{s['champion_after']}"
    )
    for e in result.events:
        if e["action"] in (
            "retrain_triggered",
            "pipeline_failed",
            "rollout_start",
            "rollout_promote",
            "rollout_rollback",
            "self_heal",
            "promote",
            "rollback",
        ):
            console.print(f"  {e['day']}  {e['action']:<18} {e['reason'][:90]}")
    console.rule("where to look")
    # soft wrap: a path is never broken across lines (scripts and people copy it)
    console.print(f"timeline:     {result.timeline}", soft_wrap=True)
    console.print(f"model cards:  {ws.settings.home / 'cards'}", soft_wrap=True)
    console.print("lineage:      flywheel lineage <version>")
