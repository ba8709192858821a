"""The retraining pipeline wired for Dagster (the ``orchestrate`` extra): wiring, no logic.

One op per step of :data:`flywheel.pipelines.retrain.STEPS`, each calling
:func:`~flywheel.pipelines.retrain.execute_step` with the pipeline run's id (steps are
idempotent and cached, so Dagster's re-execution resumes); a retry policy from
``retrain.retries`` / ``retrain.retry_backoff_s`` (exponential) that retries only transient
errors; a failed gate (``gated``) or no new data (``skipped``) ends the pipeline run, what
follows is skipped and the Dagster run succeeds;
the ``retrain`` job; a schedule (``retrain.schedule``, each tick keyed ``schedule:<tick>``)
and a sensor that asks :func:`flywheel.pipelines.triggers.check` about the other triggers
(cooldown, budget, audit ledger) and keys its run by the trigger. Run it with
``dagster dev -m flywheel.pipelines.dagster_defs`` (docs/orchestration.md). flywheel never
imports this module: without the extra, the same steps run in-process.
"""

# no `from __future__ import annotations`: Dagster checks the op context's annotation object
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

try:
    import dagster as dg
    from dagster import OpExecutionContext
except ImportError as exc:  # pragma: no cover - the extra is in dev
    raise ImportError(
        "flywheel.pipelines.dagster_defs needs Dagster. Fix: pip install 'flywheel[orchestrate]' "
        "(or run the pipeline in-process, without an orchestrator)."
    ) from exc

from flywheel.config import Settings, load_settings
from flywheel.errors import GateFailed
from flywheel.pipelines import retrain, triggers
from flywheel.pipelines.runner import is_transient
from flywheel.workspace import Workspace

__all__ = ["JOB", "SENSOR", "build_definitions", "defs", "run_config"]

JOB = "retrain"
SENSOR = "retrain_triggers"
SCHEDULE = "retrain_schedule"
WS = "flywheel"  # the resource key of the workspace
T = TypeVar("T")


def run_config(trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job's run config for a run started by ``trigger`` (a Trigger's ``to_dict``)."""
    return {"ops": {"open_run": {"config": {"trigger": json.dumps(trigger or {}, default=str)}}}}


def _retry_policy(settings: Settings) -> dg.RetryPolicy:
    r = settings.retrain
    return dg.RetryPolicy(
        max_retries=r.retries, delay=r.retry_backoff_s, backoff=dg.Backoff.EXPONENTIAL
    )


def _call(context: OpExecutionContext, policy: dg.RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    """``fn()``; a transient error asks Dagster for a retry (exponential backoff), any other
    fails the op for good."""
    try:
        return fn()
    except Exception as exc:
        if not is_transient(exc):
            raise dg.Failure(f"{what} failed: {exc}", allow_retries=False) from exc
        wait = policy.calculate_delay(context.retry_number + 1)
        context.log.warning("%s: transient failure, retry in %.1fs: %s", what, wait, exc)
        raise dg.RetryRequested(policy.max_retries, seconds_to_wait=wait) from exc


def _ending(exc: BaseException | None) -> str | None:
    """The pipeline run's status when ``exc`` ends it without failing it, else None."""
    if isinstance(exc, GateFailed):
        return "gated"
    if isinstance(exc, retrain.NoNewData):
        return "skipped"
    return None


def _step_op(step: str, policy: dg.RetryPolicy) -> dg.OpDefinition:
    """An op for ``step``. A failed gate (``gated``) or no new data (``skipped``) ends the
    pipeline run without failing it: the op yields no output, so Dagster skips what follows,
    the run succeeds and carries the tag ``flywheel/status``."""

    @dg.op(name=step, required_resource_keys={WS}, retry_policy=policy,
           out=dg.Out(str, is_required=False))  # fmt: skip
    def _op(context: OpExecutionContext, run_id: str) -> Iterator[dg.Output[str]]:
        ws = context.resources.flywheel
        try:
            result = _call(context, policy, step, lambda: retrain.execute_step(ws, run_id, step))
        except dg.Failure as failure:
            status = _ending(failure.__cause__)
            if status is None:
                raise
            context.log.warning("%s: %s; the run is %s", step, failure.__cause__, status)
            context.instance.add_run_tags(context.run_id, {"flywheel/status": status})
            return
        yield dg.Output(run_id, metadata={"result": json.loads(json.dumps(result, default=str))})

    return _op


def _job(settings: Settings) -> dg.JobDefinition:
    policy = _retry_policy(settings)

    @dg.op(name="open_run", required_resource_keys={WS}, config_schema={"trigger": str},
           retry_policy=policy)  # fmt: skip
    def open_op(context: OpExecutionContext) -> str:
        trigger = json.loads(context.op_config["trigger"]) or None
        ws = context.resources.flywheel
        return str(_call(context, policy, "open_run", lambda: retrain.open_run(ws, trigger)).id)

    @dg.op(name="finish_run", required_resource_keys={WS}, retry_policy=policy)
    def finish_op(context: OpExecutionContext, run_id: str) -> str:
        ws = context.resources.flywheel
        _call(context, policy, "finish_run", lambda: retrain.finish_run(ws, run_id))
        return run_id

    steps = [_step_op(step, policy) for step in retrain.STEPS]

    @dg.job(
        name=JOB,
        executor_def=dg.in_process_executor,  # one process per run: the steps are sequential
        config=run_config(),
    )
    def retrain_job() -> None:
        run_id = open_op()
        for op in steps:
            run_id = op(run_id)
        finish_op(run_id)

    return retrain_job


def _sensor_request(
    ws: Workspace, instance: dg.DagsterInstance | None = None
) -> dg.RunRequest | dg.SkipReason:
    decision = triggers.check(ws)
    if not decision.fire or decision.run_key is None:
        owed = decision.owed  # fired earlier (by hand, say), its pipeline run never started
        if owed is not None and not _requested(instance, owed.key):
            return _request(owed)
        return dg.SkipReason(decision.suppressed or "no trigger fired")
    return _request(decision.triggers[0])


def _requested(instance: dg.DagsterInstance | None, key: str) -> bool:
    """A Dagster run for this trigger exists (queued, say: the schedule's, before its
    first op writes the pipeline run): Dagster dedups run keys per sensor or schedule,
    not across them, so the sensor must not request it again."""
    if instance is None:
        return False
    found = instance.get_runs(filters=dg.RunsFilter(tags={"flywheel/trigger_key": key}), limit=1)
    return bool(found)


def _request(trigger: triggers.Trigger) -> dg.RunRequest:
    tags = {"flywheel/trigger": trigger.kind, "flywheel/trigger_key": trigger.key}
    return dg.RunRequest(run_key=trigger.key, run_config=run_config(trigger.to_dict()), tags=tags)


def _tick(cron: str, at: datetime) -> triggers.Trigger:
    """The trigger of a schedule's tick, keyed as :mod:`triggers` keys one."""
    ts, when = at.timestamp(), triggers.iso(at.timestamp())
    evidence = {"schedule": cron, "tick": ts, "tick_iso": when}
    return triggers.Trigger("schedule", ts, f"schedule {cron!r} ticked at {when}", evidence,
                            f"schedule:{when}")  # fmt: skip


def _schedule(cron: str, job: dg.JobDefinition, settings: Settings) -> dg.ScheduleDefinition:
    @dg.schedule(
        cron,
        name=SCHEDULE,
        job=job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        # the tick is judged like every other trigger: cooldown, budget, the ledger
        with Workspace(settings) as ws:
            decision = triggers.admit(ws, _tick(cron, context.scheduled_execution_time))
        if not decision.fire:
            return dg.SkipReason(decision.suppressed or "this tick was already decided")
        return _request(decision.triggers[0])

    return schedule


def build_definitions(settings: Settings, *, sensor_interval_s: int = 30) -> dg.Definitions:
    """The job, its schedule (when ``retrain.schedule`` is set) and the triggers' sensor,
    with the workspace built from ``settings`` as the ``flywheel`` resource.

    The cron ticks are Dagster's schedule, so the sensor checks the other triggers (drift,
    prediction drift, performance, new labels): a tick never starts two runs.
    """
    job = _job(settings)
    cron = settings.retrain.schedule
    signals = settings.model_copy(
        update={"retrain": settings.retrain.model_copy(update={"schedule": None})}
    )

    @dg.sensor(
        name=SENSOR,
        job=job,
        minimum_interval_seconds=sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def sensor(context: dg.SensorEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        with Workspace(signals) as ws:
            yield _sensor_request(ws, context.instance)

    @dg.resource
    def workspace(_: dg.InitResourceContext) -> Iterator[Workspace]:
        with Workspace(settings) as ws:
            yield ws

    return dg.Definitions(
        jobs=[job],
        schedules=[_schedule(cron, job, settings)] if cron else [],
        sensors=[sensor],
        resources={WS: workspace},
    )


defs = build_definitions(load_settings())
