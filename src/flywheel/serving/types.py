"""The serving core's data types: what adapters hand in and get back, and the log hook.

These are plain dataclasses with no protocol in them; REST, gRPC, WebSocket and MQTT
adapters translate to :class:`PredictRequest` and from :class:`PredictResponse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "PredictRequest",
    "PredictResponse",
    "PredictionSink",
    "json_array",
]


@dataclass(slots=True)
class PredictRequest:
    """One request: rows as ``records`` (a list of ``{feature: value}``) *or* ``columns``
    (``{feature: list | 1-D array}``, all the same length). ``model`` is a served model
    name (None: the default model); ``version``, when set, must be the version being served.
    """

    records: Sequence[Mapping[str, Any]] | None = None
    columns: Mapping[str, Any] | None = None
    model: str | None = None
    version: str | None = None
    request_id: str | None = None
    protocol: str = "python"
    extra_fields: str = "forbid"  # or "ignore": drop columns the model does not take


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
        if self.probabilities is not None:
            out["probabilities"] = self.probabilities
            out["classes"] = self.classes
        return out


def json_array(values: np.ndarray) -> Any:
    """orjson serialises numeric arrays natively; object (string) arrays go through tolist."""
    return values.tolist() if values.dtype.kind in "OUS" else values


@runtime_checkable
class PredictionSink(Protocol):
    """Where answered requests go. ``append`` must not block (queue and return)."""

    def append(self, record: Any) -> None: ...
