"""The console's browser tests: one `flywheel serve` on a loop that has run (the cancer
champion v1, a challenger v2 in a canary, labelled traffic, monitored windows), and
Debian's Chromium driven headless by Playwright (never `playwright install`)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (  # noqa: F401 (session fixtures used by name)
    FLYWHEEL_BIN,
    cancer_champion,
    cancer_ingested,
    copy_folder,
    flywheel,
    start_serve,
    stop_serve,
    write_settings,
)
from tests.integration.conftest import free_port

CHROMIUM = "/usr/bin/chromium"
ADMIN, LABELS = "console-admin-token", "console-labels-key"
ENV = {"FLYWHEEL_ADMIN_TOKEN": ADMIN, "FLYWHEEL_SERVING__LABELS_KEY": LABELS}
WINDOW_ROWS = 100
# read at import: the autouse fixture of tests/conftest.py clears FLYWHEEL_* for each test
ARTIFACTS = os.environ.get("FLYWHEEL_ARTIFACTS")
UPDATE_SCREENSHOTS = os.environ.get("FLYWHEEL_UPDATE_SCREENSHOTS") == "1"


@dataclass
class World:
    cwd: Path
    url: str
    shots: Path

    def cli(self, *args: str, code: int = 0) -> Any:
        return flywheel(self.cwd, *args, code=code, env=ENV)


def _traffic(url: str, rows: list[dict[str, Any]], labels: list[int]) -> None:
    """One request per row (each labelled through /v1/feedback, as late labels come)."""
    ids = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for row in rows:
            answer = http.post("/v1/predict", json={"records": [row]})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["request_id"])
        items = [{"request_id": i, "label": y} for i, y in zip(ids, labels, strict=True)]
        got = http.post("/v1/feedback", json={"items": items}, headers={"X-API-Key": LABELS})
        assert got.status_code == 200 and got.json()["accepted"] == len(items), got.text


# module scope, not session: the server stops, and Playwright's sync API (which leaves an
# event loop set in the main thread while it runs) ends before the next module's asyncio.run
@pytest.fixture(scope="module")
def world(cancer_champion: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:  # noqa: F811
    """v1 champion, v2 challenger; 300 labelled rows served (the last 100 with a drifted
    `mean radius`), three monitored windows, then a canary of v2 with traffic on both arms."""
    from sklearn.datasets import load_breast_cancer

    cwd = copy_folder(cancer_champion, tmp_path_factory.mktemp("console") / "f")
    write_settings(
        cwd, monitoring={"window_rows": WINDOW_ROWS, "min_rows": 50}, rollout={"poll_s": 0.3}
    )
    (cwd / "params.yaml").write_text(
        "family: logreg\ncv_folds: 0\nthreshold: {objective: fixed, value: 0.6}\n"
    )
    flywheel(cwd, "train")
    port = free_port()
    proc = start_serve([FLYWHEEL_BIN, "serve", "--port", str(port), "--no-grpc"], cwd, port, ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        frame = load_breast_cancer(as_frame=True).frame
        rows = frame.drop(columns="target").to_dict("records")[:300]
        labels = [int(y) for y in frame["target"][:300]]
        for row in rows[200:]:
            row["mean radius"] *= 1.8  # the drift the heat map must show
        _traffic(url, rows, labels)
        time.sleep(1.5)  # the prediction log's writer flushes
        flywheel(cwd, "monitor", "run", env=ENV)
        flywheel(
            cwd,
            "rollout",
            "start",
            "--challenger",
            "2",
            "--strategy",
            "canary",
            "--reason",
            "console test canary",
            env=ENV,
        )
        time.sleep(1.0)  # the server's agent applies it
        _traffic(url, rows[:60], labels[:60])
        shots = Path(ARTIFACTS or tmp_path_factory.mktemp("shots"))
        shots.mkdir(parents=True, exist_ok=True)
        yield World(cwd, url, shots)
    finally:
        stop_serve(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


def login(page: Any, url: str, view: str, token: str = ADMIN) -> None:
    """Open ``view``, give the token when the page asks, wait until the view has drawn."""
    page.goto(f"{url}/ui/#{view}")
    page.fill("#login-token", token)
    page.click("#login-go")
    page.wait_for_selector(f'#view[data-ready="{view}"]', timeout=20_000)


def shoot(page: Any, world: World, name: str) -> None:
    """A screenshot in the artifact folder; also under docs/img when
    FLYWHEEL_UPDATE_SCREENSHOTS=1 (the ones docs/console.md shows)."""
    page.screenshot(path=str(world.shots / f"console-{name}.png"), full_page=True)
    if UPDATE_SCREENSHOTS:
        docs = Path(__file__).resolve().parents[2] / "docs" / "img"
        docs.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(docs / f"console-{name}.png"), full_page=False)
