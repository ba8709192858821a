"""Train → register overhead on ~100k rows with HistGradientBoosting.

    .venv/bin/python -m bench.train_register [--rows 100000] [--folds 5]

Builds a churn world sized for about ``--rows`` feature rows, ingests it, then runs
train → evaluate → gates → register twice in one process: the first run pays MLflow's and
skops' one-off lazy imports (cold), the second shows the steady state (warm). Prints, for
each, the training time (CV + final fit) and the time spent in tracking (the MLflow run and
logging the pipeline), ONNX export, the parity check and registry work (logging the ONNX
model, version, tags, alias, audit), and the overhead as a share of training time.
Goal (issue #2): overhead under 10% of training time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
ROWS_PER_CUSTOMER_YEAR = 10.8  # churn_features rows per customer over 365 simulated days


def _setup(rows: int, home: Path) -> tuple[Any, str, int]:
    from flywheel.config import load_settings
    from flywheel.data.snapshots import ingest
    from flywheel.simulate import simulate

    settings = load_settings(home=home)
    customers = max(500, int(rows / ROWS_PER_CUSTOMER_YEAR))
    with console.status(f"simulating {customers:,} customers × 365 days…"):
        simulate(settings, days=365, customers=customers)
    with console.status("ingesting…"):
        manifest = ingest(settings).manifest
    return settings, manifest.id, manifest.rows


def _one_round(settings: Any, snapshot_id: str, folds: int) -> dict[str, float]:
    from flywheel.registry.models import register
    from flywheel.training.evaluate import evaluate
    from flywheel.training.gates import check_gates, record_gates
    from flywheel.training.params import TrainParams
    from flywheel.training.train import train

    start = time.perf_counter()
    result = train(settings, snapshot_id, TrainParams(family="hist_gb", cv_folds=folds))
    t_eval = time.perf_counter()
    evaluation = evaluate(settings, result.run_id)
    report = check_gates(settings.gates, evaluation)
    record_gates(settings, result.run_id, report)
    t_reg = time.perf_counter()
    registered = register(settings, result, evaluation=evaluation, gate_report=report)
    end = time.perf_counter()
    t = result.timings
    return {
        "total_s": end - start,
        "cv_s": t.get("cv", 0.0),
        "fit_s": t.get("fit", 0.0),
        "load_s": t.get("load", 0.0),
        "tracking_s": t.get("tracking", 0.0),
        "evaluate_s": t_reg - t_eval,
        "register_load_s": registered.timings.get("load_pipeline", 0.0),
        "onnx_export_s": registered.timings.get("onnx_export", 0.0),
        "parity_s": registered.timings.get("parity", 0.0),
        "registry_s": registered.timings.get("publish", 0.0),
    }


def _shares(r: dict[str, float]) -> dict[str, float]:
    training = r["cv_s"] + r["fit_s"]
    overhead = (
        r["tracking_s"]
        + r["register_load_s"]
        + r["onnx_export_s"]
        + r["parity_s"]
        + r["registry_s"]
    )
    return {
        "training_s": training,
        "overhead_s": overhead,
        "overhead_share": overhead / training if training else float("nan"),
        "overhead_vs_fit": overhead / r["fit_s"] if r["fit_s"] else float("nan"),
    }


def _table(results: dict[str, dict[str, float]]) -> Table:
    table = Table(title="train → register, HistGradientBoosting")
    table.add_column("phase")
    for name in results:
        table.add_column(name, justify="right")
    rows = [
        "total_s",
        "load_s",
        "cv_s",
        "fit_s",
        "training_s",
        "tracking_s",
        "register_load_s",
        "onnx_export_s",
        "parity_s",
        "registry_s",
        "overhead_s",
        "evaluate_s",
    ]
    for key in rows:
        table.add_row(key, *[f"{r[key]:.2f}" for r in results.values()])
    for key in ("overhead_share", "overhead_vs_fit"):
        table.add_row(key, *[f"{r[key]:.1%}" for r in results.values()])
    table.add_row(
        "goal: overhead < 10% of training",
        *["PASS" if r["overhead_share"] < 0.10 else "MISS" for r in results.values()],
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="approximate feature rows")
    parser.add_argument("--folds", type=int, default=5, help="CV folds (part of training time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fw-bench-") as tmp:
        settings, snap, rows = _setup(args.rows, Path(tmp))
        console.print(f"snapshot {snap}: {rows:,} rows")
        results: dict[str, dict[str, float]] = {}
        for name in ("cold (1st in process)", "warm (2nd)"):
            with console.status(f"train → register, {name}…"):
                r = _one_round(settings, snap, args.folds)
            results[name] = {**r, **_shares(r)}
    console.print(_table(results))
    out = Path("bench/results/train_register.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "folds": args.folds, "results": results}, indent=2))
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
