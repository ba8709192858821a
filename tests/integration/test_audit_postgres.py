"""The audit log on a real PostgreSQL: triggers, hash chain, concurrent appends."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from flywheel.registry.audit import AuditLog

pytestmark = pytest.mark.integration


def _add(audit: AuditLog, to: str) -> None:
    audit.append(
        who="alice",
        action="promote",
        model="churn",
        from_version=None,
        to_version=to,
        reason="why",
    )


def test_append_only_and_idempotent_creation(pg_url: str) -> None:
    audit = AuditLog(pg_url)
    _add(audit, "1")
    _add(AuditLog(pg_url), "2")  # second open: table, function and triggers already there
    for sql in (
        "UPDATE registry_audit SET reason = 'x'",
        "DELETE FROM registry_audit",
        "TRUNCATE registry_audit",
    ):
        with psycopg.connect(pg_url) as conn, pytest.raises(psycopg.Error, match="append-only"):
            conn.execute(sql)
    assert [e.reason for e in audit.entries()] == ["why", "why"]
    assert audit.verify() == []
    audit.dispose()


def test_verify_reports_an_edit_made_behind_the_triggers(pg_url: str) -> None:
    audit = AuditLog(pg_url)
    for version in ("1", "2", "3"):
        _add(audit, version)
    with psycopg.connect(pg_url) as conn:
        conn.execute("DROP TRIGGER registry_audit_no_update ON registry_audit")
        conn.execute("UPDATE registry_audit SET who = 'mallory' WHERE id = 3")
    problems = audit.verify()
    assert problems == ["entry 3: hash does not match its contents (edited after writing)"]
    audit.dispose()


def test_concurrent_appends_keep_the_chain_linear(pg_url: str) -> None:
    AuditLog(pg_url).dispose()

    def work(i: int) -> None:
        log = AuditLog(pg_url)
        for j in range(5):
            _add(log, f"{i}.{j}")
        log.dispose()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(work, range(4)))
    audit = AuditLog(pg_url)
    entries = audit.entries()
    assert [e.id for e in entries] == list(range(1, 21))
    assert audit.verify() == []
    audit.dispose()
