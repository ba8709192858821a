"""A small HTTP/2 server for unary gRPC calls, on the predictor's event loop.

Why by hand: grpcio's server costs ~125-155 µs of Python per call before any work (a
Condition, a context and closures per call, in a thread that must hand the call to the event
loop and wait), which alone capped one core near 6,500 calls/s with nothing else done
(bench/README.md, "The other doors"). A gRPC unary call is three HTTP/2 frames each way; here
they are read and written by an :class:`asyncio.Protocol` on the loop that runs the
predictor, so calls that arrive together meet in one micro-batch with no thread hand-off.

What it speaks: HTTP/2 over cleartext TCP with prior knowledge (what gRPC clients use for an
insecure channel: ``grpcio``, ``tritonclient.grpc``, ``grpcurl -plaintext``, h2load), unary
calls only, flow control both ways, PING, GOAWAY and RST_STREAM, request messages compressed
with ``gzip`` or ``deflate`` (answers are not compressed). Not offered: TLS (put a proxy in
front, as for REST), server push, streaming RPCs (answered UNIMPLEMENTED), server-side
deadlines (the client's own ``grpc-timeout`` still ends its wait: it cancels the stream,
which cancels the call here).

Header blocks are decoded by ``hpack`` (the python-hyper decoder). A block of indexed
fields and literals not to be indexed (the common case: a client repeating the same call)
leaves the decoder's table as it was, so its decoding is kept and reused while no other
block could have changed the table. Answers' headers are written without indexing, so the
order in which streams' answers leave never matters to the client's decoder.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import struct
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple
from urllib.parse import quote

from hpack import Decoder, HPACKError

__all__ = ["H2Server", "Reply", "StatusCode", "Unary"]

log = logging.getLogger("flywheel.serving")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (PRIORITY = 2 is ignored, as any unknown type)
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = 0, 1, 3, 4, 5, 6, 7
WINDOW_UPDATE, CONTINUATION = 8, 9
# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED = 0x0, 0x1, 0x3, 0x5
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM = 0xB
# settings ids
ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 5, 6


class StatusCode(enum.IntEnum):
    """gRPC's status codes (the numbers of ``grpc.StatusCode``, without importing grpcio)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


MAX_STREAMS = 256  # concurrent calls per connection (more are refused: REFUSED_STREAM)
STREAM_WINDOW = 1 << 20  # what a client may send on one stream before we say "more"
CONNECTION_WINDOW = 1 << 24
MAX_HEADER_LIST = 16 * 1024
MAX_HEADER_BLOCK = 64 * 1024  # a header block (HEADERS + CONTINUATION) larger: GOAWAY
MAX_DETAILS = 1024  # characters of grpc-message sent back
MAX_WINDOW = (1 << 31) - 1
_BLOCK_CACHE = 64  # decoded header blocks kept per connection

_HEADER = struct.Struct(">BHBBI")  # length (24 bits: high byte, low 16), type, flags, stream
_U32 = struct.Struct(">I")


class Reply(NamedTuple):
    """A call's outcome: the serialized answer (``code`` 0), or a gRPC status with its
    details and extra trailing metadata."""

    message: bytes | None
    code: int = StatusCode.OK
    details: str = ""
    trailers: tuple[tuple[str, str], ...] = ()


# the error kind every flywheel error answer carries (grpc.py adds it to the methods' own)
_TOO_LARGE = (("flywheel-error-kind", "payload_too_large"),)

# a unary method: (request message bytes, request headers) -> its reply
Unary = Callable[[bytes, list[tuple[str, str]]], Awaitable[Reply]]


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def _int(value: int, prefix: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1)."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes((first | value,))
    out = bytearray((first | top,))
    value -= top
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """A literal field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    n, v = name.encode("ascii"), value.encode("ascii")
    return b"\x00" + _int(len(n), 7) + n + _int(len(v), 7) + v


# ":status: 200" (static index 8) and "content-type: application/grpc" (name: static 31)
_RESPONSE_HEADERS = b"\x88" + _int(31, 4) + _int(16, 7) + b"application/grpc"
_OK_TRAILERS = _literal("grpc-status", "0")


def _details(text: str) -> str:
    """grpc-message's percent-encoding (the gRPC HTTP/2 spec)."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _skip_int(block: bytes, i: int, prefix: int) -> tuple[int, int]:
    """(value, next offset) of the HPACK integer at ``block[i]`` with an N-bit prefix."""
    top = (1 << prefix) - 1
    value = block[i] & top
    i += 1
    if value == top:
        shift = 0
        while True:
            b = block[i]
            i += 1
            value += (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
    return value, i


def _keeps_table(block: bytes) -> bool:
    """Whether decoding ``block`` leaves the dynamic table as it was: it holds only indexed
    fields and literals without (or never) indexing, no table size update (RFC 7541 6)."""
    i, n = 0, len(block)
    try:
        while i < n:
            b = block[i]
            if b & 0x80:  # indexed field
                i = _skip_int(block, i, 7)[1]
            elif b & 0xE0 == 0:  # literal without indexing (0000) or never indexed (0001)
                index, i = _skip_int(block, i, 4)
                if index == 0:  # the name is a string
                    length, i = _skip_int(block, i, 7)
                    i += length
                length, i = _skip_int(block, i, 7)  # the value
                i += length
            else:  # incremental indexing or a size update: the table changes
                return False
    except IndexError:
        return False
    return i == n


class _Stream:
    __slots__ = (
        "block", "body", "done", "ended", "headers", "id", "pending", "send_window", "task",
        "trailers", "window_owed",
    )  # fmt: skip

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.block = bytearray()  # a header block still arriving (CONTINUATION)
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.ended = False  # the client's side is closed (END_STREAM seen)
        self.done = False  # our answer is complete (or the stream was reset)
        self.task: asyncio.Task[None] | None = None
        self.send_window = send_window
        self.window_owed = 0
        self.pending = b""  # answer bytes waiting for flow-control window
        self.trailers = b""


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.blocks: dict[bytes, tuple[int, list[tuple[str, str]]]] = {}
        self.table_generation = 0
        self.streams: dict[int, _Stream] = {}
        self.blocked: dict[int, _Stream] = {}
        self.continuing: _Stream | None = None
        self.last_stream = 0
        self.peer_window = 65535  # the peer's initial stream window (SETTINGS)
        self.peer_frame = 16384  # the peer's max frame size
        self.send_window = 65535  # connection-level window the peer gave us
        self.recv_owed = 0  # connection-level bytes read and not yet given back
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closing = False  # GOAWAY sent or received: no new streams
        self.failed = False  # a connection error was sent: nothing more is read

    # ------------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        settings = struct.pack(
            ">HIHIHIHI",
            MAX_CONCURRENT_STREAMS, MAX_STREAMS,
            INITIAL_WINDOW_SIZE, STREAM_WINDOW,
            MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST,
            ENABLE_PUSH, 0,
        )  # fmt: skip
        increment = _U32.pack(CONNECTION_WINDOW - 65535)
        transport.write(_frame(SETTINGS, 0, 0, settings) + _frame(WINDOW_UPDATE, 0, 0, increment))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for stream in self.streams.values():
            if stream.task is not None and not stream.task.done():
                stream.task.cancel()
        self.streams.clear()
        self.blocked.clear()
        self.transport = None

    def _write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _fail(self, code: int, why: str) -> None:
        """A connection error: GOAWAY with ``code``, then close."""
        if self.failed:
            return
        log.info("gRPC connection closed: %s", why)
        self._write(_frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code)))
        self._flush()
        self.closing = self.failed = True
        if self.transport is not None:
            self.transport.close()

    # a client that does not read its answers: stop reading its requests until it does
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.failed:
            self.transport.resume_reading()

    # ------------------------------------------------------------------ reading
    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        buffer = self.buffer
        buffer += data
        if not self.preface:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(bytes(buffer)):
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 client (no preface)")
                return
            if buffer[: len(PREFACE)] != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 client (no preface)")
                return
            del buffer[: len(PREFACE)]
            self.preface = True
        pos, size = 0, len(buffer)
        unpack = _HEADER.unpack_from
        while size - pos >= 9 and not self.failed:
            high, low, kind, flags, stream = unpack(buffer, pos)
            length = high << 16 | low
            if length > STREAM_WINDOW:
                self._fail(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                return
            if size - pos - 9 < length:
                break
            payload = bytes(buffer[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._frame_in(kind, flags, stream & 0x7FFFFFFF, payload)
        del buffer[:pos]
        if self.recv_owed >= CONNECTION_WINDOW // 2:
            self._write(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.recv_owed)))
            self.recv_owed = 0
        if self.out:
            self._flush()

    def _frame_in(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a frame inside a header block")
            return
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            stream = self.continuing
            if stream is None or stream.id != sid:
                self._fail(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
                return
            stream.block += payload
            if len(stream.block) > MAX_HEADER_BLOCK:
                self._fail(ENHANCE_YOUR_CALM, f"a header block over {MAX_HEADER_BLOCK} bytes")
                return
            if flags & END_HEADERS:
                self.continuing = None
                self._header_block(stream, bytes(stream.block))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if not flags & ACK:
                self._write(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self.streams.pop(sid, None)
            self.blocked.pop(sid, None)
            if stream is not None:
                stream.done = True
                if stream.task is not None and not stream.task.done():
                    stream.task.cancel()
        elif kind == GOAWAY:
            self.closing = True
            if not self.streams and self.transport is not None:
                self.transport.close()
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored, as the spec asks

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "window too large")
                    return
                delta, self.peer_window = value - self.peer_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                self.peer_frame = max(16384, min(value, (1 << 24) - 1))
        self._write(_frame(SETTINGS, ACK, 0))
        self._drain_blocked()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
            return
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            self.send_window = min(self.send_window + increment, MAX_WINDOW)
            self._drain_blocked()
            return
        stream = self.streams.get(sid)
        if stream is not None:
            stream.send_window = min(stream.send_window + increment, MAX_WINDOW)
            if sid in self.blocked:
                self._drain(stream)

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0 or sid % 2 == 0:
            self._fail(PROTOCOL_ERROR, f"HEADERS on stream {sid}")
            return
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                self._fail(PROTOCOL_ERROR, "PADDED HEADERS without a pad length")
                return
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            self._fail(PROTOCOL_ERROR, "HEADERS padding or priority longer than the frame")
            return
        stream = self.streams.get(sid)
        if stream is None:
            stream = _Stream(sid, self.peer_window)
            if sid <= self.last_stream:  # a stream already answered (or never opened)
                stream.done = True
                self._write(_frame(RST_STREAM, 0, sid, _U32.pack(STREAM_CLOSED)))
            elif self.closing or len(self.streams) >= MAX_STREAMS:
                self.last_stream = sid
                stream.done = True
                self._write(_frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM)))
            else:
                self.last_stream = sid
                self.streams[sid] = stream
            # (a done stream's header block is still decoded: it updates the decoder's table)
        if flags & END_STREAM:
            stream.ended = True
        if flags & END_HEADERS:
            self._header_block(stream, payload[start:end])
        else:
            stream.block = bytearray(payload[start:end])
            self.continuing = stream

    def _decode(self, block: bytes) -> list[tuple[str, str]] | None:
        cached = self.blocks.get(block)
        if cached is not None and cached[0] == self.table_generation:
            return cached[1]
        try:
            headers: list[tuple[str, str]] = list(self.decoder.decode(block))  # type: ignore[arg-type]
        except HPACKError as exc:
            self._fail(COMPRESSION_ERROR, f"bad header block ({exc})")
            return None
        if _keeps_table(block):
            if len(self.blocks) >= _BLOCK_CACHE:
                self.blocks.clear()
            self.blocks[block] = (self.table_generation, headers)
        else:
            self.table_generation += 1
        return headers

    def _header_block(self, stream: _Stream, block: bytes) -> None:
        stream.block = bytearray()
        headers = self._decode(block)
        if headers is None or stream.done:
            return
        if stream.headers:  # trailers: only their END_STREAM matters
            if stream.ended:
                self._call(stream)
            return
        stream.headers = headers
        if stream.ended:
            self._call(stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        charged = len(payload)  # flow control counts the padding too
        self.recv_owed += charged
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                self._fail(PROTOCOL_ERROR, "DATA padding longer than the frame")
                return
            payload = payload[1 : len(payload) - payload[0]]
        stream = self.streams.get(sid)
        if stream is None or stream.done or stream.ended:
            return
        stream.body += payload
        if len(stream.body) > self.server.max_message + 5:
            self._reply(
                stream,
                Reply(
                    None,
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message larger than max ({len(stream.body) - 5} vs. "
                    f"{self.server.max_message}); serving.max_body_bytes sets the limit",
                    _TOO_LARGE,
                ),
            )
            self._write(_frame(RST_STREAM, 0, sid, _U32.pack(NO_ERROR)))
            return
        if flags & END_STREAM:
            stream.ended = True
            self._call(stream)
            return
        stream.window_owed += charged
        if stream.window_owed >= STREAM_WINDOW // 2:
            self._write(_frame(WINDOW_UPDATE, 0, sid, _U32.pack(stream.window_owed)))
            stream.window_owed = 0

    # ------------------------------------------------------------------ calls
    def _call(self, stream: _Stream) -> None:
        """The client's side is complete: check the call and start its method."""
        if stream.task is not None or stream.done:
            return
        headers = stream.headers
        path = method = content_type = encoding = ""
        for name, value in headers:
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
            elif name == "content-type":
                content_type = value
            elif name == "grpc-encoding":
                encoding = value
        grpc_type = content_type == "application/grpc" or content_type.startswith(
            ("application/grpc+", "application/grpc;")
        )
        if method != "POST" or not grpc_type:
            status = "405" if method != "POST" else "415"
            block = _int(8, 4) + _int(len(status), 7) + status.encode()  # :status, no index
            self._finish_raw(stream, _frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
            return
        unary = self.server.methods.get(path)
        if unary is None:
            self._reply(
                stream, Reply(None, StatusCode.UNIMPLEMENTED, f"Method not found: {path[:200]}")
            )
            return
        body = stream.body
        if len(body) < 5 or _U32.unpack_from(body, 1)[0] != len(body) - 5:
            self._reply(stream, Reply(None, StatusCode.INTERNAL, "Expected one request message"))
            return
        message = bytes(body[5:])
        if body[0]:
            if encoding not in ("gzip", "deflate"):
                self._reply(
                    stream,
                    Reply(
                        None, StatusCode.UNIMPLEMENTED, f"Compression {encoding!r} not supported"
                    ),
                )
                return
            limit = self.server.max_message
            try:  # never more than the limit: a small bomb must not inflate in memory
                inflate = zlib.decompressobj(31 if encoding == "gzip" else 15)
                message = inflate.decompress(message, limit + 1)
            except zlib.error:
                self._reply(
                    stream, Reply(None, StatusCode.INTERNAL, "Could not decompress the message")
                )
                return
            if len(message) > limit:
                self._reply(
                    stream,
                    Reply(
                        None,
                        StatusCode.RESOURCE_EXHAUSTED,
                        f"Received message larger than max once decompressed (over {limit} "
                        "bytes); serving.max_body_bytes sets the limit",
                        _TOO_LARGE,
                    ),
                )
                return
        stream.body = bytearray()
        if self.server.limit is not None and self.server.in_flight >= self.server.limit:
            self._reply(
                stream, Reply(None, StatusCode.RESOURCE_EXHAUSTED, "Too many calls in flight")
            )
            return
        self.server.in_flight += 1
        stream.task = self.loop.create_task(self._run(stream, unary, message, headers))
        # counted off when the task ends, even when it is cancelled before it first runs
        stream.task.add_done_callback(self.server.call_done)

    async def _run(
        self, stream: _Stream, unary: Unary, message: bytes, headers: list[tuple[str, str]]
    ) -> None:
        try:
            reply = await unary(message, headers)
        except asyncio.CancelledError:
            return  # the client reset the stream, or the server is closing
        except Exception:
            log.exception("gRPC call failed")
            reply = Reply(None, StatusCode.UNKNOWN, "Unexpected error in the server")
        if not stream.done and self.transport is not None:
            self._reply(stream, reply)

    def _reply(self, stream: _Stream, reply: Reply) -> None:
        sid = stream.id
        if reply.message is None:  # Trailers-Only
            block = _RESPONSE_HEADERS + _literal("grpc-status", str(int(reply.code)))
            if reply.details:
                block += _literal("grpc-message", _details(reply.details[:MAX_DETAILS]))
            for name, value in reply.trailers:
                block += _literal(name, value)
            self._finish_raw(stream, self._header_frames(sid, END_STREAM, block))
            return
        message = reply.message
        self._write(_frame(HEADERS, END_HEADERS, sid, _RESPONSE_HEADERS))
        stream.pending = b"\x00" + _U32.pack(len(message)) + message
        stream.trailers = _frame(HEADERS, END_HEADERS | END_STREAM, sid, _OK_TRAILERS)
        self._drain(stream)

    def _header_frames(self, sid: int, flags: int, block: bytes) -> bytes:
        """A header block as HEADERS (+ CONTINUATION) frames no larger than the peer takes."""
        size = self.peer_frame
        if len(block) <= size:
            return _frame(HEADERS, flags | END_HEADERS, sid, block)
        chunks = [block[i : i + size] for i in range(0, len(block), size)]
        frames = [_frame(HEADERS, flags, sid, chunks[0])]
        frames += [_frame(CONTINUATION, 0, sid, c) for c in chunks[1:-1]]
        frames.append(_frame(CONTINUATION, END_HEADERS, sid, chunks[-1]))
        return b"".join(frames)

    def _finish_raw(self, stream: _Stream, frames: bytes) -> None:
        self._write(frames)
        self._close_stream(stream)

    def _close_stream(self, stream: _Stream) -> None:
        stream.done = True
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        if self.closing and not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()

    def _drain(self, stream: _Stream) -> None:
        """Send what flow control allows of ``stream``'s answer; the rest waits."""
        pending = stream.pending
        while pending:
            n = min(len(pending), stream.send_window, self.send_window, self.peer_frame)
            if n <= 0:
                stream.pending = pending
                self.blocked[stream.id] = stream
                return
            self._write(_frame(DATA, 0, stream.id, pending[:n]))
            pending = pending[n:]
            stream.send_window -= n
            self.send_window -= n
        stream.pending = b""
        self._write(stream.trailers)
        self._close_stream(stream)

    def _drain_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            self.blocked.pop(stream.id, None)
            self._drain(stream)

    def goaway(self) -> None:
        """Refuse new streams (those above the last one seen); finish the rest."""
        self.closing = True
        self._write(_frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, NO_ERROR)))
        if not self.streams and self.transport is not None:
            self._flush()
            self.transport.close()


class H2Server:
    """Listen on ``host:port`` and answer the unary gRPC ``methods`` (``/pkg.Service/Method``
    -> :data:`Unary`). ``max_message``: the largest request message accepted (larger ones
    get RESOURCE_EXHAUSTED); ``limit``: calls in flight across connections (None: no limit)."""

    def __init__(
        self, methods: Mapping[str, Unary], *, max_message: int, limit: int | None = None
    ) -> None:
        self.methods = dict(methods)
        self.max_message = max_message
        self.limit = limit
        self.in_flight = 0
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._stopped = asyncio.Event()

    def call_done(self, task: asyncio.Task[None]) -> None:
        self.in_flight -= 1

    async def listen(self, sock: socket.socket) -> None:
        """Start accepting on ``sock`` (bound and listening)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting, tell every client (GOAWAY), let calls in hand finish for
        ``grace`` seconds (None: cancel them now), then close the connections."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.goaway()
        if grace:
            deadline = asyncio.get_running_loop().time() + grace
            while self.in_flight and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn._flush()
            transport = conn.transport
            if transport is None:
                continue
            if transport.get_write_buffer_size():  # a client that stopped reading must not
                transport.abort()  # keep its connection open after the grace
            else:
                transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        self._stopped.set()

    async def wait_closed(self) -> None:
        await self._stopped.wait()
