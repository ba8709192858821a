"""One process, every front door: REST (+ the WebSocket stream), gRPC, MQTT and any front
registered by name (:mod:`flywheel.serving.fronts`).

All of them share one :class:`~flywheel.serving.predictor.Predictor` (one ONNX Runtime
session per served model) and one prediction log, on one uvloop event loop:

- uvicorn serves the ASGI app (raw front + FastAPI); its lifespan loads the models;
- the gRPC ``inference.GRPCInferenceService`` listens beside it (ModelReady is false until
  the models are loaded);
- the MQTT adapter connects once the models are ready, when ``serving.mqtt_url`` is set;
- every other front named in ``serving.fronts`` starts beside them.

A clean shutdown (SIGINT/SIGTERM) stops accepting on every front, closes the predictor and
flushes everything queued for the prediction log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from flywheel.config import Settings
from flywheel.serving.config import ServingConfig

__all__ = ["run_server", "serve_all"]

log = logging.getLogger("flywheel.serving")


def _server_class() -> Any:
    import signal

    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM once *its* shutdown is done, which would kill the
        process before gRPC, MQTT and the prediction log are closed (queued log records
        lost). Here a signal only asks for a graceful stop; :func:`run_server` finishes the
        shutdown and the process exits normally."""

        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop, sig)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

        def _stop(self, sig: int) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

    return _Server


async def _when_ready(predictor: Any, then: Callable[[], Any]) -> Any:
    while not predictor.ready:
        await asyncio.sleep(0.05)
    return await then()


async def run_server(
    settings: Settings,
    config: ServingConfig,
    *,
    on_started: Callable[[], None] | None = None,
    sources: Mapping[str, Any] | None = None,
    fronts: list[Any] | None = None,
) -> None:
    """Serve until the process is told to stop (uvicorn handles SIGINT/SIGTERM): REST (and
    the WebSocket stream) on ``config``'s port, and every front ``settings`` turns on
    (:func:`flywheel.serving.fronts.build_fronts`: gRPC, MQTT, any registered one).
    ``sources``: ``{served name: ModelSource}`` (default: the registry ``settings`` names);
    ``fronts``: already built by the caller (default: built here)."""
    import uvicorn

    from flywheel.serving.fronts import build_fronts
    from flywheel.serving.monitor_gauges import MonitorGauges
    from flywheel.serving.predictor import Predictor
    from flywheel.serving.rest import create_app
    from flywheel.workspace import Workspace

    if fronts is None:
        fronts = build_fronts(settings)  # before anything listens: bad settings fail here
    ws = Workspace(settings)  # the registry client, the prediction log: built once, here
    plog = ws.predlog
    predictor = (
        Predictor(config, sources, sink=plog)
        if sources
        else Predictor.from_settings(ws, config, sink=plog)
    )
    predictor.metrics.registry.register(MonitorGauges(settings.home / "monitoring" / "latest.json"))
    from flywheel.serving.dora_gauges import DoraGauges

    predictor.metrics.registry.register(DoraGauges.from_settings(settings))
    agent = None
    if not sources:  # registry-served: follow and drive its rollouts (flywheel.rollout)
        from flywheel.serving.rollout_agent import RolloutAgent

        agent = RolloutAgent(predictor, ws)
        predictor.rollout_agent = agent
        predictor.metrics.registry.register(agent)
    app = create_app(predictor, config=config, sink=plog)
    server = _server_class()(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http="httptools",
            lifespan="on",
            access_log=config.access_log,
            log_config=None,
            timeout_keep_alive=30,
        )
    )
    started: list[Any] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        if agent is not None:
            agent.start()
        for front in fronts:
            await front.start(predictor)
            started.append(front)
        if on_started is not None:
            tasks.append(asyncio.create_task(_when_ready(predictor, _call_async(on_started))))
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when the start-up failed: raise why, not its code
            raise app.startup_error or RuntimeError("the server's start-up failed") from None
    finally:
        if agent is not None:
            await agent.close()
        await _shutdown(started, tasks, predictor, plog)
        ws.close()  # the log is flushed and closed already; the rest of the workspace now


def _call_async(fn: Callable[[], None]) -> Callable[[], Any]:
    async def call() -> None:
        fn()

    return call


async def _shutdown(
    fronts: list[Any], tasks: list[asyncio.Task[Any]], predictor: Any, plog: Any
) -> None:
    for front in reversed(fronts):
        try:
            await front.close()
        except Exception:  # one front failing to close must not keep the log unflushed
            log.exception("closing the %s front failed", getattr(front, "name", front))
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    with contextlib.suppress(Exception):
        await predictor.close()  # idempotent: the ASGI lifespan may have closed it already
    await asyncio.to_thread(plog.close)  # flush everything queued
    log.info("serving stopped; prediction log flushed (%d written)", plog.written())


def serve_all(
    settings: Settings,
    config: ServingConfig,
    *,
    on_started: Callable[[], None] | None = None,
    sources: Mapping[str, Any] | None = None,
    fronts: list[Any] | None = None,
) -> None:
    """Run :func:`run_server` on uvloop (the fastest loop here) until interrupted."""
    import uvloop

    from flywheel.serving.logs import configure_logging

    configure_logging(settings.log_level, json_lines=config.log_json)
    uvloop.run(run_server(settings, config, on_started=on_started, sources=sources, fronts=fronts))
