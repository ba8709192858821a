"""`flywheel console` alone, as a user starts it beside a running server: the page and the
registry's JSON from this folder, Live and Try it through `--server`, the token asked for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.console.conftest import ENV, FLYWHEEL_BIN
from tests.e2e.conftest import copy_folder, newcomer_env, start_serve, stop_serve
from tests.integration.conftest import free_port, wait_http

pytestmark = pytest.mark.integration


def test_the_console_alone_reads_the_registry_and_the_server(
    cancer_champion: Path, tmp_path: Path
) -> None:
    cwd = copy_folder(cancer_champion, tmp_path / "f")
    serve_port, ui_port = free_port(), free_port()
    serve = start_serve([FLYWHEEL_BIN, "serve", "--port", str(serve_port), "--no-grpc"],
                        cwd, serve_port, ENV)  # fmt: skip
    server = f"http://127.0.0.1:{serve_port}"
    ui = subprocess.Popen(
        [FLYWHEEL_BIN, "console", "--port", str(ui_port), "--server", server],
        cwd=cwd, env=newcomer_env(ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{ui_port}"
    try:
        wait_http(f"{url}/ui/", ui, timeout=20)
        with httpx.Client(base_url=url, timeout=10) as client:
            page = client.get("/ui/")
            assert page.status_code == 200 and "flywheel" in page.text
            assert client.get("/ui/api/models").status_code == 401  # the token is asked for
            auth = {"Authorization": f"Bearer {ENV['FLYWHEEL_ADMIN_TOKEN']}"}
            models = client.get("/ui/api/models", headers=auth).json()
            assert "cancer" in str(models)
            versions = client.get("/ui/api/models/cancer/versions", headers=auth).json()
            assert "champion" in str(versions)
            form = client.get("/ui/api/form", headers=auth).json()
            fields = form["fields"] if isinstance(form, dict) and "fields" in form else form
            assert "mean radius" in str(fields)
            live = client.get("/ui/api/live", headers=auth).json()
            assert "cancer" in str(live["served"])  # read from the server's own routes
            _refusals(client, auth)
    finally:
        ui.terminate()
        ui.communicate(timeout=20)
        stop_serve(serve)


def _refusals(client: httpx.Client, auth: dict[str, str]) -> None:
    """A name or window that does not exist is a 404 naming it, and a bad query a 422 naming
    the field, in the server's error shape with its kind header (not 200 with empty lists,
    nor FastAPI's own {"detail": ...})."""
    for path, field in [
        ("/ui/api/models/cancr/versions", "model"),
        ("/ui/api/monitoring?model=cancr", "model"),
        ("/ui/api/monitoring/distribution?feature=mean%20radius", "window"),
    ]:
        answer = client.get(path, headers=auth)
        assert answer.status_code == 404, (path, answer.text)
        error = answer.json()["error"]
        assert error["kind"] == "not_found" and error["details"]["field"] == field, (path, error)
        assert answer.headers["flywheel-error-kind"] == "not_found"
    assert "cancr" in client.get("/ui/api/monitoring?model=cancr", headers=auth).text
    assert client.get("/ui/api/monitoring", headers=auth).status_code == 200  # not monitored yet
    bad = client.get("/ui/api/audit?limit=many", headers=auth)
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "query.limit", (
        bad.text
    )
    assert bad.headers["flywheel-error-kind"] == bad.json()["error"]["kind"]


def test_try_it_without_a_server_says_to_start_one(cancer_champion: Path, tmp_path: Path) -> None:
    """The console alone, no --server: the Try-it form and its post say how to get one."""
    cwd = copy_folder(cancer_champion, tmp_path / "f")
    port = free_port()
    ui = subprocess.Popen(
        [FLYWHEEL_BIN, "console", "--port", str(port)],
        cwd=cwd, env=newcomer_env(ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/ui/", ui, timeout=20)
        auth = {"Authorization": f"Bearer {ENV['FLYWHEEL_ADMIN_TOKEN']}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for answer in (
                client.get("/ui/api/form", headers=auth),
                client.post("/ui/api/predict", headers=auth, json={"instances": [{}]}),
            ):
                assert answer.status_code == 400, answer.text
                assert "--server" in answer.json()["error"]["message"]
    finally:
        ui.terminate()
        ui.communicate(timeout=20)
