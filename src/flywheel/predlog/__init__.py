"""The prediction log: every answered prediction, durably, with ground-truth feedback.

The serving core appends rows (off the hot path, or awaiting their commit in the ``commit``
durability); labels arrive later by request id; monitoring reads predictions and labels
as Arrow batches (:mod:`flywheel.predlog.read`). This package imports nothing of the
serving stack (FastAPI, Starlette, gRPC) nor scikit-learn, so monitoring reads the log
without loading a server.

Modules: :mod:`~flywheel.predlog.records` (the record, the encoded row, the error),
:mod:`~flywheel.predlog.writer` (queue, writer thread, group commit, small reads),
:mod:`~flywheel.predlog.stores` with :mod:`~flywheel.predlog.sqlite` and
:mod:`~flywheel.predlog.postgres` (schema, migration, SQL), :mod:`~flywheel.predlog.feedback`
(matching labels to predictions), :mod:`~flywheel.predlog.read` (the monitoring reads;
imports pyarrow and the ADBC drivers when used), :mod:`~flywheel.predlog.outcomes` (per
rollout arm, counts of the labelled rows; stdlib and orjson only). Rows are keyed by
(request id, rollout role). See docs/prediction-log.md.
"""

from __future__ import annotations

from flywheel.predlog.feedback import LabelResult
from flywheel.predlog.records import (
    PredictionLogError,
    PredictionRecord,
    Row,
    encode_json,
)
from flywheel.predlog.writer import Durability, PredictionLog, open_prediction_log

__all__ = [
    "Durability",
    "LabelResult",
    "PredictionLog",
    "PredictionLogError",
    "PredictionRecord",
    "Row",
    "encode_json",
    "open_prediction_log",
]
