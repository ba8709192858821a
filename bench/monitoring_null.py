"""Drift monitoring under the null: how often does a window with no drift raise a flag?

Every window is drawn from the same generator as its reference (no drift at all), so every
flag is a false alarm. Columns (numpy): four numeric features of different shapes (normal,
lognormal, Poisson(2) counts with many ties, a normal with 20% missing values), three
categorical ones of cardinality 5, 100 and 10,000 (Zipf-like shares), and a binary model's
``__score__``/``__prediction__`` (a logistic function of the features). The reference (5k
rows, and 50k) carries labels, the model's F1 and accuracy, so the label-free performance
estimate runs on every window as in production (windows are unlabelled unless
``--labelled``: then the realised-metric breach runs instead).

Per window size (500, 5k, 50k, 1M rows), ``--windows`` windows (default 200) are counted
(:func:`flywheel.monitoring.window.count_window`, sketches on) and judged
(:func:`flywheel.monitoring.decide.evaluate_window`), then the alarm after persistence is set
over the sequence (:func:`flywheel.monitoring.decide.decide`, 2 of 3 by default). Counted per
window: any model feature flagged (feature-level false alarm), prediction drift, the window
verdict, the alarm; each as a rate with its 95% Wilson interval; and the seconds per window
(counting, judging). The target is a window-verdict false-alarm rate of at most 5%.

    .venv/bin/python -m bench.monitoring_null [--quick] [--windows N] [--sizes 500,5000]
        [--ref-rows 5000,50000] [--references K] [--labelled] [--seed S] [--json [PATH]]

``--references K``: K independent references per reference size, each judging every
window (the rates pool them; the table adds each reference's verdict rate). Under the null a
window's verdict depends on the reference's own sampling error as much as on the window's,
and all of it once the window is much larger than the reference: with one reference, the
rate is conditional on that reference. ``--quick``: 50 windows per size (10 at 1M). ``--json``: the results as JSON on stdout
(``--json PATH``: into PATH) instead of the table. Results also go to
``bench/results/monitoring_null.json``. A full run takes ~10 minutes on a 2-core machine,
most of it counting the 1M-row windows.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flywheel.monitoring.decide import MonitorSettings, WindowResult, decide, evaluate_window
from flywheel.monitoring.profile import PREDICTION, Reference
from flywheel.monitoring.reference import build_reference, score_columns
from flywheel.monitoring.window import LABEL, count_window
from flywheel.schema import FeatureSpec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "monitoring_null.json"
SIZES = (500, 5_000, 50_000, 1_000_000)
REF_ROWS = (5_000, 50_000)
TARGET = 0.05

SPECS = [
    FeatureSpec("normal", "numeric"),
    FeatureSpec("lognormal", "numeric"),
    FeatureSpec("counts", "numeric"),
    FeatureSpec("with_missing", "numeric"),
    FeatureSpec("cat5", "categorical"),
    FeatureSpec("cat100", "categorical"),
    FeatureSpec("cat10k", "categorical"),
]


def _zipf(k: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** s
    return p / p.sum()


CATEGORIES = {
    "cat5": (np.array([0.4, 0.25, 0.15, 0.12, 0.08]), pa.array([f"level_{i}" for i in range(5)])),
    "cat100": (_zipf(100, 1.1), pa.array([f"c{i:03d}" for i in range(100)])),
    "cat10k": (_zipf(10_000, 1.0), pa.array([f"item_{i:05d}" for i in range(10_000)])),
}


def rows(rng: np.random.Generator, n: int, *, labels: bool) -> pa.Table:
    """n rows of the generator: features, the model's score and prediction, and labels."""
    normal = rng.normal(50.0, 10.0, n)
    lognormal = rng.lognormal(0.0, 1.0, n)
    counts = rng.poisson(2.0, n).astype(np.int64)
    with_missing = rng.normal(0.0, 1.0, n)
    with_missing[rng.random(n) < 0.2] = np.nan
    cols: dict[str, Any] = {
        "normal": normal,
        "lognormal": lognormal,
        "counts": counts,
        "with_missing": with_missing,
    }
    codes = {}
    for name, (p, dictionary) in CATEGORIES.items():
        codes[name] = rng.choice(p.size, n, p=p).astype(np.int32)
        cols[name] = pa.DictionaryArray.from_arrays(pa.array(codes[name]), dictionary)
    z = (
        0.08 * (normal - 50.0)
        + 0.6 * np.log(lognormal)
        - 0.4 * (counts - 2)
        + 0.7 * np.nan_to_num(with_missing)
        + np.array([0.8, 0.2, -0.3, -0.6, 0.0])[codes["cat5"]]
        - 0.3
    )
    score = 1.0 / (1.0 + np.exp(-z))
    table = pa.table(cols)
    outputs = score_columns(
        "classification", ["0", "1"], (score >= 0.5).astype(np.int64), np.c_[1 - score, score]
    )
    for name, col in outputs.items():
        table = table.append_column(name, col)
    if labels:
        y = (rng.random(n) < score).astype(np.int64)
        table = table.append_column(LABEL, pa.array(y))
    return table


def reference(rng: np.random.Generator, n: int) -> Reference:
    frame = rows(rng, n, labels=True)
    y = np.asarray(frame.column(LABEL)) == 1
    pred = np.asarray(frame.column(PREDICTION).to_pylist()) == "1"
    tp, fp, fn = (y & pred).sum(), (~y & pred).sum(), (y & ~pred).sum()
    metrics = {"f1": float(2 * tp / (2 * tp + fp + fn)), "accuracy": float((y == pred).mean())}
    return build_reference(
        model="null",
        version="1",
        source=f"{n} generated rows",
        frame=frame,
        specs=SPECS,
        task="classification",
        classes=["0", "1"],
        threshold=0.5,
        metrics=metrics,
        primary_metric="f1",
    )


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"count": k, "rate": k / n if n else float("nan"), "ci95": [lo, hi]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = MonitorSettings()
    rng = np.random.default_rng(args.seed)
    # K independent references per size: under the null, a window's verdict depends on its
    # reference's own sampling error as much as on the window's (all of it once the window
    # is much larger than the reference), so one reference gives a rate conditional on it
    refs = {(n, j): reference(rng, n) for n in args.ref_rows for j in range(args.references)}
    out: dict[str, Any] = {
        "config": {
            "sizes": args.sizes,
            "ref_rows": args.ref_rows,
            "references_per_size": args.references,
            "windows": {str(s): _windows(args, s) for s in args.sizes},
            "labelled_windows": args.labelled,
            "seed": args.seed,
            "settings": {
                "w1": settings.drift.w1,
                "js": settings.drift.js,
                "null_quantile": settings.drift.null_quantile,
                "fdr": settings.drift.fdr,
                "draws": settings.drift.draws,
                "drift_share": settings.drift_share,
                "persist": f"{settings.persist_k} of {settings.persist_m}",
                "max_drop": settings.max_drop,
            },
            "features": [f"{s.name} ({s.kind})" for s in SPECS],
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "rows": [],
    }
    for size in args.sizes:
        n_windows = _windows(args, size)
        results: dict[tuple[int, int], list[WindowResult]] = {key: [] for key in refs}
        seconds = {key: {"count": 0.0, "judge": 0.0} for key in refs}
        generate = 0.0
        for w in range(n_windows):
            t0 = time.perf_counter()
            frame = rows(rng, size, labels=args.labelled)
            generate += time.perf_counter() - t0
            for key, ref in refs.items():
                t1 = time.perf_counter()
                profile = count_window(ref, [frame])
                t2 = time.perf_counter()
                result = evaluate_window(ref, profile, f"{size}-{w}", settings)
                t3 = time.perf_counter()
                result.profile = None  # keep memory flat
                results[key].append(result)
                seconds[key]["count"] += t2 - t1
                seconds[key]["judge"] += t3 - t2
            del frame
        for n_ref in args.ref_rows:
            keys = [key for key in refs if key[0] == n_ref]
            for key in keys:  # persistence runs along each reference's own sequence
                decide(results[key], settings)
            row = _summary(
                [results[key] for key in keys],
                n_ref,
                size,
                {k: sum(seconds[key][k] for key in keys) / len(keys) for k in ("count", "judge")},
                generate / n_windows,
            )
            out["rows"].append(row)
            _say(
                f"n_ref {n_ref:>6,} window {size:>9,}: {row['windows']} windows, verdict "
                f"{row['verdict']['count']}, alarm {row['alarm']['count']}, "
                f"{row['seconds_per_window']['total']:.3f} s/window"
            )
    return out


def _windows(args: argparse.Namespace, size: int) -> int:
    if args.windows:
        return int(args.windows)
    if args.quick:
        return 10 if size >= 1_000_000 else 50
    return 200


def _summary(
    per_reference: list[list[WindowResult]],
    n_ref: int,
    size: int,
    seconds: dict[str, float],
    generate: float,
) -> dict[str, Any]:
    results = [r for rs in per_reference for r in rs]
    n = len(results)
    ok = [r for r in results if r.status == "ok"]
    per_feature: dict[str, int] = {}
    for r in ok:
        for f in r.features:
            if f.drifted:
                per_feature[f.name] = per_feature.get(f.name, 0) + 1
    n_per_ref = max(len(per_reference[0]), 1)
    return {
        "n_ref": n_ref,
        "window_rows": size,
        "references": len(per_reference),
        "windows": n,
        "with_verdict": len(ok),
        "feature_flag": _rate(sum(bool(r.drifted_features) for r in ok), len(ok)),
        "prediction_drift": _rate(sum(r.prediction_drift for r in ok), len(ok)),
        "drift": _rate(sum(r.drift for r in ok), len(ok)),
        "performance_breach": _rate(
            sum(bool(r.performance and r.performance.breach) for r in ok), len(ok)
        ),
        "verdict": _rate(sum(r.verdict for r in ok), len(ok)),
        "alarm": _rate(sum(r.alarm for r in ok), len(ok)),
        "verdict_rate_per_reference": [
            sum(r.verdict for r in rs) / n_per_ref for rs in per_reference
        ],
        "flags_per_feature": dict(sorted(per_feature.items())),
        "seconds_per_window": {
            "count": seconds["count"] / n_per_ref,
            "judge": seconds["judge"] / n_per_ref,
            "total": (seconds["count"] + seconds["judge"]) / n_per_ref,
            "generate": generate,
        },
    }


def _pct(rate: dict[str, Any]) -> str:
    lo, hi = rate["ci95"]
    return f"{rate['rate']:.1%} [{lo:.1%}, {hi:.1%}]"


def print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    labelled = " (labelled windows)" if out["config"]["labelled_windows"] else ""
    table = Table(
        title=f"Drift monitoring under the null: false-alarm rates{labelled}, 95% Wilson intervals"
    )
    many = out["config"]["references_per_size"] > 1
    for col in (
        "n_ref",
        "window rows",
        "refs x windows",
        "any feature flagged",
        "prediction drift",
        "window verdict",
        "alarm (2 of 3)",
        *(["verdict rate per reference"] if many else []),
        "s/window (count + judge)",
    ):
        table.add_column(col, justify="right")
    for row in out["rows"]:
        s = row["seconds_per_window"]
        table.add_row(
            f"{row['n_ref']:,}",
            f"{row['window_rows']:,}",
            f"{row['references']} x {row['windows'] // row['references']}",
            _pct(row["feature_flag"]),
            _pct(row["prediction_drift"]),
            _pct(row["verdict"]),
            _pct(row["alarm"]),
            *([" ".join(f"{v:.0%}" for v in row["verdict_rate_per_reference"])] if many else []),
            f"{s['total']:.3f} ({s['count']:.3f} + {s['judge']:.3f})",
        )
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    worst = max(out["rows"], key=lambda r: r["verdict"]["rate"])
    verdict = "meets" if worst["verdict"]["rate"] <= TARGET else "MISSES"
    console.print(
        f"worst window-verdict false-alarm rate {worst['verdict']['rate']:.1%} "
        f"(n_ref {worst['n_ref']:,}, {worst['window_rows']:,} rows): {verdict} the "
        f"{TARGET:.0%} target"
    )
    for row in out["rows"]:
        if row["flags_per_feature"] or row["performance_breach"]["count"]:
            console.print(
                f"  n_ref {row['n_ref']:,}, {row['window_rows']:,} rows: flags per column "
                f"{row['flags_per_feature']}, performance breaches "
                f"{row['performance_breach']['count']}"
            )


def _say(msg: str) -> None:
    print(f"[bench.monitoring_null {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 windows per size (10 at 1M)")
    parser.add_argument("--windows", type=int, help="windows per size (default 200)")
    parser.add_argument("--sizes", type=_ints, default=list(SIZES), help="window rows, a,b,...")
    parser.add_argument("--ref-rows", type=_ints, default=list(REF_ROWS), help="reference rows")
    parser.add_argument(
        "--references", type=int, default=1, help="independent references per n_ref (default 1)"
    )
    parser.add_argument("--labelled", action="store_true", help="windows carry labels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", nargs="?", const="-", help="print JSON (or write it to PATH) instead of a table"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out = run(args)
    out["config"]["wall_s"] = time.perf_counter() - t0
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    if args.json == "-":
        print(json.dumps(out, indent=2))
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        print_table(out)


if __name__ == "__main__":
    main()
