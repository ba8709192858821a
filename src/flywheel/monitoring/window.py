"""Counting a window: Arrow batches in, a :class:`WindowProfile` out, in memory constant in rows.

A batch is in the monitor's one shape, whichever way it came (a file, the prediction log):
the model's feature columns by name, and optionally ``__score__`` (float), ``__prediction__``
(the predicted class as text, or the predicted value) and ``__label__`` (the truth, null
where no label arrived). Other columns are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from flywheel.monitoring.profile import (
    PREDICTION,
    SCORE,
    PerformanceCounts,
    Reference,
    WindowProfile,
    _Counter,
    as_text,
    numeric_values,
    parallel,
)

__all__ = ["LABEL", "WindowCounter", "count_window"]

LABEL = "__label__"


class WindowCounter:
    """Feed batches with :meth:`add`; :meth:`result` gives the window's profile."""

    def __init__(self, reference: Reference, *, sketches: bool = True) -> None:
        self.reference = reference
        self.rows = 0
        self.labelled = 0
        self.counters = {b.name: _Counter(b, sketch=sketches) for b in reference.bins}
        self._features = frozenset(reference.features)
        self.perf = PerformanceCounts.empty(reference.task, reference.classes)
        self.start: float | None = None
        self.end: float | None = None

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        names = set(batch.column_names)
        self.rows += batch.num_rows
        present = []
        for name, counter in self.counters.items():
            if name in names:
                present.append((counter, batch.column(name)))
            elif name in self._features:  # a model input the data lacks: every row missing
                counter.counts[-1] += batch.num_rows
        parallel(lambda job: job[0].add(job[1]), present)  # one thread per counter at a time
        if "ts" in names and batch.num_rows:
            ts = batch.column("ts")
            lo = pa.compute.min(ts).as_py()
            hi = pa.compute.max(ts).as_py()
            if lo is not None:
                lo_s, hi_s = lo.timestamp(), hi.timestamp()
                self.start = lo_s if self.start is None else min(self.start, lo_s)
                self.end = hi_s if self.end is None else max(self.end, hi_s)
        if LABEL in names and PREDICTION in names:
            self._add_labels(batch)

    def _add_labels(self, batch: pa.RecordBatch | pa.Table) -> None:
        label = batch.column(LABEL)
        have = pa.compute.is_valid(label)
        if not pa.compute.any(have).as_py():
            return
        part = batch.filter(have)
        pred = part.column(PREDICTION)
        if self.reference.task == "regression":
            truth, _ = numeric_values(part.column(LABEL))
            predicted, _ = numeric_values(pred)
            self.perf.add(truth, predicted, None)
        else:
            truth = np.asarray(as_text(part.column(LABEL).to_pylist()), dtype=object)
            predicted = np.asarray(as_text(pred.to_pylist()), dtype=object)
            score = None
            if SCORE in part.column_names and self.reference.positive is not None:
                score, _ = numeric_values(part.column(SCORE))
            self.perf.add(truth, predicted, score)

    def result(self) -> WindowProfile:
        return WindowProfile(
            rows=self.rows,
            columns={name: c.result() for name, c in self.counters.items()},
            performance=self.perf,
            start=self.start,
            end=self.end,
        )


def count_window(
    reference: Reference, batches: Iterable[pa.RecordBatch | pa.Table], *, sketches: bool = True
) -> WindowProfile:
    counter = WindowCounter(reference, sketches=sketches)
    for batch in batches:
        counter.add(batch)
    return counter.result()
