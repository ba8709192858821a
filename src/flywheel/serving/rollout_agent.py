"""Each server's rollout agent: follow the stored rollout, report counts, judge, self-heal.

Every ``rollout.poll_s`` (1 s), on the server's event loop (blocking work in threads):

1. read the model's active rollout from the registry's database; apply it to the predictor
   (load and warm the challenger, swap the router in), or end it (a promoted challenger,
   already warm, serves at once; otherwise the champion takes all traffic again);
2. write this replica's per-arm counters for the current step to the store;
3. run :func:`flywheel.rollout.controller.tick` (compare-and-set: when several replicas
   tick, one acts), and apply what it decided without waiting for the next poll;
4. self-healing: a champion promoted within ``rollout.heal_watch_s`` whose error rate (or
   p99, when ``rollout.heal_max_p99_ms`` is set) breaks its limit over a
   ``rollout.heal_window_s`` window, beyond chance (:func:`heal_breach`), is rolled back to
   the previous champion, once (one replica claims it), audited as ``self_heal`` with its
   evidence.

The admin routes call :meth:`RolloutAgent.sync` after an action, so the replica that took
it routes the new way at once; the others follow within ``poll_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flywheel.rollout import replica_id
from flywheel.rollout.counters import SLOW_SHARE, percentile, slow_beyond_chance

# flywheel.rollout.store.TERMINAL, not imported here: that module imports SQLAlchemy
TERMINAL = ("promoted", "rolled_back", "aborted")

if TYPE_CHECKING:
    from flywheel.config import RolloutSettings
    from flywheel.rollout.counters import ArmCounts
    from flywheel.rollout.store import RolloutState
    from flywheel.serving.predictor import Predictor
    from flywheel.workspace import Workspace

__all__ = ["RolloutAgent", "heal_breach"]

SELF_HEAL = "flywheel-self-heal"  # the ledger's name for what a server rolls back by itself

log = logging.getLogger("flywheel.serving")


HEAL_ERROR_TAU = 0.05  # the error test's mixing scale (shares): effects of ~5 points


def heal_breach(counts: ArmCounts, settings: RolloutSettings) -> str | None:
    """What a window's counts of the serving champion breach, or None. A limit counts as
    passed only when an always-valid test at ``heal_alpha`` says so (``stats.above_share``):
    on 100 requests an error rate of 6% (or p99 above the limit: two slow answers) is
    within chance of a champion that meets its limits, and a rollback of a good champion
    costs more than a window's wait. Gross breaches (a promotion that fails every request)
    still trip on the first window."""
    from flywheel.rollout.stats import above_share

    window = f"in {settings.heal_window_s:g} s"
    limit = settings.heal_max_error_rate
    failing, p = above_share(
        counts.requests, counts.errors, limit, alpha=settings.heal_alpha, tau=HEAL_ERROR_TAU
    )
    if failing:
        return (
            f"error rate {counts.errors / counts.requests:.2%} > {limit:.2%} ({counts.errors} of "
            f"{counts.requests} requests {window}; always-valid p = {p:.2g})"
        )
    slowest = settings.heal_max_p99_ms
    p99 = percentile(counts.latency_hist, 0.99)
    if slowest is None or p99 is None or p99 <= slowest:
        return None
    too_slow, slow, answered, p = slow_beyond_chance(
        counts.latency_hist, slowest, settings.heal_alpha
    )
    if too_slow:
        return (
            f"p99 {p99:.1f} ms > {slowest:g} ms ({slow} of {answered} answers slower "
            f"{window}; always-valid p = {p:.2g} against {SLOW_SHARE:.0%})"
        )
    return None


class RolloutAgent:
    """Follows and drives the rollouts of ``predictor``'s registry-served model."""

    def __init__(self, predictor: Predictor, ws: Workspace, name: str | None = None) -> None:
        self.predictor = predictor
        self.ws = ws
        self.name = name or predictor.default_model  # the served name
        self.model = ws.settings.registry.model_name  # the registered name (the store's key)
        self.settings = ws.settings.rollout
        self.replica = replica_id()
        self.state: RolloutState | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._window_start = time.monotonic()
        self._learned: str | None = None  # the version learn_replaced asked the registry for
        # Prometheus counters (this replica): rollouts seen ending, by final status; self-heals
        self.ended: dict[str, int] = dict.fromkeys(TERMINAL, 0)
        self.self_heals = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="flywheel-rollout-agent")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                if self.predictor.ready:
                    await self.sync()
                    await self._heal()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep following: the store may be back next time
                log.exception("rollout agent: sync failed")
            await asyncio.sleep(self.settings.poll_s)

    # ------------------------------------------------------------------ follow + drive
    async def sync(self, *, judge: bool = True) -> RolloutState | None:
        """Apply the stored state, write counts, judge once (see the module docstring)."""
        from flywheel.rollout import controller
        from flywheel.rollout.actions import store_of

        async with self._lock:
            store = store_of(self.ws)
            state = await asyncio.to_thread(store.active, self.model)
            await self._apply(state)
            if state is None:
                return None
            live = self.predictor.rollout(self.name)
            if live is not None and live.id == state.id:
                arms = {arm: c.snapshot() for arm, c in live.counters.items()}
                await asyncio.to_thread(store.put_counts, state.id, self.replica, live.step, arms)
            if judge and state.status in ("running", "promoting", "waiting"):
                new = await asyncio.to_thread(controller.tick, self.ws, state)
                if new.revision != state.revision:
                    state = new if new.active else None
                    await self._apply(state, ended=new)
            return state

    async def _apply(self, state: RolloutState | None, ended: RolloutState | None = None) -> None:
        live = self.predictor.rollout(self.name)
        self.state = state
        if state is not None:
            await self.predictor.apply_rollout(self.name, state)
            return
        if live is None:
            return
        from flywheel.rollout.actions import store_of

        last = ended or await asyncio.to_thread(store_of(self.ws).get, live.id)
        if last is not None and last.status in self.ended:
            self.ended[last.status] += 1
        promoted = last.challenger if last is not None and last.status == "promoted" else None
        self.predictor.end_rollout(self.name, promoted=promoted)
        if promoted is None:
            return
        with contextlib.suppress(Exception):  # follow the alias now, not at the next poll
            await self.predictor.reload(self.name)

    # ------------------------------------------------------------------ self-healing
    async def _heal(self) -> None:
        """Judge the served champion once per ``heal_window_s`` window (see the module
        docstring); the window's counts start afresh after each judgement."""
        if not self.settings.heal or self.predictor.rollout(self.name) is not None:
            return
        if time.monotonic() - self._window_start < self.settings.heal_window_s:
            return
        slot = self.predictor._slot(self.name)
        learned = await self.learn_replaced()  # a champion loaded after start, or a retry
        counts = slot.health.snapshot()
        slot.health.reset()
        self._window_start = time.monotonic()
        if learned:
            return  # the window counted client errors as the champion's: judge the next
        model = slot.model
        if model is None or counts.requests < self.settings.heal_min_requests:
            return
        rate = counts.errors / counts.requests
        p99 = percentile(counts.latency_hist, 0.99)
        breach = heal_breach(counts, self.settings)
        if breach is None:
            return
        evidence = {
            "version": model.version,
            "requests": counts.requests,
            "errors": counts.errors,
            "error_rate": rate,
            "p99_ms": p99,
        }
        healed = await asyncio.to_thread(self._roll_back, model.version, breach, evidence)
        if healed:
            self.self_heals += 1
            await self.predictor.reload(self.name)

    def _replaced(self, version: str) -> tuple[str, int] | None:
        """The champion ``version`` replaced and the ledger id of the promotion, when it was
        promoted within ``heal_watch_s`` (what self-healing would roll back to); else None."""
        from flywheel.registry import aliases

        entries = self.ws.audit.entries(self.model)
        moves = [
            e
            for e in entries
            if e.action in ("promote", "approve", "rollback") and e.to_version == version
        ]
        if not moves or moves[-1].action == "rollback":
            return None  # not promoted (the first champion, or itself a rollback target)
        promoted_at = datetime.fromisoformat(moves[-1].at).timestamp()
        if time.time() - promoted_at > self.settings.heal_watch_s:
            return None
        stack = aliases.champion_stack(entries)
        if not stack or stack[-1] is None:
            return None
        return stack[-1], moves[-1].id

    async def learn_replaced(self) -> bool:
        """After a start, self-healing does not know the schema of the version the served
        champion replaced (this process never served it), so a client's input errors would
        count against a new champion. Read it from the registry when the champion is still
        watched (promoted within ``heal_watch_s``): the previous version's files, not its
        model. True when it learned the schema now; a failed read is tried again at the next
        window."""
        slot = self.predictor._slot(self.name)
        model = slot.model
        if not self.settings.heal or model is None or slot.replaced_schema is not None:
            return False
        if self._learned == model.version:
            return False  # asked once per served version
        from flywheel.schema import InputSchema

        def read() -> InputSchema | None:
            replaced = self._replaced(model.version)
            if replaced is None:
                return None
            return InputSchema(tuple(slot.source.fetch(replaced[0]).feature_specs))

        try:
            schema = await asyncio.to_thread(read)
        except Exception:  # the champion serves regardless; its input errors count meanwhile
            log.warning("the schema of the champion's predecessor is unknown", exc_info=True)
            return False
        self._learned = model.version
        if schema is None or slot.model is not model or slot.replaced_schema is not None:
            return False
        slot.replaced_schema = schema
        return True

    def _roll_back(self, version: str, breach: str, evidence: dict[str, Any]) -> bool:
        """Roll ``version`` back when it was promoted within ``heal_watch_s`` and nobody else
        did it first; True when done here."""
        import json

        from flywheel.registry import aliases
        from flywheel.rollout.actions import store_of

        replaced = self._replaced(version)
        if replaced is None:
            return False
        previous, promotion = replaced
        # once per promotion (one replica claims it): the same version promoted again later
        # is watched afresh
        if not store_of(self.ws).claim_heal(self.model, f"{version}#{promotion}", self.replica):
            return False
        why = f"self-heal: champion v{version} {breach}; back to v{previous}"
        outcome = aliases.rollback(self.ws, reason=why, who=SELF_HEAL)
        self.ws.audit.append(
            who=SELF_HEAL,
            action="self_heal",
            model=self.model,
            from_version=version,
            to_version=outcome.entry.to_version,
            reason=f"{why}\n{json.dumps(evidence, sort_keys=True)}",
        )
        log.warning("%s", why)
        return True

    # ------------------------------------------------------------------ Prometheus
    def collect(self) -> Iterator[Any]:
        """``flywheel_rollout_*`` gauges: the challenger's weight, requests and errors per
        arm of the current step, and the rollout's status; counters of the rollouts this
        replica saw end (``flywheel_rollout_ended_total{model,status}``, every status from 0
        so ``increase()`` sees the first one) and of its self-heals
        (``flywheel_self_heals_total{model}``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        weight = GaugeMetricFamily(
            "flywheel_rollout_weight_percent",
            "Share of requests each version answers during a rollout (percent).",
            labels=["model", "version", "role"],
        )
        requests = GaugeMetricFamily(
            "flywheel_rollout_step_requests",
            "Requests per arm in the rollout's current step (this replica).",
            labels=["model", "version", "role", "outcome"],
        )
        active = GaugeMetricFamily(
            "flywheel_rollout_active", "1 while a rollout is active.", labels=["model", "status"]
        )
        skipped = GaugeMetricFamily(
            "flywheel_rollout_shadow_skipped",
            "Requests a shadow challenger did not score because its queue was full.",
            labels=["model", "version"],
        )
        live = self.predictor.rollout(self.name)
        state = self.state
        if live is not None and state is not None:
            w = live.router.weight
            champion = self.predictor.model(self.name).version
            weight.add_metric([self.name, champion, "champion"], 100.0 - w)
            role = "shadow" if live.shadow else "challenger"
            weight.add_metric([self.name, live.challenger.version, role], w)
            versions = {"champion": champion, "challenger": live.challenger.version}
            for arm, counter in live.counters.items():
                c = counter.snapshot()
                requests.add_metric([self.name, versions[arm], arm, "ok"], c.requests - c.errors)
                requests.add_metric([self.name, versions[arm], arm, "error"], c.errors)
            active.add_metric([self.name, state.status], 1.0)
            if live.shadow:
                skipped.add_metric([self.name, live.challenger.version], live.shadow_skipped)
        yield weight
        yield skipped
        yield requests
        yield active
        ended = CounterMetricFamily(
            "flywheel_rollout_ended",
            "Rollouts this replica saw end, by final status (promoted, rolled_back, aborted).",
            labels=["model", "status"],
        )
        for status, n in self.ended.items():
            ended.add_metric([self.name, status], float(n))
        yield ended
        heals = CounterMetricFamily(
            "flywheel_self_heals",
            "Champions this replica rolled back by itself (self-healing).",
            labels=["model"],
        )
        heals.add_metric([self.name], float(self.self_heals))
        yield heals
