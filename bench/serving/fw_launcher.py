"""Starts flywheel's servers the way a user would run them, prediction log ON, metrics ON,
until SIGTERM; used while ``flywheel serve`` has no CLI command yet.

    python -m bench.serving.fw_launcher --port P --predlog sqlite:///PATH            # REST
    python -m bench.serving.fw_launcher --grpc-port P --predlog ...                  # gRPC only
    python -m bench.serving.fw_launcher --mqtt mqtt://127.0.0.1:1883 --topic-root R --predlog ...

Settings come from ``FLYWHEEL_*`` (FLYWHEEL_HOME, FLYWHEEL_ADMIN_TOKEN). REST goes through
:func:`flywheel.serving.server.serve_all`; gRPC through :func:`flywheel.serving.grpc.serve_grpc`;
MQTT through :class:`flywheel.serving.mqtt.MqttAdapter`. Each protocol runs in its own
process so the REST numbers carry no idle gRPC/MQTT machinery. On shutdown the prediction
log is closed (flushed), so every queued record is on disk when this exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from flywheel.config import load_settings
from flywheel.predlog import open_prediction_log
from flywheel.serving.config import ServingConfig
from flywheel.serving.predictor import Predictor


async def _until_sigterm(main: Any) -> None:
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _grpc(predictor: Predictor, port: int) -> None:
    from flywheel.serving.grpc import serve_grpc

    await serve_grpc(predictor, "127.0.0.1", port)


async def _mqtt(predictor: Predictor, url: str, root: str) -> None:
    from flywheel.serving.mqtt import MqttAdapter

    adapter = MqttAdapter(
        predictor,
        url,
        request_topic=f"{root}/predict/#",
        error_topic=f"{root}/errors",
        reply_prefix=f"{root}/reply",
        client_id=f"{root}-server",
    )
    await predictor.start()
    try:
        await adapter.run()
    finally:
        await predictor.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, help="REST port")
    parser.add_argument("--grpc-port", type=int, help="serve gRPC only, on this port")
    parser.add_argument("--mqtt", help="serve MQTT only, through this broker URL")
    parser.add_argument("--topic-root", default="flywheel-bench")
    parser.add_argument("--predlog", required=True, help="prediction log URL")
    args = parser.parse_args()
    settings = load_settings(serving={"prediction_log_url": args.predlog, "grpc_port": None})
    config = ServingConfig.from_settings(settings, host="127.0.0.1", port=args.port or 8080)
    if not (args.grpc_port or args.mqtt):
        from flywheel.serving.server import serve_all

        serve_all(settings, config)  # REST only; flushes the log on SIGTERM
        return
    import uvloop

    plog = open_prediction_log(args.predlog)
    try:
        predictor = Predictor.from_settings(settings, config, sink=plog)
        work = (
            _grpc(predictor, args.grpc_port)
            if args.grpc_port
            else _mqtt(predictor, args.mqtt, args.topic_root)
        )
        uvloop.run(_until_sigterm(work))
    finally:
        plog.close(timeout=30.0)


if __name__ == "__main__":
    main()
