"""``ModelInferResponse`` written straight to protobuf's wire format.

Building the answer as protobuf objects (a message, an output tensor per output, typed
contents filled from lists) and serializing it cost more server CPU per 1-row ModelInfer than
the whole HTTP/2 exchange; the bytes here are a few concatenations. The message is the one
:func:`flywheel.serving.grpc.encode_infer_response` builds: a test parses these bytes back
with protobuf and compares them, for every datatype, shape and both content forms.

Field numbers are those of ``proto/grpc_predict_v2.proto``; proto3 packs repeated scalars
and leaves empty strings out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flywheel.serving import _tensors as tensors
from flywheel.serving.types import PredictResponse

__all__ = ["infer_response_bytes"]

_LEN = 2  # wire type of length-delimited fields
_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")
# datatype -> (InferTensorContents field, how its values are written)
_TYPED: dict[str, tuple[int, str]] = {
    "BOOL": (1, "varint"),
    "INT8": (2, "signed"),
    "INT16": (2, "signed"),
    "INT32": (2, "signed"),
    "INT64": (3, "signed"),
    "UINT8": (4, "varint"),
    "UINT16": (4, "varint"),
    "UINT32": (4, "varint"),
    "UINT64": (5, "varint"),
    "FP16": (6, "f32"),  # no typed field of its own: sent as fp32_contents
    "FP32": (6, "f32"),
    "FP64": (7, "f64"),
}
_SMALL = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # two's complement, 10 bytes
    out = bytearray()
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode()) if text else b""


def _packed(how: str, values: np.ndarray) -> bytes:
    if how == "f32":
        return (values if values.dtype == _F32 else values.astype(_F32)).tobytes()
    if how == "f64":
        return (values if values.dtype == _F64 else values.astype(_F64)).tobytes()
    return b"".join([_varint(int(v)) for v in values.reshape(-1).tolist()])


# (name, dtype, shape, raw) -> (InferOutputTensor's bytes before its contents, datatype)
_HEADS: dict[tuple[str, np.dtype, tuple[int, ...], bool], tuple[bytes, str]] = {}


def _head(name: str, values: np.ndarray, raw: bool) -> tuple[bytes, str]:
    key = (name, values.dtype, values.shape, raw)
    found = _HEADS.get(key)
    if found is None:
        datatype = tensors.datatype_of(values)
        shape = b"".join(_varint(int(d)) for d in values.shape)
        head = _string(1, name) + _string(2, datatype) + (_field(3, shape) if shape else b"")
        found = (head, datatype)
        if len(_HEADS) < 4096:  # answers' shapes repeat: the row counts of requests
            _HEADS[key] = found
    return found


def _output(name: str, values: np.ndarray, raw: bool) -> tuple[bytes, bytes | None]:
    """(InferOutputTensor, its raw contents or None)."""
    head, datatype = _head(name, values, raw)
    if raw:
        return head, tensors.raw_bytes(values)
    if datatype == "BYTES":
        contents = b"".join([_field(8, item) for item in tensors.as_bytes(values)])
    else:
        number, how = _TYPED[datatype]
        packed = _packed(how, values)
        contents = _field(number, packed) if packed else b""
    return head + _field(5, contents), None


def infer_response_bytes(response: PredictResponse, outputs: Sequence[str], raw: bool) -> bytes:
    """The serialized ``ModelInferResponse`` for ``response`` (see the module docstring)."""
    request_id = response.request_id
    parts = [
        _string(1, response.model),
        _string(2, response.version),
        _string(3, response.client_id or request_id),
        # parameters["request_id"] = InferParameter(string_param=...)
        _field(4, _field(1, b"request_id") + _field(2, _field(3, request_id.encode()))),
    ]
    arrays = {"label": response.labels, "probabilities": response.probabilities}
    raws: list[bytes] = []
    for name in outputs:
        values = arrays.get(name)
        if values is None:
            continue
        tensor, data = _output(name, np.asarray(values), raw)
        parts.append(_field(5, tensor))
        if data is not None:
            raws.append(_field(6, data))
    return b"".join(parts + raws)
