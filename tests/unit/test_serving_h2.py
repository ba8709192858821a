"""The HTTP/2 transport of the gRPC front (flywheel.serving.h2), as clients meet it: grpcio's
client for flow control both ways, compression, cancellation, keepalive pings, a graceful
stop and unknown methods; a raw HTTP/2 client (hpack + frames by hand) for what grpcio never
sends: a reset mid-request, padding, CONTINUATION, too many streams, a wrong content type,
an HTTP/1.1 client."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from hpack import Decoder, Encoder

from flywheel.serving import grpc as fgrpc
from flywheel.serving import h2
from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from flywheel.serving.predictor import Predictor
from flywheel.serving.sources import ModelFiles
from flywheel.serving.types import PredictRequest
from tests.unit.serving_models import build, frame
from tests.unit.test_serving_grpc import expected, outputs_of, predictor_for, typed_request

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFiles]:
    return {"churn": build(tmp_path_factory.mktemp("h2-models"), version="3")}


@contextlib.asynccontextmanager
async def served(predictor: Predictor) -> AsyncIterator[tuple[fgrpc.GrpcServer, int]]:
    server = fgrpc.create_grpc_server(predictor, "127.0.0.1", 0)
    await server.start()
    await predictor.start()
    try:
        yield server, server.port
    finally:
        await server.stop(None)
        await predictor.close()


async def core_answer(predictor: Predictor, df: Any) -> Any:
    await predictor.start()
    columns = {s.name: df[s.name].to_numpy() for s in predictor.model().schema.specs}
    try:
        return await predictor.predict(PredictRequest(columns=columns))
    finally:
        await predictor.close()


# --------------------------------------------------------------------------- a raw client


def frame_bytes(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream) + payload


class RawClient:
    """An HTTP/2 client written by hand: frames out, frames in (hpack for the headers)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.encoder, self.decoder = Encoder(), Decoder()

    async def __aenter__(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(h2.PREFACE + frame_bytes(h2.SETTINGS, 0, 0))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def headers(self, path: str = INFER, content_type: str = "application/grpc") -> bytes:
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", content_type),
                ("te", "trailers"),
            ]
        )

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def read_frame(self) -> tuple[int, int, int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(9), 10)
        high, low, kind, flags, stream = struct.unpack(">BHBBI", head)
        payload = await self.reader.readexactly(high << 16 | low)
        return kind, flags, stream & 0x7FFFFFFF, payload

    async def answer(self, stream: int) -> dict[str, Any]:
        """Read until ``stream`` ends: its headers (and trailers) and its message bytes."""
        out: dict[str, Any] = {"headers": {}, "data": b""}
        while True:
            kind, flags, sid, payload = await self.read_frame()
            if kind == h2.PING and not flags & h2.ACK:
                continue
            if kind == h2.RST_STREAM and sid == stream:
                out["reset"] = struct.unpack(">I", payload)[0]
                return out
            if sid != stream:
                continue
            if kind == h2.HEADERS:
                out["headers"].update(dict(self.decoder.decode(payload)))
            elif kind == h2.DATA:
                out["data"] += payload
            if flags & h2.END_STREAM:
                return out


def message(request: Any) -> bytes:
    body = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


# --------------------------------------------------------------------------- grpcio's client


def test_big_request_and_answer_cross_flow_control_windows(files: dict[str, ModelFiles]) -> None:
    """90,000 rows: a ~1.2 MB request (over the 1 MiB stream window the server gives) and a
    ~0.8 MB answer (over the 64 KiB windows a client starts with): both sides wait for
    WINDOW_UPDATEs."""
    df = frame(90_000, seed=5)
    config = {"max_rows_per_request": 100_000, "max_body_bytes": 8 << 20}
    want = asyncio.run(core_answer(predictor_for(files, **config), df))
    predictor = predictor_for(files, **config)

    async def main() -> None:
        async with served(predictor) as (_, port):
            options = [("grpc.max_receive_message_length", 8 << 20)]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                request = typed_request(df)
                assert request.ByteSize() > h2.STREAM_WINDOW
                answers = await asyncio.gather(*[stub.ModelInfer(request) for _ in range(3)])
        for answer in answers:
            got = outputs_of(answer)
            np.testing.assert_array_equal(got["label"], want.labels)
            np.testing.assert_array_equal(got["probabilities"], want.probabilities)

    asyncio.run(main())


def test_compressed_requests_cancelled_calls_and_keepalive(files: dict[str, ModelFiles]) -> None:
    df = frame(3, seed=1)
    want = expected(files, df)
    predictor = predictor_for(files)

    async def main() -> None:
        async with served(predictor) as (_, port):
            options = [
                ("grpc.keepalive_time_ms", 200),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
            ]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                for compression in (grpc.Compression.Gzip, grpc.Compression.Deflate):
                    answer = await stub.ModelInfer(typed_request(df), compression=compression)
                    np.testing.assert_array_equal(outputs_of(answer)["label"], want.labels)
                # calls the client gives up on: the server drops them, the channel stays up
                calls = [stub.ModelInfer(typed_request(frame(2000, seed=i))) for i in range(8)]
                for call in calls:
                    call.cancel()
                for call in calls:
                    with pytest.raises(asyncio.CancelledError):
                        await call
                await asyncio.sleep(0.7)  # keepalive pings go out and are answered
                answer = await stub.ModelInfer(typed_request(df))
                np.testing.assert_array_equal(outputs_of(answer)["label"], want.labels)
                # a method the service does not have
                nope = ch.unary_unary("/inference.GRPCInferenceService/Nope")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await nope(b"")
                assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED

    asyncio.run(main())


def test_a_graceful_stop_answers_the_calls_in_hand(files: dict[str, ModelFiles]) -> None:
    predictor = predictor_for(files)

    async def main() -> None:
        server = fgrpc.create_grpc_server(predictor, "127.0.0.1", 0)
        await server.start()
        await predictor.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            await stub.ServerLive(pb.ServerLiveRequest())
            calls = [
                asyncio.ensure_future(stub.ModelInfer(typed_request(frame(500, seed=i))))
                for i in range(16)
            ]
            await asyncio.sleep(0.05)  # the requests are on their way
            await server.stop(5.0)
            answers = await asyncio.gather(*calls, return_exceptions=True)
        await predictor.close()
        done = [a for a in answers if isinstance(a, pb.ModelInferResponse)]
        refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
        assert len(done) + len(refused) == 16
        assert all(a.code() is grpc.StatusCode.UNAVAILABLE for a in refused), refused
        assert done, "calls that had reached the server were answered"
        assert all(len(a.outputs[0].contents.int64_contents) == 500 for a in done)
        assert server._h2.in_flight == 0

    asyncio.run(main())


# --------------------------------------------------------------------------- a raw client


def test_raw_frames_reset_padding_continuation_and_pings(files: dict[str, ModelFiles]) -> None:
    df = frame(2, seed=3)
    want = expected(files, df)
    body = message(typed_request(df))

    async def main() -> None:
        async with served(predictor_for(files)) as (_, port), RawClient(port) as c:
            # a ping is answered with its payload
            c.send(frame_bytes(h2.PING, 0, 0, b"12345678"))
            while True:
                kind, flags, _, payload = await c.read_frame()
                if kind == h2.PING:
                    assert flags & h2.ACK and payload == b"12345678"
                    break
            # stream 1: headers, half the message, then the client resets it
            c.send(
                frame_bytes(h2.HEADERS, h2.END_HEADERS, 1, c.headers()),
                frame_bytes(h2.DATA, 0, 1, body[:10]),
                frame_bytes(h2.RST_STREAM, 0, 1, struct.pack(">I", h2.CANCEL)),
            )
            # stream 3: headers split over CONTINUATION, padded DATA in two frames
            block = c.headers()
            padded = bytes([4]) + body[:20] + b"\x00" * 4
            c.send(
                frame_bytes(h2.HEADERS, h2.PRIORITY_FLAG, 3, b"\x00\x00\x00\x00\x10" + block[:5]),
                frame_bytes(h2.CONTINUATION, h2.END_HEADERS, 3, block[5:]),
                frame_bytes(h2.DATA, h2.PADDED, 3, padded),
                frame_bytes(h2.DATA, h2.END_STREAM, 3, body[20:]),
            )
            got = await c.answer(3)
            assert got["headers"][":status"] == "200"
            assert got["headers"]["grpc-status"] == "0"
            answer = pb.ModelInferResponse.FromString(got["data"][5:])
            np.testing.assert_array_equal(outputs_of(answer)["label"], want.labels)
            # the same call again: a header block the server decodes from its cache
            c.send(
                frame_bytes(h2.HEADERS, h2.END_HEADERS, 5, c.headers()),
                frame_bytes(h2.DATA, h2.END_STREAM, 5, body),
            )
            again = await c.answer(5)
            assert again["headers"]["grpc-status"] == "0"
            answer = pb.ModelInferResponse.FromString(again["data"][5:])
            np.testing.assert_array_equal(outputs_of(answer)["label"], want.labels)

    asyncio.run(main())


def test_raw_errors_name_what_is_wrong(files: dict[str, ModelFiles]) -> None:
    body = message(typed_request(frame(1)))

    async def main() -> None:
        async with served(predictor_for(files)) as (_, port), RawClient(port) as c:
            c.send(
                frame_bytes(h2.HEADERS, h2.END_HEADERS, 1, c.headers(content_type="text/plain")),
                frame_bytes(h2.DATA, h2.END_STREAM, 1, body),
            )
            assert (await c.answer(1))["headers"][":status"] == "415"
            c.send(
                frame_bytes(h2.HEADERS, h2.END_HEADERS, 3, c.headers(path="/x.Y/Z")),
                frame_bytes(h2.DATA, h2.END_STREAM, 3, body),
            )
            got = await c.answer(3)
            assert got["headers"]["grpc-status"] == str(h2.StatusCode.UNIMPLEMENTED.value)
            assert "/x.Y/Z" in got["headers"]["grpc-message"]
            # a message cut short (the length prefix promises more)
            c.send(
                frame_bytes(h2.HEADERS, h2.END_HEADERS, 5, c.headers()),
                frame_bytes(h2.DATA, h2.END_STREAM, 5, body[:-3]),
            )
            assert (await c.answer(5))["headers"]["grpc-status"] == str(
                h2.StatusCode.INTERNAL.value
            )
            # bytes that are no protobuf message: INTERNAL, as grpcio's server says
            junk = b"\x00" + struct.pack(">I", 3) + b"\xff\xff\xff"
            c.send(
                frame_bytes(h2.HEADERS, h2.END_HEADERS, 7, c.headers()),
                frame_bytes(h2.DATA, h2.END_STREAM, 7, junk),
            )
            got = await c.answer(7)
            assert got["headers"]["grpc-status"] == str(h2.StatusCode.INTERNAL.value)
            # an invalid input: INVALID_ARGUMENT with the field in the trailers
            bad = pb.ModelInferRequest(model_name="churn")
            bad.inputs.add(name="tenure", datatype="FP32", shape=[1]).contents.fp32_contents[:] = [
                1.0
            ]
            c.send(
                frame_bytes(h2.HEADERS, h2.END_HEADERS, 9, c.headers()),
                frame_bytes(h2.DATA, h2.END_STREAM, 9, message(bad)),
            )
            got = await c.answer(9)
            assert got["headers"]["grpc-status"] == str(fgrpc.StatusCode.INVALID_ARGUMENT)
            assert got["headers"]["flywheel-error-kind"] == "invalid_input"

    asyncio.run(main())


def test_too_many_streams_are_refused_and_others_go_on(files: dict[str, ModelFiles]) -> None:
    body = message(typed_request(frame(1)))

    async def main() -> None:
        async with served(predictor_for(files)) as (_, port), RawClient(port) as c:
            opened = [2 * i + 1 for i in range(h2.MAX_STREAMS + 1)]
            c.send(*[frame_bytes(h2.HEADERS, h2.END_HEADERS, s, c.headers()) for s in opened])
            extra = opened[-1]
            got = await c.answer(extra)
            assert got.get("reset") == h2.REFUSED_STREAM
            c.send(frame_bytes(h2.DATA, h2.END_STREAM, 1, body))
            assert (await c.answer(1))["headers"]["grpc-status"] == "0"

    asyncio.run(main())


def test_not_http2_is_closed_and_the_server_goes_on(files: dict[str, ModelFiles]) -> None:
    async def main() -> None:
        async with served(predictor_for(files)) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)  # SETTINGS.., GOAWAY, closed
            kinds, at = [], 0
            while at + 9 <= len(data):
                kinds.append(data[at + 3])
                at += 9 + (data[at] << 16 | data[at + 1] << 8 | data[at + 2])
            assert kinds[-1] == h2.GOAWAY, kinds
            writer.close()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = pb_grpc.GRPCInferenceServiceStub(ch)
                assert (await stub.ServerLive(pb.ServerLiveRequest())).live

    asyncio.run(main())


def test_header_blocks_that_keep_the_table() -> None:
    encoder = Encoder()
    fields = [(":method", "POST"), (":path", INFER), ("te", "trailers")]
    first, second = encoder.encode(fields), encoder.encode(fields)
    assert not h2._keeps_table(first)  # new entries go into the table
    assert h2._keeps_table(second)  # all indexed now
    never = Encoder()
    never.encode(fields)
    from hpack import NeverIndexedHeaderTuple

    block = never.encode([*fields, NeverIndexedHeaderTuple("authorization", "Bearer " + "k" * 200)])
    assert h2._keeps_table(block)
    assert not h2._keeps_table(b"\x3f\xe1\x1f")  # a table size update
    assert not h2._keeps_table(b"\x82\x0f")  # cut short


# --------------------------------------------------------------------------- abuse (review)


def test_calls_reset_before_they_run_are_counted_off(files: dict[str, ModelFiles]) -> None:
    """A reset arriving with its request cancels the call before it runs; the in-flight
    count must still drop, or max_concurrent_rpcs would refuse every later call."""
    body = message(typed_request(frame(1)))

    async def main() -> None:
        predictor = predictor_for(files)
        server = fgrpc.create_grpc_server(predictor, "127.0.0.1", 0, max_concurrent_rpcs=2)
        await server.start()
        await predictor.start()
        try:
            async with RawClient(server.port) as c:
                for sid in (1, 3, 5, 7, 9):
                    c.send(
                        frame_bytes(h2.HEADERS, h2.END_HEADERS, sid, c.headers())
                        + frame_bytes(h2.DATA, h2.END_STREAM, sid, body)
                        + frame_bytes(h2.RST_STREAM, 0, sid, struct.pack(">I", h2.CANCEL))
                    )
                await asyncio.sleep(0.2)
                assert server._h2.in_flight == 0
                c.send(
                    frame_bytes(h2.HEADERS, h2.END_HEADERS, 11, c.headers()),
                    frame_bytes(h2.DATA, h2.END_STREAM, 11, body),
                )
                assert (await c.answer(11))["headers"]["grpc-status"] == "0"
        finally:
            await server.stop(None)
            await predictor.close()

    asyncio.run(main())


def test_a_compressed_bomb_is_refused_without_inflating(files: dict[str, ModelFiles]) -> None:
    import zlib

    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    packed = bomb.compress(b"\x00" * (64 << 20)) + bomb.flush()  # 64 MiB of zeros, ~64 KB
    framed = b"\x01" + struct.pack(">I", len(packed)) + packed

    async def main() -> None:
        limited = predictor_for(files, max_body_bytes=1 << 20)
        async with served(limited) as (_, port), RawClient(port) as c:
            block = c.encoder.encode(
                [
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":path", INFER),
                    ("content-type", "application/grpc"),
                    ("grpc-encoding", "gzip"),
                ]
            )
            c.send(
                frame_bytes(h2.HEADERS, h2.END_HEADERS, 1, block),
                *[
                    frame_bytes(h2.DATA, 0, 1, framed[i : i + 16384])
                    for i in range(0, len(framed), 16384)
                ],
                frame_bytes(h2.DATA, h2.END_STREAM, 1),
            )
            got = await c.answer(1)
        assert got["headers"]["grpc-status"] == str(h2.StatusCode.RESOURCE_EXHAUSTED.value)
        assert "decompressed" in got["headers"]["grpc-message"]

    asyncio.run(main())


@pytest.mark.parametrize(
    "frames",
    [
        # a header block that never ends (the CONTINUATION flood)
        [frame_bytes(h2.HEADERS, 0, 1, b"\x82")]
        + [frame_bytes(h2.CONTINUATION, 0, 1, b"\x82" * 16384)] * 8,
        # PADDED with no pad length, and padding longer than the frame
        [frame_bytes(h2.HEADERS, h2.PADDED | h2.END_HEADERS, 1, b"")],
        [frame_bytes(h2.DATA, h2.PADDED, 1, b"\x09abc")],
    ],
    ids=["continuation-flood", "padded-empty", "padding-too-long"],
)
def test_broken_frames_end_the_connection_with_goaway(
    files: dict[str, ModelFiles], frames: list[bytes]
) -> None:
    async def main() -> None:
        async with served(predictor_for(files)) as (server, port), RawClient(port) as c:
            c.send(*frames)
            kinds: list[int | str] = []
            try:
                while True:
                    kinds.append((await c.read_frame())[0])
            except asyncio.IncompleteReadError:
                kinds.append("closed")
            except ConnectionResetError:  # closed while the client still sent: TCP resets
                kinds.append("reset")  # (the GOAWAY before it may be lost with it)
            assert kinds[-2:] == [h2.GOAWAY, "closed"] or kinds[-1] == "reset", kinds
            assert not server._h2.connections or all(conn.failed for conn in server._h2.connections)

    asyncio.run(main())


def test_padding_counts_against_the_stream_window(files: dict[str, ModelFiles]) -> None:
    """Padded DATA uses the window by its full length: the server gives it back, so a
    client that pads does not stall."""

    async def main() -> None:
        async with served(predictor_for(files)) as (_, port), RawClient(port) as c:
            c.send(frame_bytes(h2.HEADERS, h2.END_HEADERS, 1, c.headers()))
            chunk = frame_bytes(h2.DATA, h2.PADDED, 1, bytes([200]) + b"\x00" * 10 + b"\x00" * 200)
            c.send(*[chunk] * (h2.STREAM_WINDOW // 2 // 211 + 1))
            while True:
                kind, _, sid, payload = await c.read_frame()
                if kind == h2.WINDOW_UPDATE and sid == 1:
                    assert struct.unpack(">I", payload)[0] >= h2.STREAM_WINDOW // 2
                    break

    asyncio.run(main())
