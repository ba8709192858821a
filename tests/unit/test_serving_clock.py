"""The server's data clock: `/admin/clock` (admin token) sets the time the prediction log and
the labels are stamped with, so a replay runs the log on simulated days."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from flywheel.serving.clock import DataClock
from flywheel.serving.sources import ModelFiles
from tests.unit.serving_models import build, rows
from tests.unit.test_serving_auth import _label, _serve

DAY = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return build(tmp_path_factory.mktemp("clock"), family="logreg")


def test_the_clock_runs_on_from_where_it_was_set() -> None:
    clock = DataClock()
    assert not clock.simulated and abs(clock.now() - time.time()) < 1
    clock.set(DAY)
    first = clock.now()
    assert clock.simulated and DAY <= first < DAY + 5
    assert clock.now() >= first  # it keeps running, in order
    clock.set(None)
    assert not clock.simulated and abs(clock.now() - time.time()) < 1


def test_admin_clock_stamps_predictions_and_labels(model_files: ModelFiles, tmp_path: Path) -> None:
    admin = {"authorization": "Bearer admin-t"}
    labels_key = {"x-api-key": "lk"}

    async def check(c: httpx.AsyncClient) -> None:
        assert (await c.post("/admin/clock", json={"at": DAY})).status_code == 401
        refused = await c.post(
            "/admin/clock", json={"at": DAY}, headers={"authorization": "Bearer x"}
        )
        assert refused.status_code == 403
        assert (await c.post("/admin/clock", headers=admin)).status_code == 400  # no body
        shown = (await c.post("/admin/clock", json={"at": DAY}, headers=admin)).json()
        assert shown["simulated"] and DAY <= shown["now"] < DAY + 5
        assert (await c.get("/admin/clock", headers=admin)).json()["simulated"]
        rid = (await c.post("/v1/predict", json=rows(1)[0])).json()["request_id"]
        ok = await c.post("/v1/feedback", json=_label(rid), headers=labels_key)
        assert ok.status_code == 200
        back = (await c.post("/admin/clock", json={"at": None}, headers=admin)).json()
        assert not back["simulated"]
        await c.post("/v1/predict", json=rows(1)[0])  # on the wall clock again

    _serve(model_files, tmp_path, check, admin_token="admin-t", labels_key="lk")
    with sqlite3.connect(tmp_path / "p.db") as db:
        stamps = [ts for (ts,) in db.execute("SELECT ts FROM prediction_log ORDER BY id")]
        (label_ts,) = db.execute("SELECT received_at FROM prediction_feedback").fetchone()
    assert len(stamps) == 2
    assert DAY <= stamps[0] < DAY + 60 and DAY <= label_ts < DAY + 60
    assert abs(stamps[1] - time.time()) < 120
