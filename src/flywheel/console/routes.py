"""The console's routes on a FastAPI app: the page at ``/ui`` (files from ``static/``) and
its JSON under ``/ui/api`` (see docs/console.md for each)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles

from flywheel.console import actions as acts
from flywheel.console import live, monitor_view, registry_view, schema_form
from flywheel.console.auth import check_admin, check_read
from flywheel.console.context import Console
from flywheel.errors import FlywheelError, UsageError

if TYPE_CHECKING:
    from flywheel.serving.config import ServingConfig
    from flywheel.serving.predictor import Predictor

__all__ = ["add_console", "console_routes"]

STATIC = Path(__file__).parent / "static"


class ActionBody(BaseModel):
    reason: str = Field("", description="Why (audited).")
    version: str | None = None
    challenger: str | None = None
    strategy: str | None = None


def console_routes(api: FastAPI, predictor: Predictor, config: ServingConfig) -> None:
    """Mount the console on ``flywheel serve``'s FastAPI app (live figures from
    ``predictor``)."""
    from flywheel.serving.config import secret_bytes

    console = Console(
        predictor=predictor,
        admin_token=secret_bytes(config.admin_token),
        api_key=secret_bytes(config.api_key),
    )
    add_console(api, console)


def add_console(api: FastAPI, console: Console) -> None:
    def read(request: Request) -> None:
        check_read(request.scope["headers"], console.admin_token, console.api_key)

    def admin(request: Request) -> None:
        check_admin(request.scope["headers"], console.admin_token)

    _page_routes(api, console)
    _model_routes(api, console, Depends(read))
    _live_routes(api, console, Depends(read))
    _monitor_routes(api, console, Depends(read))
    _action_routes(api, console, Depends(admin))
    # the page's own JSON, not a public API: kept out of the server's OpenAPI schema (the
    # documented, fuzzed routes), like MLflow's UI routes are
    for route in api.routes:
        if getattr(route, "path", "").startswith("/ui") and hasattr(route, "include_in_schema"):
            route.include_in_schema = False


def _page_routes(api: FastAPI, console: Console) -> None:
    api.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")

    @api.get("/ui", include_in_schema=False)
    async def ui_root() -> Any:
        return RedirectResponse("/ui/")

    @api.get("/ui/", include_in_schema=False)
    async def ui_page() -> Any:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @api.get("/ui/api/info", tags=["console"], summary="What the page needs before a token")
    async def info() -> dict[str, Any]:
        return {
            "auth": console.admin_token is not None or console.api_key is not None,
            "actions": console.admin_token is not None,
            "mode": "serve" if console.predictor is not None else "alone",
            "server": console.server_url,
            "predict_url": "/v1/predict" if console.predictor is not None else "/ui/api/predict",
        }


def _model_routes(api: FastAPI, console: Console, guard: Any) -> None:
    @api.get("/ui/api/models", dependencies=[guard], tags=["console"])
    async def models() -> list[dict[str, Any]]:
        return await asyncio.to_thread(
            console.cached, "models", 3.0, lambda: registry_view.registered_models(console.ws)
        )

    @api.get("/ui/api/models/{name}/versions", dependencies=[guard], tags=["console"])
    async def versions(name: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(
            console.cached,
            ("versions", name),
            3.0,
            lambda: registry_view.versions(console.ws, name),
        )

    @api.get("/ui/api/models/{name}/versions/{version}", dependencies=[guard], tags=["console"])
    async def version(name: str, version: str) -> dict[str, Any]:
        return await asyncio.to_thread(
            console.cached,
            ("version", name, version),
            10.0,
            lambda: registry_view.version_detail(console.ws, name, version),
        )

    @api.get("/ui/api/audit", dependencies=[guard], tags=["console"])
    async def audit(
        model: str | None = None,
        action: str | None = None,
        who: str | None = None,
        text: str | None = None,
        limit: int = 200,
    ) -> dict[str, Any]:
        return await asyncio.to_thread(
            registry_view.audit_entries,
            console.ws,
            model=model,
            action=action,
            who=who,
            text=text,
            limit=limit,
        )


def _live_routes(api: FastAPI, console: Console, guard: Any) -> None:
    sampler = live.Sampler()

    @api.get("/ui/api/live", dependencies=[guard], tags=["console"])
    async def live_now(request: Request) -> dict[str, Any]:
        text, served, clock = await _server_state(console, request)
        if text is not None:
            sampler.add(live.parse_metrics(text))
        rollout = await asyncio.to_thread(_rollout, console)
        return {"served": served, "clock": clock, **sampler.summary(), "rollout": rollout}

    @api.get("/ui/api/form", dependencies=[guard], tags=["console"])
    async def form(request: Request, model: str | None = None) -> dict[str, Any]:
        _, served, _ = await _server_state(console, request, metrics=False)
        ready = [m for m in served if m.get("ready") and (model is None or m["name"] == model)]
        if not ready:
            raise UsageError(_no_served(console, model), field="model")
        m = ready[0]
        return await asyncio.to_thread(_form, console, m)

    @api.post("/ui/api/predict", dependencies=[guard], tags=["console"])
    async def predict(request: Request, body: dict[str, Any] = Body(...)) -> Any:
        if console.server_url is None:
            raise UsageError(_no_served(console, None), field="server")
        status, answer = await asyncio.to_thread(_post, console, "/v1/predict", body, request)
        return JSONResponse(answer, status_code=status)


def _no_served(console: Console, model: str | None) -> str:
    if console.predictor is None and console.server_url is None:
        return (
            "No server to try a model on: start the console with --server URL (a running "
            "`flywheel serve`), or open /ui on `flywheel serve` itself."
        )
    which = f"{model!r}" if model else "model"
    return f"No served {which} is ready to answer."


async def _server_state(
    console: Console, request: Request, metrics: bool = True
) -> tuple[str | None, list[dict[str, Any]], dict[str, Any] | None]:
    """(metrics text, served models, data clock) of this server or of ``--server``."""
    if console.predictor is not None:
        p = console.predictor
        text = p.metrics.render().decode() if metrics else None
        return text, p.models(), p.clock.describe()
    if console.server_url is None:
        return None, [], None

    url = console.server_url

    def fetch() -> tuple[str | None, list[dict[str, Any]], dict[str, Any] | None]:
        token = _credential(request)
        text = live.remote_get(url + "/metrics")[1] if metrics else None
        served = live.remote_get(url + "/v1/models", token)[1]
        return text, served, None

    try:
        return await asyncio.to_thread(fetch)
    except (OSError, ValueError) as exc:
        raise FlywheelError(f"Cannot read the server at {console.server_url}: {exc}") from exc


def _credential(request: Request) -> bytes | None:
    from flywheel.serving.auth import credential

    return credential(request.scope["headers"])


def _rollout(console: Console) -> dict[str, Any]:
    from flywheel.rollout.controller import describe

    try:
        return describe(console.ws, console.model_name)
    except FlywheelError as exc:
        return {"model": console.model_name, "rollout": None, "error": exc.message}


def _form(console: Console, model: dict[str, Any]) -> dict[str, Any]:
    settings = console.settings
    names = [i["name"] for i in model.get("inputs") or []]
    columns = schema_form.contract_columns(
        settings.contracts_dir, names, getattr(settings.source, "dataset", None)
    )
    reference = monitor_view.reference_of(console.ws, model["name"], str(model["version"]))
    return {
        "model": model["name"],
        "version": str(model["version"]),
        "task": model.get("task"),
        "classes": model.get("classes"),
        "fields": schema_form.form_fields(model.get("inputs") or [], columns, reference),
    }


def _post(console: Console, path: str, body: Any, request: Request) -> tuple[int, Any]:
    assert console.server_url is not None
    req = urllib.request.Request(
        console.server_url + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    token = _credential(request)
    if token:
        req.add_header("Authorization", "Bearer " + token.decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _monitor_routes(api: FastAPI, console: Console, guard: Any) -> None:
    @api.get("/ui/api/monitoring", dependencies=[guard], tags=["console"])
    async def monitoring(model: str | None = None, version: str | None = None) -> dict[str, Any]:
        name = model or console.model_name
        return await asyncio.to_thread(monitor_view.windows_view, console.ws, name, version)

    @api.get("/ui/api/monitoring/distribution", dependencies=[guard], tags=["console"])
    async def distribution(
        feature: str, model: str | None = None, window: str | None = None
    ) -> dict[str, Any]:
        name = model or console.model_name
        return await asyncio.to_thread(monitor_view.distribution, console.ws, name, window, feature)


def _action_routes(api: FastAPI, console: Console, guard: Any) -> None:
    @api.post("/ui/api/actions/{action}", dependencies=[guard], tags=["console"])
    async def registry_action(action: str, body: ActionBody) -> dict[str, Any]:
        done = await asyncio.to_thread(
            acts.registry_action, console.ws, action, version=body.version, reason=body.reason
        )
        console.forget()
        if console.predictor is not None:  # serve the new champion now, not at the next poll
            await console.predictor.reload()
        return done

    @api.post("/ui/api/actions/rollout/{action}", dependencies=[guard], tags=["console"])
    async def rollout_action(action: str, body: ActionBody) -> dict[str, Any]:
        done = await asyncio.to_thread(
            acts.rollout_action,
            console.ws,
            action,
            reason=body.reason,
            challenger=body.challenger,
            strategy=body.strategy,
        )
        console.forget()
        agent = getattr(console.predictor, "rollout_agent", None)
        if agent is not None:  # apply it here at once (other replicas within poll_s)
            await agent.sync(judge=False)
        return done
