"""The worker: the loop's clock in production (``flywheel worker``, docs/continuous-training.md).

Each tick, on the data clock (the wall clock here; a replay passes the simulated day):

1. a pipeline run killed while running (a worker restarted mid-retrain) resumes;
2. the monitor judges the champion's windows of the prediction log that ended since the last
   tick (and refreshes recent ones as labels arrive);
3. while a rollout is deciding, nothing more: no retrain on top of a challenger in flight;
4. the triggers decide (schedule, drift, performance, new labels; cooldown and budget), the
   decision going to the audit ledger;
5. when one fires, the retraining pipeline runs and starts the configured rollout, which the
   server's rollout agent promotes or rolls back; when none fires, a trigger that fired
   earlier but whose run never started (a `flywheel triggers check` by hand, a worker killed
   between deciding and running) runs instead (:func:`~flywheel.pipelines.triggers.owed`).

Each tick writes a heartbeat (``<home>/worker/heartbeat.json``): ``flywheel worker
--healthcheck`` reads it for a container's health check. A failing step is logged and
recorded in the tick's result; the worker goes on to the next tick.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flywheel.errors import FlywheelError, PipelineBusy
from flywheel.workspace import Workspace

__all__ = ["Tick", "healthy", "heartbeat_path", "loop", "tick"]

log = logging.getLogger("flywheel.pipelines.worker")


@dataclass
class Tick:
    """What one tick saw and did."""

    at: float  # the data clock
    windows: int = 0  # monitor windows judged
    alarms: int = 0  # of which alarmed
    rollout: str | None = None  # the active rollout that held triggers back
    decision: dict[str, Any] | None = None  # TriggerDecision.to_dict()
    retrain: dict[str, Any] | None = None  # {"run", "status", "version"} or {"status": "failed"}
    errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from flywheel.pipelines.triggers import iso

        return asdict(self) | {"at_iso": iso(self.at)}


def tick(
    ws: Workspace,
    *,
    now: float | None = None,
    before_retrain: Callable[[], None] | None = None,
    notify: bool = True,
) -> Tick:
    """One turn of the loop at ``now`` (default: the wall clock). ``before_retrain`` runs
    just before a fired retrain (the replay advances its source there); ``notify``: post
    the monitor's alarms to its webhook."""
    from flywheel.monitoring import monitor
    from flywheel.pipelines import retrain, triggers
    from flywheel.registry._client import alias_version
    from flywheel.rollout.actions import store_of

    now = time.time() if now is None else float(now)
    out = Tick(at=now)
    name = ws.settings.registry.model_name

    killed = retrain.latest_unfinished(ws)
    if killed is not None and killed.status == "running":
        with _step(out, "retrain"):
            try:
                run = retrain.run_retrain(ws, run_id=killed.id)
            except PipelineBusy:  # not killed: another process is running it now
                out.retrain = {"run": killed.id, "status": "busy"}
                return out
            out.retrain = {"run": run.id, "status": run.status, "version": run.version}

    with _step(out, "monitor"):
        champion = alias_version(ws.client, name, "champion")
        if champion is not None:
            results = monitor.run(ws, f"{name}/{champion}", now=now, notify=notify)
            out.windows = len(results)
            out.alarms = sum(1 for r in results if r.alarm)

    trigger = None  # the one to retrain on: fired now, or owed (decision["owed"] names it)
    with _step(out, "triggers"):
        active = store_of(ws).active(name)
        if active is not None:
            out.rollout = active.id
            return out
        decision = triggers.check(ws, now=now)
        out.decision = decision.to_dict()
        # a decision recorded earlier whose retrain never started (`triggers check` by
        # hand, or a worker killed between the two): run it now
        trigger = decision.triggers[0] if decision.fire else decision.owed
    if out.decision is None or trigger is None:
        return out

    errors = len(out.errors)
    if before_retrain is not None:
        with _step(out, "before retrain"):
            before_retrain()
        if len(out.errors) > errors:  # the source did not advance: no retrain on stale data
            return out
    with _step(out, "retrain"):
        try:
            run = retrain.run_retrain(ws, trigger=trigger.to_dict())
        except PipelineBusy as exc:  # a retrain started elsewhere (a CronJob, by hand)
            out.retrain = {"status": "busy", "holder": exc.details.get("holder")}
            return out
        out.retrain = {"run": run.id, "status": run.status, "version": run.version}
    if len(out.errors) > errors:  # the new retrain failed (a resumed run may be recorded)
        out.retrain = {"status": "failed", "error": out.errors[-1]}
    return out


class _step:
    """Time a step into ``tick.seconds``; a FlywheelError is logged and recorded, not raised."""

    def __init__(self, out: Tick, name: str) -> None:
        self.out, self.name = out, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        took = time.perf_counter() - self.started
        self.out.seconds[self.name] = self.out.seconds.get(self.name, 0.0) + took
        if isinstance(exc, FlywheelError):
            message = f"{self.name}: {str(exc).splitlines()[0]}"
            log.warning("worker tick: %s", message)
            self.out.errors.append(message)
            return True
        return False


# --------------------------------------------------------------------------- the loop


def heartbeat_path(ws: Workspace) -> Path:
    return ws.settings.home / "worker" / "heartbeat.json"


MAX_TICK_S = 6 * 3600.0  # a tick (a retrain with a search included) longer than this: hung
BEAT_S = 30.0  # the heartbeat's period, during a tick and between ticks


class _Heart:
    """Writes the heartbeat every BEAT_S from a thread, so a long tick (a retrain) keeps
    the worker healthy; ``busy_since`` lets the health check tell a hung tick."""

    def __init__(self, ws: Workspace, every: float) -> None:
        self.path, self.every = heartbeat_path(ws), every
        self.busy_since: float | None = None
        self.last: Tick | None = None
        self.lock = threading.Lock()
        self.quit = threading.Event()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.beat()
        self.thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.quit.wait(BEAT_S):
            self.beat()

    def beat(self) -> None:
        body: dict[str, Any] = {"at": time.time(), "every": self.every, "pid": os.getpid(),
                                "busy_since": self.busy_since}  # fmt: skip
        if self.last is not None:
            body["tick"] = self.last.to_dict()
        with self.lock:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(body, default=str))
            tmp.replace(self.path)

    def stop(self) -> None:
        self.quit.set()
        self.thread.join(timeout=5)


def healthy(ws: Workspace, *, now: float | None = None) -> tuple[bool, str]:
    """Is a worker alive on this home: a heartbeat newer than three ticks (and a minute),
    and no tick running for longer than MAX_TICK_S."""
    path = heartbeat_path(ws)
    try:
        beat = json.loads(path.read_text())
    except (OSError, ValueError):
        return False, f"no heartbeat at {path}"
    now = time.time() if now is None else now
    age = now - float(beat["at"])
    limit = 3 * float(beat["every"]) + 60.0
    if age > limit:
        return False, f"the last heartbeat is {age:.0f} s old (limit {limit:.0f} s)"
    busy = beat.get("busy_since")
    if busy is not None and now - float(busy) > MAX_TICK_S:
        return False, f"a tick has run for {now - float(busy):.0f} s (limit {MAX_TICK_S:.0f} s)"
    return True, f"heartbeat {age:.0f} s ago (pid {beat['pid']})"


def loop(
    ws: Workspace,
    every: float,
    *,
    once: bool = False,
    stop: threading.Event | None = None,
    on_tick: Callable[[Tick], None] | None = None,
) -> None:
    """Tick now, then every ``every`` seconds until ``stop`` is set (a tick in progress
    finishes first) or after one tick with ``once``. A thread writes the heartbeat every
    BEAT_S throughout."""
    stop = stop or threading.Event()
    heart = _Heart(ws, every)
    try:
        while not stop.is_set():
            started = time.monotonic()
            heart.busy_since = time.time()
            result = tick(ws)
            heart.busy_since, heart.last = None, result
            heart.beat()
            if on_tick is not None:
                on_tick(result)
            if once:
                return
            stop.wait(max(0.0, every - (time.monotonic() - started)))
    finally:
        heart.stop()
