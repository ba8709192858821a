"""``flywheel console``: the console alone, on the workspace of the current folder, with
no model loaded. Live figures and the Try-it form come from ``server_url`` (a running
``flywheel serve``) when given."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

import flywheel
from flywheel.console.context import Console
from flywheel.console.routes import add_console

if TYPE_CHECKING:
    from flywheel.config import Settings

__all__ = ["console_app"]


def console_app(settings: Settings, server_url: str | None = None) -> FastAPI:
    from flywheel.serving._api import install_errors
    from flywheel.serving.config import ServingConfig, secret_bytes

    config = ServingConfig.from_settings(settings)
    api = FastAPI(title="flywheel console", version=flywheel.__version__, docs_url=None)

    install_errors(api)  # the server's error answers: same shape, kind header, 422s
    console = Console(
        settings,
        server_url=server_url,
        admin_token=secret_bytes(config.admin_token),
        api_key=secret_bytes(config.api_key),
    )
    add_console(api, console)
    return api
