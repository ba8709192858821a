"""The rollout admin routes (bearer token, as every ``/admin`` route): the same functions
``flywheel rollout ...`` calls (:mod:`flywheel.rollout.actions`), run in a worker thread,
then the server's agent applies the new state at once (other replicas within ``poll_s``).

- ``GET /admin/rollout``: ``flywheel rollout status`` as JSON;
- ``POST /admin/rollout/start``: ``{"plan": {...}}`` or ``{"challenger": "3", "strategy":
  "canary"}``, with an optional ``reason``;
- ``POST /admin/rollout/{pause|resume|promote|abort|switch}``: ``{"reason": "..."}``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flywheel.errors import NotFound
from flywheel.serving.predictor import Predictor

__all__ = ["rollout_routes"]


class StartBody(BaseModel):
    # a plan's fields belong under "plan": one at the top level (steps, interval) is refused,
    # not dropped, or the default plan would start instead of the one asked for
    model_config = ConfigDict(extra="forbid")

    plan: dict[str, Any] | None = Field(None, description="A rollout plan (see docs/rollouts.md).")
    challenger: str | None = None
    strategy: Literal["canary", "shadow", "ab", "bluegreen"] | None = None
    reason: str | None = None


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(..., description="Why (audited; not empty).")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        # a blank reason is the body's mistake (422 naming it, as a missing one), not a
        # refusal of the registry (it was a 409 with the CLI's hint)
        if not v.strip():
            raise ValueError(
                "a reason is required (every rollout change is audited), got an empty one"
            )
        return v


def rollout_routes(api: FastAPI, predictor: Predictor, guard: Any, errors: dict[Any, Any]) -> None:
    def agent() -> Any:
        found = predictor.rollout_agent
        if found is None:
            raise NotFound(
                "Rollouts need a registry-served model (this server serves a folder).",
                rule="rollout",
            )
        return found

    async def after(state: Any) -> dict[str, Any]:
        await agent().sync(judge=False)
        return state.to_dict()

    @api.get(
        "/admin/rollout",
        dependencies=[guard],
        responses=errors,
        tags=["admin"],
        summary="The active (or last) rollout: weights, per-arm counts, evidence",
    )
    async def status() -> dict[str, Any]:
        from flywheel.rollout.controller import describe

        return await asyncio.to_thread(describe, agent().ws)

    @api.post(
        "/admin/rollout/start",
        dependencies=[guard],
        responses=errors,
        tags=["admin"],
        summary="Start a rollout from a plan or a challenger and a strategy",
    )
    async def start(body: StartBody) -> dict[str, Any]:
        from flywheel.rollout import actions
        from flywheel.rollout.plan import load_plan

        data = dict(body.plan or {})
        if body.challenger is not None:
            data["challenger"] = body.challenger
        if body.strategy is not None:
            data["strategy"] = body.strategy
        plan = load_plan(data)
        state = await asyncio.to_thread(actions.start, agent().ws, plan, reason=body.reason)
        return await after(state)

    for name in ("pause", "resume", "promote", "abort", "switch"):
        _action_route(api, name, agent, after, guard, errors)


def _action_route(api: FastAPI, name: str, agent: Any, after: Any, guard: Any, errors: Any) -> None:
    @api.post(
        f"/admin/rollout/{name}",
        dependencies=[guard],
        responses=errors,
        tags=["admin"],
        summary=f"{name.capitalize()} the active rollout (audited)",
        name=f"rollout_{name}",
    )
    async def act(body: ActionBody) -> dict[str, Any]:
        from flywheel.rollout import actions

        fn = getattr(actions, name)
        state = await asyncio.to_thread(fn, agent().ws, reason=body.reason)
        return await after(state)
