"""Row windows (``monitoring.window_rows``) read again from a stored window's start: the
log keeps float seconds and the window's start is its first row's time in whole µs, which
can lie just after that row; the refreshed window must hold the same rows (and so keep its
name) instead of dropping the first one and shifting every later window."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from flywheel.monitoring.monitor import _MARGIN_S, _from_micros, _row_windows
from flywheel.predlog._decode import TIMESTAMP


def _log(seconds: list[float]) -> pa.Table:
    micros = np.round(np.array(seconds) * 1e6).astype(np.int64)  # as the log's reader does
    return pa.table({"ts": pa.array(micros, TIMESTAMP), "i": list(range(len(seconds)))})


def _read(log: pa.Table, start: float | None) -> list[pa.Table]:
    """The log's query: float seconds at or after ``start``, in batches of 7."""
    seconds = np.array(SECONDS)
    keep = np.ones(len(seconds), bool) if start is None else seconds >= start
    rows = log.filter(pa.array(keep))
    return [rows.slice(i, 7) for i in range(0, rows.num_rows, 7)]


# the third window's first row (index 20) rounds up to the next µs
SECONDS = [1796675440.0 + i * 0.25 for i in range(40)]
SECONDS[20] = 1796675445.0674715


def _windows(start: float | None, *, margin: bool) -> list[tuple[float, float, list[int]]]:
    log = _log(SECONDS)
    query = None if start is None else start - (_MARGIN_S if margin else 0.0)
    batches = _read(log, query)
    out = []
    for lo, hi, parts in _row_windows(_from_micros(iter(batches), start), 10):
        out.append((lo, hi, [i for p in parts for i in p.column("i").to_pylist()]))
    return out


def test_a_refreshed_row_window_keeps_its_rows_and_its_bounds() -> None:
    first = _windows(None, margin=True)
    assert [w[2] for w in first] == [list(range(k, k + 10)) for k in (0, 10, 20, 30)]
    third = first[2]
    assert third[0] > SECONDS[20]  # the stored start lies after its first row ...
    again = _windows(third[0], margin=True)  # ... refreshed from there
    assert again == first[2:]
    # read from the start as it stands, the first row is lost and the windows shift
    assert _windows(third[0], margin=False)[0][2][0] == 21


def test_the_next_run_starts_after_the_last_window_and_skips_its_rows() -> None:
    first = _windows(None, margin=True)
    later = _windows(first[1][1], margin=True)  # from the second window's end
    assert later == first[2:]
