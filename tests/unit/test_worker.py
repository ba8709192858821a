"""The worker's health check: a heartbeat that is fresh, and no tick hung for hours."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flywheel.config import load_settings
from flywheel.pipelines import worker


def _ws(tmp_path: Path) -> Any:
    return SimpleNamespace(settings=load_settings(home=tmp_path / "fw"))


def _write(ws: Any, **beat: Any) -> None:
    path = worker.heartbeat_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"every": 60.0, "pid": 1, "busy_since": None} | beat))


def test_health_follows_the_heartbeat_and_a_hung_tick(tmp_path: Path) -> None:
    ws, now = _ws(tmp_path), time.time()
    ok, why = worker.healthy(ws)
    assert not ok and "no heartbeat" in why
    _write(ws, at=now - 200)
    assert worker.healthy(ws, now=now)[0]  # within 3 ticks + 60 s = 240 s
    _write(ws, at=now - 300)
    ok, why = worker.healthy(ws, now=now)
    assert not ok and "300 s old" in why
    _write(ws, at=now - 10, busy_since=now - 3600)  # an hour-long retrain: still healthy
    assert worker.healthy(ws, now=now)[0]
    _write(ws, at=now - 10, busy_since=now - worker.MAX_TICK_S - 1)
    ok, why = worker.healthy(ws, now=now)
    assert not ok and "a tick has run for" in why


def test_the_heartbeat_thread_beats_during_a_long_tick(tmp_path: Path, monkeypatch: Any) -> None:
    ws = _ws(tmp_path)
    monkeypatch.setattr(worker, "BEAT_S", 0.05)
    seen: list[float | None] = []

    def slow_tick(_: Any) -> worker.Tick:
        first = json.loads(worker.heartbeat_path(ws).read_text())["at"]
        time.sleep(0.3)
        beat = json.loads(worker.heartbeat_path(ws).read_text())
        assert beat["at"] > first  # the thread beat while the tick ran
        seen.append(beat["busy_since"])
        return worker.Tick(at=time.time())

    monkeypatch.setattr(worker, "tick", slow_tick)
    worker.loop(ws, 60.0, once=True)
    assert seen and seen[0] is not None
    beat = json.loads(worker.heartbeat_path(ws).read_text())
    assert beat["busy_since"] is None and "tick" in beat
