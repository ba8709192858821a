"""The serving core's data types: what adapters hand in and get back, and the log hook.

These are plain dataclasses with no protocol in them; REST, gRPC, WebSocket and MQTT
adapters translate to :class:`PredictRequest` and from :class:`PredictResponse`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "PredictRequest",
    "PredictResponse",
    "PredictionSink",
    "RecordSink",
    "json_array",
]


@dataclass(slots=True)
class PredictRequest:
    """One request: rows as ``records`` (a list of ``{feature: value}``) *or* ``columns``
    (``{feature: list | 1-D array}``, all the same length). ``model`` is a served model
    name (None: the default model); ``version``, when set, must be the version being served.
    ``request_id`` is the server's id for the request (fronts take it from their
    :class:`flywheel.serving.cycle.Call`); ``client_id`` the one the client sent.
    """

    records: Sequence[Mapping[str, Any]] | None = None
    columns: Mapping[str, Any] | None = None
    model: str | None = None
    version: str | None = None
    request_id: str | None = None  # the server's id (a front's Call); None: the core makes one
    client_id: str | None = None  # the id the client sent, kept beside it and echoed back
    protocol: str = "python"
    extra_fields: str = "forbid"  # or "ignore": drop columns the model does not take
    route_key: str | None = None  # a rollout's sticky key from a header (fronts that have one)


@dataclass(slots=True)
class PredictResponse:
    """Predictions for every row of a request, in order.

    ``labels``: class labels (classification) or values (regression), shape ``[n]``;
    ``probabilities``: ``[n, n_classes]`` in the order of ``classes`` (None for regression).
    """

    model: str
    version: str
    request_id: str
    task: str
    labels: np.ndarray
    probabilities: np.ndarray | None
    classes: list[Any] | None
    latency_ms: float = 0.0
    client_id: str | None = None  # the id the client sent (echoed back; never a key)

    @property
    def rows(self) -> int:
        return len(self.labels)

    def labels_list(self) -> list[Any]:
        return self.labels.tolist()

    def probabilities_list(self) -> list[list[float]] | None:
        return None if self.probabilities is None else self.probabilities.tolist()

    def to_dict(self) -> dict[str, Any]:
        """The native answer (REST ``/v1/predict``, MQTT), for ``orjson`` with
        ``OPT_SERIALIZE_NUMPY``: numeric arrays stay arrays (see :func:`json_array`)."""
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "request_id": self.request_id,
            "predictions": json_array(self.labels),
        }
        if self.client_id is not None:
            out["client_id"] = self.client_id
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
            out["classes"] = self.classes
        return out


def json_array(values: np.ndarray) -> Any:
    """orjson serialises numeric arrays natively; object (string) arrays go through tolist."""
    return values.tolist() if values.dtype.kind in "OUS" else values


@runtime_checkable
class RecordSink(Protocol):
    """The least a sink takes: one :class:`flywheel.predlog.PredictionRecord` per answered
    request (raw arrays, not copied), through ``append``, which must not block."""

    def append(self, record: Any) -> Any: ...


@runtime_checkable
class PredictionSink(RecordSink, Protocol):
    """A prediction log: everything the predictor calls on it
    (:class:`flywheel.predlog.PredictionLog` is one). Rows are
    :data:`flywheel.predlog.Row` tuples the predictor encoded.

    - ``durable``: True when every answer must wait for its row's commit;
    - ``append_row(row)``: queue a row, never block for I/O (False: dropped, counted);
    - ``commit_row(row)``: queue a row, on the event loop; the awaitable resolves True once
      the row is committed, False when it could not be (the predictor then answers 503);
    - ``register_inputs(model, version, names, numeric=, classes=)``: at load (in a worker
      thread), the version's input names in column order, which are numeric, and a
      classifier's classes; True lets rows carry the inputs as a JSON array of columns.

    A sink with only ``append`` (a :class:`RecordSink`) gets records instead of rows."""

    durable: bool

    def append_row(self, row: tuple[Any, ...]) -> bool: ...
    def commit_row(self, row: tuple[Any, ...]) -> Awaitable[bool]: ...
    def register_inputs(
        self,
        model: str,
        version: str,
        names: Sequence[str],
        *,
        numeric: Sequence[bool] | None = None,
        classes: Sequence[Any] | None = None,
    ) -> bool: ...
