"""Drift monitoring against Evidently and NannyML, in one run (not a test).

    .venv/bin/python -m bench.monitoring [--quick] [--sizes 100000,1000000]
        [--memory-sizes 100000,1000000,10000000] [--null-budget 180] [--peers evidently,nannyml]
        [--scenarios none,price_rise,...] [--designs as_briefed,burn_in] [--sections 1,2,3,4]
        [--data DIR] [--keep] [--seed S] [--json [PATH]]

1. **Speed and verdicts.** Per size (default 100k and 1M rows per side; ``--quick``: 100k),
   seeded Parquet files of 25 columns (20 numeric ``n00..n19``, 5 categorical ``c0..c4``; the
   generator of ``bench/peers/gen_drift_data.py``, written 250k rows at a time): a reference,
   a drifted current (``n00`` +0.5 sd, ``n01`` +0.2 sd, ``n02`` +0.05 sd (subtle), a new
   level ``new`` on 5% of ``c0``) and a current from the reference's distributions.
   flywheel's check runs end to end from the files in a child process of its own (peak RSS =
   its ``ru_maxrss``): the reference file read whole and
   :func:`~flywheel.monitoring.reference.build_reference`, the current file counted in Arrow
   batches by :func:`~flywheel.monitoring.window.count_window` through flywheel's own file
   reader (``flywheel.monitoring.sources``: ``pyarrow.dataset`` ``to_batches``, 65,536 rows),
   then :func:`~flywheel.monitoring.decide.evaluate_window` with the default
   ``MonitorSettings``. Evidently and NannyML run ``bench/peers/drift_peer.py`` in their
   venvs on the same files, one process per current file, with their defaults. Their
   ``seconds`` are the drift computation only (pandas reading the files is given apart);
   flywheel's include reading the Parquet files. Verdicts per feature, side by side.
2. **Memory constant in rows.** flywheel only, 100k, 1M and 10M rows per side (10M skipped
   with ``--quick``). ``build_reference`` takes a whole Arrow table, so here the reference is
   a holdout-sized sample, the first 100,000 rows of the reference file, and the current
   file (all N rows) is streamed, by three readers: flywheel's own, ``to_batches`` with
   Parquet pre-buffering off (read-ahead 2 batches), ``ParquetFile.iter_batches`` with
   pre-buffering off.
3. **False alarms under the null.** A 50,000-row reference and windows of 5,000 rows drawn
   from the same distribution (row slices of one file, the same windows for every tool), and
   for flywheel windows of 50,000 rows too. flywheel judges 400 windows of 5k and 200 of 50k
   (``--quick``: 200 and 50); each peer as many 5k windows as ``--null-budget`` seconds of
   checking allow (``bench/peers/null_peer.py``: NannyML fits once). A window is a false
   alarm when ANY feature is flagged; rates with 95% Wilson intervals.
4. **Detection delay on the simulator.** Per scenario (``price_rise``, ``new_contract``,
   ``ticket_churn``, and a control world with none), the monthly windows of
   ``churn_features`` (the 14 model features: no ``customer_id``, ``observed_at``,
   ``churned``), in two designs: ``as_briefed`` (a 420-day world of 5,000 customers, drift
   at day 300; reference: every month before the drift month less the last two, which
   includes the world's first months, when the look-back features are still filling up) and
   ``burn_in`` (a 1,200-day world, drift at day 1,080; reference: the 7 months before the
   last two pre-drift months). Current: the two months before the drift month, then every
   month. flywheel: the drift decision without a model (``evaluate_window``, ``decide`` with
   2-of-3 persistence); peers: the flagged columns per month. Delay: windows from the drift
   month (the first month observed after the drift day) to flywheel's first alarm / the
   peer's first month with a flagged column.

Results also go to ``bench/results/monitoring.json``; ``--json`` prints them (or writes them
to PATH) instead of the tables. A full run takes ~25 minutes on a 2-core machine, most of it
Evidently at 1M rows (~2 min per file), the peers' null budgets and the simulator worlds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from bench.monitoring_null import wilson
from bench.peers import gen_drift_data as gen
from bench.peers import venvs
from flywheel.monitoring.decide import MonitorSettings, WindowResult, decide, evaluate_window
from flywheel.monitoring.profile import Reference
from flywheel.monitoring.reference import build_reference
from flywheel.monitoring.window import count_window
from flywheel.schema import FeatureSpec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "monitoring.json"
PEER_SCRIPT = ROOT / "bench" / "peers" / "drift_peer.py"
NULL_SCRIPT = ROOT / "bench" / "peers" / "null_peer.py"
PEERS = ("evidently", "nannyml")
TOOLS = ("flywheel", *PEERS)

NUMERIC = [f"n{i:02d}" for i in range(20)]
CATEGORICAL = [f"c{j}" for j in range(5)]
FEATURES = [*NUMERIC, *CATEGORICAL]
SPECS = [FeatureSpec(n, "numeric") for n in NUMERIC] + [
    FeatureSpec(c, "categorical") for c in CATEGORICAL
]
SHIFT = {0: 0.5, 1: 0.2, 2: 0.05}  # numeric column index -> shift in its sds
NEW_SHARE = {0: 0.05}  # categorical column index -> share of rows on a new level
TRUTH = {"n00": "+0.5 sd", "n01": "+0.2 sd", "n02": "+0.05 sd (subtle)", "c0": "new level 5%"}
CHUNK_ROWS = 250_000  # rows generated at once = one row group
BATCH_ROWS = 65_536
READAHEAD = 2  # batches read ahead by the scanner (pyarrow's default: 16)
READERS = ("flywheel", "no_prebuffer", "iter_batches")
READER_LABELS = {
    "flywheel": "flywheel's own (sources.py: ParquetFile.iter_batches, pre_buffer off)",
    "no_prebuffer": f"Dataset.to_batches, pre_buffer off, read-ahead {READAHEAD}",
    "iter_batches": "ParquetFile.iter_batches, pre_buffer off",
}
REF_SAMPLE = 100_000  # the memory test's reference: the reference file's first rows
GOAL = 50.0  # x faster than Evidently at 1M

NULL_REF_ROWS = 50_000
NULL_WINDOW = 5_000
NULL_BIG_WINDOW = 50_000

CUSTOMERS = 5_000
# (world days, drift day, reference months): None = every month before the drift month less
# the last two; k = the k months before those two
DESIGNS = {
    "as_briefed": (420, 300, None),
    "burn_in": (1_200, 1_080, 7),
}
WORLD_START = dt.date(2025, 1, 1)
SCENARIOS = ("none", "price_rise", "new_contract", "ticket_churn")
SIM_DROP = ("customer_id", "observed_at", "churned")
SIM_CATEGORICAL = ("contract_type", "plan", "payment_method", "region")


def _say(msg: str) -> None:
    print(f"[bench.monitoring {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"count": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


# --------------------------------------------------------------------------- data


def write_rows(path: Path, rows: int, seed: list[int], *, drifted: bool) -> float:
    """``rows`` generated rows into ``path``, CHUNK_ROWS at a time (one row group each), so
    that generating never holds more than one chunk. Returns the seconds it took."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    shift, new = (SHIFT, NEW_SHARE) if drifted else ({}, {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    writer: pq.ParquetWriter | None = None
    try:
        for first in range(0, rows, CHUNK_ROWS):
            m = min(CHUNK_ROWS, rows - first)
            chunk = gen.table(rng, m, len(NUMERIC), len(CATEGORICAL), shift, new)
            if writer is None:
                writer = pq.ParquetWriter(tmp, chunk.schema)
            writer.write_table(chunk, row_group_size=CHUNK_ROWS)
    finally:
        if writer is not None:
            writer.close()
    tmp.rename(path)
    return time.perf_counter() - started


def ensure_file(path: Path, rows: int, seed: list[int], *, drifted: bool) -> None:
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return
    seconds = write_rows(path, rows, seed, drifted=drifted)
    _say(
        f"wrote {path.name} ({rows:,} rows, {path.stat().st_size / 2**20:,.0f} MiB) in "
        f"{seconds:.1f} s"
    )


def size_files(data: Path, rows: int, seed: int, *, same: bool = True) -> dict[str, Path]:
    folder = data / f"rows_{rows}"
    files = {
        "reference": folder / "reference.parquet",
        "drifted": folder / "current.parquet",
    }
    if same:
        files["same"] = folder / "current_same.parquet"
    for k, (name, path) in enumerate(files.items()):
        ensure_file(path, rows, [seed, rows, k], drifted=name == "drifted")
    return files


# --------------------------------------------------------------------------- flywheel


def current_batches(current: str, reader: str) -> Any:
    """The current file's batches: ``flywheel`` = the monitor's own file reader
    (``flywheel.monitoring.sources``: ``ParquetFile.iter_batches`` without pre-buffering,
    what ``flywheel monitor check`` does), ``no_prebuffer`` = ``to_batches`` with Parquet
    pre-buffering off and a read-ahead of READAHEAD batches, ``iter_batches`` =
    ``ParquetFile.iter_batches`` with pre-buffering off (synchronous: nothing read ahead).
    Pre-buffering keeps every row group read until the reader closes (apache/arrow#39808)."""
    if reader == "flywheel":
        from flywheel.monitoring.sources import _dataset_batches

        return _dataset_batches(Path(current))[1]
    if reader == "iter_batches":
        return pq.ParquetFile(current, pre_buffer=False).iter_batches(
            batch_size=BATCH_ROWS, columns=FEATURES
        )
    return ds.dataset(current, format="parquet").to_batches(
        columns=FEATURES,
        batch_size=BATCH_ROWS,
        batch_readahead=READAHEAD,
        fragment_readahead=1,
        fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
    )


def head(path: str, rows: int) -> pa.Table:
    """The first ``rows`` rows of a Parquet file, reading no more row groups than needed."""
    got, n = [], 0
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(
        batch_size=BATCH_ROWS, columns=FEATURES
    ):
        got.append(batch)
        n += batch.num_rows
        if n >= rows:
            break
    return pa.Table.from_batches(got).slice(0, rows)


def flywheel_check(
    reference: str,
    current: str,
    ref_rows: int | None = None,
    reader: str = "flywheel",
    name: str = "current",
) -> dict[str, Any]:
    """flywheel's drift check from two Parquet files, end to end (run in a child process)."""
    rss_start = _rss_mib()
    t0 = time.perf_counter()
    if ref_rows is None:
        frame = pq.read_table(reference, columns=FEATURES)
    else:  # a holdout-sized sample: the file's first rows
        frame = head(reference, ref_rows)
    t1 = time.perf_counter()
    ref = build_reference(
        model="bench",
        version=None,
        source=f"{Path(reference).name} ({frame.num_rows} rows)",
        frame=frame,
        specs=SPECS,
        task="regression",
    )
    rows_ref = frame.num_rows
    del frame
    t2 = time.perf_counter()
    rss_after_ref = _rss_mib()
    window = count_window(ref, current_batches(current, reader))
    t3 = time.perf_counter()
    result = evaluate_window(ref, window, name, MonitorSettings())
    t4 = time.perf_counter()
    return {
        "tool": "flywheel",
        "reader": reader,
        "rows_ref": rows_ref,
        "rows_cur": window.rows,
        "seconds": round(t4 - t0, 4),
        "read_reference_s": round(t1 - t0, 4),
        "build_reference_s": round(t2 - t1, 4),
        "count_s": round(t3 - t2, 4),
        "evaluate_s": round(t4 - t3, 4),
        "rss_start_mib": round(rss_start, 1),
        "rss_after_reference_mib": round(rss_after_ref, 1),
        "peak_rss_mib": round(_peak_mib(), 1),
        **_verdicts(result),
    }


def _verdicts(result: WindowResult) -> dict[str, Any]:
    return {
        "drifted": {f.name: f.drifted for f in result.features},
        "score": {f.name: f.value for f in result.features},
        "threshold": {f.name: f.threshold for f in result.features},
        "null_q95": {f.name: f.null_q95 for f in result.features},
        "p_value": {f.name: f.p_value for f in result.features},
        "unseen_share": {f.name: f.unseen_share for f in result.features if f.kind != "numeric"},
        "drift_share": result.drift_share,
        "verdict": result.verdict,
        "reason": result.reason,
    }


def run_flywheel(
    reference: Path, current: Path, ref_rows: int | None = None, reader: str = "flywheel"
) -> dict[str, Any]:
    """:func:`flywheel_check` in a child process of its own (its ru_maxrss is its own)."""
    spec = {
        "reference": str(reference),
        "current": str(current),
        "ref_rows": ref_rows,
        "reader": reader,
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.monitoring", "--child", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"flywheel child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = round(time.perf_counter() - started, 2)  # imports included
    return out


# --------------------------------------------------------------------------- peers


def run_peer(
    tool: str,
    reference: Path,
    currents: list[Path],
    numeric: list[str],
    categorical: list[str],
    timeout: float = 1800,
) -> list[dict[str, Any]]:
    """``drift_peer.py`` in the tool's venv: one JSON line per current file (or an error)."""
    cmd = [str(venvs.python(tool)), str(PEER_SCRIPT), "--tool", tool, "--reference", str(reference)]
    for current in currents:
        cmd += ["--current", str(current)]
    cmd += ["--numeric", ",".join(numeric), "--categorical", ",".join(categorical)]
    return _peer_lines(cmd, tool, timeout)


def _peer_lines(cmd: list[str], tool: str, timeout: float) -> list[dict[str, Any]]:
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, **venvs.PEER_ENV},
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return [{"tool": tool, "error": f"timed out after {timeout:.0f} s", "stdout": str(exc)}]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0:
        lines.append({"tool": tool, "error": proc.stderr.strip()[-2000:]})
    return lines


def ensure_peers(peers: list[str]) -> dict[str, str]:
    """The peers' venvs (made with uv from their locks when missing) and their versions."""
    versions = {}
    for tool in peers:
        made = venvs.ensure(tool, use_uv=True)
        if made.get("made"):
            _say(f"made {made['venv']} in {made['seconds']} s")
        code = f"import {tool}; print({tool}.__version__)"
        done = subprocess.run(
            [str(venvs.python(tool)), "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, **venvs.PEER_ENV},
            check=True,
        )
        versions[tool] = done.stdout.strip()
    return versions


# --------------------------------------------------------------------------- 1. speed, verdicts


def speed(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    out = []
    for rows in args.sizes:
        files = size_files(data, rows, args.seed)
        entry: dict[str, Any] = {"rows": rows, "columns": len(FEATURES), "results": {}}
        for label in ("drifted", "same"):
            found: dict[str, Any] = {}
            found["flywheel"] = run_flywheel(files["reference"], files[label])
            _say(
                f"flywheel {rows:,} rows, {label}: {found['flywheel']['seconds']:.2f} s, "
                f"peak {found['flywheel']['peak_rss_mib']:.0f} MiB"
            )
            for tool in args.peers:
                lines = run_peer(tool, files["reference"], [files[label]], NUMERIC, CATEGORICAL)
                found[tool] = (
                    lines[0]
                    if len(lines) == 1
                    else {"tool": tool, "lines": lines, "error": _error(lines)}
                )
                if "seconds" in found[tool]:
                    _say(
                        f"{tool} {rows:,} rows, {label}: {found[tool]['seconds']:.2f} s, "
                        f"peak {found[tool]['peak_rss_mib']:.0f} MiB"
                    )
                else:
                    _say(f"{tool} {rows:,} rows, {label}: FAILED {found[tool]['error'][:300]}")
            entry["results"][label] = found
        entry["ratios"] = _ratios(entry["results"])
        out.append(entry)
    return out


def _error(lines: list[dict[str, Any]]) -> str:
    return "; ".join(str(x.get("error")) for x in lines if "error" in x) or "no result"


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per file and peer: peer seconds / flywheel seconds, and peak RSS likewise."""
    out: dict[str, Any] = {}
    for label, found in results.items():
        fw = found["flywheel"]
        for tool in PEERS:
            peer = found.get(tool)
            if not peer or "seconds" not in peer:
                continue
            out[f"{tool}/{label}"] = {
                "seconds": peer["seconds"] / fw["seconds"],
                "seconds_with_load": (
                    peer["seconds"] + peer["load_seconds"] + peer["ref_load_seconds"]
                )
                / fw["seconds"],
                "peak_rss": peer["peak_rss_mib"] / fw["peak_rss_mib"],
            }
    return out


# --------------------------------------------------------------------------- 2. memory


def memory(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    out = []
    for rows in args.memory_sizes:
        files = size_files(data, rows, args.seed, same=rows in args.sizes)
        for reader in READERS:
            found = run_flywheel(
                files["reference"], files["drifted"], ref_rows=REF_SAMPLE, reader=reader
            )
            found["rows_per_side"] = rows
            found["rows_per_s_counted"] = round(found["rows_cur"] / found["count_s"])
            _say(
                f"memory: {rows:,} rows per side (reference: first {found['rows_ref']:,}), "
                f"reader {reader}: {found['seconds']:.1f} s, peak {found['peak_rss_mib']:.0f} MiB"
            )
            out.append(found)
        if rows > max(args.sizes) and not args.keep:
            shutil.rmtree(files["reference"].parent, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- 3. the null


def null(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    folder = data / "null"
    ref_path, windows_path = folder / "reference.parquet", folder / "windows.parquet"
    n_small = args.null_windows
    ensure_file(ref_path, NULL_REF_ROWS, [args.seed, NULL_REF_ROWS, 10], drifted=False)
    ensure_file(windows_path, n_small * NULL_WINDOW, [args.seed, NULL_WINDOW, 11], drifted=False)
    out: dict[str, Any] = {
        "reference_rows": NULL_REF_ROWS,
        "window_rows": NULL_WINDOW,
        "rows": [],
    }
    settings = MonitorSettings()
    ref = build_reference(
        model="null",
        version=None,
        source="null reference",
        frame=pq.read_table(ref_path, columns=FEATURES),
        specs=SPECS,
        task="regression",
    )
    big = pq.read_table(windows_path, columns=FEATURES)
    small = [big.slice(i * NULL_WINDOW, NULL_WINDOW) for i in range(n_small)]
    out["rows"].append(_flywheel_null(ref, small, settings, NULL_WINDOW))
    del big, small
    rng = np.random.default_rng([args.seed, NULL_BIG_WINDOW, 12])
    large = (
        gen.table(rng, NULL_BIG_WINDOW, len(NUMERIC), len(CATEGORICAL), {}, {})
        for _ in range(args.null_big_windows)
    )
    out["rows"].append(_flywheel_null(ref, large, settings, NULL_BIG_WINDOW))
    for tool in args.peers:
        cmd = [
            str(venvs.python(tool)),
            str(NULL_SCRIPT),
            "--tool",
            tool,
            "--reference",
            str(ref_path),
            "--current",
            str(windows_path),
            "--window-rows",
            str(NULL_WINDOW),
            "--max-windows",
            str(n_small),
            "--budget-seconds",
            str(args.null_budget),
            "--numeric",
            ",".join(NUMERIC),
            "--categorical",
            ",".join(CATEGORICAL),
        ]
        lines = _peer_lines(cmd, tool, timeout=args.null_budget * 3 + 600)
        windows = [x for x in lines if "window" in x]
        summary = next((x for x in lines if x.get("summary")), {})
        row: dict[str, Any] = {
            "tool": tool,
            "window_rows": NULL_WINDOW,
            "windows": len(windows),
            "any_feature": _rate(sum(x["any"] for x in windows), len(windows)),
            "flags_per_feature": _per_feature(x["drifted"] for x in windows),
            "seconds_per_window": (
                sum(x["seconds"] for x in windows) / len(windows) if windows else None
            ),
            "fit_seconds": summary.get("fit_seconds"),
            "peak_rss_mib": summary.get("peak_rss_mib"),
        }
        if tool == "evidently":
            row["dataset_drift"] = _rate(
                sum(bool(x["dataset_drift"]) for x in windows), len(windows)
            )
        if not windows or "error" in lines[-1]:
            row["error"] = _error(lines)
        out["rows"].append(row)
        _say(
            f"null, {tool}: {row['windows']} windows, any feature flagged "
            f"{row['any_feature']['count']}"
        )
    return out


def _per_feature(drifted: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for flags in drifted:
        for name, flag in flags.items():
            if flag:
                counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _flywheel_null(
    ref: Reference, windows: Any, settings: MonitorSettings, size: int
) -> dict[str, Any]:
    results: list[WindowResult] = []
    seconds = 0.0
    for i, window in enumerate(windows):
        started = time.perf_counter()
        result = evaluate_window(ref, count_window(ref, [window]), f"null-{size}-{i}", settings)
        seconds += time.perf_counter() - started
        result.profile = None
        results.append(result)
    decide(results, settings)
    n = len(results)
    row = {
        "tool": "flywheel",
        "window_rows": size,
        "windows": n,
        "any_feature": _rate(sum(bool(r.drifted_features) for r in results), n),
        "verdict": _rate(sum(r.verdict for r in results), n),
        "alarm": _rate(sum(r.alarm for r in results), n),
        "flags_per_feature": _per_feature({f.name: f.drifted for f in r.features} for r in results),
        "seconds_per_window": seconds / n if n else None,
    }
    _say(
        f"null, flywheel {size:,}-row windows: {n} windows, any feature flagged "
        f"{row['any_feature']['count']}"
    )
    return row


# --------------------------------------------------------------------------- 4. scenarios


def scenarios(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    os.environ.setdefault("FLYWHEEL_CONFIG", os.devnull)  # no stray config
    return {label: scenario_design(args, data, label, *DESIGNS[label]) for label in args.designs}


def scenario_design(
    args: argparse.Namespace,
    data: Path,
    label: str,
    days: int,
    drift_day: int,
    reference_months: int | None,
) -> dict[str, Any]:
    import pandas as pd

    from flywheel.config import Settings
    from flywheel.simulate import simulate

    drift_date = WORLD_START + dt.timedelta(days=drift_day)
    out: dict[str, Any] = {
        "days": days,
        "drift_day": drift_day,
        "drift_date": drift_date.isoformat(),
        "customers": CUSTOMERS,
        "reference_months": reference_months,
        "scenarios": {},
    }
    settings = MonitorSettings()
    for name in args.scenarios:
        home = data / f"world_{label}_{name}"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        fw_settings = Settings(home=home)
        specs = [] if name == "none" else [f"{name}@{drift_day}"]
        report = simulate(
            fw_settings, days=days, customers=CUSTOMERS, start=WORLD_START, scenarios=specs
        )
        db = str(fw_settings.source.url).removeprefix("sqlite:///")
        with sqlite3.connect(db) as conn:
            frame = pd.read_sql_query("SELECT * FROM churn_features", conn)
        # in time order (the view's rows come by customer): NannyML's default chunker cuts the
        # reference into consecutive chunks and takes its thresholds from them
        frame = frame.sort_values(["observed_at", "customer_id"], kind="stable")
        frame["month"] = frame["observed_at"].astype(str).str[:7]
        features = [c for c in frame.columns if c not in (*SIM_DROP, "month")]
        categorical = [c for c in features if c in SIM_CATEGORICAL]
        numeric = [c for c in features if c not in SIM_CATEGORICAL]
        months = sorted(frame["month"].unique())
        drift_month = next(m for m in months if dt.date.fromisoformat(m + "-01") >= drift_date)
        pre = [m for m in months if m < drift_month]
        ref_months = pre[:-2] if reference_months is None else pre[-2 - reference_months : -2]
        cur_months = [m for m in months if m >= pre[-2]]

        def table(sel: list[str], frame: Any = frame, features: list[str] = features) -> pa.Table:
            part = frame[frame["month"].isin(sel)][features].reset_index(drop=True)
            return pa.Table.from_pandas(part, preserve_index=False)

        ref_table = table(ref_months)
        started = time.perf_counter()
        ref = build_reference(
            model=f"world_{name}",
            version=None,
            source=f"{ref_months[0]}..{ref_months[-1]}",
            frame=ref_table,
            specs=[
                FeatureSpec(c, "categorical" if c in categorical else "numeric") for c in features
            ],
            task="regression",
        )
        results = [
            evaluate_window(ref, count_window(ref, [table([m])]), m, settings) for m in cur_months
        ]
        decide(results, settings)
        fw_seconds = time.perf_counter() - started
        files = home / "windows"
        files.mkdir()
        pq.write_table(ref_table, files / "reference.parquet")
        month_files = []
        for m in cur_months:
            pq.write_table(table([m]), files / f"{m}.parquet")
            month_files.append(files / f"{m}.parquet")
        per_month = []
        for r in results:
            per_month.append(
                {
                    "month": r.window,
                    "rows": r.rows,
                    "post_drift": r.window >= drift_month,
                    "flywheel": {
                        "drifted": r.drifted_features,
                        "verdict": r.verdict,
                        "drift_share": round(r.drift_share, 4),
                        "alarm": r.alarm,
                        "scores": {f.name: round(f.value, 4) for f in r.features if f.drifted},
                    },
                }
            )
        peer_runs: dict[str, Any] = {}
        for tool in args.peers:
            lines = run_peer(tool, files / "reference.parquet", month_files, numeric, categorical)
            by_file = {x["current"].removesuffix(".parquet"): x for x in lines if "current" in x}
            for row in per_month:
                got = by_file.get(row["month"])
                row[tool] = (
                    {"drifted": sorted(k for k, v in got["drifted"].items() if v)} if got else None
                )
            peer_runs[tool] = {"error": _error(lines)} if len(by_file) < len(month_files) else {}
        entry = {
            "feature_rows": report.feature_rows,
            "reference_months": [ref_months[0], ref_months[-1]],
            "reference_rows": ref_table.num_rows,
            "drift_month": drift_month,
            "features": {"numeric": numeric, "categorical": categorical},
            "flywheel_seconds": round(fw_seconds, 3),
            "months": per_month,
            "peer_errors": {k: v["error"] for k, v in peer_runs.items() if v},
            "summary": _delays(per_month, args.peers),
        }
        out["scenarios"][name] = entry
        _say(
            f"scenario {name} ({label}): "
            + ", ".join(f"{t} delay {s['delay']}" for t, s in entry["summary"].items())
        )
    return out


def _delays(per_month: list[dict[str, Any]], peers: list[str]) -> dict[str, Any]:
    """Per tool: detection delay in windows from the drift month, pre-drift months flagged."""
    post = [r for r in per_month if r["post_drift"]]
    pre = [r for r in per_month if not r["post_drift"]]

    def first(flagged: list[bool]) -> int | None:
        return next((i for i, f in enumerate(flagged) if f), None)

    out: dict[str, Any] = {
        "flywheel": {
            "delay": first([r["flywheel"]["alarm"] for r in post]),
            "delay_verdict": first([r["flywheel"]["verdict"] for r in post]),
            "delay_any_feature": first([bool(r["flywheel"]["drifted"]) for r in post]),
            "pre_drift_alarms": sum(r["flywheel"]["alarm"] for r in pre),
            "pre_drift_any_feature": sum(bool(r["flywheel"]["drifted"]) for r in pre),
            "pre_drift_months": len(pre),
            "post_drift_months": len(post),
        }
    }
    for tool in peers:
        if any(r.get(tool) is None for r in per_month):
            out[tool] = {"delay": None, "error": True}
            continue
        out[tool] = {
            "delay": first([bool(r[tool]["drifted"]) for r in post]),
            "pre_drift_any_feature": sum(bool(r[tool]["drifted"]) for r in pre),
            "pre_drift_months": len(pre),
            "post_drift_months": len(post),
        }
    return out


# --------------------------------------------------------------------------- tables


def _pct(rate: dict[str, Any]) -> str:
    if not rate["n"]:
        return "-"
    lo, hi = rate["ci95"]
    return f"{rate['count']}/{rate['n']} = {rate['rate']:.1%} [{lo:.1%}, {hi:.1%}]"


def _flag(found: dict[str, Any] | None, col: str) -> str:
    if not found or "drifted" not in found:
        return "n/a"
    score = (found.get("score") or {}).get(col)
    mark = "DRIFT" if found["drifted"].get(col) else "-"
    return f"{mark} {score:.3g}" if score is not None else mark


def print_tables(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    cfg = out["config"]
    console.print(
        f"flywheel drift monitoring vs {', '.join(f'{k} {v}' for k, v in cfg['peers'].items())}"
        f" — {cfg['machine_note']}"
    )

    if out.get("speed"):
        t = Table(title="1. One drift check, Parquet files, 25 columns (20 numeric, 5 categorical)")
        for col in (
            "rows/side",
            "current",
            "tool",
            "seconds",
            "(+ pandas load)",
            "peak RSS MiB",
            "x flywheel time",
            "x flywheel RSS",
        ):
            t.add_column(col, justify="right")
        for entry in out["speed"]:
            for label, found in entry["results"].items():
                for tool in TOOLS:
                    r = found.get(tool)
                    if r is None:
                        continue
                    if "seconds" not in r:
                        t.add_row(f"{entry['rows']:,}", label, tool, "FAILED", "", "", "", "")
                        continue
                    ratio = entry["ratios"].get(f"{tool}/{label}")
                    load = (
                        f"{r['load_seconds'] + r['ref_load_seconds']:.2f}"
                        if tool != "flywheel"
                        else "(included)"
                    )
                    t.add_row(
                        f"{entry['rows']:,}",
                        label,
                        tool,
                        f"{r['seconds']:.2f}",
                        load,
                        f"{r['peak_rss_mib']:,.0f}",
                        f"{ratio['seconds']:.1f}x" if ratio else "1",
                        f"{ratio['peak_rss']:.1f}x" if ratio else "1",
                    )
        console.print(t)
        for entry in out["speed"]:
            fw = entry["results"]["drifted"]["flywheel"]
            console.print(
                f"  flywheel {entry['rows']:,} rows, drifted file: read reference "
                f"{fw['read_reference_s']:.2f} s + build reference {fw['build_reference_s']:.2f}"
                f" s + count current (streamed) {fw['count_s']:.2f} s + evaluate "
                f"{fw['evaluate_s']:.2f} s; process with imports {fw['process_s']:.1f} s"
            )
        for goal in out.get("goals", []):
            console.print(f"  goal: {goal}")

        for entry in out["speed"]:
            t = Table(
                title=f"Verdicts per feature, {entry['rows']:,} rows per side "
                "(DRIFT/-, then the tool's score: flywheel w1/sd or JS distance, "
                "Evidently Wasserstein/sd or JS, NannyML JS)"
            )
            t.add_column("feature")
            t.add_column("truth (drifted file)")
            for label in ("drifted", "same"):
                for tool in TOOLS:
                    if tool in entry["results"][label]:
                        t.add_column(f"{label}: {tool}", justify="right")
            for col in FEATURES:
                cells = [col, TRUTH.get(col, "")]
                for label in ("drifted", "same"):
                    for tool in TOOLS:
                        if tool in entry["results"][label]:
                            cells.append(_flag(entry["results"][label][tool], col))
                t.add_row(*cells)
            console.print(t)

    if out.get("memory"):
        t = Table(
            title=f"2. Memory in rows: flywheel, reference = first {REF_SAMPLE:,} rows of "
            "the reference file, current file streamed "
            f"({BATCH_ROWS:,}-row batches)"
        )
        for col in (
            "rows/side",
            "current file reader",
            "reference rows",
            "current rows",
            "seconds",
            "count rows/s",
            "RSS after imports MiB",
            "RSS after reference MiB",
            "peak RSS MiB",
        ):
            t.add_column(col, justify="right")
        for r in out["memory"]:
            t.add_row(
                f"{r['rows_per_side']:,}",
                READER_LABELS[r["reader"]],
                f"{r['rows_ref']:,}",
                f"{r['rows_cur']:,}",
                f"{r['seconds']:.1f}",
                f"{r['rows_per_s_counted']:,}",
                f"{r['rss_start_mib']:.0f}",
                f"{r['rss_after_reference_mib']:.0f}",
                f"{r['peak_rss_mib']:.0f}",
            )
        console.print(t)
        for reader in READERS:
            rs = [r for r in out["memory"] if r["reader"] == reader]
            if len(rs) > 1:
                console.print(
                    f"  {READER_LABELS[reader]}: peak "
                    + " -> ".join(f"{r['peak_rss_mib']:,.0f}" for r in rs)
                    + f" MiB from {rs[0]['rows_per_side']:,} to {rs[-1]['rows_per_side']:,} "
                    f"rows ({rs[-1]['peak_rss_mib'] / rs[0]['peak_rss_mib']:.2f}x)"
                )
        full = [
            (e["rows"], e["results"]["drifted"]["flywheel"]["peak_rss_mib"])
            for e in out.get("speed", [])
        ]
        if full:
            console.print(
                "  with the WHOLE reference file as the reference (section 1): "
                + ", ".join(f"{n:,} rows {m:,.0f} MiB" for n, m in full)
                + " — build_reference takes a whole Arrow table, so that part grows with the "
                "reference's rows"
            )

    if out.get("null"):
        nl = out["null"]
        t = Table(
            title=f"3. False alarms under the null: reference {nl['reference_rows']:,} rows,"
            " windows from the same distribution; a window with ANY feature flagged"
            " is a false alarm (95% Wilson intervals)"
        )
        for col in (
            "tool",
            "window rows",
            "windows",
            "any feature flagged",
            "window verdict / dataset drift",
            "alarm (2 of 3)",
            "s/window",
            "flags per feature",
        ):
            t.add_column(col, justify="right")
        for r in nl["rows"]:
            extra = r.get("verdict") or r.get("dataset_drift")
            t.add_row(
                r["tool"],
                f"{r['window_rows']:,}",
                str(r["windows"]),
                _pct(r["any_feature"]),
                _pct(extra) if extra else "-",
                _pct(r["alarm"]) if "alarm" in r else "-",
                f"{r['seconds_per_window']:.3f}" if r["seconds_per_window"] else "-",
                ", ".join(f"{k} {v}" for k, v in r["flags_per_feature"].items()) or "none",
            )
        console.print(t)
        for r in nl["rows"]:
            if r.get("fit_seconds"):
                console.print(f"  {r['tool']}: fitted once in {r['fit_seconds']:.2f} s")
            if r.get("error"):
                console.print(f"  {r['tool']}: ERROR {r['error'][:500]}")

    for label, sc in (out.get("scenarios") or {}).items():
        _print_design(console, label, sc)
    console.print(f"total wall time {out['config']['wall_s'] / 60:.1f} min")


def _print_design(console: Any, label: str, sc: dict[str, Any]) -> None:
    from rich.table import Table

    where = (
        "every month before the drift month less the last two"
        if sc["reference_months"] is None
        else f"the {sc['reference_months']} months before the last two pre-drift months"
    )
    console.print(
        f"4. Simulator, design {label}: {sc['days']}-day world of {sc['customers']:,} customers"
        f" from {WORLD_START}, drift at day {sc['drift_day']} ({sc['drift_date']}); reference: "
        f"{where}; windows: the two months before the drift month, then every month"
    )
    for name, entry in sc["scenarios"].items():
        t = Table(
            title=f"4. ({label}) {name if name != 'none' else 'control world (no scenario)'}; "
            f"reference {entry['reference_months'][0]}..{entry['reference_months'][1]} "
            f"({entry['reference_rows']:,} rows); drift month {entry['drift_month']}"
        )
        t.add_column("month")
        t.add_column("rows", justify="right")
        t.add_column("flywheel drifted features")
        t.add_column("share", justify="right")
        t.add_column("flywheel")
        for tool in PEERS:
            if tool in entry["months"][0]:
                t.add_column(f"{tool} flagged")
        for r in entry["months"]:
            fw = r["flywheel"]
            cells = [
                r["month"] + (" (post)" if r["post_drift"] else " (pre)"),
                f"{r['rows']:,}",
                ", ".join(fw["drifted"]) or "-",
                f"{fw['drift_share']:.2f}",
                "ALARM" if fw["alarm"] else ("verdict" if fw["verdict"] else "-"),
            ]
            for tool in PEERS:
                if tool in r:
                    cells.append(
                        "n/a" if r[tool] is None else (", ".join(r[tool]["drifted"]) or "-")
                    )
            t.add_row(*cells)
        console.print(t)
        for tool, err in entry["peer_errors"].items():
            console.print(f"  {tool}: ERROR {err[:500]}")
    t = Table(
        title=f"4. ({label}) detection delay in monthly windows from the drift month (0 = the "
        "drift month itself; '-' = never) and pre-drift windows flagged"
    )
    t.add_column("scenario")
    first = next(iter(sc["scenarios"].values()))["summary"]
    for tool in TOOLS:
        if tool in first:
            t.add_column(
                "flywheel alarm delay (verdict, any feature)"
                if tool == "flywheel"
                else f"{tool} delay",
                justify="right",
            )
            t.add_column(f"{tool} pre-drift flagged", justify="right")
    for name, entry in sc["scenarios"].items():
        cells = [name]
        for tool in TOOLS:
            s = entry["summary"].get(tool)
            if s is None:
                continue
            if s.get("error"):
                cells += ["n/a", "n/a"]
                continue
            delay = _delay(s["delay"])
            pre = f"{s['pre_drift_any_feature']}/{s['pre_drift_months']}"
            if tool == "flywheel":
                delay += f" ({_delay(s['delay_verdict'])}, {_delay(s['delay_any_feature'])})"
                pre = f"alarm {s['pre_drift_alarms']}/{s['pre_drift_months']}, any feature {pre}"
            cells += [delay, pre]
        t.add_row(*cells)
    console.print(t)
    for name, entry in sc["scenarios"].items():
        quiet = [
            r
            for r in entry["months"]
            if r["post_drift"] and r["flywheel"]["drifted"] and not r["flywheel"]["verdict"]
        ]
        if quiet:
            console.print(
                f"  {name}: flywheel flagged {', '.join(sorted({f for r in quiet for f in r['flywheel']['drifted']}))}"
                f" in {len(quiet)} post-drift month(s) without a window verdict: importance-"
                f"weighted drift share {max(r['flywheel']['drift_share'] for r in quiet):.3f} "
                f"< drift_share {MonitorSettings().drift_share:g} (no model: every feature weighs "
                f"1/{len(entry['features']['numeric']) + len(entry['features']['categorical'])})"
            )


def _delay(d: int | None) -> str:
    return "-" if d is None else str(d)


# --------------------------------------------------------------------------- main


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x for x in text.split(",") if x.strip() and x != "none"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100k rows only, no 10M, fewer null windows, 30 s peer budgets",
    )
    parser.add_argument("--sizes", type=_ints, help="rows per side for section 1")
    parser.add_argument("--memory-sizes", type=_ints, help="rows per side for section 2")
    parser.add_argument("--null-budget", type=float, help="seconds of checks per peer (180)")
    parser.add_argument(
        "--peers", type=_names, default=list(PEERS), help="evidently,nannyml (default) or none"
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: [x for x in text.split(",") if x.strip()],
        default=list(SCENARIOS),
        help=f"from {','.join(SCENARIOS)} (none: the control world)",
    )
    parser.add_argument(
        "--designs",
        type=lambda text: [x for x in text.split(",") if x.strip()],
        help=f"simulator designs, from {','.join(DESIGNS)} (default: both; --quick: burn_in)",
    )
    parser.add_argument(
        "--sections", type=_ints, default=[1, 2, 3, 4], help="which sections to run, e.g. 1,3"
    )
    parser.add_argument("--data", type=Path, help="folder for the generated files (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", nargs="?", const="-", help="print JSON (or write it to PATH) instead of tables"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [100_000] if args.quick else [100_000, 1_000_000]
    if args.memory_sizes is None:
        args.memory_sizes = [100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    if args.null_budget is None:
        args.null_budget = 30.0 if args.quick else 180.0
    if args.designs is None:
        args.designs = ["burn_in"] if args.quick else list(DESIGNS)
    args.null_windows = 200 if args.quick else 400
    args.null_big_windows = 50 if args.quick else 200
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; expected {PEERS}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(flywheel_check(**json.loads(args.child))), flush=True)
        return
    started = time.perf_counter()
    out: dict[str, Any] = {
        "config": {
            "sizes": args.sizes,
            "memory_sizes": args.memory_sizes,
            "features": {"numeric": NUMERIC, "categorical": CATEGORICAL},
            "truth": TRUTH,
            "batch_rows": BATCH_ROWS,
            "readahead_batches": READAHEAD,
            "memory_reference_rows": REF_SAMPLE,
            "null_budget_s": args.null_budget,
            "seed": args.seed,
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "machine_note": f"{os.cpu_count()} cores, shared with other work",
            "date": dt.date.today().isoformat(),
        }
    }
    out["config"]["peers"] = ensure_peers(args.peers)
    tmp = None
    if args.data is None:
        tmp = Path(tempfile.mkdtemp(prefix="fw-bench-monitoring-"))
        data = tmp
    else:
        data = args.data
        data.mkdir(parents=True, exist_ok=True)
    _say(f"data in {data}")
    try:
        if 1 in args.sections:
            out["speed"] = speed(args, data)
            out["goals"] = _goals(out["speed"])
        if 2 in args.sections:
            out["memory"] = memory(args, data)
        if 3 in args.sections:
            out["null"] = null(args, data)
        if 4 in args.sections:
            out["scenarios"] = scenarios(args, data)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    out["config"]["wall_s"] = time.perf_counter() - started
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    if args.json == "-":
        print(json.dumps(out, indent=2))
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        print_tables(out)


def _goals(speed_rows: list[dict[str, Any]]) -> list[str]:
    goals = []
    for entry in speed_rows:
        if entry["rows"] != 1_000_000:
            continue
        for label in ("drifted", "same"):
            r = entry["ratios"].get(f"evidently/{label}")
            if r:
                verdict = "PASS" if r["seconds"] >= GOAL else "MISS"
                goals.append(
                    f">= {GOAL:g}x faster than Evidently at 1M rows ({label} file): "
                    f"{r['seconds']:.0f}x (with Evidently's pandas load "
                    f"{r['seconds_with_load']:.0f}x) {verdict}"
                )
    return goals


if __name__ == "__main__":
    main()
