"""``kill -9`` of a real ``flywheel serve`` under load: with the ``commit`` durability every
answered prediction is in the log afterwards (0 lost), on SQLite and on PostgreSQL; the
``async`` durability is run the same way and what it loses is printed (it may lose the rows
of its last ~0.1 s: the answer leaves before the row is written).

A small churn world is trained and promoted once through the CLI; each case then starts
``flywheel serve`` on it with its own prediction log, sends ``/v1/predict`` from 16
concurrent clients, records the ``request_id`` of every 200 answer, kills the server with
SIGKILL mid-load and looks each answered id up in the log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

CLIENTS = 16
LOAD_S = 3.0
SMALL = {
    "FLYWHEEL_GATES__MIN_METRICS": '{"roc_auc": 0.6}',
    "FLYWHEEL_GATES__MAX_SLICE_GAP": '{"roc_auc": 0.5}',
}


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    env.update(
        FLYWHEEL_HOME=str(home),
        FLYWHEEL_CONFIG=os.devnull,
        GIT_PYTHON_REFRESH="quiet",
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """A home with a champion (``flywheel run``) and one feature row to send."""
    home = tmp_path_factory.mktemp("kill") / "fw"
    subprocess.run(
        [sys.executable, "-m", "flywheel", "run", "--days", "240", "--customers", "1500"],
        env=_env(home, **SMALL),
        cwd=home.parent,
        capture_output=True,
        check=True,
        timeout=500,
    )
    code = (
        "import json; from flywheel.config import load_settings; "
        "from flywheel.data.snapshots import read_snapshot, latest_snapshot; "
        "s = load_settings(); df = read_snapshot(s, latest_snapshot(s, 'churn'))"
        ".drop(columns=['churned', 'customer_id', 'observed_at']).dropna().head(1); "
        "print(df.to_json(orient='records'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(home), capture_output=True, text=True, check=True
    )
    import json

    yield home, json.loads(out.stdout)[0]


async def _load(base: str, row: dict, proc: subprocess.Popen[bytes]) -> tuple[list[str], float]:
    """CLIENTS clients send /v1/predict until the server dies; SIGKILL after LOAD_S.
    Returns the request ids of every 200 answer and when the kill was sent."""
    answered: list[str] = []
    killed_at = 0.0

    async def client(c: httpx.AsyncClient) -> None:
        while True:
            try:
                r = await c.post("/v1/predict", json={"records": [row]})
            except httpx.HTTPError:
                return  # the server is gone
            if r.status_code == 200:
                answered.append(r.json()["request_id"])

    async def killer() -> None:
        nonlocal killed_at
        await asyncio.sleep(LOAD_S)
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)  # kill -9: no shutdown, no flush

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=10, limits=limits) as c:
        await asyncio.gather(killer(), *(client(c) for _ in range(CLIENTS)))
    return answered, killed_at


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "flywheel serve exited before it was ready"
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("flywheel serve was not ready in time")


def _logged(url: str) -> set[str]:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return {r[0] for r in conn.execute("SELECT request_id FROM prediction_log")}
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM prediction_log")}


def _kill_under_load(home: Path, row: dict, url: str, durability: str) -> tuple[int, int]:
    """(answered, answered but not logged) for one server killed with SIGKILL."""
    port = free_port()
    env = _env(
        home,
        FLYWHEEL_SERVING__PREDICTION_LOG_URL=url,
        FLYWHEEL_SERVING__PREDICTION_LOG_DURABILITY=durability,
        FLYWHEEL_SERVING__POLL_INTERVAL_S="0",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "flywheel", "serve", "--port", str(port), "--no-grpc"],
        env=env,
        cwd=home.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc)
        answered, _ = asyncio.run(_load(base, row, proc))
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lost = set(answered) - _logged(url)
    print(
        f"\n{durability:>6} {url.split(':')[0]:<10} answered {len(answered):,}, lost {len(lost):,}"
    )
    return len(answered), len(lost)


@pytest.mark.parametrize("durability", ["commit", "async"])
def test_kill_9_under_load_sqlite(
    world: tuple[Path, dict], tmp_path: Path, durability: str
) -> None:
    home, row = world
    answered, lost = _kill_under_load(home, row, f"sqlite:///{tmp_path}/p.db", durability)
    assert answered > 100  # the load really ran
    if durability == "commit":
        assert lost == 0  # every answered prediction was committed before it was sent
    else:
        assert 0 <= lost <= answered  # async may lose the rows of its last flush interval


@pytest.mark.parametrize("durability", ["commit", "async"])
def test_kill_9_under_load_postgres(world: tuple[Path, dict], pg_url: str, durability: str) -> None:
    home, row = world
    answered, lost = _kill_under_load(home, row, pg_url, durability)
    assert answered > 100
    if durability == "commit":
        assert lost == 0
    else:
        assert 0 <= lost <= answered
