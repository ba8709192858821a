"""One drift check by a peer tool, run INSIDE that tool's venv (``bench/.venvs/<tool>``, made by
``bench.peers.venvs``); imports only that venv's packages and the standard library.

    bench/.venvs/evidently/bin/python bench/peers/drift_peer.py --tool evidently \\
        --reference REF.parquet --current CUR.parquet [--current CUR2.parquet ...] \\
        --numeric a,b,c --categorical x,y

Each tool runs with its defaults:

- Evidently: ``Report([DataDriftPreset()], include_tests=True)`` and ``report.run(current,
  reference)``; the columns typed by a ``DataDefinition`` from ``--numeric``/``--categorical``.
  The preset picks the test per column (for more than 1,000 rows: normed Wasserstein distance,
  threshold 0.1, for numeric columns; Jensen-Shannon distance, 0.1, for categorical ones with
  more than two values; the Z-test for binary ones; K-S / chi-square below 1,000 rows).
  ``include_tests=True`` changes no computation: it attaches Evidently's own verdict
  ("Value Drift for column X": FAIL when drift is detected) to each column's ``ValueDrift``
  metric, which is where ``drifted`` comes from.
- NannyML: ``UnivariateDriftCalculator`` with its default methods (Jensen-Shannon distance for
  continuous and categorical columns) and default thresholds (mean + 3 std of the reference
  chunks' distances). ``fit`` on the reference with the default chunker (about 10 chunks: the
  thresholds come from them); then the chunker is set to one chunk and each current file is
  ``calculate``d as a single chunk; ``drifted`` is that chunk's ``alert``. The reference is
  fitted once; each line's ``seconds`` is fit + calculate (what one standalone check costs),
  with ``fit_seconds`` and ``calc_seconds`` given apart.

Prints one JSON line per current file: tool, version, rows_ref, rows_cur, seconds (the drift
computation only: building the tool's inputs, running it, reading its verdicts), load_seconds
(reading this current file), ref_load_seconds, peak_rss_mib (``ru_maxrss`` of this process so
far: it includes the loaded frames and, after the first file, earlier files' peaks),
rss_before_mib (RSS just before the computation), drifted / method / score / threshold per
column, and dataset_drift (Evidently's share-of-columns verdict; null for NannyML).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import warnings
from typing import Any

# NannyML posts usage events to Segment unless this is set (nannyml/usage_logging.py reads it
# on every call); Evidently's telemetry lives in its UI service and honours DO_NOT_TRACK
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pandas as pd


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def load(path: str, columns: list[str]) -> tuple[pd.DataFrame, float]:
    started = time.perf_counter()
    frame = pd.read_parquet(path, columns=columns)
    return frame, time.perf_counter() - started


def number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------- Evidently


def evidently_version() -> str:
    """Imported before the clock starts (also what the check itself imports)."""
    import evidently
    from evidently import DataDefinition, Dataset, Report  # noqa: F401
    from evidently.presets import DataDriftPreset  # noqa: F401

    return str(evidently.__version__)


def evidently_check(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> dict[str, Any]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report([DataDriftPreset()], include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    found = snapshot.dict()

    method: dict[str, str] = {}
    score: dict[str, float | None] = {}
    threshold: dict[str, float | None] = {}
    ids: dict[str, str] = {}
    dataset_drift = None
    for metric in found["metrics"]:
        config = metric["config"]
        kind = config.get("type", "")
        if kind.endswith(":ValueDrift"):
            column = config["column"]
            ids[metric["id"]] = column
            method[column] = config.get("method")
            threshold[column] = number(config.get("threshold"))
            score[column] = number(metric["value"])
        elif kind.endswith(":DriftedColumnsCount"):
            share = metric["value"]["share"]
            dataset_drift = bool(share >= config.get("drift_share", 0.5))
    drifted: dict[str, bool] = {}
    for test in found["tests"]:
        if not test.get("bound_test", {}).get("type", "").endswith(":ValueDriftBoundTest"):
            continue
        params = test["metric_config"]["params"]
        column = params.get("column") or ids[test["metric_config"]["metric_id"]]
        drifted[column] = test["status"] == "FAIL"
    missing = sorted(set(score) - set(drifted))
    if missing:
        raise RuntimeError(f"Evidently gave no drift verdict for {missing}")
    return {
        "drifted": drifted,
        "method": method,
        "score": score,
        "threshold": threshold,
        "dataset_drift": dataset_drift,
    }


# --------------------------------------------------------------------------- NannyML


def nannyml_version() -> str:
    """Imported before the clock starts (also what the check itself imports)."""
    import nannyml
    from nannyml.chunk import CountBasedChunker  # noqa: F401
    from nannyml.drift.univariate import UnivariateDriftCalculator  # noqa: F401

    return str(nannyml.__version__)


class NannyML:
    """Fit once on the reference (default chunker), then one chunk per current file."""

    def __init__(self, reference: pd.DataFrame, numeric: list[str], categorical: list[str]):
        from nannyml.chunk import CountBasedChunker
        from nannyml.drift.univariate import UnivariateDriftCalculator

        self.columns = [*numeric, *categorical]
        started = time.perf_counter()
        self.calc = UnivariateDriftCalculator(
            column_names=self.columns,
            treat_as_numerical=numeric or None,
            treat_as_categorical=categorical or None,
        )
        self.calc.fit(reference)
        self.calc.chunker = CountBasedChunker(chunk_number=1)
        # one chunk per current file is the point here, not a mistake
        warnings.filterwarnings("ignore", message="The resulting number of chunks is too low")
        self.fit_seconds = time.perf_counter() - started
        self.reference_chunks = len(self.calc.result.filter(period="reference").to_df())

    def check(self, current: pd.DataFrame) -> dict[str, Any]:
        result = self.calc.calculate(current)
        frame = result.filter(period="analysis").to_df()
        if len(frame) != 1:
            raise RuntimeError(f"expected one analysis chunk, got {len(frame)}")
        row = frame.iloc[0]
        drifted: dict[str, bool] = {}
        method: dict[str, str] = {}
        score: dict[str, float | None] = {}
        threshold: dict[str, float | None] = {}
        for column in self.columns:
            names = self.calc.categorical_method_names
            if column in self.calc.continuous_column_names:
                names = self.calc.continuous_method_names
            (name,) = names  # the default: one method per column type
            drifted[column] = bool(row[(column, name, "alert")])
            method[column] = name
            score[column] = number(row[(column, name, "value")])
            threshold[column] = number(row[(column, name, "upper_threshold")])
        return {
            "drifted": drifted,
            "method": method,
            "score": score,
            "threshold": threshold,
            "dataset_drift": None,
        }


# --------------------------------------------------------------------------- main


def split(names: str | None) -> list[str]:
    return [n for n in (names or "").split(",") if n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", required=True, choices=["evidently", "nannyml"])
    parser.add_argument("--reference", required=True, help="reference parquet file")
    parser.add_argument(
        "--current", required=True, action="append", help="current parquet file (repeatable)"
    )
    parser.add_argument("--numeric", default="", help="comma-separated numeric columns")
    parser.add_argument("--categorical", default="", help="comma-separated categorical columns")
    args = parser.parse_args(argv)
    numeric, categorical = split(args.numeric), split(args.categorical)
    columns = [*numeric, *categorical]
    if not columns:
        parser.error("name at least one column with --numeric or --categorical")

    version = evidently_version() if args.tool == "evidently" else nannyml_version()
    reference, ref_load = load(args.reference, columns)
    nanny: NannyML | None = None
    for path in args.current:
        current, cur_load = load(path, columns)
        rss_before = rss_mib()
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if args.tool == "evidently":
            found = evidently_check(reference, current, numeric, categorical)
            seconds = time.perf_counter() - started
        else:
            first = nanny is None
            if nanny is None:
                nanny = NannyML(reference, numeric, categorical)
            started = time.perf_counter()
            found = nanny.check(current)
            calc = time.perf_counter() - started
            seconds = nanny.fit_seconds + calc
            extra = {
                "fit_seconds": round(nanny.fit_seconds, 4),
                "fitted_in_this_line": first,
                "calc_seconds": round(calc, 4),
                "reference_chunks": nanny.reference_chunks,
            }
        line = {
            "tool": args.tool,
            "version": version,
            "current": os.path.basename(path),
            "rows_ref": len(reference),
            "rows_cur": len(current),
            "columns": len(columns),
            "seconds": round(seconds, 4),
            "load_seconds": round(cur_load, 4),
            "ref_load_seconds": round(ref_load, 4),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "rss_before_mib": round(rss_before, 1),
            **extra,
            **found,
        }
        print(json.dumps(line), flush=True)
        del current
    return 0


if __name__ == "__main__":
    sys.exit(main())
