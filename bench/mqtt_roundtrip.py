"""MQTT request→reply round trips through flywheel's adapter: req/s and latency percentiles.

Run: ``.venv/bin/python -m bench.mqtt_roundtrip [--seconds 3] [--levels 1,8,64]``

It starts its own Mosquitto on a free port (never the system one), serves a tiny real ONNX
model (logistic regression, 3 features) with :class:`flywheel.serving.mqtt.MqttAdapter`
(QoS 1, persistent session, manual acks) and drives it with one MQTT 5 client that keeps
``c`` requests outstanding (response topic + correlation data), all in one process and
event loop: the figures are a floor for the adapter + broker on this machine, not a
client fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiomqtt
import numpy as np
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.mqtt import MqttAdapter
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import StaticSource

_COUNTER = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        "max_queued_messages 100000\nmax_inflight_messages 0\nset_tcp_nodelay true\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


async def _level(
    client: aiomqtt.Client,
    pending: dict[bytes, asyncio.Future[float]],
    concurrency: int,
    seconds: float,
    payload: bytes,
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            corr = b"%d" % next(_COUNTER)  # unique: a repeat would be taken as a retry
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "bench/replies"
            props.CorrelationData = corr
            fut = asyncio.get_running_loop().create_future()
            pending[corr] = fut
            start = time.perf_counter()
            await client.publish("flywheel/predict/bench", payload, qos=1, properties=props)
            await fut
            latencies.append(time.perf_counter() - start)

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - begin), latencies


async def main(seconds: float, levels: list[int]) -> None:
    from tests.unit.serving_models import build, rows  # the tests' tiny real model

    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _broker(Path(tmp))
        try:
            files = build(Path(tmp), family="logreg")
            predictor = Predictor(
                ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
                {"churn": StaticSource({"1": files}, {"champion": "1"})},
            )
            await predictor.start()
            adapter = MqttAdapter(
                predictor, f"mqtt://127.0.0.1:{port}", client_id="fw-bench", max_in_flight=256
            )
            serving = asyncio.create_task(adapter.run())
            await adapter.connected.wait()
            payload = orjson.dumps(rows(1)[0])
            pending: dict[bytes, asyncio.Future[float]] = {}
            async with aiomqtt.Client(
                "127.0.0.1",
                port,
                protocol=aiomqtt.ProtocolVersion.V5,
                max_inflight_messages=1000,
                socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            ) as client:
                client.pending_calls_threshold = 10_000
                await client.subscribe("bench/replies", qos=1)

                async def collect() -> None:
                    async for message in client.messages:
                        fut = pending.pop(bytes(message.properties.CorrelationData), None)
                        if fut is not None and not fut.done():
                            fut.set_result(time.perf_counter())

                collector = asyncio.create_task(collect())
                await _level(client, pending, 4, 0.5, payload)  # warm up
                print(f"MQTT 5 QoS 1 request→reply, 1 row, {seconds:g}s per level")
                print(f"{'concurrency':>11} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
                for c in levels:
                    rate, lat = await _level(client, pending, c, seconds, payload)
                    p50, p99 = np.percentile(np.asarray(lat) * 1000, [50, 99])
                    print(f"{c:>11} {rate:>8.0f} {p50:>7.2f} {p99:>7.2f}")
                collector.cancel()
            await adapter.close()
            serving.cancel()
            await predictor.close()
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--levels", default="1,8,64")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, [int(x) for x in args.levels.split(",")]))
