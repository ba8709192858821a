"""Append-only, hash-chained audit log of every registry change.

INTERFACE STUB — implemented by the registry work item.

Stored in a SQL database (SQLite by default, PostgreSQL in production) whose table refuses
UPDATE and DELETE (triggers); each entry carries the sha256 of the previous one, so
``verify()`` detects edits made behind flywheel's back. No CLI command edits it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AuditEntry", "AuditLog"]


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str  # ISO 8601 UTC
    who: str
    action: str  # "register" | "promote_requested" | "approve" | "promote" | "rollback"
    model: str
    from_version: str | None
    to_version: str | None
    reason: str
    prev_hash: str
    hash: str


class AuditLog:
    def __init__(self, url: str) -> None:
        raise NotImplementedError

    def append(
        self,
        *,
        who: str,
        action: str,
        model: str,
        from_version: str | None,
        to_version: str | None,
        reason: str,
    ) -> AuditEntry:
        raise NotImplementedError

    def entries(self, model: str | None = None) -> list[AuditEntry]:
        raise NotImplementedError

    def verify(self) -> list[str]:
        """Problems found in the hash chain (empty when intact)."""
        raise NotImplementedError
