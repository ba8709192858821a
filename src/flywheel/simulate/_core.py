"""``simulate``: append days of the churn world to the SQL source, in one transaction.

Appending replays the (cheap, vectorised) generative process from day 0 in memory and writes
only the rows that became known in the new days, so an append equals a longer first run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from flywheel.config import Settings, mask_url, sqlalchemy_url
from flywheel.errors import ConfigError, DataError, NotFound, SourceError
from flywheel.simulate._scenarios import Scenario, parse_scenario
from flywheel.simulate._schema import OPERATIONAL_TABLES, STATE, TABLES, create_schema
from flywheel.simulate._world import GENERATOR_VERSION, WorldSpec, generate

__all__ = [
    "SimulationReport",
    "WorldInfo",
    "feature_rows",
    "simulate",
    "world_exists",
    "world_info",
]

log = logging.getLogger("flywheel.simulate")

DEFAULT_START = dt.date(2025, 1, 1)


@dataclass(frozen=True)
class SimulationReport:
    """What one ``simulate`` call did."""

    source: str  # masked URL
    seed: int
    start: dt.date  # the world's day 0
    first_day: dt.date  # first day appended by this call
    last_day: dt.date  # last simulated day of the world
    days: int
    created: bool  # True when this call created the world
    rows: dict[str, int] = field(default_factory=dict)  # rows written per table
    feature_rows: int = 0  # rows now in churn_features
    scenarios: list[str] = field(default_factory=list)  # NAME@DAY of the whole world
    seconds: float = 0.0


@dataclass(frozen=True)
class _State:
    spec: WorldSpec
    last_day: int  # -1 before the first day


def _engine(url: str, *, write: bool) -> sa.Engine:
    engine = sa.create_engine(sqlalchemy_url(url))
    if engine.dialect.name == "sqlite":
        _transactional_sqlite(engine, "BEGIN IMMEDIATE" if write else "BEGIN")
    return engine


def _transactional_sqlite(engine: sa.Engine, begin: str) -> None:
    """Let SQLAlchemy own BEGIN so DDL is inside the transaction too (pysqlite quirk).

    ``BEGIN IMMEDIATE`` takes the write lock up front, so two writers cannot both read the
    same ``sim_state`` and append the same days.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys = ON")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql(begin)


def _sqlite_file(url: str) -> Path | None:
    path = sa.make_url(url).database
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def _connect(url: str, *, write: bool) -> Iterator[sa.Connection]:
    """A connection in a transaction; database errors become :class:`SourceError`."""
    file = _sqlite_file(url) if url.startswith("sqlite") else None
    if file is not None and write:
        file.parent.mkdir(parents=True, exist_ok=True)
    engine = _engine(url, write=write)
    try:
        with engine.begin() as conn:
            yield conn
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(
            f"Simulating into {mask_url(url)!r} failed, nothing was written: "
            f"{str(exc).splitlines()[0]}. Fix: check source.url and that the database is "
            "writable, or point it at an empty database.",
            url=mask_url(url),
        ) from exc
    finally:
        engine.dispose()


def _missing_sqlite(url: str) -> bool:
    file = _sqlite_file(url) if url.startswith("sqlite") else None
    return file is not None and not file.exists()


def _source_url(settings: Settings) -> str:
    url = settings.source.url
    if url is None:  # filled by Settings; kept for the type checker
        raise ConfigError("source.url is not set. Fix: set FLYWHEEL_SOURCE__URL.", key="source.url")
    return url


def world_exists(settings: Settings) -> bool:
    """Whether the configured source already holds a simulated world."""
    url = _source_url(settings)
    if _missing_sqlite(url):
        return False
    with _connect(url, write=False) as conn:
        return sa.inspect(conn).has_table(STATE.name)


def feature_rows(settings: Settings) -> int:
    """Rows in the ``churn_features`` relation of the configured source."""
    url = _source_url(settings)
    if not world_exists(settings):
        raise NotFound(
            f"No simulated world in {mask_url(url)!r}. Fix: run `flywheel simulate` first.",
            url=mask_url(url),
        )
    with _connect(url, write=False) as conn:
        return int(conn.exec_driver_sql("SELECT COUNT(*) FROM churn_features").scalar_one())


@dataclass(frozen=True)
class WorldInfo:
    """A stored world: its spec and how far it has been simulated."""

    seed: int
    start: dt.date
    customers: int
    last_day: int  # day number of the last simulated day (-1: none yet)
    scenarios: tuple[str, ...]  # NAME@DAY

    @property
    def last_date(self) -> dt.date:
        return self.start + dt.timedelta(days=self.last_day)


def world_info(settings: Settings) -> WorldInfo:
    """The configured source's world (raises NotFound when there is none)."""
    url = _source_url(settings)
    if not world_exists(settings):
        raise NotFound(
            f"No simulated world in {mask_url(url)!r}. Fix: run `flywheel run` (or "
            "`flywheel simulate`) first.",
            url=mask_url(url),
        )
    with _connect(url, write=False) as conn:
        state = _load_state(conn, url)
    assert state is not None  # world_exists
    spec = state.spec
    return WorldInfo(
        spec.seed,
        spec.start,
        spec.customers,
        state.last_day,
        tuple(x.spec() for x in spec.scenarios),
    )


# ---------------------------------------------------------------------- state
def _load_state(conn: sa.Connection, url: str) -> _State | None:
    names = set(sa.inspect(conn).get_table_names())
    if STATE.name not in names:
        clash = sorted(names & set(TABLES))
        if clash:
            raise DataError(
                f"The source {mask_url(url)!r} already has tables {clash} but no sim_state, so "
                "it is not a simulated world. Fix: point source.url at an empty database.",
                tables=clash,
            )
        return None
    row = conn.execute(sa.select(STATE).where(STATE.c.id == 1).with_for_update()).one()
    if row.generator_version != GENERATOR_VERSION:
        raise DataError(
            f"The world in {mask_url(url)!r} was made by simulator version "
            f"{row.generator_version}, this is version {GENERATOR_VERSION}; appending would "
            "mix two processes. Fix: simulate into a fresh source.",
        )
    start = row.start_date
    start = start if isinstance(start, dt.date) else dt.date.fromisoformat(str(start))
    scenarios = tuple(parse_scenario(s, start) for s in json.loads(row.scenarios))
    spec = WorldSpec(row.seed, start, row.customers, scenarios)
    return _State(spec, row.last_day)


def _save_state(conn: sa.Connection, state: _State, created: bool) -> None:
    values = {
        "generator_version": GENERATOR_VERSION,
        "seed": state.spec.seed,
        "start_date": state.spec.start,
        "last_day": state.last_day,
        "customers": state.spec.customers,
        "scenarios": json.dumps([s.spec() for s in state.spec.scenarios]),
        "updated_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
    }
    if created:
        conn.execute(STATE.insert(), [{"id": 1, **values}])
    else:
        conn.execute(STATE.update().where(STATE.c.id == 1).values(**values))


# ---------------------------------------------------------------------- arguments
def _check_args(days: int, customers: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
        raise ConfigError(
            f"days must be a positive number of days to append, got {days!r}. "
            "Fix: pass e.g. days=365.",
            key="days",
            value=days,
        )
    if isinstance(customers, bool) or not isinstance(customers, int) or customers <= 0:
        raise ConfigError(
            f"customers must be a positive number, got {customers!r}. "
            "Fix: pass e.g. customers=5000.",
            key="customers",
            value=customers,
        )


def _new_scenarios(specs: list[str], start: dt.date) -> list[Scenario]:
    parsed = [parse_scenario(s, start) for s in specs]
    names = [s.name for s in parsed]
    for name in set(names):
        if names.count(name) > 1:
            raise ConfigError(
                f"Drift scenario {name!r} is given more than once ({specs}). "
                "Fix: give each scenario once.",
                key="scenarios",
                value=specs,
            )
    return parsed


def _merge_scenarios(
    old: tuple[Scenario, ...], new: list[Scenario], last_day: int, start: dt.date
) -> tuple[Scenario, ...]:
    merged = {s.name: s for s in old}
    for s in new:
        have = merged.get(s.name)
        if have == s:
            continue
        if have is not None:
            raise ConfigError(
                f"Drift scenario {s.name!r} is already scheduled for day {have.day} "
                f"({have.date(start)}); got {s.spec()!r}. Fix: leave it out or use a new source.",
                key="scenarios",
                value=s.spec(),
            )
        if s.day <= last_day:
            raise ConfigError(
                f"Drift scenario {s.spec()!r} starts on {s.date(start)}, within the days already "
                f"simulated (through day {last_day}, {start + dt.timedelta(days=last_day)}); "
                "it would rewrite history. Fix: start it after the last simulated day.",
                key="scenarios",
                value=s.spec(),
            )
        merged[s.name] = s
    return tuple(sorted(merged.values()))


def _plan(
    state: _State | None, seed: int, customers: int, start: dt.date | None, specs: list[str]
) -> _State:
    """The world to run: a new one, or the stored one with any new scenarios."""
    if state is None:
        day0 = start or DEFAULT_START
        scenarios = tuple(sorted(_new_scenarios(specs, day0)))
        return _State(WorldSpec(seed, day0, customers, scenarios), -1)
    spec = state.spec
    if start is not None and start != spec.start:
        raise ConfigError(
            f"The source already holds a world that starts on {spec.start}; got start={start}. "
            "Fix: leave start out to append, or use an empty source.",
            key="start",
            value=str(start),
        )
    if seed != spec.seed:
        raise ConfigError(
            f"The source already holds a world simulated with seed {spec.seed}; settings.seed is "
            f"{seed}. Fix: set FLYWHEEL_SEED={spec.seed} to append, or use an empty source.",
            key="seed",
            value=seed,
        )
    if customers != spec.customers:
        log.info(
            "appending to a world of %s customers; customers=%s applies to new worlds only",
            spec.customers,
            customers,
        )
    scenarios = _merge_scenarios(
        spec.scenarios, _new_scenarios(specs, spec.start), state.last_day, spec.start
    )
    return _State(WorldSpec(spec.seed, spec.start, spec.customers, scenarios), state.last_day)


# ---------------------------------------------------------------------- writing
INSERT_BATCH = 20_000  # rows per executemany


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain Python rows (None for missing) that every DB-API driver accepts."""
    columns: dict[str, list[Any]] = {}
    for name in frame.columns:
        values = frame[name].tolist()
        if frame[name].dtype.kind in "fO":
            values = [None if _missing(v) else v for v in values]
        columns[name] = values
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _write(
    conn: sa.Connection, tables: dict[str, pd.DataFrame], after: int, through: int
) -> dict[str, int]:
    written: dict[str, int] = {}
    for table in OPERATIONAL_TABLES:
        frame = tables[table.name]
        if frame.empty:
            written[table.name] = 0
            continue
        known = frame["_known"]
        new = frame[(known > after) & (known <= through)].drop(columns="_known")
        rows = _records(new) if len(new) else []
        for i in range(0, len(rows), INSERT_BATCH):  # a Ctrl-C lands between batches: one
            conn.execute(table.insert(), rows[i : i + INSERT_BATCH])  # executemany is one C call
        written[table.name] = len(new)
    return written


def simulate(
    settings: Settings,
    *,
    days: int = 365,
    customers: int = 5000,
    start: dt.date | None = None,
    scenarios: list[str] | None = None,
) -> SimulationReport:
    """Append ``days`` days of the seeded churn world to ``settings.source.url``.

    A new world starts on ``start`` (default 2025-01-01) with ``customers`` customers and
    ``settings.seed``; an existing one continues from its last day (``customers`` is then
    ignored). ``scenarios`` are drift specs ``NAME@DAY`` or ``NAME@YYYY-MM-DD``. Everything
    is written in one transaction: on failure the source is left as it was.
    """
    _check_args(days, customers)
    url, began = _source_url(settings), time.perf_counter()
    with _connect(url, write=True) as conn:
        stored = _load_state(conn, url)
        plan = _plan(stored, settings.seed, customers, start, list(scenarios or []))
        through = plan.last_day + days
        tables = generate(plan.spec, through)
        if stored is None:
            create_schema(conn)
        rows = _write(conn, tables, plan.last_day, through)
        _save_state(conn, _State(plan.spec, through), created=stored is None)
        count = int(conn.exec_driver_sql("SELECT COUNT(*) FROM churn_features").scalar_one())
    report = _report(url, plan, through, stored is None, rows, count, time.perf_counter() - began)
    log.info(
        "simulated %s to %s into %s: %s rows, %s feature rows in %.1fs",
        report.first_day,
        report.last_day,
        report.source,
        sum(rows.values()),
        count,
        report.seconds,
    )
    return report


def _report(
    url: str,
    plan: _State,
    through: int,
    created: bool,
    rows: dict[str, int],
    count: int,
    seconds: float,
) -> SimulationReport:
    day0 = plan.spec.start
    return SimulationReport(
        source=mask_url(url),
        seed=plan.spec.seed,
        start=day0,
        first_day=day0 + dt.timedelta(days=plan.last_day + 1),
        last_day=day0 + dt.timedelta(days=through),
        days=through - plan.last_day,
        created=created,
        rows=rows,
        feature_rows=count,
        scenarios=[s.spec() for s in plan.spec.scenarios],
        seconds=round(seconds, 3),
    )
