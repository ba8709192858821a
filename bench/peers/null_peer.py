"""Many drift checks by a peer tool on windows with no drift, run INSIDE that tool's venv
(``bench/.venvs/<tool>``); imports only that venv's packages, the standard library and
``drift_peer.py`` beside it (the same checks, with the same defaults).

    bench/.venvs/nannyml/bin/python bench/peers/null_peer.py --tool nannyml \\
        --reference REF.parquet --current BIG.parquet --window-rows 5000 \\
        [--max-windows 400] [--budget-seconds 180] --numeric a,b,c --categorical x,y

``--current`` is one big file; window ``i`` is its rows ``[i * window_rows, (i + 1) *
window_rows)``, in order, so every tool (and flywheel) judges the same windows. Each tool runs
with its defaults, as in ``drift_peer.py``: Evidently runs ``DataDriftPreset`` per window
(nothing to fit: each window is a full report against the reference); NannyML fits its
``UnivariateDriftCalculator`` once on the reference (default chunker, its thresholds from the
reference chunks) and then calculates each window as one chunk.

Windows are checked until ``--max-windows`` or until ``--budget-seconds`` of checking have
passed (the window in progress finishes). Prints one JSON line per window: tool, version,
window, rows, seconds, drifted (per column), any (a column flagged), dataset_drift
(Evidently's share-of-columns verdict; null for NannyML); then a last line with
``"summary": true``: windows, fit_seconds (NannyML), load_seconds, peak_rss_mib.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import drift_peer  # after the path: it sits beside this file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", required=True, choices=["evidently", "nannyml"])
    parser.add_argument("--reference", required=True, help="reference parquet file")
    parser.add_argument("--current", required=True, help="one parquet file holding the windows")
    parser.add_argument("--window-rows", type=int, required=True)
    parser.add_argument("--max-windows", type=int, default=1_000_000)
    parser.add_argument("--budget-seconds", type=float, default=180.0)
    parser.add_argument("--numeric", default="", help="comma-separated numeric columns")
    parser.add_argument("--categorical", default="", help="comma-separated categorical columns")
    args = parser.parse_args(argv)
    numeric, categorical = drift_peer.split(args.numeric), drift_peer.split(args.categorical)
    columns = [*numeric, *categorical]
    if not columns:
        parser.error("name at least one column with --numeric or --categorical")

    if args.tool == "evidently":
        version = drift_peer.evidently_version()
    else:
        version = drift_peer.nannyml_version()
    reference, ref_load = drift_peer.load(args.reference, columns)
    current, cur_load = drift_peer.load(args.current, columns)
    available = len(current) // args.window_rows
    nanny: drift_peer.NannyML | None = None
    fit_seconds = 0.0
    if args.tool == "nannyml":
        nanny = drift_peer.NannyML(reference, numeric, categorical)
        fit_seconds = nanny.fit_seconds

    spent = 0.0
    done = 0
    for i in range(min(available, args.max_windows)):
        if spent >= args.budget_seconds:
            break
        window = current.iloc[i * args.window_rows : (i + 1) * args.window_rows].reset_index(
            drop=True
        )
        started = time.perf_counter()
        if nanny is None:
            found = drift_peer.evidently_check(reference, window, numeric, categorical)
        else:
            found = nanny.check(window)
        seconds = time.perf_counter() - started
        spent += seconds
        done += 1
        print(
            json.dumps(
                {
                    "tool": args.tool,
                    "version": version,
                    "window": i,
                    "rows": len(window),
                    "seconds": round(seconds, 4),
                    "drifted": found["drifted"],
                    "any": any(found["drifted"].values()),
                    "dataset_drift": found["dataset_drift"],
                }
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "summary": True,
                "tool": args.tool,
                "version": version,
                "rows_ref": len(reference),
                "window_rows": args.window_rows,
                "windows": done,
                "windows_available": available,
                "check_seconds": round(spent, 3),
                "fit_seconds": round(fit_seconds, 4),
                "load_seconds": round(ref_load + cur_load, 4),
                "peak_rss_mib": round(drift_peer.peak_rss_mib(), 1),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
