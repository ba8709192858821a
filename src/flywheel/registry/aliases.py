"""Aliases: ``champion`` moves by promote / approve / rollback, each change audited; the
listing of versions and of the audit history.

With ``registry.require_approval``, promote records a request and a second person approves
it (four eyes); the pending state is derived from the audit log, never from an MLflow tag.
Champion history lives in the audit log (append-only, hash-chained): rollback pops the
champion stack that promote/approve/rollback entries describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flywheel.errors import RegistryError, UsageError
from flywheel.registry._client import (
    alias_version,
    aliases_of,
    get_version,
    mlflow_errors,
    versions_of,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from flywheel.registry.audit import AuditEntry
    from flywheel.workspace import Workspace

__all__ = [
    "APPROVAL_TAG",
    "CHALLENGER",
    "CHAMPION",
    "ModelVersionInfo",
    "PromotionOutcome",
    "approve",
    "champion_stack",
    "history",
    "list_versions",
    "promote",
    "rollback",
]

CHALLENGER = "challenger"
CHAMPION = "champion"
APPROVAL_TAG = "flywheel.approval"


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    aliases: list[str]
    tags: dict[str, str]
    created_at: str


@dataclass
class PromotionOutcome:
    entry: AuditEntry
    pending: bool  # True when the promotion waits for approval
    extra: dict[str, Any] = field(default_factory=dict)


def _require_reason(reason: str, command: str) -> str:
    if not reason or not reason.strip():
        raise UsageError(  # the call's fault, not the registry's (exit 2, as rollouts)
            f"A reason is required to {command} (got {reason!r}): every registry change is "
            f'audited. Pass --reason "why".',
            command=command,
            field="reason",
        )
    return reason.strip()


def _settle_approval_tag(client: MlflowClient, name: str, version: str, action: str) -> None:
    """Mirror of the audit state for the MLflow UI: approved, or no longer pending."""
    if action == "approve":
        client.set_model_version_tag(name, version, APPROVAL_TAG, "approved")
    elif client.get_model_version(name, version).tags.get(APPROVAL_TAG) == "pending":
        client.delete_model_version_tag(name, version, APPROVAL_TAG)


def _move_champion(
    ws: Workspace, version: str, action: str, reason: str, who: str | None = None
) -> AuditEntry:
    client, name = ws.client, ws.settings.registry.model_name
    current = alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    try:  # every call after the move is undone with it: no unaudited change
        _settle_approval_tag(client, name, version, action)
        return ws.audit.append(
            who=who or ws.settings.user,
            action=action,
            model=name,
            from_version=current,
            to_version=version,
            reason=reason,
        )
    except BaseException:  # no unaudited change: put the alias back
        if current is None:
            client.delete_registered_model_alias(name, CHAMPION)
        else:
            client.set_registered_model_alias(name, CHAMPION, current)
        raise


def _pending_request(entries: list[AuditEntry], version: str) -> AuditEntry | None:
    """The open promotion request for ``version``: requested, not yet approved or superseded."""
    pending: AuditEntry | None = None
    for entry in entries:
        if entry.action == "promote_requested" and entry.to_version == version:
            pending = entry
        elif entry.action in ("approve", "promote") and entry.to_version == version:
            pending = None
    return pending


def promote(
    ws: Workspace,
    version: str,
    *,
    reason: str,
    who: str | None = None,
    reuse_request: bool = False,
) -> PromotionOutcome:
    """Move ``champion`` to ``version``, or record a request when approval is required.
    ``who``: in whose name (default the settings' user; a rollout passes who asked for it,
    the controller for an automatic promotion). ``reuse_request``: an open request for
    ``version`` is the pending outcome (a rollout's), not an error (a person's second ask)."""
    reason = _require_reason(reason, "promote")
    name, version = ws.settings.registry.model_name, str(version)
    with mlflow_errors(f"promote {name} v{version}", ws):
        client = ws.client
        get_version(client, name, version)
        current = alias_version(client, name, CHAMPION)
        if current == version:
            raise RegistryError(
                f"{name} v{version} is already the champion; nothing to promote. "
                "Pick another version (see `flywheel registry list`).",
                model=name,
                version=version,
            )
        if not ws.settings.registry.require_approval:
            return PromotionOutcome(
                _move_champion(ws, version, "promote", reason, who), pending=False
            )
        return _request(ws, version, current, reason, who or ws.settings.user, reuse_request)


def _request(
    ws: Workspace, version: str, current: str | None, reason: str, who: str, reuse: bool = False
) -> PromotionOutcome:
    name = ws.settings.registry.model_name
    if (open_request := _pending_request(ws.audit.entries(name), version)) is not None:
        if reuse:
            return PromotionOutcome(
                open_request, pending=True, extra={"requested_by": open_request.who}
            )
        raise RegistryError(
            f"Promotion of {name} v{version} is already waiting for approval (requested by "
            f"{open_request.who} at {open_request.at}). Another user runs `flywheel approve "
            f"{version} --reason ...`.",
            model=name,
            version=version,
        )
    entry = ws.audit.append(
        who=who,
        action="promote_requested",
        model=name,
        from_version=current,
        to_version=version,
        reason=reason,
    )
    ws.client.set_model_version_tag(name, version, APPROVAL_TAG, "pending")
    return PromotionOutcome(entry, pending=True, extra={"requested_by": who})


def approve(ws: Workspace, version: str, *, reason: str) -> PromotionOutcome:
    """Approve a pending promotion (by someone other than the requester) and move champion."""
    reason = _require_reason(reason, "approve")
    name, version = ws.settings.registry.model_name, str(version)
    user = ws.settings.user
    with mlflow_errors(f"approve {name} v{version}", ws):
        get_version(ws.client, name, version)
        request = _pending_request(ws.audit.entries(name), version)
        if request is None:
            raise RegistryError(
                f"No pending promotion of {name} v{version} to approve. Request one with "
                f"`flywheel promote {version} --reason ...` (with registry.require_approval on).",
                model=name,
                version=version,
            )
        if request.who == user:
            raise RegistryError(
                f"{user!r} requested the promotion of {name} v{version} and cannot also "
                "approve it (four-eyes rule). Ask another user to run `flywheel approve`.",
                model=name,
                version=version,
                requester=request.who,
            )
        entry = _move_champion(ws, version, "approve", reason)
    return PromotionOutcome(entry, pending=False, extra={"requested_by": request.who})


def champion_stack(entries: list[AuditEntry]) -> list[str | None]:
    """Previous champions, oldest first, as promote/approve push and rollback pops."""
    stack: list[str | None] = []
    for entry in entries:
        if entry.action in ("promote", "approve"):
            stack.append(entry.from_version)
        elif entry.action == "rollback" and stack:
            stack.pop()
    return stack


def rollback(ws: Workspace, *, reason: str, who: str | None = None) -> PromotionOutcome:
    """Return ``champion`` to the champion before it (repeatable, like popping a stack).
    ``who``: in whose name (default the settings' user; self-healing passes its own)."""
    reason = _require_reason(reason, "rollback")
    name = ws.settings.registry.model_name
    with mlflow_errors(f"roll back {name}", ws):
        client = ws.client
        stack = champion_stack(ws.audit.entries(name))
        if not stack or stack[-1] is None:
            current = alias_version(client, name, CHAMPION)
            raise RegistryError(
                f"Nothing to roll back to for {name}: the champion (v{current}) has no earlier "
                "champion in the audit log. Promote a version explicitly instead.",
                model=name,
                champion=current,
            )
        target = str(stack[-1])
        get_version(client, name, target)
        entry = _move_champion(ws, target, "rollback", reason, who)
    return PromotionOutcome(entry, pending=False)


def list_versions(ws: Workspace) -> list[ModelVersionInfo]:
    """Every version of the registered model, oldest first (empty if there is none)."""
    name = ws.settings.registry.model_name
    with mlflow_errors(f"list versions of {name!r}", ws):
        client = ws.client
        versions = versions_of(client, name)
        aliases = aliases_of(client, name)
    return [
        ModelVersionInfo(
            name=name,
            version=str(v.version),
            run_id=v.run_id,
            aliases=sorted(a for a, ver in aliases.items() if ver == str(v.version)),
            tags=dict(v.tags or {}),
            created_at=datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(),
        )
        for v in versions
    ]


def history(ws: Workspace) -> list[AuditEntry]:
    """The audit entries of the registered model, oldest first."""
    return ws.audit.entries(ws.settings.registry.model_name)
