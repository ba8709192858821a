"""Rollout roles in the prediction log on the real PostgreSQL on this machine: the migration
of a log written before roles (under the advisory lock), COPY and group-commit rows with
roles, the read API's ``role``, and per-arm outcomes (SQLite: tests/unit/test_predlog_roles.py)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from flywheel.predlog import PredictionLog, open_prediction_log
from tests.unit import predlog_roles_helpers as roles

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_BEFORE_ROLES = (
    """CREATE TABLE prediction_log (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, request_id text NOT NULL,
        ts double precision NOT NULL, model text NOT NULL, version text NOT NULL,
        protocol text NOT NULL, inputs json NOT NULL, outputs json NOT NULL,
        latency_ms double precision NOT NULL, client_id text)""",
    "CREATE UNIQUE INDEX prediction_log_request_id ON prediction_log (request_id)",
    "CREATE INDEX prediction_log_ts ON prediction_log (ts)",
    """CREATE INDEX prediction_log_client ON prediction_log (client_id)
        WHERE client_id IS NOT NULL""",
    """CREATE TABLE prediction_feedback (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, request_id text NOT NULL,
        label json NOT NULL, received_at double precision NOT NULL)""",
    """CREATE TABLE prediction_inputs (model text NOT NULL, version text NOT NULL,
        names json NOT NULL, numeric json, classes json, PRIMARY KEY (model, version))""",
    """CREATE VIEW prediction_log_named AS SELECT p.id, p.request_id, p.ts, p.model,
        p.version, p.protocol, p.inputs, p.outputs, p.latency_ms, p.client_id
        FROM prediction_log p""",
    """INSERT INTO prediction_log (request_id, ts, model, version, protocol, inputs, outputs,
        latency_ms) VALUES ('a', 1, 'churn', '1', 'rest', '[[1.0]]', '{"labels": ["yes"]}', 0.5),
        ('b', 1, 'churn', '1', 'rest', '[[1.0]]', '{"labels": ["yes"]}', 0.5)""",
    "INSERT INTO prediction_feedback (request_id, label, received_at) VALUES ('a', '1', 5)",
)


def _log_before_roles(url: str) -> None:
    with psycopg.connect(url) as conn:
        for ddl in _BEFORE_ROLES:
            conn.execute(ddl)


def _indexes(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'prediction_log'"
            ).fetchall()
        )


def test_a_log_before_roles_is_migrated_and_keys_rows_by_request_and_role(pg_url: str) -> None:
    _log_before_roles(pg_url)

    def recreate_old_key() -> None:
        with psycopg.connect(pg_url) as conn:
            conn.execute(
                "CREATE UNIQUE INDEX prediction_log_request_id ON prediction_log (request_id)"
            )

    roles.check_migrated_log_keeps_rows_and_takes_roles(
        pg_url, lambda: _indexes(pg_url), recreate_old_key
    )
    with psycopg.connect(pg_url) as conn:
        view = conn.execute("SELECT * FROM prediction_log_named ORDER BY id LIMIT 3")
        names = [c.name for c in view.description or ()]
        assert names[-2:] == ["client_id", "role"]  # new view columns only at the end
        assert [(r[1], r[-1]) for r in view.fetchall()] == [
            ("a", ""),
            ("b", ""),
            ("q", "champion"),
        ]
        column = conn.execute(
            "SELECT data_type, is_nullable, column_default FROM information_schema.columns "
            "WHERE table_name = 'prediction_log' AND column_name = 'role'"
        ).fetchall()
    assert column == [("text", "NO", "''::text")]
    PredictionLog(pg_url).close()  # opening again changes nothing
    assert set(_indexes(pg_url)) == {
        "prediction_log_pkey",
        "prediction_log_request_role",
        "prediction_log_ts",
        "prediction_log_client",
    }


def test_processes_opening_an_old_log_together_migrate_it_once(pg_url: str) -> None:
    _log_before_roles(pg_url)
    roles.check_concurrent_opens_migrate_once(pg_url, lambda: _indexes(pg_url))


def test_group_commits_carry_roles_and_stay_idempotent(pg_url: str) -> None:
    """The commit durability's one-statement INSERT (unnest) stores the role, '' for None."""
    plog = open_prediction_log(pg_url, durability="commit", flush_interval_s=30)
    rows = [
        roles.row("g", 1.0, ["yes"], role="champion"),
        roles.row("g", 1.1, ["no"], version="2", role="shadow"),
        roles.row("h", 1.2, ["no"]),
        roles.row("h", 1.3, ["no"]),  # the same key: ignored
    ]

    async def main() -> list[bool]:
        return list(await asyncio.gather(*(plog.commit_row(r) for r in rows)))

    try:
        assert asyncio.run(main()) == [True] * 4
        with psycopg.connect(pg_url) as conn:
            stored = conn.execute("SELECT request_id, role FROM prediction_log ORDER BY id")
            assert stored.fetchall() == [("g", "champion"), ("g", "shadow"), ("h", "")]
    finally:
        plog.close()
    roles.check_retried_batch_is_idempotent(pg_url)


def test_the_read_api_gives_and_filters_roles(pg_url: str) -> None:
    roles.check_reads_carry_roles(pg_url)


def test_arm_outcomes_of_a_classifier_with_string_classes(pg_url: str) -> None:
    with open_prediction_log(pg_url, flush_interval_s=0.01) as plog:
        roles.fill_classifier_arms(plog)
    roles.check_classifier_arms(pg_url)


def test_arm_outcomes_of_classifiers_with_integer_and_boolean_classes(pg_url: str) -> None:
    with open_prediction_log(pg_url, flush_interval_s=0.01) as plog:
        roles.fill_number_class_arms(plog)
    roles.check_number_class_arms(pg_url)


def test_arm_outcomes_of_regressors(pg_url: str) -> None:
    with open_prediction_log(pg_url, flush_interval_s=0.01) as plog:
        roles.fill_regressor_arms(plog)
    roles.check_regressor_arms(pg_url)
