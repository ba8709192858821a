"""One process, every front door: REST (+ the WebSocket stream), gRPC and MQTT.

All of them share one :class:`~flywheel.serving.predictor.Predictor` (one ONNX Runtime
session per served model) and one prediction log, on one uvloop event loop:

- uvicorn serves the ASGI app (raw front + FastAPI); its lifespan loads the models;
- the gRPC ``inference.GRPCInferenceService`` listens beside it (ModelReady is false until
  the models are loaded);
- the MQTT adapter connects once the models are ready, when ``serving.mqtt_url`` is set.

A clean shutdown (SIGINT/SIGTERM) stops accepting on every front, closes the predictor and
flushes everything queued for the prediction log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flywheel.config import Settings
from flywheel.serving.config import ServingConfig

__all__ = ["Fronts", "run_server", "serve_all"]

log = logging.getLogger("flywheel.serving")


@dataclass(frozen=True)
class Fronts:
    """Which front doors run beside REST (always on)."""

    grpc_port: int | None = None
    mqtt_url: str | None = None


def _open_log(settings: Settings) -> Any:
    from flywheel.serving.predlog import open_prediction_log

    return open_prediction_log(
        settings.serving.prediction_log_url or "", on_full=settings.serving.prediction_log_on_full
    )


def _mqtt_adapter(settings: Settings, predictor: Any, url: str) -> Any:
    from flywheel.serving.mqtt import MqttAdapter

    sv = settings.serving
    return MqttAdapter(
        predictor,
        url,
        request_topic=sv.mqtt_request_topic,
        error_topic=sv.mqtt_error_topic,
        reply_prefix=sv.mqtt_reply_prefix,
        client_id=sv.mqtt_client_id,
    )


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
    fronts: Fronts,
    *,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Serve until the process is told to stop (uvicorn handles SIGINT/SIGTERM)."""
    import uvicorn

    from flywheel.serving.predictor import Predictor
    from flywheel.serving.rest import create_app

    plog = _open_log(settings)
    predictor = Predictor.from_settings(settings, config, sink=plog)
    # Built before anything listens so a bad MQTT URL fails at start-up.
    mqtt = _mqtt_adapter(settings, predictor, fronts.mqtt_url) if fronts.mqtt_url else None
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
    grpc_server = None
    if fronts.grpc_port is not None:
        from flywheel.serving.grpc import create_grpc_server

        grpc_server = create_grpc_server(predictor, config.host, fronts.grpc_port)
        await grpc_server.start()
    tasks = [asyncio.create_task(_when_ready(predictor, mqtt.run))] if mqtt else []
    if on_started is not None:
        tasks.append(asyncio.create_task(_when_ready(predictor, _call_async(on_started))))
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits when the start-up failed: raise why, not its code
        raise app.startup_error or RuntimeError("the server's start-up failed") from None
    finally:
        await _shutdown(grpc_server, mqtt, tasks, predictor, plog)


def _call_async(fn: Callable[[], None]) -> Callable[[], Any]:
    async def call() -> None:
        fn()

    return call


async def _shutdown(
    grpc_server: Any, mqtt: Any, tasks: list[asyncio.Task[Any]], predictor: Any, plog: Any
) -> None:
    if grpc_server is not None:
        await grpc_server.stop(grace=5.0)
    if mqtt is not None:
        await mqtt.close()
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
    fronts: Fronts,
    *,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Run :func:`run_server` on uvloop (the fastest loop here) until interrupted."""
    import uvloop

    from flywheel.serving.logs import configure_logging

    configure_logging(settings.log_level, json_lines=config.log_json)
    if config.workers > 1:
        log.warning(
            "serving.workers=%d: one process serves every model; scale with replicas "
            "(Kubernetes) or `uvicorn flywheel.serving.rest:app_from_env --factory "
            "--workers N` (REST only, one model copy per worker)",
            config.workers,
        )
    uvloop.run(run_server(settings, config, fronts, on_started=on_started))
