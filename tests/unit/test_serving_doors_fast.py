"""The fast paths of the gRPC and MQTT doors (issue #12, item 8) give what the general paths
give: the one-pass ModelInfer decoding, the pre-packed MQTT reply properties, the buffered
broker socket, and the hand-off from gRPC's threads to the event loop."""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import pytest

from flywheel.serving import grpc as fgrpc
from flywheel.serving import mqtt as fmqtt
from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
from tests.unit.test_serving_grpc import MIXED, frame, limit_rows, no_limit, raw_request
from tests.unit.test_serving_grpc import typed_request as typed


def _same(fast: dict[str, list[Any]], general: dict[str, Any]) -> None:
    assert list(fast) == list(general)
    for name, values in fast.items():
        assert type(values) is list and type(general[name]) is list, name
        np.testing.assert_array_equal(np.asarray(values), np.asarray(general[name]))


@pytest.mark.parametrize("rows", [1, 5, 32])
@pytest.mark.parametrize("kind", ["typed", "FP64", "FP32", "INT32"])
def test_common_columns_equal_the_general_decoding(rows: int, kind: str) -> None:
    df = frame(rows, seed=rows)
    request = typed(df) if kind == "typed" else raw_request(df, dtype=kind)
    fast = fgrpc._common_columns(request, MIXED, no_limit)
    assert fast is not None
    _same(fast, fgrpc.decode_infer_request(request, MIXED, no_limit, lists=True))


def _matrix() -> Any:
    request = pb.ModelInferRequest(model_name="churn")
    t = request.inputs.add(name="rows", datatype="BYTES", shape=[1, 3])
    t.contents.bytes_contents.extend([b"2", b"70.5", b"pro"])
    return request


def _edited(edit: Any) -> Any:
    request = typed(frame(3))
    edit(request)
    return request


@pytest.mark.parametrize(
    "request_",
    [
        typed(frame(33)),  # more rows than the list path takes
        raw_request(frame(40)),
        _matrix(),
        _edited(lambda r: setattr(r.inputs[2], "datatype", "FP32")),  # categorical as numbers
        _edited(lambda r: setattr(r.inputs[0], "datatype", "BYTES")),  # numeric as BYTES
        _edited(lambda r: setattr(r.inputs[1], "datatype", "FP16")),  # no typed field
        _edited(lambda r: r.inputs[0].contents.fp32_contents.append(1.0)),  # 4 values, [3]
        _edited(lambda r: r.inputs[2].contents.bytes_contents.__setitem__(0, b"\xff")),
        _edited(lambda r: setattr(r.inputs[1], "name", "tenure")),  # sent twice
        _edited(lambda r: setattr(r.inputs[1], "name", "nope")),
        _edited(lambda r: r.inputs[0].shape.extend([2])),  # [3, 2]
        _edited(lambda r: r.raw_input_contents.append(b"\0" * 12)),  # typed and raw
    ],
)
def test_anything_else_is_left_to_the_general_path(request_: Any) -> None:
    assert fgrpc._common_columns(request_, MIXED, no_limit) is None


def test_the_row_limit_holds_on_the_fast_path() -> None:
    from flywheel.serving.errors import TooManyRows

    with pytest.raises(TooManyRows):
        fgrpc._common_columns(typed(frame(3)), MIXED, limit_rows(2))
    with pytest.raises(TooManyRows):
        fgrpc.decode_infer_request(typed(frame(3)), MIXED, limit_rows(2))


@pytest.mark.parametrize("correlation", [None, b"", b"req-1", bytes(range(256)) * 3])
def test_reply_properties_pack_as_paho_packs_them(correlation: bytes | None) -> None:
    reference = fmqtt._ReplyProperties.reference(correlation).pack()
    assert fmqtt._ReplyProperties(correlation).pack() == reference


def test_the_read_buffer_hands_paho_the_bytes_in_order() -> None:
    left, right = socket.socketpair()
    try:
        sent = bytes(range(256)) * 40
        left.sendall(sent)
        buffered = fmqtt._ReadBuffer(right)
        got = bytearray()
        sizes = iter([1, 1, 3, 500, 1, 7000, 4096] * 10)
        while len(got) < len(sent):
            chunk = buffered.recv(next(sizes))
            assert chunk
            got += chunk
        assert bytes(got) == sent and buffered.pending() == 0
        assert buffered.fileno() == right.fileno()  # the rest goes to the socket
    finally:
        left.close()
        right.close()
