"""The Actions view: approve, promote, roll back, and start, pause, resume, abort, promote or
switch a rollout. Each calls the function the CLI calls (:mod:`flywheel.registry.aliases`,
:mod:`flywheel.rollout.actions`), so each needs a reason and is audited the same way; the
acting user is the console process's ``settings.user`` (``FLYWHEEL_USER``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = ["REGISTRY_ACTIONS", "ROLLOUT_ACTIONS", "registry_action", "rollout_action"]

REGISTRY_ACTIONS = ("promote", "approve", "rollback")
ROLLOUT_ACTIONS = ("start", "pause", "resume", "abort", "promote", "switch")


def _reason(reason: str | None, what: str) -> str:
    from flywheel.errors import UsageError

    if not reason or not reason.strip():
        raise UsageError(f"Give a reason to {what}: every change is audited.", field="reason")
    return reason.strip()


def registry_action(
    ws: Workspace, action: str, *, version: str | None, reason: str | None
) -> dict[str, Any]:
    """``flywheel promote|approve VERSION`` or ``flywheel rollback``, with ``--reason``."""
    from flywheel.errors import UsageError
    from flywheel.registry import aliases

    why = _reason(reason, action)
    if action == "rollback":
        outcome = aliases.rollback(ws, reason=why)
    elif action in ("promote", "approve"):
        if not version:
            raise UsageError(f"Name the version to {action}.", field="version")
        outcome = getattr(aliases, action)(ws, str(version), reason=why)
    else:
        raise UsageError(f"Unknown action {action!r}; one of {REGISTRY_ACTIONS}.", field="action")
    return {"entry": outcome.entry.to_dict(), "pending": outcome.pending, **outcome.extra}


def rollout_action(
    ws: Workspace,
    action: str,
    *,
    reason: str | None,
    challenger: str | None = None,
    strategy: str | None = None,
) -> dict[str, Any]:
    """``flywheel rollout start|pause|resume|abort|promote|switch --reason ...``."""
    from flywheel.errors import UsageError
    from flywheel.rollout import actions

    why = _reason(reason, f"{action} a rollout")
    if action == "start":
        from flywheel.rollout.plan import load_plan

        if not challenger:
            raise UsageError("Name the challenger version to roll out.", field="challenger")
        plan = load_plan({"challenger": str(challenger), "strategy": strategy or "canary"})
        state = actions.start(ws, plan, reason=why)
    elif action in ROLLOUT_ACTIONS:
        state = getattr(actions, action)(ws, reason=why)
    else:
        raise UsageError(f"Unknown action {action!r}; one of {ROLLOUT_ACTIONS}.", field="action")
    return {"rollout": state.to_dict()}
