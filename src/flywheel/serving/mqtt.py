"""MQTT adapter: request/response predictions through a broker (docs/mqtt.md).

Off until a broker URL is set (``mqtt://host:1883`` or ``mqtts://host:8883``). The adapter
subscribes to ``request_topic`` (default ``flywheel/predict/#``) and answers each request:

- **MQTT 5 request/response**: the reply goes to the request's *Response Topic* with its
  *Correlation Data* copied;
- **no response topic** (MQTT 3.1.1 clients): the reply goes to a derived topic, the
  request topic with the filter's literal prefix swapped for ``reply_prefix``:
  ``flywheel/predict/<client>/<id>`` → ``flywheel/reply/<client>/<id>``;
- a request that cannot be answered (not JSON, bad rows, unknown model) gets an error
  reply on its reply topic, and a copy with the reason goes to ``error_topic``
  (default ``flywheel/errors``); a response topic with wildcards or one matching the
  request filter (a reply loop) goes to ``error_topic`` only.

Delivery (QoS 1, persistent session): a fixed client identifier, ``clean_start=False``
and a session expiry interval keep the subscription and un-acknowledged requests at the
broker while the adapter is away; a request's PUBACK is sent only after its reply was
acknowledged by the broker (manual acks, in arrival order as MQTT requires), so a broker
or adapter restart redelivers every unanswered request. That is at-least-once; answered
requests that come back (the broker's redelivery, flagged DUP, or a client resending a
request with the same Correlation Data) are recognised and acknowledged without a second
answer. The window where a duplicate can still escape is documented in docs/mqtt.md.

Flow control: at most ``max_in_flight`` requests are being answered; the same number is
sent as the MQTT 5 *Receive Maximum*, so the broker holds the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import orjson
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers, writeBytes
from paho.mqtt.subscribeoptions import SubscribeOptions

from flywheel.errors import ConfigError
from flywheel.serving._wire import loads as loads_json
from flywheel.serving._wire import native_request
from flywheel.serving.cycle import clean_client_id
from flywheel.serving.errors import BadRequest
from flywheel.serving.predictor import Predictor

if TYPE_CHECKING:
    from flywheel.config import Settings

__all__ = [
    "MqttAdapter",
    "MqttEndpoint",
    "MqttFront",
    "mqtt_front",
    "parse_mqtt_url",
    "reply_topic_for",
]

log = logging.getLogger("flywheel.serving.mqtt")

_SCHEMES = {"mqtt": (1883, False), "tcp": (1883, False), "mqtts": (8883, True), "ssl": (8883, True)}
_MAX_ID_CHARS = 128
_READ_BYTES = 65536  # one read from the broker's socket takes up to this much


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class MqttEndpoint:
    """Where the broker is; ``str()`` never shows the password."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        user = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str, *, key: str = "serving.mqtt_url") -> MqttEndpoint:
    """``mqtt://[user[:password]@]host[:port]`` (1883) or ``mqtts://...`` (8883, TLS)."""
    shown = url.split("@")[-1] if "@" in url else url  # never echo credentials
    fix = "Use mqtt://host:1883 or mqtts://host:8883 (user:password@ is optional)."
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{key} must be a URL, got {shown!r}. {fix}", key=key)
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in _SCHEMES:
        raise ConfigError(
            f"{key} has scheme {parts.scheme!r}; expected mqtt or mqtts. {fix}", key=key
        )
    default_port, tls = _SCHEMES[parts.scheme.lower()]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(
            f"{key} has a bad port in {shown!r}; give 1-65535. {fix}", key=key
        ) from None
    if not parts.hostname:
        raise ConfigError(f"{key} names no host ({shown!r}). {fix}", key=key)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"{key} must not carry a path or query ({shown!r}); topics are "
            "set with request_topic / error_topic.",
            key=key,
        )
    return MqttEndpoint(
        parts.hostname,
        port,
        tls,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def _check_topic(topic: str, what: str, *, wildcards: bool) -> None:
    if not isinstance(topic, str) or not topic or "\x00" in topic or len(topic) > 65535:
        raise ConfigError(f"{what} must be a non-empty topic, got {topic!r}.", key=what)
    if not wildcards and ("+" in topic or "#" in topic):
        raise ConfigError(f"{what} must not contain wildcards (+, #), got {topic!r}.", key=what)
    levels = topic.split("/")
    for n, level in enumerate(levels):
        if ("#" in level and (level != "#" or n != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise ConfigError(
                f"{what} {topic!r} misplaces a wildcard: '+' fills a whole "
                "level, '#' only the last.",
                key=what,
            )


def _filter_of(request_topic: str) -> str:
    """The topic filter without a ``$share/<group>/`` prefix (shared subscriptions)."""
    if request_topic.startswith("$share/"):
        parts = request_topic.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2]:
            raise ConfigError(
                f"request_topic {request_topic!r}: a shared subscription is "
                "$share/<group>/<filter>.",
                key="request_topic",
            )
        return parts[2]
    return request_topic


def reply_topic_for(topic: str, request_filter: str, reply_prefix: str) -> str:
    """The derived reply topic: ``topic`` with the filter's literal leading levels
    replaced by ``reply_prefix`` (``flywheel/predict/c1/7`` → ``flywheel/reply/c1/7``)."""
    literal = []
    for level in _filter_of(request_filter).split("/"):
        if level in ("+", "#"):
            break
        literal.append(level)
    levels = topic.split("/")
    rest = levels[len(literal) :] if levels[: len(literal)] == literal else levels
    return "/".join([reply_prefix, *rest]) if rest else reply_prefix


# --------------------------------------------------------------------------- plumbing


class _ReadBuffer:
    """The broker socket, its reads buffered. paho reads every packet's fixed header one byte
    per ``recv()`` (three system calls for a small PUBLISH or PUBACK); this takes what has
    arrived in one call and hands paho its bytes from memory. ``pending()`` counts them, so
    aiomqtt's reader (which drains ``pending()``, as for TLS) reads every buffered packet
    before it waits on the socket again. Everything else goes to the socket."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(_READ_BYTES)  # BlockingIOError etc. reach paho unchanged
            if len(data) <= size:
                return bytes(data)
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + size, len(self._buf))
        return self._buf[start : self._pos]

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _ReplyProperties:
    """A reply's MQTT 5 properties (Payload Format Indicator, Content Type, Correlation Data),
    packed with paho's encoders from bytes made once: a paho ``Properties`` is built and
    packed attribute by attribute at every publish (~20 µs). paho only calls ``pack()``."""

    _HEAD = b""  # the packed Payload Format Indicator and Content Type (set below)

    def __init__(self, correlation: bytes | None) -> None:
        self.correlation = correlation

    def pack(self) -> bytes:
        body = self._HEAD
        if self.correlation is not None:
            body += _CORRELATION_ID + writeBytes(self.correlation)
        return bytes(VariableByteIntegers.encode(len(body))) + body

    @staticmethod
    def reference(correlation: bytes | None) -> Properties:
        """The same properties as paho builds them (the tests compare both packings)."""
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.PayloadFormatIndicator = 1
        if correlation is not None:
            props.CorrelationData = correlation
        return props


def _packed_head() -> bytes:
    packed = _ReplyProperties.reference(None).pack()
    return bytes(packed[len(VariableByteIntegers.encode(len(packed) - 1)) :])


_CORRELATION_ID = bytes(
    VariableByteIntegers.encode(Properties(PacketTypes.PUBLISH).getIdentFromName("CorrelationData"))
)
_ReplyProperties._HEAD = _packed_head()


class _Client(aiomqtt.Client):
    """aiomqtt's client with a leaner path for each message (the adapter's hot path):

    - an incoming message keeps the DUP flag that aiomqtt's Message drops (de-dup needs it)
      and goes straight to ``dispatch`` (the adapter), not through a queue and an async
      iterator (aiomqtt makes a task and an ``asyncio.wait`` per message);
    - reads are buffered (:class:`_ReadBuffer`);
    - writes queued on the event loop are written at the end of the loop turn, instead of
      registering a writer through ``call_soon_threadsafe`` for every packet (a wake-up and
      two epoll changes each); only a full socket falls back to a writer;
    - a reply's PUBACK resolves a plain future (:meth:`publish_acked`), not an Event
      awaited through ``wait_for`` (a task per publish).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dispatch: Callable[[aiomqtt.Message], None] | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._flush_due = False

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        m = aiomqtt.Message._from_paho_message(message)
        m.dup = bool(getattr(message, "dup", False))  # type: ignore[attr-defined]
        if self.dispatch is not None:
            self.dispatch(m)
            return
        try:  # not being served (closing): left unacked, the broker redelivers it
            self._queue.put_nowait(m)
        except asyncio.QueueFull:  # unbounded by default; QoS 1 is bounded by Receive Maximum
            log.warning("MQTT incoming queue full; request %s dropped", message.mid)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):  # aiomqtt sets them only on a bare socket
            for option in self._socket_options:
                sock.setsockopt(*option)
        client._sock = _ReadBuffer(sock)  # type: ignore[assignment]
        super()._on_socket_open(client, userdata, sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # paho's connect, in an executor thread
            on_loop = False
        if not on_loop:
            super()._on_socket_register_write(client, userdata, sock)
        elif not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush, client, userdata, sock)

    def _flush(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._flush_due = False
        try:
            client.loop_write()
        except Exception as exc:  # as aiomqtt's writer: the connection broke
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        if client.want_write():  # the socket is full: write when it drains
            super()._on_socket_register_write(client, userdata, sock)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        ack = self._acks.pop(mid, None)
        if ack is None:
            super()._on_publish(client, userdata, mid, reason_code, properties)
        elif not ack.done():
            ack.set_result(None)

    async def publish_acked(
        self, topic: str, payload: bytes, qos: int, properties: Any, timeout: float
    ) -> None:
        """Publish; for QoS 1 wait (at most ``timeout`` s) until the broker acknowledged it.
        Raises aiomqtt's MqttError as its ``publish`` does."""
        info = self._client.publish(topic, payload, qos, False, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if qos == 0 or info.is_published():
            return
        ack = self._loop.create_future()
        self._acks[info.mid] = ack
        try:
            async with asyncio.timeout(timeout):
                await ack
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None
        finally:
            self._acks.pop(info.mid, None)


class _AckWindow:
    """Manual PUBACKs, sent in arrival order once each request is answered.

    paho acknowledges on receipt unless ``manual_ack`` is on; aiomqtt does not expose that
    switch, so it is set on the paho client it wraps. MQTT requires PUBACKs in the order
    the PUBLISHes came (MQTT-4.6.0-2), so a finished request waits for earlier ones.
    """

    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._order: deque[int] = deque()
        self._done: set[int] = set()

    def received(self, mid: int) -> None:
        self._order.append(mid)

    def finished(self, mid: int) -> None:
        self._done.add(mid)
        while self._order and self._order[0] in self._done:
            head = self._order.popleft()
            self._done.discard(head)
            self._client.ack(head, 1)


class _Answered:
    """Keys of requests answered recently (bounded by count and age)."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._keys: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        at = self._keys.get(key)
        return at is not None and time.monotonic() - at < self.ttl_s

    def add(self, key: bytes) -> None:
        self._keys[key] = time.monotonic()
        self._keys.move_to_end(key)
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)


@dataclass
class _Route:
    reply_topic: str | None  # None: only the error topic can be told
    correlation: bytes | None
    problem: str | None = None


# --------------------------------------------------------------------------- adapter


def _correlation_id(correlation: bytes | None) -> str | None:
    """The client's id from MQTT 5 Correlation Data: printable ASCII as sent (``c1`` is
    ``c1``, so ``/v1/feedback`` and a rollout's sticky key read it as every other door
    does); other bytes (a binary UUID) as their hex, at most 64 characters."""
    if not correlation:
        return None
    return clean_client_id(correlation) or correlation.hex()[:64]


class MqttAdapter:
    """Answers prediction requests from an MQTT broker; see the module docstring.

    ``await adapter.run()`` serves until cancelled or :meth:`close` is called, reconnecting
    with exponential backoff (``backoff_initial_s`` doubling to ``backoff_max_s``, with
    jitter) whenever the broker goes away.
    """

    def __init__(
        self,
        predictor: Predictor,
        url: str,
        *,
        request_topic: str = "flywheel/predict/#",
        error_topic: str = "flywheel/errors",
        reply_prefix: str = "flywheel/reply",
        client_id: str = "flywheel-serving",
        qos: int = 1,
        protocol: str = "5",
        session_expiry_s: int = 86_400,
        max_in_flight: int = 64,
        keepalive_s: int = 30,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        publish_timeout_s: float = 10.0,
        drain_timeout_s: float = 10.0,
        dedup_window: int = 10_000,
        dedup_ttl_s: float = 3600.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = parse_mqtt_url(url)
        _check_topic(request_topic, "request_topic", wildcards=True)
        self.request_filter = _filter_of(request_topic)
        _check_topic(error_topic, "error_topic", wildcards=False)
        _check_topic(reply_prefix, "reply_prefix", wildcards=False)
        if paho.topic_matches_sub(
            self.request_filter, reply_prefix + "/x"
        ) or paho.topic_matches_sub(self.request_filter, error_topic):
            raise ConfigError(
                f"reply_prefix {reply_prefix!r} and error_topic {error_topic!r} "
                f"must lie outside request_topic {request_topic!r} (a reply "
                "would be read back as a request).",
                key="request_topic",
            )
        if qos not in (0, 1):
            raise ConfigError(
                f"mqtt qos must be 0 or 1, got {qos!r} (QoS 2 adds nothing "
                "here: answers are de-duplicated).",
                key="qos",
            )
        if protocol not in ("5", "3.1.1"):
            raise ConfigError(
                f"mqtt protocol must be '5' or '3.1.1', got {protocol!r}.", key="protocol"
            )
        if not client_id:
            raise ConfigError(
                "client_id must be set: a persistent session needs a fixed "
                "client identifier (unique per replica).",
                key="client_id",
            )
        if not 1 <= max_in_flight <= 65535:
            raise ConfigError(
                f"max_in_flight must be 1-65535, got {max_in_flight!r}.", key="max_in_flight"
            )
        self.predictor = predictor
        self.request_topic, self.error_topic = request_topic, error_topic
        self.reply_prefix, self.client_id, self.qos = reply_prefix, client_id, qos
        self.v5 = protocol == "5"
        self.session_expiry_s, self.max_in_flight = session_expiry_s, max_in_flight
        self.keepalive_s = keepalive_s
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.publish_timeout_s, self.drain_timeout_s = publish_timeout_s, drain_timeout_s
        self.tls_context = tls_context
        self.connected = asyncio.Event()
        self.connections = 0  # successful connects (more than one: it reconnected)
        self.stats = {"received": 0, "answered": 0, "errors": 0, "duplicates": 0}
        self._answered = _Answered(dedup_window, dedup_ttl_s)
        self._pending: dict[bytes, asyncio.Future[bool]] = {}
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Serve until cancelled or closed; reconnect with backoff on any broker failure."""
        self._stopping.clear()
        self._stopped.clear()
        delay = self.backoff_initial_s
        try:
            while not self._stopping.is_set():
                before = self.connections
                try:
                    await self._session()
                except aiomqtt.MqttError as exc:
                    if self.connections > before:
                        delay = self.backoff_initial_s  # it was up: start the backoff over
                    log.warning(
                        "MQTT broker %s: %s; reconnecting in %.1fs", self.endpoint, exc, delay
                    )
                if self._stopping.is_set():
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.backoff_max_s)
        finally:
            self.connected.clear()
            self._stopped.set()

    async def close(self) -> None:
        """Stop reading, let requests in hand finish (``drain_timeout_s``), disconnect.
        Requests not answered stay with the broker for the next session."""
        self._stopping.set()
        if not self._stopped.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.drain_timeout_s + 5)

    def _client(self) -> _Client:
        props = None
        options: dict[str, Any] = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            props.ReceiveMaximum = self.max_in_flight
            options["clean_start"] = False
        else:
            options["clean_session"] = False
        client = _Client(
            self.endpoint.host,
            self.endpoint.port,
            identifier=self.client_id,
            username=self.endpoint.username,
            password=self.endpoint.password,
            protocol=aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311,
            properties=props,
            keepalive=self.keepalive_s,
            timeout=self.publish_timeout_s,
            tls_context=self._tls(),
            logger=logging.getLogger("flywheel.serving.mqtt.client"),
            # paho leaves Nagle on: small replies would wait for delayed ACKs (~40 ms each)
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            **options,
        )
        # aiomqtt has no manual-ack option; paho's client (which it wraps) does.
        client._client.manual_ack_set(True)
        client.pending_calls_threshold = 2 * self.max_in_flight + 10  # its warning level
        return client

    def _tls(self) -> ssl.SSLContext | None:
        if self.tls_context is not None or not self.endpoint.tls:
            return self.tls_context
        return ssl.create_default_context()

    async def _session(self) -> None:
        """One connection: subscribe, read until the broker goes or close() is called."""
        async with self._client() as client:
            self.connections += 1
            self.connected.set()
            log.info(
                "MQTT connected to %s as %s (connection %d), serving %s",
                self.endpoint,
                self.client_id,
                self.connections,
                self.request_topic,
            )
            tasks: set[asyncio.Task[None]] = set()
            try:
                await client.subscribe(self.request_topic, **self._sub_options())
                reader = asyncio.create_task(self._read(client, tasks))
                stop = asyncio.create_task(self._stopping.wait())
                # The reader may sit on a full in-flight bound; watch the connection itself
                # (aiomqtt fails pending publishes only at their timeout).
                lost: asyncio.Future[Any] = client._disconnected
                waiting: set[asyncio.Future[Any]] = {reader, stop, lost}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if lost.done() and not reader.done():
                    reader.cancel()
                    await asyncio.wait({reader})
                    cause = lost.exception()
                    raise aiomqtt.MqttError(f"connection lost ({cause})") from cause
                if reader.done():
                    reader.result()  # raises the MqttError of a lost connection
                else:  # closing: stop reading, finish what is in hand, then DISCONNECT
                    reader.cancel()
                    await asyncio.wait({reader})
                    if tasks:
                        await asyncio.wait(tasks, timeout=self.drain_timeout_s)
            finally:
                self.connected.clear()
                for task in tasks:
                    task.cancel()  # unacked: the broker redelivers them next session
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)

    def _sub_options(self) -> dict[str, Any]:
        if self.v5:
            return {"options": SubscribeOptions(qos=self.qos, noLocal=True)}
        return {"qos": self.qos}

    async def _read(self, client: _Client, tasks: set[asyncio.Task[None]]) -> None:
        """Answer each incoming request in its own task, at most ``max_in_flight`` at once
        (the rest wait here, in arrival order), until cancelled. The client hands every
        message over as paho reads it (``dispatch``)."""
        window = _AckWindow(client._client)
        waiting: deque[aiomqtt.Message] = deque()

        def start(message: aiomqtt.Message) -> None:
            task = asyncio.create_task(self._handle(client, window, message))
            tasks.add(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if waiting and client.dispatch is not None:
                start(waiting.popleft())

        def arrived(message: aiomqtt.Message) -> None:
            if message.qos > 0:
                window.received(message.mid)  # PUBACKs go in arrival order
            if len(tasks) < self.max_in_flight:
                start(message)
            else:
                waiting.append(message)

        client.dispatch = arrived
        while not client._queue.empty():  # what came before the reader (a session's backlog)
            arrived(client._queue.get_nowait())
        try:
            await asyncio.Event().wait()  # the session watches the connection and close()
        finally:
            client.dispatch = None  # stop reading: what is not begun stays unacked

    # ------------------------------------------------------------------ one request
    async def _handle(self, client: _Client, window: _AckWindow, message: aiomqtt.Message) -> None:
        self.stats["received"] += 1
        try:
            await self._answer_once(client, message)
        except aiomqtt.MqttError as exc:  # could not publish: leave unacked for redelivery
            log.warning(
                "MQTT reply for %s not sent (%s); the broker will redeliver it", message.topic, exc
            )
            return
        except Exception:  # acked anyway: a poison request must not loop
            log.exception("MQTT request on %s failed", message.topic)
        if message.qos > 0:
            window.finished(message.mid)

    async def _answer_once(self, client: _Client, message: aiomqtt.Message) -> None:
        route = self._route(message)
        key = self._key(route, message.payload)
        retry = route.correlation is not None or getattr(message, "dup", False)
        if retry:
            if key in self._answered:
                self.stats["duplicates"] += 1
                log.info(
                    "MQTT duplicate of an answered request on %s; not answered again", message.topic
                )
                return
            earlier = self._pending.get(key)
            if earlier is not None and await asyncio.shield(earlier):
                self.stats["duplicates"] += 1
                return
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[key] = done
        try:
            await self._answer(client, message, route)
            self._answered.add(key)
            done.set_result(True)
        finally:
            if not done.done():
                done.set_result(False)
            if self._pending.get(key) is done:
                del self._pending[key]

    def _route(self, message: aiomqtt.Message) -> _Route:
        props = message.properties
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        correlation = bytes(correlation) if correlation else None
        if not response:
            return _Route(
                reply_topic_for(str(message.topic), self.request_filter, self.reply_prefix),
                correlation,
            )
        if "+" in response or "#" in response:
            return _Route(
                None,
                correlation,
                f"The response topic {response[:200]!r} has wildcards; give a plain topic.",
            )
        if paho.topic_matches_sub(self.request_filter, response):
            return _Route(
                None,
                correlation,
                f"The response topic {response[:200]!r} matches "
                f"the request topic {self.request_topic!r}; "
                "answer there would loop. Use another topic.",
            )
        return _Route(response, correlation)

    @staticmethod
    def _key(route: _Route, payload: bytes) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        for part in (str(route.reply_topic).encode(), route.correlation or b"", payload):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.digest()

    async def _answer(self, client: _Client, message: aiomqtt.Message, route: _Route) -> None:
        msg_id: Any = None
        calls = self.predictor.calls
        call = calls.begin("mqtt", "mqtt", _correlation_id(route.correlation))
        try:
            if route.problem is not None:
                raise BadRequest(route.problem, rule="response_topic")
            try:
                data = loads_json(message.payload)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(
                    f"The payload is not valid JSON (at byte {exc.pos}). Send "
                    '{"records": [...]} or one record object.',
                    rule="json",
                ) from None
            msg_id = _payload_id(data)
            if msg_id is not None:  # the payload's id is the client's id ("id" is no feature)
                call.client_id = clean_client_id(str(msg_id)) or call.client_id
            if isinstance(data, dict) and "id" in data:
                data = {k: v for k, v in data.items() if k != "id"}
            request = native_request(
                data, "mqtt", request_id=call.request_id, client_id=call.client_id
            )
            response = await self.predictor.predict(request)
        except Exception as exc:  # answered with the error's kind, never a stack trace
            error = calls.failed(call, exc)
            calls.end(call, error.status)
            await self._fail(client, message, route, msg_id, error.to_dict()["error"])
            return
        calls.end(call, 200)
        body = response.to_dict()
        if msg_id is not None:
            body = {"id": msg_id, **body}
        await self._publish(client, route.reply_topic, body, route.correlation)  # type: ignore[arg-type]
        self.stats["answered"] += 1

    async def _fail(
        self,
        client: _Client,
        message: aiomqtt.Message,
        route: _Route,
        msg_id: Any,
        error: dict[str, Any],
    ) -> None:
        self.stats["errors"] += 1
        if route.reply_topic is not None:
            await self._publish(
                client, route.reply_topic, {"id": msg_id, "error": error}, route.correlation
            )
        report = {
            "error": error,
            "topic": str(message.topic),
            "id": msg_id,
            "reply_topic": route.reply_topic,
            "correlation": route.correlation.hex() if route.correlation else None,
        }
        await self._publish(client, self.error_topic, report, None)

    async def _publish(
        self, client: _Client, topic: str, body: dict[str, Any], correlation: bytes | None
    ) -> None:
        props = _ReplyProperties(correlation) if self.v5 else None
        payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        await client.publish_acked(topic, payload, self.qos, props, self.publish_timeout_s)


def _payload_id(data: Any) -> Any:
    if not isinstance(data, dict):
        return None
    value = data.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return value if not isinstance(value, str) or len(value) <= _MAX_ID_CHARS else None


class MqttFront:
    """The MQTT front (:mod:`flywheel.serving.fronts`): connects once the models are loaded
    and serves until closed, reconnecting with backoff. The adapter (and so every topic and
    URL check) is built by the factory, before anything listens."""

    name = "mqtt"

    def __init__(self, url: str, **options: Any) -> None:
        # built now: a bad URL or topic fails at start-up, not at the first connect
        self.adapter = MqttAdapter(None, url, **options)  # type: ignore[arg-type]
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> str:
        return f"MQTT {self.adapter.endpoint} {self.adapter.request_topic}"

    async def start(self, predictor: Predictor) -> None:
        self.adapter.predictor = predictor
        self._task = asyncio.create_task(self._run(predictor), name="flywheel-mqtt")

    async def _run(self, predictor: Predictor) -> None:
        while not predictor.ready:
            await asyncio.sleep(0.05)
        await self.adapter.run()

    async def close(self) -> None:
        if self._task is not None:
            await self.adapter.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def mqtt_front(settings: Settings, block: Any) -> MqttFront | None:
    """On when ``serving.mqtt_url`` (or the block's ``url``) is set; the block may override
    any :class:`MqttAdapter` option (``qos``, ``protocol``, ``max_in_flight``, ...)."""
    sv = settings.serving
    options = dict(block)
    url = options.pop("url", sv.mqtt_url)
    if not url:
        return None
    options.setdefault("request_topic", sv.mqtt_request_topic)
    options.setdefault("error_topic", sv.mqtt_error_topic)
    options.setdefault("reply_prefix", sv.mqtt_reply_prefix)
    options.setdefault("client_id", sv.mqtt_client_id)
    return MqttFront(str(url), **options)
