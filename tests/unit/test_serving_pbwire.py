"""The hand-written ModelInferResponse bytes (flywheel.serving._pbwire) against protobuf's own
message, built by flywheel.serving.grpc.encode_infer_response: parsed back, they are equal."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.serving._pbwire import infer_response_bytes
from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
from flywheel.serving.grpc import encode_infer_response
from flywheel.serving.types import PredictResponse

LABELS: dict[str, np.ndarray] = {
    "int64": np.array([0, 1, -7, 2**40, -(2**62)], dtype=np.int64),
    "int32": np.array([3, -3, 0, 2**31 - 1, -(2**31)], dtype=np.int32),
    "int8": np.array([1, -1, 0, 127, -128], dtype=np.int8),
    "uint8": np.array([0, 1, 2, 200, 255], dtype=np.uint8),
    "uint32": np.array([0, 1, 2**32 - 1, 5, 6], dtype=np.uint32),
    "uint64": np.array([0, 2**64 - 1, 2**63, 1, 127], dtype=np.uint64),
    "bool": np.array([True, False, True, True, False]),
    "float32": np.array([0.5, -1.25, np.inf, 0.0, 3.0e38], dtype=np.float32),
    "float64": np.array([0.1, -2.5, 1e300, -0.0, 7.0], dtype=np.float64),
    "float16": np.array([0.5, 1.5, -2.0, 0.0, 65504.0], dtype=np.float16),
    "strings": np.array(["churn", "stay", "", "é", "x" * 300], dtype=object),
    "bytes": np.array([b"a", b"", b"\x00\xff", b"b", b"c"], dtype=object),
}


def response(
    labels: np.ndarray, proba: np.ndarray | None, client_id: str | None
) -> PredictResponse:
    return PredictResponse(
        "churn", "12", "f" * 24, "classification", labels, proba, None, 1.0, client_id
    )


@pytest.mark.parametrize("kind", sorted(LABELS))
@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("raw", [False, True])
def test_the_bytes_parse_to_the_message_protobuf_builds(kind: str, rows: int, raw: bool) -> None:
    rng = np.random.default_rng(rows)
    proba = rng.random((rows, 3)).astype(np.float32)
    for client_id in (None, "client-1"):
        for outputs in (("label", "probabilities"), ("probabilities",), ("label",)):
            answer = response(LABELS[kind][:rows], proba, client_id)
            expected = encode_infer_response(answer, outputs, raw)
            got = pb.ModelInferResponse.FromString(infer_response_bytes(answer, outputs, raw))
            assert got == expected, (kind, rows, raw, client_id, outputs)


def test_regression_answers_and_empty_names() -> None:
    """No probabilities (regression), a version and model name left empty."""
    answer = PredictResponse("", "", "r" * 24, "regression", np.array([1.5, -2.0]), None, None)
    for raw in (False, True):
        expected = encode_infer_response(answer, ("label", "probabilities"), raw)
        got = infer_response_bytes(answer, ("label", "probabilities"), raw)
        assert pb.ModelInferResponse.FromString(got) == expected
        assert len(expected.outputs) == 1
