"""The MQTT adapter against a real Mosquitto that each test starts on a free port.

(The system broker on 127.0.0.1:1883 is never touched.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from flywheel.serving.config import ServedModel, ServingConfig
from flywheel.serving.mqtt import MqttAdapter
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import ModelFiles, StaticSource
from tests.unit.serving_models import build, rows

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One Mosquitto process with on-disk persistence; stop() and start() keep its state."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {folder / 'data'}/\n"
            "autosave_interval 1\nmax_queued_messages 100000\n"
            f"log_dest file {folder / 'mosquitto.log'}\nlog_type all\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.folder / 'mosquitto.log')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file and exits (a broker restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("the mosquitto binary is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> ModelFiles:
    return build(tmp_path_factory.mktemp("mqtt-models"), family="logreg")


async def _predictor(files: ModelFiles) -> Predictor:
    predictor = Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({"1": files}, {"champion": "1"})},
    )
    await predictor.start()
    return predictor


@asynccontextmanager
async def serving(files: ModelFiles, url: str, **options: Any) -> AsyncIterator[MqttAdapter]:
    predictor = await _predictor(files)
    adapter = MqttAdapter(
        predictor, url, client_id="fw-test", backoff_initial_s=0.1, backoff_max_s=1.0, **options
    )
    task = asyncio.create_task(adapter.run())
    try:
        await asyncio.wait_for(adapter.connected.wait(), 10)
        yield adapter
    finally:
        await adapter.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await predictor.close()


def _v5_props(response_topic: str | None, correlation: bytes | None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    if response_topic:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


async def _next(client: aiomqtt.Client, timeout: float = 10) -> aiomqtt.Message:
    return await asyncio.wait_for(anext(aiter(client.messages)), timeout)


def test_mqtt5_response_topic_and_correlation_data(broker: Broker, files: ModelFiles) -> None:
    async def main() -> None:
        async with (
            serving(files, broker.url),
            aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        ):
            await client.subscribe("app/replies/me", qos=1)
            record = rows(1)[0]
            await client.publish(
                "flywheel/predict/app",
                orjson.dumps(record),
                qos=1,
                properties=_v5_props("app/replies/me", b"\x00corr-1"),
            )
            one = await _next(client)
            await client.publish(
                "flywheel/predict/app",
                orjson.dumps({"id": "b", "records": rows(3)}),
                qos=1,
                properties=_v5_props("app/replies/me", b"corr-2"),
            )
            many = await _next(client)
            await client.publish(
                "flywheel/predict/app",
                orjson.dumps(record),
                qos=1,
                properties=_v5_props("app/replies/me", b"c1"),
            )
            printable = await _next(client)
        assert one.properties.CorrelationData == b"\x00corr-1"
        body = orjson.loads(one.payload)
        # the client's id: printable correlation data as sent (it was hex: "6331", so
        # /v1/feedback with "c1" and a sticky rollout key disagreed with the other doors);
        # binary data as its hex
        assert body["client_id"] == b"\x00corr-1".hex()
        assert orjson.loads(printable.payload)["client_id"] == "c1"
        assert (body["model"], body["version"]) == ("churn", "1")
        assert len(body["predictions"]) == 1 and body["classes"] == [0, 1]
        assert many.properties.CorrelationData == b"corr-2"
        assert orjson.loads(many.payload)["id"] == "b"
        assert len(orjson.loads(many.payload)["predictions"]) == 3

    asyncio.run(main())


def test_mqtt311_client_gets_the_derived_reply_topic(broker: Broker, files: ModelFiles) -> None:
    async def main() -> None:
        async with (
            serving(files, broker.url),
            aiomqtt.Client(
                "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V311
            ) as client,
        ):
            await client.subscribe("flywheel/reply/dev1/#", qos=1)
            await client.publish(
                "flywheel/predict/dev1/42", orjson.dumps({"id": 42, **rows(1)[0]}), qos=1
            )
            reply = await _next(client)
        assert str(reply.topic) == "flywheel/reply/dev1/42"
        body = orjson.loads(reply.payload)
        assert body["id"] == 42 and len(body["predictions"]) == 1

    asyncio.run(main())


def test_malformed_payload_goes_to_the_error_topic(broker: Broker, files: ModelFiles) -> None:
    async def main() -> list[dict[str, Any]]:
        async with (
            serving(files, broker.url) as adapter,
            aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        ):
            await client.subscribe("flywheel/errors", qos=1)
            await client.subscribe("flywheel/reply/dev2/#", qos=1)
            await client.publish("flywheel/predict/dev2/1", b"{nope", qos=1)
            await client.publish(
                "flywheel/predict/dev2/2", orjson.dumps({**rows(1)[0], "tenure": "x"}), qos=1
            )
            await client.publish(
                "flywheel/predict/dev2/3",
                orjson.dumps(rows(1)[0]),
                qos=1,
                properties=_v5_props("flywheel/predict/loop", None),
            )
            got = [await _next(client) for _ in range(5)]
            await client.publish("flywheel/predict/dev2/4", orjson.dumps(rows(1)[0]), qos=1)
            after = await _next(client)
            assert adapter.stats["errors"] == 3
        assert str(after.topic) == "flywheel/reply/dev2/4"  # still serving
        return [{**orjson.loads(m.payload), "on": str(m.topic)} for m in got]

    got = asyncio.run(main())
    errors = [g for g in got if g["on"] == "flywheel/errors"]
    replies = {g["on"]: g for g in got if g["on"] != "flywheel/errors"}
    assert len(errors) == 3
    assert {e["topic"] for e in errors} == {f"flywheel/predict/dev2/{i}" for i in (1, 2, 3)}
    assert {e["error"]["kind"] for e in errors} == {"bad_request", "invalid_input"}
    assert any("not valid JSON" in e["error"]["message"] for e in errors)
    assert any("would loop" in e["error"]["message"] and e["reply_topic"] is None for e in errors)
    assert replies["flywheel/reply/dev2/1"]["error"]["kind"] == "bad_request"
    assert replies["flywheel/reply/dev2/2"]["error"]["kind"] == "invalid_input"
    assert "flywheel/reply/dev2/3" not in replies


class Requester:
    """A persistent-session MQTT 5 client on paho's own thread, reconnecting by itself."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: dict[bytes, list[bytes]] = {}
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="fw-requester", protocol=paho.MQTTv5
        )
        self.client.reconnect_delay_set(0.1, 1)
        self.client.max_inflight_messages_set(50)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe("req/replies/#", qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.answers.setdefault(bytes(msg.properties.CorrelationData), []).append(msg.payload)

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def publish(self, n: int) -> None:
        record = rows(1, seed=n)[0]
        self.client.publish(
            "flywheel/predict/req",
            orjson.dumps(record),
            qos=1,
            properties=_v5_props("req/replies/r1", b"req-%d" % n),
        )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow
def test_broker_restart_loses_no_request(broker: Broker, files: ModelFiles) -> None:
    n = 200
    requester = Requester(broker.port)

    async def main() -> MqttAdapter:
        async with serving(files, broker.url, max_in_flight=16) as adapter:
            await asyncio.to_thread(requester.start)
            for i in range(n // 2):
                requester.publish(i)
            await asyncio.sleep(0.02)
            await asyncio.to_thread(broker.stop)  # mid-stream: requests in flight
            assert not adapter.connected.is_set() or await _lost(adapter)
            for i in range(n // 2, n):  # queued by the requester while the broker is down
                requester.publish(i)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(broker.start)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with requester.lock:
                    if len(requester.answers) == n:
                        break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # let any duplicate arrive before counting
            return adapter

    try:
        adapter = asyncio.run(main())
    finally:
        requester.stop()
    missing = sorted(set(b"req-%d" % i for i in range(n)) - set(requester.answers))
    assert not missing, f"{len(missing)} requests unanswered, e.g. {missing[:5]}"
    assert adapter.connections >= 2  # it reconnected by itself
    # at-least-once, de-duplicated: any repeat carries the same answer
    repeats = {k: v for k, v in requester.answers.items() if len(v) > 1}
    for answers in repeats.values():
        assert len({orjson.loads(a)["predictions"][0] for a in answers}) == 1
    print(
        f"restart: {n} requests, {len(repeats)} answered twice, "
        f"{adapter.stats['duplicates']} duplicates suppressed, "
        f"{adapter.connections} connections"
    )


async def _lost(adapter: MqttAdapter) -> bool:
    for _ in range(100):
        if not adapter.connected.is_set():
            return True
        await asyncio.sleep(0.05)
    return False
