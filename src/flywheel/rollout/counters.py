"""Per-arm counters the serving core keeps while a rollout runs (one replica's view).

Cheap enough for the hot path: a request adds to a few integers and the latency histogram
(log-spaced buckets); the scores (a binary classifier's positive class on 20 bins, a
multiclass model's predicted class, a bin each) are binned once per
micro-batch, by the arm's batcher (:meth:`ArmCounter.scored`), not once per request. The
server's rollout agent snapshots them into the store (:meth:`RolloutStore.put_counts`) about
once a second; the controller sums every replica's and reads p99 and PSI off the histograms.
"""

from __future__ import annotations

import hashlib
import math
import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

import numpy as np

__all__ = [
    "DISTINCT_INPUTS",
    "LATENCY_EDGES",
    "SCORE_BINS",
    "ArmCounter",
    "ArmCounts",
    "as_dict",
    "percentile",
    "psi",
    "scores_of",
    "slow_beyond_chance",
]

# 0.05 ms .. ~60 s, 10% apart: a p99 read off them is within 10%
LATENCY_EDGES = [0.05 * 1.1**k for k in range(150)]
SCORE_BINS = 20
SMALL = 32  # score arrays up to this long are binned in plain Python
MAX_KEYS = 200_000  # distinct keys remembered per arm and step (~10 MB at most)
# distinct input rows remembered per arm and step: traffic with fewer is the same few rows
# sent again and again (a demo's three example rows), and score drift counts them as that
# many draws, not as every row. Hashed until this many are seen, then never again; at most
# SAW_ROWS rows of a micro-batch are looked at (ArmCounter.saw).
DISTINCT_INPUTS = 20
SAW_ROWS = 8  # rows of a micro-batch looked at for new inputs (ArmCounter.saw)
QUIET_BATCHES = 16  # batches with no new row, after which saw() looks at one row a batch


@dataclass
class ArmCounts:
    """One arm's counters (one replica's, or summed): everything the guardrails read."""

    requests: int = 0
    errors: int = 0
    rows: int = 0
    latency_sum: float = 0.0  # milliseconds
    latency_sumsq: float = 0.0
    latency_hist: list[int] = field(default_factory=list)  # counters.LATENCY_EDGES buckets
    score_hist: list[int] = field(default_factory=list)  # counters.SCORE_BINS on [0, 1]
    # units of assignment: distinct sticky keys seen (capped per replica) plus the requests
    # that had no key of their own (each its own unit)
    units: int = 0
    # stable hashes of the distinct input rows seen, up to DISTINCT_INPUTS (replicas and
    # steps: their union)
    inputs: list[int] = field(default_factory=list)

    def add(self, other: ArmCounts) -> ArmCounts:
        def plus(a: list[int], b: list[int]) -> list[int]:
            if not a:
                return list(b)
            if not b:
                return list(a)
            return [x + y for x, y in zip(a, b, strict=True)]

        return ArmCounts(
            self.requests + other.requests,
            self.errors + other.errors,
            self.rows + other.rows,
            self.latency_sum + other.latency_sum,
            self.latency_sumsq + other.latency_sumsq,
            plus(self.latency_hist, other.latency_hist),
            plus(self.score_hist, other.score_hist),
            self.units + other.units,
            sorted(set(self.inputs) | set(other.inputs))[:DISTINCT_INPUTS],
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmCounts:
        """Counts as stored; a field this version does not know (a newer replica's, during a
        rolling upgrade) is left out rather than refused."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, its histograms the counts' own lists (not copied:
        ``dataclasses.asdict`` deep-copied every bucket, ~3 ms of the rollout agent's ~5 ms
        of CPU per tick here)."""
        return dict(vars(self))


class ArmCounter:
    """One arm's counters for the current step. Every count is made on the event loop; the
    lock keeps a snapshot (the agent's, a Prometheus scrape's) whole."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = self.errors = self.rows = self.unique = 0
            self.latency_sum = self.latency_sumsq = 0.0
            self.latency_hist = [0] * (len(LATENCY_EDGES) + 1)
            self.score_hist = [0] * SCORE_BINS
            self.keys: set[int] = set()
            self.inputs: set[int] = set()
            self._turn = 0  # where saw() starts in a batch
            self._quiet = 0  # saw()'s batches in a row that brought no new row
            self._known: dict[int, Any] = {}  # Python's hash -> row, of rows counted in inputs

    def answered(self, latency_ms: float, key: str | None = None, *, unique: bool = False) -> None:
        """One answered request: its latency and its sticky key (the sample-ratio test counts
        distinct keys, not requests); ``unique``: the request had no key of its own (it was
        routed by a fresh draw), so it is a unit by itself."""
        with self._lock:
            self.requests += 1
            if unique:
                self.unique += 1
            elif key is not None and len(self.keys) < MAX_KEYS:
                self.keys.add(hash(key))
            self.latency_sum += latency_ms
            self.latency_sumsq += latency_ms * latency_ms
            self.latency_hist[bisect_right(LATENCY_EDGES, latency_ms)] += 1

    def scored(self, proba: np.ndarray | None) -> None:
        """The scores of rows the arm answered (a micro-batch's probabilities, or a
        request's): counted and binned; nothing for a regressor (no probabilities). A
        multiclass model's rows are binned by their predicted class (bin = class index,
        modulo the bins): its drift is the shift of the predicted classes' shares, as
        Evidently's prediction drift reads a classifier, not of its confidence (an equally
        accurate challenger of another family, less sure of itself, was rolled back)."""
        if proba is not None and proba.ndim == 2 and proba.shape[1] > 2:
            predicted = proba.argmax(axis=1) % SCORE_BINS
            with self._lock:
                self.rows += len(predicted)
                self._bin(predicted)
            return
        scores = scores_of(proba)
        if scores is None:
            return
        n = len(scores)
        if not n:
            return
        with self._lock:
            self.rows += n
            hist = self.score_hist
            # both paths bin a score in float64 (a float32 product would put 0.35 in bin 7,
            # not 6: an arm's big batches and the other's lone rows must bin alike) and skip
            # NaN and infinities
            if n <= SMALL:  # plain Python: numpy's per-call cost (and its GIL release in
                for s in scores.tolist():  # bincount) dominate a few rows
                    if 0.0 <= s < 1.0:
                        hist[int(s * SCORE_BINS)] += 1
                    elif 1.0 <= s < math.inf:
                        hist[SCORE_BINS - 1] += 1
                    elif -math.inf < s < 0.0:
                        hist[0] += 1
                return
            finite = scores[np.isfinite(scores)].astype(np.float64)
            self._bin(np.clip((finite * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1))

    def _bin(self, idx: np.ndarray) -> None:
        """Add rows whose bins are ``idx`` to the score histogram (the lock held)."""
        hist = self.score_hist
        for i, count in enumerate(np.bincount(idx, minlength=SCORE_BINS).tolist()):
            hist[i] += count

    def saw(self, requests: Iterable[Any]) -> None:
        """The input rows of one micro-batch's answered requests (each a :class:`~flywheel.
        serving.decode.Decoded`: ``columns``, ``rows``), hashed until ``DISTINCT_INPUTS``
        distinct ones are seen; after that a call costs one comparison. Within a batch at
        most ``SAW_ROWS`` rows are looked at, the next window each call: traffic that
        repeats a few rows (which never reaches the cap) costs a few lookups a batch, not
        ~4 µs of stable hash for every row of 14 inputs (after ``QUIET_BATCHES`` batches
        with no new row, one row a batch, until one is new), and traffic where a few hot
        rows are most requests still reaches the cap (each batch looks past its repeats). A
        row already counted is known by Python's hash of it and equality (a tenth of the
        stable hash's cost); only a new row gets the stable hash."""
        if len(self.inputs) >= DISTINCT_INPUTS:
            return
        batch = list(requests)
        if not batch:
            return
        with self._lock:
            inputs, known = self.inputs, self._known
            self._turn += 1
            # after QUIET_BATCHES batches that brought no new row, one row a batch: traffic
            # of a few rows for ever costs one lookup a batch; a new row looks wide again
            look = 1 if self._quiet >= QUIET_BATCHES else SAW_ROWS
            self._quiet += 1
            for row in islice(_rows_from(batch, self._turn * look), look):
                try:
                    quick: int | None = hash(row)
                except TypeError:  # an unhashable value: the stable hash alone
                    quick = None
                if quick is not None and known.get(quick) == row:
                    continue  # counted already (a NaN object equals itself)
                key = input_key(row)
                if quick is not None:
                    if len(known) >= 4 * DISTINCT_INPUTS:  # (a NaN hashes by identity)
                        known.clear()
                    known[quick] = row
                if key not in inputs:
                    self._quiet = 0
                    inputs.add(key)
                if len(inputs) >= DISTINCT_INPUTS:
                    return

    def failed(self) -> None:
        with self._lock:
            self.requests += 1
            self.errors += 1

    def snapshot(self) -> ArmCounts:
        with self._lock:
            return ArmCounts(
                self.requests,
                self.errors,
                self.rows,
                self.latency_sum,
                self.latency_sumsq,
                list(self.latency_hist),
                list(self.score_hist),
                len(self.keys) + self.unique,
                sorted(self.inputs)[:DISTINCT_INPUTS],
            )


def _rows_from(batch: list[Any], start: int) -> Iterator[tuple[Any, ...]]:
    """The batch's rows (requests' ``columns`` zipped), every one once, beginning at row
    ``start`` (modulo their number) and wrapping round: successive calls with a growing
    ``start`` look at successive windows, so every row position is looked at in turn (a
    request's first row, say, that repeats in every request, hides no other)."""
    total = sum(request.rows for request in batch)
    if total <= 0:
        return iter(())
    start %= total
    i = 0
    while start >= batch[i].rows:
        start -= batch[i].rows
        i += 1
    first = batch[i].columns
    return chain(
        islice(zip(*first, strict=True), start, None),
        chain.from_iterable(zip(*r.columns, strict=True) for r in batch[i + 1 :] + batch[:i]),
        islice(zip(*first, strict=True), start),
    )


def input_key(row: tuple[Any, ...]) -> int:
    """A row's stable hash (the same in every replica, unlike ``hash()`` of a string)."""
    return int.from_bytes(hashlib.blake2b(repr(row).encode(), digest_size=8).digest(), "big")


def scores_of(proba: np.ndarray | None) -> np.ndarray | None:
    """The rows' score: a binary classifier's positive class (the second class), a
    multiclass model's top probability (the score metric's; a rollout's drift bins a
    multiclass model's predicted class instead, see :meth:`ArmCounter.scored`); None for
    regression."""
    if proba is None or proba.ndim != 2 or proba.shape[1] == 0:
        return None
    if proba.shape[1] == 2:
        return proba[:, 1]
    return proba.max(axis=1)


def percentile(hist: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, in ms (the bucket's upper edge)."""
    total = sum(hist)
    if total == 0:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return LATENCY_EDGES[min(i, len(LATENCY_EDGES) - 1)]
    return LATENCY_EDGES[-1]


SLOW_SHARE = 0.01
"""A p99 above a limit: more than this share of the answers slower than the limit."""
SLOW_TAU = 0.03
"""The slow-answer test's mixing scale: effects of a few percentage points."""


def slow_beyond_chance(
    hist: list[int], limit_ms: float, alpha: float
) -> tuple[bool, int, int, float]:
    """Is the p99 of a latency histogram above ``limit_ms`` beyond chance, i.e. are more
    than 1% of its answers slower than the limit by the always-valid one-sided test
    (:func:`flywheel.rollout.stats.above_share`)? On a few dozen answers the p99 is the
    slowest one, and one stall must not count as a breach. Returns (breach, answers slower,
    answers, p-value); an answer is slower when its bucket's value (the upper edge, as
    :func:`percentile` reports it) is above the limit."""
    from flywheel.rollout.stats import above_share  # not at a server's start: only judging

    top = len(LATENCY_EDGES) - 1
    slow = sum(c for i, c in enumerate(hist) if LATENCY_EDGES[min(i, top)] > limit_ms)
    n = sum(hist)
    breach, p_value = above_share(n, slow, SLOW_SHARE, alpha=alpha, tau=SLOW_TAU)
    return breach, slow, n, p_value


def psi(reference: list[int], current: list[int]) -> float | None:
    """Population stability index of ``current`` against ``reference`` (score histograms),
    with half a count added to every bin so an empty bin of a small sample does not blow it
    up (a floor of 1e-4 would make one empty bin worth ~0.1 by itself)."""
    a, b = np.asarray(reference, float), np.asarray(current, float)
    if a.sum() == 0 or b.sum() == 0:
        return None
    p = (a + 0.5) / (a.sum() + 0.5 * len(a))
    q = (b + 0.5) / (b.sum() + 0.5 * len(b))
    return float(np.sum((q - p) * np.log(q / p)))


def as_dict(counts: ArmCounts) -> dict[str, Any]:
    """The figures a status line shows for an arm."""
    n = counts.requests
    return {
        "requests": n,
        "errors": counts.errors,
        "error_rate": counts.errors / n if n else None,
        "rows": counts.rows,
        "latency_mean_ms": counts.latency_sum / (n - counts.errors) if n > counts.errors else None,
        "latency_p99_ms": percentile(counts.latency_hist, 0.99) if counts.latency_hist else None,
    }
