"""The console: one web page for the loop (docs/console.md).

``flywheel serve`` mounts it at ``/ui`` (:func:`flywheel.console.routes.console_routes`);
``flywheel console`` serves it alone (:func:`flywheel.console.app.console_app`). The page is
plain HTML, JavaScript and CSS shipped in ``static/`` (no build step, nothing fetched from
elsewhere); it reads JSON from ``/ui/api/...``. Every module here imports nothing of the
training stack, so the console runs in the serving-only install.
"""

from __future__ import annotations

__all__: list[str] = []
