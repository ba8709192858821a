"""Ground-truth labels for logged predictions: which prediction an id names, and storing them.

An id sent with a label is matched, in this order:

1. the server's request id (``request_id`` in every answer; the log's key);
2. otherwise a client id (``X-Request-ID``, the v2/gRPC ``id`` the client sent) that
   exactly ONE logged prediction carries;
3. otherwise it is unknown (never seen, dropped, or a client id shared by several
   predictions: ambiguous), and no label is stored for it.

Labels live in their own table keyed by the server id, so a label arriving days later never
rewrites a prediction row, and several labels for one request may exist (reads join the
latest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.predlog.records import FeedbackRow, encode_label
from flywheel.predlog.stores import Store

__all__ = ["LabelResult", "match_ids", "store_labels"]


@dataclass(slots=True)
class LabelResult:
    """What :func:`store_labels` did: how many labels were stored, which ids were unknown
    (in the order sent, once each), and which server id each matched id resolved to."""

    accepted: int = 0
    unknown: list[str] = field(default_factory=list)
    matched: dict[str, str] = field(default_factory=dict)


def match_ids(store: Store, ids: Sequence[str]) -> dict[str, str]:
    """``{id: server request id}`` for each of ``ids`` that names exactly one prediction
    (a server id first, else a client id carried by one prediction only)."""
    matched = {rid: rid for rid in store.known_ids(ids)}
    rest = [i for i in ids if i not in matched]
    if rest:
        for client, match in store.client_matches(rest).items():
            if match.count == 1:
                matched[client] = match.request_id
    return matched


def store_labels(
    reading: Callable[[str], Any],
    items: Iterable[tuple[str, Any]],
    received_at: float,
    pending: Callable[[], bool],
    flush: Callable[[], None],
) -> LabelResult:
    """Match each ``(id, label)`` and store the labels of the matched ones in one
    transaction. ``reading(what)`` is the log's context manager for its shared reader store;
    when some ids are not found and rows were queued when the lookup began (``pending()``),
    ``flush()`` writes them and the lookup runs again, so feedback right after an answer
    finds it."""
    encoded = [(str(rid), encode_label(str(rid), label)) for rid, label in items]
    ids = list(dict.fromkeys(rid for rid, _ in encoded))
    if not ids:
        return LabelResult()
    # asked BEFORE the lookup: a row queued now is either written before the lookup (found)
    # or flushed below (asked after it, a batch written in between would be missed)
    queued = pending()
    with reading("look up request ids in") as store:
        matched = match_ids(store, ids)
    if len(matched) < len(ids) and (queued or pending()):
        flush()  # some ids may still be queued: write them, then look again
        with reading("look up request ids in") as store:
            matched = match_ids(store, ids)
    rows: list[FeedbackRow] = [
        (matched[rid], label, received_at) for rid, label in encoded if rid in matched
    ]
    if rows:
        with reading("store feedback in") as store:
            store.add_feedback(rows)
    unknown = [rid for rid in ids if rid not in matched]
    return LabelResult(len(rows), unknown, matched)
