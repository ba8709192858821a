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
    finally:
        ui.terminate()
        ui.communicate(timeout=20)
        stop_serve(serve)
