"""What people (CLI, admin API) and the controller do to a rollout: one code path, audited.

Every function takes a :class:`~flywheel.workspace.Workspace` and works on the state in the
registry's database (:class:`RolloutStore`), so ``flywheel rollout pause`` in the serving
folder and ``POST /admin/rollout/pause`` do the same thing, and every replica follows
within ``rollout.poll_s``. Each transition is a compare-and-set, then an audit entry whose
``reason`` holds the human reason and the evidence (JSON) behind it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flywheel.errors import DataError, NotFound, RegistryError, UsageError
from flywheel.rollout.plan import RolloutPlan
from flywheel.rollout.store import RolloutState, RolloutStore
from flywheel.tracking import TAG

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = [
    "abort",
    "audit",
    "finish_promotion",
    "pause",
    "promote",
    "resume",
    "roll_back",
    "start",
    "store_of",
    "switch",
]

log = logging.getLogger("flywheel.rollout")


def store_of(ws: Workspace) -> RolloutStore:
    """The workspace's rollout store (in the registry's audit database), built once."""
    store = ws.__dict__.get("_rollout_store")
    if store is None:
        store = ws.__dict__["_rollout_store"] = RolloutStore(ws.settings.registry.audit_url or "")
    return store


def audit(
    ws: Workspace,
    action: str,
    state: RolloutState,
    reason: str,
    evidence: dict[str, Any] | None = None,
    *,
    who: str | None = None,
) -> None:
    """One ledger entry: ``reason``, then the rollout's id and the evidence as JSON."""
    detail = {
        "rollout": state.id,
        "strategy": state.strategy,
        "step": state.step,
        "weight": state.weight,
    }
    if evidence:
        detail["evidence"] = evidence
    ws.audit.append(
        who=who or ws.settings.user,
        action=action,
        model=state.model,
        from_version=state.champion,
        to_version=state.challenger,
        reason=f"{reason}\n{json.dumps(detail, sort_keys=True, default=str)}",
    )


def _reason(reason: str | None, command: str) -> str:
    """The reason, stripped; a missing or blank one is the caller's mistake (UsageError:
    exit 2, as a missing ``--reason``), not a refusal of the registry."""
    if not reason or not reason.strip():
        raise UsageError(
            f"reason: a reason is required to {command} a rollout (every rollout change is "
            "audited); got an empty one.",
            field="reason",
            command=command,
        )
    return reason.strip()


def _active(ws: Workspace, model: str | None) -> RolloutState:
    name = model or ws.settings.registry.model_name
    state = store_of(ws).active(name)
    if state is None:
        raise NotFound(
            f"{name} has no active rollout. Start one with `flywheel rollout start "
            "--challenger VERSION --strategy canary` (see `flywheel rollout status`).",
            model=name,
        )
    return state


def _not_promoting(state: RolloutState, command: str) -> None:
    """A rollout whose alias is being moved is not aborted or switched under it."""
    if state.status == "promoting":
        raise RegistryError(
            f"Rollout {state.id} is promoting v{state.challenger} now: it cannot {command}. "
            "Wait for it (`flywheel rollout status`), then `flywheel rollback` if need be.",
            rollout=state.id,
        )


def _cas(ws: Workspace, state: RolloutState, **changes: Any) -> RolloutState:
    """Compare-and-set ``changes``; when a server only refreshed the evidence meanwhile (it
    does every few seconds), apply them to the fresh state instead of failing."""
    store = store_of(ws)
    for _ in range(5):
        new = store.transition(state, **changes)
        if new is not None:
            return new
        fresh = store.get(state.id)
        same = fresh is not None and all(
            getattr(fresh, k) == getattr(state, k) for k in ("status", "step", "weight")
        )
        if not same:
            break
        assert fresh is not None
        state = fresh
    raise RegistryError(
        f"Rollout {state.id} changed while this command ran (another user or replica); "
        "run `flywheel rollout status` and try again.",
        rollout=state.id,
    )


# ------------------------------------------------------------------ start
_CLASS_METRICS = ("accuracy", "recall", "precision")


def fit_task(
    plan: RolloutPlan, task: str | None, classes: Callable[[], int] = lambda: 0
) -> RolloutPlan:
    """The plan's label metrics for the challenger's task (its ``flywheel.task`` tag). A
    regressor's default is ``abs_error``: ``accuracy``, the default, compares a number with
    its label for equality, so it read 0 against 0 and a worse regressor was promoted. A
    metric that cannot apply, set in the plan, is refused (DataError, exit 4): a class
    metric for a regressor, ``abs_error`` for a classifier, and ``recall`` or ``precision``
    for a classifier of more than two classes (``classes()``, asked only then: they count
    rows of the positive class, so the metric would wait for ever and no step could pass)."""
    if task not in ("regression", "classification"):
        return plan  # not recorded (an older registration): as the plan says
    regression = task == "regression"
    g = plan.guardrails
    for field, metric, chosen in (
        ("guardrails.metric", g.metric, "metric" in g.model_fields_set),
        ("metric", plan.metric, "metric" in plan.model_fields_set and plan.strategy == "ab"),
    ):
        fits = metric not in _CLASS_METRICS if regression else metric != "abs_error"
        if not fits and (chosen or not regression):  # a classifier's abs_error is chosen
            kind, use = ("a regressor", "abs_error") if regression else ("a classifier", "accuracy")
            raise DataError(
                f"{field}: {metric} does not apply to v{plan.challenger}, {kind} "
                f"(flywheel.task {task}); use {use}"
                + (" or none." if field.startswith("guardrails") else "."),
                field=field,
                rule="task",
            )
        if chosen and metric in ("recall", "precision") and (n := classes()) > 2:
            raise DataError(
                f"{field}: {metric} counts rows of the positive class, which only a binary "
                f"classifier has; v{plan.challenger} has {n} classes. Use accuracy (or none).",
                field=field,
                rule="task",
            )
    if not regression:
        return plan
    if g.metric in _CLASS_METRICS:  # the defaults, for a regressor
        plan = plan.model_copy(update={"guardrails": g.model_copy(update={"metric": "abs_error"})})
    if plan.metric in _CLASS_METRICS:
        plan = plan.model_copy(update={"metric": "abs_error"})
    return plan


def _version_files(ws: Workspace, name: str, version: str) -> Any:
    """A version's files (inputs, classes) from ``<home>/models``, the cache the servers
    load from: a copy already there is read without MLflow, a local artifact store is
    copied in, anything else downloaded once (the servers then find it there)."""
    from flywheel.serving.sources import RegistrySource

    return RegistrySource(ws, name).fetch(version)


def _sticky_warning(
    ws: Workspace, name: str, feature: str, versions: tuple[str, str]
) -> str | None:
    """What to tell the user when a ``feature:NAME`` key is an input of neither the
    challenger nor the champion (None when it is one): only ``/invocations`` requests,
    which drop fields the model does not take, can carry such a field (docs/rollouts.md),
    so on every other route requests are routed by their request id, not stickily; a typo
    looks the same. A warning, not a refusal, for that documented use. Reads each
    version's inputs from its files (the cache the servers load from), the champion's only
    when needed."""
    inputs: list[str] = []
    for version in versions:
        inputs += [s.name for s in _version_files(ws, name, version).feature_specs]
        if feature in inputs:
            return None
    return (
        f"sticky: feature {feature!r} is not an input of v{versions[0]} or v{versions[1]} "
        f"(inputs: {', '.join(sorted(set(inputs)))}). Only /invocations requests, which drop "
        "fields the model does not take, can carry it: on every other route a request is "
        "routed by its request id, not stickily. A typo? `flywheel rollout abort`, then "
        "start again."
    )


def start(ws: Workspace, plan: RolloutPlan, *, reason: str | None = None) -> RolloutState:
    """Validate ``plan`` against the registry and store it as the model's active rollout."""
    from flywheel.registry._client import alias_version, get_version, mlflow_errors
    from flywheel.registry.aliases import CHAMPION

    name = plan.model or ws.settings.registry.model_name
    if name != ws.settings.registry.model_name:
        raise DataError(  # a bad plan (exit 4), naming the field
            f"model: the plan's model {name!r} is not this workspace's registered model "
            f"{ws.settings.registry.model_name!r} (registry.model_name); drop `model` from "
            "the plan or name that one.",
            field="model",
            rule="registered",
        )
    with mlflow_errors(f"start a rollout of {name}", ws):
        client = ws.client
        version = get_version(client, name, plan.challenger)
        champion = alias_version(client, name, CHAMPION)
    plan = fit_task(
        plan,
        (version.tags or {}).get(TAG["task"]),
        lambda: len(_version_files(ws, name, plan.challenger).classes or []),
    )
    if plan.champion is not None and plan.champion != champion:
        # the champion arm is the version the servers serve as champion: a plan naming
        # another would be judged against a version nobody answers with
        raise RegistryError(
            f"The plan's champion v{plan.champion} is not {name}'s champion "
            f"({'none' if champion is None else 'v' + champion}): a rollout runs against "
            "the version serving now. Drop `champion` from the plan, or promote it first.",
            field="champion",
        )
    if champion is None:
        raise RegistryError(
            f"{name} has no champion to roll out against: promote a first version with "
            "`flywheel promote VERSION --reason ...`.",
            model=name,
        )
    if champion == plan.challenger:
        raise RegistryError(
            f"v{plan.challenger} is already the champion of {name}: nothing to roll out.",
            field="challenger",
        )
    warnings = []
    if plan.sticky.startswith("feature:"):
        warning = _sticky_warning(ws, name, plan.sticky[8:], (plan.challenger, champion))
        if warning is not None:
            log.info("%s", warning)
            warnings.append(warning)
    now = time.time()
    plan = plan.model_copy(update={"model": name, "champion": champion})
    state = RolloutState(
        id="",
        model=name,
        status="running",
        strategy=plan.strategy,
        champion=champion,
        challenger=plan.challenger,
        step=0,
        weight=plan.weight_at(0),
        plan=plan.to_dict(),
        started_at=now,
        step_started_at=now,
        updated_at=now,
        revision=1,
        reason=(reason or "").strip() or f"{plan.strategy} of v{plan.challenger} started",
        evidence={"warnings": warnings} if warnings else {},  # until the first tick replaces it
        who=ws.settings.user,
    )
    state = store_of(ws).create(state)
    details: dict[str, Any] = {"plan": state.plan, **({"warnings": warnings} if warnings else {})}
    audit(ws, "rollout_start", state, state.reason, details)
    return state


# ------------------------------------------------------------------ people's actions
def pause(ws: Workspace, *, reason: str | None, model: str | None = None) -> RolloutState:
    why = _reason(reason, "pause")
    state = _active(ws, model)
    if state.status != "running":
        raise RegistryError(f"Rollout {state.id} is {state.status}, not running.", rollout=state.id)
    new = _cas(ws, state, status="paused", reason=why)
    audit(ws, "rollout_pause", new, why)
    return new


def resume(ws: Workspace, *, reason: str | None, model: str | None = None) -> RolloutState:
    why = _reason(reason, "resume")
    state = _active(ws, model)
    if state.status != "paused":
        raise RegistryError(f"Rollout {state.id} is {state.status}, not paused.", rollout=state.id)
    # the step is judged afresh: its clock restarts (its counts stay); an A/B test paused
    # undecided at max_requests gets max_requests more per arm (an always-valid test may
    # go on looking: that is what it is for)
    evidence = state.evidence
    test = evidence.get("test") or {}
    if state.strategy == "ab" and test.get("n_champion") is not None:
        n = min(int(test["n_champion"]), int(test["n_challenger"]))
        if n - int(evidence.get(AB_RESUMED_AT, 0)) >= int(state.plan.get("max_requests", 0)):
            evidence = {**evidence, AB_RESUMED_AT: n}  # paused at max_requests, not by hand
    new = _cas(
        ws, state, status="running", reason=why, step_started_at=time.time(), evidence=evidence
    )
    audit(ws, "rollout_resume", new, why)
    return new


def switch(ws: Workspace, *, reason: str | None, model: str | None = None) -> RolloutState:
    """Blue-green: send all traffic to the other version (and back when run again)."""
    why = _reason(reason, "switch")
    state = _active(ws, model)
    _not_promoting(state, "switch")
    if state.strategy != "bluegreen":
        raise RegistryError(
            f"switch is for blue-green rollouts; rollout {state.id} is {state.strategy}.",
            rollout=state.id,
        )
    weight = 0.0 if state.weight >= 100 else 100.0
    new = _cas(
        ws,
        state,
        weight=weight,
        step=1 if weight else 0,
        step_started_at=time.time(),
        status="running",
        reason=why,
    )
    to = state.challenger if weight else state.champion
    audit(ws, "rollout_switch", new, f"{why} (all traffic to v{to})")
    return new


def abort(ws: Workspace, *, reason: str | None, model: str | None = None) -> RolloutState:
    """Stop now: the champion takes all traffic again; the challenger is not promoted."""
    why = _reason(reason, "abort")
    state = _active(ws, model)
    _not_promoting(state, "abort")
    new = _cas(ws, state, status="aborted", weight=0.0, reason=why)
    audit(ws, "rollout_abort", new, why)
    return new


def promote(ws: Workspace, *, reason: str | None, model: str | None = None) -> RolloutState:
    """Promote the challenger now (through the registry: approval when configured) and
    return the outcome. The serving replicas' agents finish a promotion they see
    ``promoting`` too: whoever claims it moves the alias, and this call waits for it."""
    why = _reason(reason, "promote")
    state = _active(ws, model)
    for _ in range(3):
        if state.status == "promoting" or _awaits_approval(state):
            break
        try:
            state = _cas(
                ws,
                state,
                status="promoting",
                reason=why,
                evidence={**state.evidence, PROMOTE_BY: ws.settings.user},
            )
            break
        except RegistryError:
            # changed meanwhile: the controller may have started the automatic promotion
            # (its outcome is the one asked for), or moved a step (promote that)
            fresh = store_of(ws).get(state.id)
            if fresh is None or not (fresh.active or fresh.status == "promoted"):
                raise
            state = fresh
            if state.status == "promoted":
                return state
    else:
        raise RegistryError(
            f"Rollout {state.id} kept changing while this command ran; run `flywheel rollout "
            "status` and try again.",
            rollout=state.id,
        )
    return finish_promotion(ws, state, wait=True)


def _awaits_approval(state: RolloutState) -> bool:
    return state.status == "waiting" and state.evidence.get("approval") == "pending"


# who asked for the promotion (the registry's entries are in their name: a person, or the
# controller for an automatic one), and the claim of the process moving the alias now
PROMOTE_BY = "promote_by"
AB_RESUMED_AT = "ab_resumed_at"  # labelled rows per arm when an A/B test was last resumed
_CLAIM_AT, _CLAIM_BY = "promotion_claimed_at", "promotion_claimed_by"
_PROMOTION_KEYS = ("approval", _CLAIM_AT, _CLAIM_BY)
# A claim is released when its holder fails; one older than CLAIM_S is a crashed holder's
# and may be taken over. It is long beside what a promotion takes (registry calls, their
# retries, a 30 s busy database) and beside the clock skew of the hosts.
CLAIM_S = 600.0
WAIT_S = 60.0  # how long `rollout promote` waits for another process's promotion
_WAITS_FOR_APPROVAL = "; the promotion waits for approval"


def finish_promotion(ws: Workspace, state: RolloutState, *, wait: bool = False) -> RolloutState:
    """Move ``champion`` to the challenger of a ``promoting`` rollout; with approval
    required it waits (``waiting``) for `flywheel approve`. Several processes may call this
    at once (the CLI, every replica's agent): each first claims the promotion by a
    compare-and-set, so one moves the alias; one that finds it claimed returns the state as
    it is, or (``wait``) waits for the outcome: RegistryError after WAIT_S."""
    from flywheel.registry._client import alias_version
    from flywheel.registry.aliases import CHAMPION

    if alias_version(ws.client, state.model, CHAMPION) == state.challenger:
        return _promoted(ws, state)  # done before (by another, or approved)
    store = store_of(ws)
    deadline = time.monotonic() + WAIT_S
    while True:  # then the state says it: the claimer records its outcome there
        if state.status != "promoting":
            return state  # promoted, waiting for approval, or ended (aborted, rolled back)
        claimed = _claim(ws, state)
        if claimed is not None:
            return _move_alias(ws, claimed)
        if not wait:
            return state  # another process is moving the alias
        if time.monotonic() > deadline:
            raise RegistryError(
                f"The promotion of v{state.challenger} is still in progress in "
                f"{state.evidence.get(_CLAIM_BY, 'another process')}: see `flywheel rollout "
                "status` in a minute.",
                rollout=state.id,
            )
        time.sleep(0.1)
        fresh = store.get(state.id)
        if fresh is None:
            return state
        state = fresh


def _move_alias(ws: Workspace, state: RolloutState) -> RolloutState:
    """Holding the claim: move ``champion`` (or request approval), then record it. On a
    failure the claim is released, so a retry need not wait for it to go stale."""
    from flywheel.registry import aliases
    from flywheel.registry._client import alias_version
    from flywheel.registry.aliases import CHAMPION

    try:
        if alias_version(ws.client, state.model, CHAMPION) == state.challenger:
            return _promoted(ws, state)  # moved by a holder whose claim went stale
        outcome = aliases.promote(
            ws,
            state.challenger,
            reason=f"rollout {state.id}: {state.reason}",
            who=state.evidence.get(PROMOTE_BY),
            reuse_request=True,
        )
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: a stale claim is taken over
            store_of(ws).transition(state, evidence=_unclaimed(state.evidence))
        raise
    if outcome.pending:
        return _cas(
            ws,
            state,
            status="waiting",
            evidence={**_unclaimed(state.evidence), "approval": "pending"},
            reason=f"{state.reason}{_WAITS_FOR_APPROVAL} (`flywheel approve {state.challenger}`)",
        )
    return _promoted(ws, state)


def _claim(ws: Workspace, state: RolloutState) -> RolloutState | None:
    """This process's claim on moving the alias (a compare-and-set on the state's revision),
    or None when another holds a live one or changed the state first."""
    from flywheel.rollout import replica_id

    at = state.evidence.get(_CLAIM_AT)
    if at is not None and time.time() - float(at) < CLAIM_S:
        return None
    claim = {_CLAIM_AT: time.time(), _CLAIM_BY: replica_id()}
    return store_of(ws).transition(state, evidence={**state.evidence, **claim})


def _unclaimed(evidence: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in evidence.items() if k not in (_CLAIM_AT, _CLAIM_BY)}


def _promoted(ws: Workspace, state: RolloutState) -> RolloutState:
    if state.status == "promoted":
        return state  # recorded (and audited) already
    evidence = {k: v for k, v in state.evidence.items() if k not in _PROMOTION_KEYS}
    reason = state.reason.split(_WAITS_FOR_APPROVAL)[0]
    if state.evidence.get("approval") == "pending":
        reason += "; approved"
    try:
        new = _cas(ws, state, status="promoted", weight=100.0, evidence=evidence, reason=reason)
    except RegistryError:
        fresh = store_of(ws).get(state.id)
        if fresh is not None and fresh.status == "promoted":
            return fresh  # another process recorded (and audited) it first
        raise
    who = state.evidence.get(PROMOTE_BY)  # who asked: a person, or flywheel-rollout
    audit(ws, "rollout_promote", new, f"v{state.challenger} is the champion", evidence, who=who)
    return new


def roll_back(
    ws: Workspace, state: RolloutState, why: str, evidence: dict[str, Any]
) -> RolloutState | None:
    """A guardrail failed: all traffic to the champion at once; None if another replica
    acted first."""
    new = store_of(ws).transition(
        state, status="rolled_back", weight=0.0, reason=why, evidence=evidence
    )
    if new is not None:
        audit(ws, "rollout_rollback", new, why, evidence, who="flywheel-rollout")
        log.warning("rollout %s rolled back: %s", state.id, why)
    return new
