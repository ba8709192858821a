"""Profiles: what monitoring keeps of a column, a reference, and a window — counts, never rows.

A :class:`Reference` is built once, from the holdout rows a model version was evaluated on
(or a named snapshot, or recent served traffic). Per feature it fixes the *bins* every
window is counted on:

- numeric: interior cut points at the reference's quantiles (up to 50 bins, at least ~40
  reference rows each), plus one bin for missing values; the mean of the reference rows in
  each bin is kept as the bin's position (for the Wasserstein distance);
- categorical: the reference's top categories (up to 200), one "other" bin (every other
  value, including values the reference never saw) and one missing bin; the full set of
  categories the reference saw is kept (up to 10,000) to count unseen values.

A :class:`WindowProfile` counts a window's rows on those bins. Counts on fixed bins are a
sketch with no error for the statistics computed from them, they cost memory constant in
rows, and two windows merge by adding counts (days into weeks without re-reading rows).
Beside them each window keeps an Apache DataSketches KLL sketch per numeric feature and a
frequent-items sketch per categorical one (quantiles and heavy hitters for reports, and the
input of a rolling reference), both mergeable too.

The model's score is profiled like a feature: ``__score__`` (binary: the probability of
the positive class; multiclass: the top probability; regression: the predicted value) and,
for classifiers, ``__prediction__`` (the predicted class). Performance counts (a confusion
matrix, score histograms per label, squared errors) are kept per window in
:class:`PerformanceCounts`.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "PREDICTION",
    "SCORE",
    "Bins",
    "ColumnCounts",
    "PerformanceCounts",
    "Reference",
    "WindowProfile",
]

SCORE = "__score__"
PREDICTION = "__prediction__"
MAX_NUMERIC_BINS = 50
MIN_ROWS_PER_BIN = 40
MAX_CATEGORIES = 200
MAX_SEEN = 10_000
AUC_BINS = 1000  # score histogram per label, for the realised ROC AUC
KLL_K = 200
KLL_BATCH = 8192  # values of a batch a window's KLL sketch takes, at most
EDGE_SAMPLE = 100_000  # reference values the numeric cut points are taken from, at most
FREQ_LG = 10  # frequent-items map of 2^10 slots

Kind = Literal["numeric", "categorical"]
Task = Literal["classification", "regression"]


# --------------------------------------------------------------------------- values


def as_text(values: Sequence[Any] | np.ndarray) -> list[str]:
    """Class labels as text; ``1.0`` and ``True`` are ``1`` (labels travel as JSON numbers)."""
    out = []
    for v in values:
        whole = isinstance(v, float | np.floating) and float(v).is_integer()
        out.append(str(int(v)) if isinstance(v, bool | np.bool_) or whole else str(v))
    return out


def numeric_values(column: pa.Array | pa.ChunkedArray | Sequence[Any]) -> tuple[np.ndarray, int]:
    """A column as float64 (missing -> NaN) and how many present values were not numbers
    (a contract violation: text in a numeric column)."""
    arr = column if isinstance(column, pa.Array | pa.ChunkedArray) else pa.array(column)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if pa.types.is_null(t):
        return np.full(len(arr), np.nan), 0
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
        return np.where(np.isfinite(values), values, np.nan), 0
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
    text = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    try:
        values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        return np.where(np.isfinite(values), values, np.nan), 0
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.full(len(text), np.nan)
    bad = 0
    for i, s in enumerate(text.to_pylist()):
        if s is None:
            continue
        try:
            v = float(s)
        except ValueError:
            bad += 1
            continue
        out[i] = v if math.isfinite(v) else np.nan
    return out, bad


def category_counts(
    column: pa.Array | pa.ChunkedArray | Sequence[Any],
) -> tuple[dict[str, int], int]:
    """A column's value counts as text (``2`` and ``"2"`` are one category) and its missing count."""
    arr = column if isinstance(column, pa.Array | pa.ChunkedArray) else pa.array(column)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if pa.types.is_null(arr.type):
        return {}, len(arr)
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_floating(arr.type):  # 2.0 -> "2": integers read back as floats
        f = arr.to_numpy(zero_copy_only=False)
        whole = np.isfinite(f) & (np.floor(f) == f)
        if whole[~np.isnan(f)].all():
            arr = pc.cast(
                pa.array(np.where(np.isnan(f), 0, f).astype(np.int64), mask=np.isnan(f)),
                pa.string(),
            )
    text = (
        arr
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)
        else pc.cast(arr, pa.string())
    )
    # an empty string is a missing value (training prepares missing categories as "")
    text = pc.if_else(pc.equal(pc.utf8_trim_whitespace(text), ""), pa.scalar(None, text.type), text)
    missing = text.null_count
    counts = pc.value_counts(text.drop_null())
    values = counts.field("values").to_pylist()
    n = counts.field("counts").to_numpy()
    return {str(v): int(c) for v, c in zip(values, n, strict=True)}, int(missing)


# --------------------------------------------------------------------------- bins


@dataclass
class Bins:
    """How one column is counted: numeric cut points or categorical levels (+ other)."""

    name: str
    kind: Kind
    edges: list[float] = field(default_factory=list)  # numeric: interior cut points
    centers: list[float] = field(default_factory=list)  # numeric: reference mean per bin
    categories: list[str] = field(default_factory=list)  # categorical: top categories
    seen: list[str] = field(default_factory=list)  # categorical: every reference category
    seen_complete: bool = True  # False when the reference had more than MAX_SEEN

    @property
    def size(self) -> int:
        """Number of bins, the missing bin (the last) included."""
        if self.kind == "numeric":
            return len(self.edges) + 2
        return len(self.categories) + 2

    def labels(self) -> list[str]:
        if self.kind == "categorical":
            return [*self.categories, "(other)", "(missing)"]
        lo = ["-inf", *(f"{e:.4g}" for e in self.edges)]
        hi = [*(f"{e:.4g}" for e in self.edges), "inf"]
        spans = ["[" + a + ", " + b + ")" for a, b in zip(lo, hi, strict=True)]
        return [*spans, "(missing)"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            out.update(edges=self.edges, centers=self.centers)
        else:
            out.update(categories=self.categories, seen=self.seen, seen_complete=self.seen_complete)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Bins:
        return cls(
            name=d["name"],
            kind=d["kind"],
            edges=[float(x) for x in d.get("edges", [])],
            centers=[float(x) for x in d.get("centers", [])],
            categories=[str(x) for x in d.get("categories", [])],
            seen=[str(x) for x in d.get("seen", [])],
            seen_complete=bool(d.get("seen_complete", True)),
        )


def numeric_bins(name: str, values: np.ndarray, extra_edges: Iterable[float] = ()) -> Bins:
    """Cut points at the quantiles of ``values`` (NaN ignored), plus ``extra_edges``. Above
    ``EDGE_SAMPLE`` values the quantiles are those of an evenly spaced sample: any fixed cut points
    make a valid test (both sides are counted exactly on them), and bins ~2% wide need no
    more precision."""
    present = values[~np.isnan(values)]
    if present.size == 0:
        return Bins(name, "numeric", edges=[], centers=[0.0])
    k = int(np.clip(present.size // MIN_ROWS_PER_BIN, 5, MAX_NUMERIC_BINS))
    sample = present
    if present.size > EDGE_SAMPLE:  # evenly spaced rows: a stratified sample of ordered data
        sample = present[:: present.size // EDGE_SAMPLE]
    qs = np.quantile(sample, np.linspace(0, 1, k + 1)[1:-1])
    edges = np.unique(np.concatenate([qs, np.asarray(list(extra_edges), dtype=float)]))
    # a cut at the minimum leaves an empty first bin: values equal to the cut go right
    edges = edges[edges > present.min()]
    idx = Binner(edges)(present)
    sums = np.bincount(idx, weights=present, minlength=edges.size + 1)
    counts = np.bincount(idx, minlength=edges.size + 1)
    lo = np.concatenate([[present.min()], edges])
    hi = np.concatenate([edges, [present.max()]])
    centers = np.where(counts > 0, sums / np.maximum(counts, 1), (lo + hi) / 2)
    return Bins(name, "numeric", edges=edges.tolist(), centers=centers.tolist())


def categorical_bins(name: str, counts: Mapping[str, int]) -> Bins:
    """The top categories with at least ``MIN_ROWS_PER_BIN`` reference rows each get a bin
    (up to ``MAX_CATEGORIES``); rarer ones go to "other": a bin chosen for the few rows the
    reference happened to draw would make the null too narrow (long-tailed features)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = [k for k, c in ranked[:MAX_CATEGORIES] if c >= MIN_ROWS_PER_BIN]
    seen = [k for k, _ in ranked[:MAX_SEEN]]
    return Bins(
        name,
        "categorical",
        categories=top,
        seen=sorted(seen),
        seen_complete=len(ranked) <= MAX_SEEN,
    )


class Binner:
    """``np.searchsorted(edges, x, side="right")``, ~3x faster on a batch: a value's cell on a
    uniform grid of ``cells`` cells over [edges[0], edges[-1]] gives its bin directly, except
    in the few cells an edge falls in (or near), where the binary search decides."""

    def __init__(self, edges: np.ndarray, cells: int = 4096) -> None:
        self.edges = np.asarray(edges, dtype=float)
        self.fast = self.edges.size >= 2 and bool(self.edges[-1] > self.edges[0])
        if not self.fast:
            return
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        self.lo, self.scale, self.cells = lo, cells / (hi - lo), cells
        width = (hi - lo) / cells
        starts = lo + width * np.arange(-1, cells + 1)  # cell 0: below lo; cells + 1: at hi
        tol = width * 1e-6
        first = np.searchsorted(self.edges, starts - tol, side="right")
        last = np.searchsorted(self.edges, starts + width + tol, side="right")
        self.bin = first.astype(np.intp)
        self.exact = first == last  # no edge in or near the cell
        self.bin[0], self.exact[0] = 0, True
        self.bin[-1], self.exact[-1] = self.edges.size, True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.fast or x.size < 1024:
            return np.searchsorted(self.edges, x, side="right")
        pos = np.subtract(x, self.lo)
        pos *= self.scale
        np.clip(pos, -1.0, float(self.cells), out=pos)
        cell = pos.astype(np.intp)
        cell += 1
        cell[pos < 0] = 0
        out = self.bin[cell]
        todo = np.flatnonzero(~self.exact[cell])
        if todo.size:
            out[todo] = np.searchsorted(self.edges, x[todo], side="right")
        return out


_POOL: Any = None


def parallel(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on a small thread pool: columns are independent, and
    numpy and pyarrow release the GIL in the work that matters (searching, counting)."""
    global _POOL
    workers = min(4, os.cpu_count() or 1)
    if workers < 2 or len(items) < 2:
        return [fn(x) for x in items]
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="flywheel-monitor")
    return list(_POOL.map(fn, items))


# --------------------------------------------------------------------------- counts


@dataclass
class ColumnCounts:
    """One column of one window (or the reference), counted on its :class:`Bins`."""

    counts: np.ndarray  # int64, Bins.size long; the last bin is "missing"
    invalid: int = 0  # present values of the wrong type (counted as missing)
    unseen: int = 0  # categorical: values the reference never saw
    sketch: bytes = b""  # serialised KLL (numeric) or frequent-items (categorical) sketch
    moments: tuple[float, float, float] = (0.0, 0.0, 0.0)  # n, sum, sum of squares (numeric)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def missing_rate(self) -> float:
        n = self.n
        return float(self.counts[-1] / n) if n else 0.0

    def merge(self, other: ColumnCounts, kind: Kind) -> ColumnCounts:
        return ColumnCounts(
            counts=self.counts + other.counts,
            invalid=self.invalid + other.invalid,
            unseen=self.unseen + other.unseen,
            sketch=_merge_sketch(self.sketch, other.sketch, kind),
            moments=tuple(a + b for a, b in zip(self.moments, other.moments, strict=True)),  # type: ignore[arg-type]
        )

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        if not self.sketch:
            return None
        from datasketches import kll_doubles_sketch

        sk = kll_doubles_sketch.deserialize(self.sketch)
        if sk.is_empty():
            return None
        return [float(sk.get_quantile(q)) for q in qs]

    def top_items(self, k: int = 10) -> list[tuple[str, int]]:
        if not self.sketch:
            return []
        from datasketches import frequent_items_error_type, frequent_strings_sketch

        sk = frequent_strings_sketch.deserialize(self.sketch)
        rows = sk.get_frequent_items(frequent_items_error_type.NO_FALSE_POSITIVES)
        return [(str(r[0]), int(r[1])) for r in rows[:k]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "invalid": self.invalid,
            "unseen": self.unseen,
            "sketch": base64.b64encode(self.sketch).decode("ascii"),
            "moments": list(self.moments),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColumnCounts:
        return cls(
            counts=np.asarray(d["counts"], dtype=np.int64),
            invalid=int(d.get("invalid", 0)),
            unseen=int(d.get("unseen", 0)),
            sketch=base64.b64decode(d.get("sketch", "")),
            moments=tuple(float(x) for x in d.get("moments", (0, 0, 0))),  # type: ignore[arg-type]
        )


def _merge_sketch(a: bytes, b: bytes, kind: Kind) -> bytes:
    if not a or not b:
        return a or b
    if kind == "numeric":
        from datasketches import kll_doubles_sketch

        sk = kll_doubles_sketch.deserialize(a)
        sk.merge(kll_doubles_sketch.deserialize(b))
        return bytes(sk.serialize())
    from datasketches import frequent_strings_sketch

    fs = frequent_strings_sketch.deserialize(a)
    fs.merge(frequent_strings_sketch.deserialize(b))
    return bytes(fs.serialize())


class _Counter:
    """Counts batches of one column on its bins, with its sketch; memory constant in rows."""

    def __init__(self, bins: Bins, *, sketch: bool = True) -> None:
        self.bins = bins
        self.counts = np.zeros(bins.size, dtype=np.int64)
        self.invalid = 0
        self.unseen = 0
        self.moments = np.zeros(3)
        self._kll: Any = None
        self._freq: Any = None
        self._edges = np.asarray(bins.edges, dtype=float)
        self._bin = Binner(self._edges)
        self._index = {c: i for i, c in enumerate(bins.categories)}
        self._seen = frozenset(bins.seen)
        if sketch and bins.kind == "numeric":
            from datasketches import kll_doubles_sketch

            self._kll = kll_doubles_sketch(KLL_K)
        elif sketch:
            from datasketches import frequent_strings_sketch

            self._freq = frequent_strings_sketch(FREQ_LG)

    def add(self, column: pa.Array | pa.ChunkedArray | Sequence[Any]) -> None:
        if self.bins.kind == "numeric":
            self.add_numeric(*numeric_values(column))
        else:
            self.add_categories(*category_counts(column))

    def add_numeric(self, values: np.ndarray, invalid: int = 0) -> None:
        nan = np.isnan(values)
        present = values[~nan]
        idx = self._bin(present)
        self.counts[:-1] += np.bincount(idx, minlength=self._edges.size + 1)
        self.counts[-1] += int(nan.sum())
        self.invalid += invalid
        self.moments += (present.size, present.sum(), np.square(present).sum())
        if self._kll is not None and present.size:
            # at most KLL_BATCH values of a batch, evenly spaced: the sampling error at that
            # size (~0.3% in rank over a 1M-row window) stays under the sketch's own ~1.3%
            step = -(-present.size // KLL_BATCH)
            self._kll.update(present[::step] if step > 1 else present)

    def add_categories(self, counts: Mapping[str, int], missing: int, invalid: int = 0) -> None:
        other = len(self.bins.categories)
        for value, c in counts.items():
            self.counts[self._index.get(value, other)] += c
            if self.bins.seen_complete and value not in self._seen:
                self.unseen += c
            if self._freq is not None:
                self._freq.update(value, c)
        self.counts[-1] += missing
        self.invalid += invalid

    def result(self) -> ColumnCounts:
        sketch = b""
        if self._kll is not None:
            sketch = bytes(self._kll.serialize())
        elif self._freq is not None:
            sketch = bytes(self._freq.serialize())
        return ColumnCounts(
            counts=self.counts.copy(),
            invalid=self.invalid,
            unseen=self.unseen,
            sketch=sketch,
            moments=(float(self.moments[0]), float(self.moments[1]), float(self.moments[2])),
        )


# --------------------------------------------------------------------------- performance


@dataclass
class PerformanceCounts:
    """Mergeable counts for realised metrics of the rows that have a label.

    Classification: a confusion matrix (true x predicted, over ``classes``) and, for a
    binary model, the positive-class score histogram per true label (``AUC_BINS`` bins on
    [0, 1]) for the ROC AUC. Regression: n, sum of errors, of squared and of absolute errors.
    """

    task: Task
    classes: list[str] = field(default_factory=list)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    score_hist: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), dtype=np.int64))
    errors: np.ndarray = field(default_factory=lambda: np.zeros(4))  # n, sum e, sum e^2, sum |e|
    unknown_labels: int = 0  # labels that are not one of the model's classes

    @classmethod
    def empty(cls, task: Task, classes: Sequence[str] | None) -> PerformanceCounts:
        k = len(classes or [])
        return cls(
            task=task,
            classes=list(classes or []),
            confusion=np.zeros((k, k), dtype=np.int64),
            score_hist=np.zeros((2, AUC_BINS if k == 2 else 0), dtype=np.int64),
        )

    @property
    def labelled(self) -> int:
        if self.task == "regression":
            return int(self.errors[0])
        return int(self.confusion.sum()) + self.unknown_labels

    def add(self, truth: np.ndarray, predicted: np.ndarray, score: np.ndarray | None) -> None:
        """Rows with a label: ``truth`` and ``predicted`` as text classes (or floats for a
        regressor), ``score`` the positive-class probability (binary)."""
        if self.task == "regression":
            t, p = truth.astype(float), predicted.astype(float)
            ok = ~(np.isnan(t) | np.isnan(p))
            e = p[ok] - t[ok]
            self.errors += (e.size, e.sum(), np.square(e).sum(), np.abs(e).sum())
            return
        index = {c: i for i, c in enumerate(self.classes)}
        ti = np.fromiter((index.get(str(v), -1) for v in truth), dtype=np.int64, count=len(truth))
        pi = np.fromiter(
            (index.get(str(v), -1) for v in predicted), dtype=np.int64, count=len(predicted)
        )
        ok = (ti >= 0) & (pi >= 0)
        self.unknown_labels += int((ti < 0).sum())
        k = len(self.classes)
        self.confusion += np.bincount(ti[ok] * k + pi[ok], minlength=k * k).reshape(k, k)
        if k == 2 and score is not None:
            s = np.asarray(score, dtype=float)
            has = ok & np.isfinite(s)  # a row without a score counts in the matrix only
            b = np.minimum((np.clip(s[has], 0.0, 1.0) * AUC_BINS).astype(np.int64), AUC_BINS - 1)
            for label in (0, 1):
                self.score_hist[label] += np.bincount(b[ti[has] == label], minlength=AUC_BINS)

    def merge(self, other: PerformanceCounts) -> PerformanceCounts:
        return PerformanceCounts(
            task=self.task,
            classes=self.classes,
            confusion=self.confusion + other.confusion,
            score_hist=self.score_hist + other.score_hist,
            errors=self.errors + other.errors,
            unknown_labels=self.unknown_labels + other.unknown_labels,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "classes": self.classes,
            "confusion": self.confusion.tolist(),
            "score_hist": self.score_hist.tolist(),
            "errors": self.errors.tolist(),
            "unknown_labels": self.unknown_labels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PerformanceCounts:
        k = len(d.get("classes", []))
        return cls(
            task=d["task"],
            classes=list(d.get("classes", [])),
            confusion=np.asarray(d.get("confusion") or np.zeros((k, k)), dtype=np.int64).reshape(
                k, k
            ),
            score_hist=np.asarray(d.get("score_hist") or np.zeros((2, 0)), dtype=np.int64).reshape(
                2, -1
            ),
            errors=np.asarray(d.get("errors", [0, 0, 0, 0]), dtype=float),
            unknown_labels=int(d.get("unknown_labels", 0)),
        )


# --------------------------------------------------------------------------- window / reference


@dataclass
class WindowProfile:
    """A window's counts: one :class:`ColumnCounts` per profiled column, performance counts."""

    rows: int
    columns: dict[str, ColumnCounts]
    performance: PerformanceCounts | None = None
    start: float | None = None  # unix seconds of the first and last row (log windows)
    end: float | None = None

    def merge(self, other: WindowProfile, reference: Reference) -> WindowProfile:
        kinds = {b.name: b.kind for b in reference.bins}
        columns = {
            name: counts.merge(other.columns[name], kinds[name])
            for name, counts in self.columns.items()
            if name in other.columns
        }
        perf = self.performance
        if perf is not None and other.performance is not None:
            perf = perf.merge(other.performance)
        starts = [s for s in (self.start, other.start) if s is not None]
        ends = [e for e in (self.end, other.end) if e is not None]
        return WindowProfile(
            rows=self.rows + other.rows,
            columns=columns,
            performance=perf or other.performance,
            start=min(starts) if starts else None,
            end=max(ends) if ends else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": {k: v.to_dict() for k, v in self.columns.items()},
            "performance": self.performance.to_dict() if self.performance else None,
            "start": self.start,
            "end": self.end,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowProfile:
        perf = d.get("performance")
        return cls(
            rows=int(d["rows"]),
            columns={k: ColumnCounts.from_dict(v) for k, v in d["columns"].items()},
            performance=PerformanceCounts.from_dict(perf) if perf else None,
            start=d.get("start"),
            end=d.get("end"),
        )


@dataclass
class Reference:
    """What a model version is monitored against (stored with the version as reference.json).

    ``bins`` fix how every column is counted; ``profile`` is the reference rows counted on
    them; ``calibration`` holds, per ``__score__`` bin, the reference rows and how many of
    them were positive (binary) or correctly classified (multiclass): the data the
    label-free estimate needs. ``metrics`` are the holdout metrics; ``importance`` the
    features' permutation importance (from evaluation), used to weight drift.
    """

    model: str
    version: str | None
    source: str  # "holdout of run <id>", "snapshot <id>", "served traffic <start>..<end>"
    task: Task
    features: list[str]
    bins: list[Bins]
    profile: WindowProfile
    classes: list[str] | None = None
    threshold: float | None = None
    target: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    primary_metric: str | None = None
    importance: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, list[int]] | None = None  # {"rows": [...], "hits": [...]}
    created: str = ""
    format: int = 1

    @property
    def rows(self) -> int:
        return self.profile.rows

    def bins_of(self, name: str) -> Bins:
        for b in self.bins:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def positive(self) -> str | None:
        if self.task == "classification" and self.classes and len(self.classes) == 2:
            return self.classes[1]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "model": self.model,
            "version": self.version,
            "source": self.source,
            "created": self.created,
            "task": self.task,
            "target": self.target,
            "classes": self.classes,
            "threshold": self.threshold,
            "features": self.features,
            "primary_metric": self.primary_metric,
            "metrics": self.metrics,
            "importance": self.importance,
            "calibration": self.calibration,
            "bins": [b.to_dict() for b in self.bins],
            "profile": self.profile.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reference:
        return cls(
            model=d["model"],
            version=d.get("version"),
            source=d.get("source", ""),
            task=d["task"],
            features=list(d["features"]),
            bins=[Bins.from_dict(b) for b in d["bins"]],
            profile=WindowProfile.from_dict(d["profile"]),
            classes=d.get("classes"),
            threshold=d.get("threshold"),
            target=d.get("target"),
            metrics=dict(d.get("metrics") or {}),
            primary_metric=d.get("primary_metric"),
            importance=dict(d.get("importance") or {}),
            calibration=d.get("calibration"),
            created=d.get("created", ""),
            format=int(d.get("format", 1)),
        )
