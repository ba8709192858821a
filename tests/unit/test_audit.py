"""The audit log on SQLite: append-only, hash-chained, tamper-evident, linear under concurrency."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from flywheel.errors import RegistryError
from flywheel.registry.audit import GENESIS_HASH, AuditLog


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def audit(db: Path) -> AuditLog:
    return AuditLog(f"sqlite:///{db}")


def _add(audit: AuditLog, to: str, *, action: str = "promote", model: str = "churn") -> None:
    audit.append(
        who="alice", action=action, model=model, from_version=None, to_version=to, reason="why"
    )


def test_append_chains_hashes_and_filters_by_model(audit: AuditLog) -> None:
    first = audit.append(
        who="alice",
        action="register",
        model="churn",
        from_version=None,
        to_version="1",
        reason="new",
    )
    _add(audit, "7", model="other")
    second = audit.append(
        who="bob", action="promote", model="churn", from_version=None, to_version="1", reason="ok"
    )
    assert first.id == 1 and first.prev_hash == GENESIS_HASH
    assert second.id == 3
    assert [e.id for e in audit.entries()] == [1, 2, 3]
    assert audit.entries()[1].prev_hash == audit.entries()[0].hash
    assert [e.to_version for e in audit.entries("churn")] == ["1", "1"]
    assert audit.entries("churn")[1].who == "bob"
    assert audit.verify() == []


def test_unknown_action_is_refused(audit: AuditLog) -> None:
    with pytest.raises(RegistryError, match="Unknown audit action 'delete'"):
        _add(audit, "1", action="delete")
    assert audit.entries() == []


def test_table_creation_is_idempotent(db: Path, audit: AuditLog) -> None:
    _add(audit, "1")
    again = AuditLog(f"sqlite:///{db}")
    _add(again, "2")
    assert [e.to_version for e in again.entries()] == ["1", "2"]
    assert again.verify() == []


@pytest.mark.parametrize(
    "sql", ["UPDATE registry_audit SET reason = 'x'", "DELETE FROM registry_audit"]
)
def test_update_and_delete_are_refused(db: Path, audit: AuditLog, sql: str) -> None:
    _add(audit, "1")
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute(sql)
    assert audit.entries()[0].reason == "why"


def test_verify_reports_an_edit_made_behind_the_triggers(db: Path, audit: AuditLog) -> None:
    for version in ("1", "2", "3"):
        _add(audit, version)
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER registry_audit_no_update")
    conn.execute("UPDATE registry_audit SET to_version = '9' WHERE id = 2")
    conn.commit()
    conn.close()
    problems = audit.verify()
    assert len(problems) == 1
    assert problems[0].startswith("entry 2: hash does not match")


def test_verify_reports_a_removed_entry(db: Path, audit: AuditLog) -> None:
    for version in ("1", "2", "3"):
        _add(audit, version)
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER registry_audit_no_delete")
    conn.execute("DELETE FROM registry_audit WHERE id = 2")
    conn.commit()
    conn.close()
    problems = audit.verify()
    assert any("entry 3: expected id 2" in p for p in problems)
    assert any("entry 3: prev_hash" in p for p in problems)


def test_concurrent_appends_keep_the_chain_linear(db: Path, audit: AuditLog) -> None:
    def work(i: int) -> None:
        log = AuditLog(f"sqlite:///{db}")  # separate engines, like separate processes
        for j in range(5):
            _add(log, f"{i}.{j}")
        log.dispose()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(work, range(4)))
    entries = audit.entries()
    assert [e.id for e in entries] == list(range(1, 21))
    assert len({e.prev_hash for e in entries}) == 20
    assert audit.verify() == []


def test_unreachable_database_is_a_registry_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RegistryError, match=r"registry\.audit_url"):
        AuditLog(f"sqlite:///{blocker}/audit.db")


def test_read_only_engine_sees_no_table_before_first_use(db: Path) -> None:
    assert not db.exists()
    AuditLog(f"sqlite:///{db}")
    names = sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_table_names()
    assert names == ["registry_audit"]
