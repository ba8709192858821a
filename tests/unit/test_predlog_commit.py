"""The ``commit`` durability: an answer is released only once its row is committed, rows
committed in groups (one transaction per event-loop turn's worth of answers)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from flywheel.predlog import PredictionLog, PredictionLogError, open_prediction_log
from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import ModelFiles, StaticSource
from flywheel.serving.types import PredictionSink, PredictRequest
from tests.unit.serving_models import build, rows

pytestmark = pytest.mark.timeout(60)


def row(rid: str, model: Any = "churn") -> tuple[Any, ...]:
    return (rid, 1.0, model, "1", "rest", '{"x": [1.0]}', '{"labels": [1]}', 0.5, None, None)


def on_disk(path: Path) -> set[str]:
    """Request ids committed, seen from another connection (no flush, no writer help)."""
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM prediction_log")}


def test_a_commit_row_resolves_once_its_row_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    # A long flush interval: only the commit rows' own wake-up can write them.
    plog = open_prediction_log(f"sqlite:///{path}", durability="commit", flush_interval_s=30)
    assert isinstance(plog, PredictionSink) and plog.durable

    async def main() -> list[bool]:
        futures = [plog.commit_row(row(f"r{i}")) for i in range(50)]  # one loop turn
        assert not any(f.done() for f in futures)  # nothing resolves before the commit
        return list(await asyncio.gather(*futures))

    started = time.monotonic()
    assert asyncio.run(main()) == [True] * 50
    assert time.monotonic() - started < 5  # woken at once, not after flush_interval_s
    assert on_disk(path) == {f"r{i}" for i in range(50)}
    assert plog.stats()["commits"] == 1  # the 50 answers of one turn: ONE group commit
    plog.close()


def test_a_row_the_database_refuses_resolves_false(tmp_path: Path) -> None:
    plog = open_prediction_log(f"sqlite:///{tmp_path}/p.db", durability="commit")

    async def main() -> list[bool]:
        return list(
            await asyncio.gather(
                *(plog.commit_row(r) for r in [row("a"), row("b", None), row("c")])
            )
        )

    assert asyncio.run(main()) == [True, False, True]  # model NULL: refused, alone
    assert plog.stats()["rejected"] == 1
    plog.close()
    assert on_disk(tmp_path / "p.db") == {"a", "c"}


def test_rows_the_database_will_not_take_in_time_resolve_false(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    plog = open_prediction_log(
        f"sqlite:///{path}",
        durability="commit",
        commit_timeout_s=0.2,
        connect_timeout_s=0.05,
        max_backoff_s=0.05,
    )
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the database

    async def main() -> list[bool]:
        return list(await asyncio.gather(*(plog.commit_row(row(f"r{i}")) for i in range(3))))

    try:
        started = time.monotonic()
        assert asyncio.run(main()) == [False] * 3  # answered 503, not hung
        assert time.monotonic() - started < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    plog.flush()  # they stay queued and are written once the database is back
    assert on_disk(path) == {"r0", "r1", "r2"}
    plog.close()


def test_a_closed_log_refuses_commit_rows(tmp_path: Path) -> None:
    plog = open_prediction_log(f"sqlite:///{tmp_path}/p.db", durability="commit")
    plog.close()

    async def main() -> bool:
        return await plog.commit_row(row("late"))

    assert asyncio.run(main()) is False
    assert plog.dropped() == 1


def test_the_commit_durability_is_checked() -> None:
    from flywheel.errors import ConfigError

    with pytest.raises(ConfigError, match="durability"):
        PredictionLog("sqlite:///x.db", durability="eventually")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the predictor


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return build(tmp_path_factory.mktemp("models"), family="logreg")


def predictor(files: ModelFiles, sink: Any) -> Predictor:
    source = StaticSource({"1": files}, {"champion": "1"})
    config = ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0)
    return Predictor(config, {"churn": source}, sink=sink)


def test_predict_returns_after_its_row_is_committed(
    model_files: ModelFiles, tmp_path: Path
) -> None:
    path = tmp_path / "p.db"
    plog = open_prediction_log(f"sqlite:///{path}", durability="commit", flush_interval_s=30)

    async def main() -> list[str]:
        p = predictor(model_files, plog)
        await p.start()
        answers = await asyncio.gather(
            *(
                p.predict(PredictRequest(records=rows(1), request_id=f"srv-{i}", client_id="same"))
                for i in range(8)
            )
        )
        assert on_disk(path) == {a.request_id for a in answers}  # already there: no flush
        return [a.request_id for a in answers]

    ids = asyncio.run(main())
    logged = {r["request_id"]: r["client_id"] for r in plog.read()}
    assert logged == dict.fromkeys(ids, "same")  # one client id, eight rows
    plog.close()


def test_predict_answers_503_when_its_row_cannot_be_committed(
    model_files: ModelFiles, tmp_path: Path
) -> None:
    plog = open_prediction_log(f"sqlite:///{tmp_path}/p.db", durability="commit")

    async def main() -> None:
        p = predictor(model_files, plog)
        await p.start()
        assert (await p.predict(PredictRequest(records=rows(1), request_id="ok"))).rows == 1
        plog.close()  # the log is gone: answers may not leave unlogged
        with pytest.raises(PredictionLogError, match="withheld") as caught:
            await p.predict(PredictRequest(records=rows(1), request_id="lost"))
        assert caught.value.status == 503

    asyncio.run(main())
    assert [r["request_id"] for r in PredictionLog(f"sqlite:///{tmp_path}/p.db").read()] == ["ok"]


def test_the_async_durability_answers_before_the_row_is_written(
    model_files: ModelFiles, tmp_path: Path
) -> None:
    path = tmp_path / "p.db"
    plog = open_prediction_log(f"sqlite:///{path}", flush_interval_s=30)  # async (default)

    async def main() -> None:
        p = predictor(model_files, plog)
        await p.start()
        await p.predict(PredictRequest(records=rows(1), request_id="fast"))
        assert on_disk(path) == set()  # answered; the row is still queued

    asyncio.run(main())
    plog.close()
    assert on_disk(path) == {"fast"}


def test_a_new_commit_log_gets_small_pages(tmp_path: Path) -> None:
    """Group commits write every page they touch: a new file in the commit durability gets
    4 KiB pages (16 KiB in async, for the writer's large batches)."""
    for durability, size in (("commit", 4096), ("async", 16384)):
        path = tmp_path / f"{durability}.db"
        PredictionLog(f"sqlite:///{path}", durability=durability).close()  # type: ignore[arg-type]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == size


def test_the_writer_thread_checkpoints_for_the_loop(tmp_path: Path) -> None:
    """The loop's connection never checkpoints SQLite's WAL (the loop would stall on it);
    the writer thread does, so the database file takes the committed rows."""
    path = tmp_path / "p.db"
    plog = open_prediction_log(f"sqlite:///{path}", durability="commit", flush_interval_s=0.05)
    empty = path.stat().st_size

    async def main() -> None:
        for k in range(20):
            await asyncio.gather(*(plog.commit_row(row(f"r{k}-{i}")) for i in range(50)))

    asyncio.run(main())
    deadline = time.monotonic() + 10
    while path.stat().st_size <= empty and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.stat().st_size > empty + 100_000  # 1,000 rows moved out of the WAL
    plog.close()
