"""``flywheel console``: the console (docs/console.md) alone, from the workspace of the
current folder, without loading a model; ``--server`` names a running ``flywheel serve``
for the Live view and the Try-it form."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["console"]


def console(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page (http://HOST:PORT/ui/).")] = 8090,
    server: Annotated[
        str | None,
        typer.Option(
            help="A running `flywheel serve` (e.g. http://127.0.0.1:8080): the Live view and "
            "Try it read from it. Without it they are empty."
        ),
    ] = None,
) -> None:
    """Serve the console alone: models, the ledger, monitoring and actions from this folder's
    registry; live traffic from --server. Stop with Ctrl-C."""
    import uvicorn

    from flywheel.cli import _settings
    from flywheel.cli import console as out
    from flywheel.console.app import console_app

    app = console_app(_settings(), server_url=server)
    out.print(f"console on http://{host}:{port}/ui/" + (f" (live: {server})" if server else ""))
    uvicorn.run(app, host=host, port=port, log_level="warning")
