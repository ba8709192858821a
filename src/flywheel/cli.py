"""The `flywheel` command line. Thin: parse, build the workspace (:class:`Workspace`, from
Settings), call a capability, print with rich.

Domain errors (:class:`flywheel.errors.FlywheelError`) become one clean red message and the
error's exit code (nothing prints a traceback unless ``FLYWHEEL_LOG_LEVEL=DEBUG``); any other
error is a bug: one line, the traceback in a crash log, exit 70 (:func:`main`, docs/cli.md).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel import __version__
from flywheel.config import Settings, load_settings, mask_url
from flywheel.errors import (
    ConfigError,
    ContractViolation,
    DataError,
    FlywheelError,
    GateFailed,
    NotFound,
    UsageError,
)
from flywheel.workspace import Workspace

__all__ = ["app", "main"]

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="flywheel",
    help="flywheel — end-to-end MLOps for tabular models: simulate, ingest, validate, train, "
    "gate, register, promote. Every command runs on embedded defaults (SQLite, a local "
    "folder, MLflow on SQLite) and against real services by configuration alone.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
data_app = typer.Typer(help="The snapshot catalog and data contracts.", no_args_is_help=True)
registry_app = typer.Typer(help="Model versions and the audit log.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(registry_app, name="registry")
monitor_app = typer.Typer(
    help="Drift, performance and the label-free estimate of served models.",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")
# the rollout commands live in their own module (it imports this one's helpers lazily)
from flywheel.cli_rollout import rollout_app  # noqa: E402

app.add_typer(rollout_app, name="rollout")
# continuous training (docs/continuous-training.md): each command in its own module
from flywheel.cli_console import console as _console_command  # noqa: E402
from flywheel.cli_lineage import lineage as _lineage_command  # noqa: E402
from flywheel.cli_loop import SCENARIO_NAMES, triggers_app  # noqa: E402
from flywheel.cli_loop import replay as _replay_command  # noqa: E402
from flywheel.cli_loop import worker as _worker_command  # noqa: E402
from flywheel.cli_retrain import retrain as _retrain_command  # noqa: E402

app.add_typer(triggers_app, name="triggers")

_state: dict[str, Any] = {}

# Exit codes of the CLI's own (the domain errors carry theirs: flywheel.errors); docs/cli.md
AUDIT_CHAIN_BROKEN = 11
INTERNAL_ERROR = 70  # sysexits' EX_SOFTWARE: a bug in flywheel, never the user's input
INTERRUPTED = 130


def _workspace() -> Workspace:
    """The command's workspace, built once from the settings (closed by :func:`main`)."""
    if "workspace" not in _state:
        _state["workspace"] = Workspace(load_settings())
    ws: Workspace = _state["workspace"]
    return ws


def _settings() -> Settings:
    return _workspace().settings


def _print_version(value: bool) -> None:
    if value:
        console.print(f"flywheel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config file (default: ./flywheel.yaml or $FLYWHEEL_CONFIG).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    if config is not None:
        if not config.exists():
            raise ConfigError(
                f"Config file {str(config)!r} does not exist. Fix: pass an existing file."
            )
        os.environ["FLYWHEEL_CONFIG"] = str(config)
    _close_workspace()
    settings = _settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "botocore", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MLflow sets its own logger up when it is first imported (later, lazily), at INFO unless
    # told otherwise: its "Creating initial MLflow database tables" lines are not for users
    quiet = logging.getLevelName(settings.log_level) > logging.INFO
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING" if quiet else "INFO")


@contextmanager
def _progress() -> Iterator[tuple[Callable[[str], None], Callable[[str, int, int], None]]]:
    """A rich progress display with one line per step; yields ``(on_step(name),
    report(phase, done, total))``: ``report`` is the plain callback training takes for its
    folds and trials, drawn as bars on the same display."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks: dict[str, Any] = {}
        current: list[str] = []
        bars: dict[str, Any] = {}

        def on_step(name: str) -> None:
            if current:
                progress.update(tasks[current[-1]], completed=1, total=1)
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=None)
            current.append(name)

        def report(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                bars[phase] = progress.add_task(phase, total=total)
            progress.update(bars[phase], completed=done, total=total)

        yield on_step, report
        if current:
            progress.update(tasks[current[-1]], completed=1, total=1)


# ---------------------------------------------------------------- config
@config_app.command("show")
def config_show(
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Print the effective configuration, secrets masked."""
    shown = _settings().show()
    if as_json:
        _emit_json(shown)
        return
    table = _table("key", "value", title="flywheel configuration")
    for key, value in _flatten(shown):
        table.add_row(key, "" if value is None else str(value))
    console.print(table)


def _emit_json(value: Any) -> None:
    """JSON for scripts: plain stdout, no colours, nothing cut at the terminal's width."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


_JSON_OPTION = typer.Option("--json", help="Print JSON (for scripts) instead of a table.")


def _table(*columns: str, title: str | None = None) -> Table:
    """A table whose cells fold onto the next line instead of being cut at the width."""
    table = Table(title=title)
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in d.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ---------------------------------------------------------------- simulate
@app.command()
def simulate(
    days: Annotated[
        int, typer.Option(help="Days to simulate (appended after the last simulated day).")
    ] = 365,
    customers: Annotated[int, typer.Option(help="Customers in a new world.")] = 5000,
    start: Annotated[
        str | None, typer.Option(help="Start date of a new world (YYYY-MM-DD).")
    ] = None,
    drift: Annotated[
        list[str] | None,
        typer.Option(
            "--drift",
            help="Drift scenario NAME@DAY or NAME@YYYY-MM-DD (repeatable), e.g. price_rise@180. "
            + SCENARIO_NAMES,
        ),
    ] = None,
) -> None:
    """Seed (or advance) the churn world in the SQL source. Same seed, same rows."""
    from flywheel.simulate import simulate as run_simulation

    start_date = _parse_date(start, "--start") if start else None
    with console.status("simulating the churn world…"):
        report = run_simulation(
            _settings(), days=days, customers=customers, start=start_date, scenarios=drift or []
        )
    console.print(
        f"[green]simulated[/] {report.first_day} → {report.last_day} into {report.source}"
    )
    table = Table("table", "rows written")
    for name, rows in report.rows.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)


def _parse_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise UsageError(f"{option} must be a date like 2025-01-31, got {value!r}.") from exc


# ---------------------------------------------------------------- ingest / data
@app.command()
def ingest(
    query: Annotated[
        str | None, typer.Option(help="SQL query to extract (default: source.table).")
    ] = None,
    file: Annotated[
        Path | None, typer.Option(help="Ingest a CSV or Parquet file instead of the SQL source.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Target column (required with --file).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name (default: source.dataset).")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Re-extract everything instead of incrementally.")
    ] = False,
) -> None:
    """Extract new rows into an immutable, content-addressed Parquet snapshot (validated)."""
    from flywheel.data.snapshots import ingest as run_ingest

    with console.status("ingesting…"):
        result = run_ingest(
            _settings(), query=query, file=file, target=target, dataset=dataset, full=full
        )
    m = result.manifest
    if result.created:
        console.print(
            f"[green]snapshot[/] {m.id}  {m.rows:,} rows (+{result.new_rows:,} new)  sha256 {m.sha256[:16]}…"
        )
    else:
        console.print(f"[yellow]unchanged[/]: the data matches snapshot {m.id}; no new snapshot")
        if target is not None and m.target != target:  # a snapshot is immutable, its target too
            err_console.print(
                f"warning: snapshot {m.id} was ingested with target {m.target!r}, not {target!r}; "
                f"to train on {target!r}, set 'target: {target}' in params.yaml",
                highlight=False,
            )
    if result.contract_created:
        console.print(
            f"contract inferred: {_settings().contracts_dir / (m.dataset + '.yaml')} (review and edit it)"
        )


@data_app.command("list")
def data_list(
    dataset: Annotated[str | None, typer.Option(help="Only this dataset.")] = None,
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """List snapshots (id, created, rows, time range, parent)."""
    from dataclasses import asdict

    from flywheel.data.snapshots import list_snapshots

    snapshots = list_snapshots(_settings(), dataset)
    if as_json:
        _emit_json([asdict(m) for m in snapshots])
        return
    table = _table("id", "dataset", "created", "rows", "time range", "parent")
    for m in snapshots:
        span = f"{m.time_range[0]} → {m.time_range[1]}" if m.time_range else ""
        table.add_row(m.id, m.dataset, m.created_at, f"{m.rows:,}", span, m.parent or "")
    console.print(table)


@data_app.command("show")
def data_show(
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot id (a unique prefix is enough).")],
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """Show a snapshot's manifest (schema, source, lineage, content hash)."""
    from dataclasses import asdict

    manifest = asdict(_workspace().snapshot(snapshot_id))
    if as_json:
        _emit_json(manifest)
        return
    console.print_json(json.dumps(manifest, default=str))


@data_app.command("validate")
def data_validate(
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot id to re-validate.")],
) -> None:
    """Re-validate a snapshot against the dataset's current contract (e.g. after editing it)."""
    from flywheel.data.contract import format_report
    from flywheel.data.snapshots import validate_snapshot

    report = validate_snapshot(_settings(), snapshot_id)
    if report.passed:
        console.print(
            f"[green]valid[/]: {report.rows:,} rows pass contract {report.contract_version}"
        )
        return
    err_console.print(format_report(report))
    raise typer.Exit(ContractViolation.exit_code)


@data_app.command("contract")
def data_contract(
    dataset: Annotated[str | None, typer.Option(help="Dataset name.")] = None,
) -> None:
    """Print the dataset's data contract (YAML) and where to edit it."""
    from flywheel.data.contract import contract_path

    s = _settings()
    path = contract_path(s.contracts_dir, dataset or s.source.dataset)
    if not path.exists():
        raise NotFound(f"No contract at {path}; it is inferred on the first `flywheel ingest`.")
    console.print(f"# {path}")
    console.print(path.read_text(encoding="utf-8"), markup=False, highlight=False)


# ---------------------------------------------------------------- training
@app.command()
def train(
    snapshot: Annotated[
        str | None, typer.Argument(help="Snapshot id (default: the dataset's latest).")
    ] = None,
    params: Annotated[
        Path | None, typer.Option(help="params.yaml (family, hyperparameters, split, CV, search).")
    ] = None,
    trials: Annotated[
        int | None, typer.Option(help="Optuna trials (overrides params.yaml).")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL, e.g. postgresql://… to share trials.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset for the default snapshot.")] = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Register when gates pass.")
    ] = True,
) -> None:
    """Train → evaluate (vs the champion) → gates → register as `challenger`."""
    from flywheel.pipelines.steps import train_evaluate_register
    from flywheel.training.params import load_params

    ws = _workspace()
    manifest = ws.snapshot(snapshot, dataset=dataset)  # resolved once, carried from here on
    train_params = load_params(params or ws.settings.training.params_file)
    with _progress() as (on_step, report):
        outcome = train_evaluate_register(
            ws,
            manifest,
            train_params,
            trials=trials,
            storage=storage,
            register=register,
            on_step=on_step,
            progress=report,
        )
    _print_outcome(ws.settings, outcome)


def _print_outcome(s: Settings, outcome: Any) -> None:
    ev = outcome.evaluation
    champion = ev.champion_metrics or {}
    table = Table("metric", "holdout")
    if champion:
        table.add_column(f"champion v{ev.champion_version}")
    for key, value in ev.metrics.items():
        row = [key, f"{value:.4f}"]
        if champion:
            row.append("" if champion.get(key) is None else f"{champion[key]:.4f}")
        table.add_row(*row)
    console.print(table)
    choice = outcome.result.threshold
    if choice is not None:
        console.print(
            f"decision threshold {choice.value:.4f} ({choice.objective}, chosen on "
            f"{choice.rows:,} {choice.source.replace('_', ' ')} rows; labels are "
            "p(positive) >= threshold)"
        )
    for gate in outcome.gates.results:
        mark = "[green]pass[/]" if gate.passed else "[red]FAIL[/]"
        console.print(f"  gate {mark} {gate.detail}")
    console.print(f"run {outcome.result.run_id}")
    if outcome.version:
        console.print(
            f"[green]registered[/] {s.registry.model_name} version {outcome.version} "
            f"(alias challenger); model card: {outcome.card_path}"
        )


@app.command()
def evaluate(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a training run.")],
) -> None:
    """Evaluate a training run on its holdout, against the champion, and apply the gates."""
    from flywheel.registry.artifacts import load_champion
    from flywheel.training.evaluate import evaluate as run_evaluate
    from flywheel.training.gates import check_gates, record_gates

    ws = _workspace()
    ev = run_evaluate(ws, run_id, champion=load_champion(ws))
    report = check_gates(ws.settings.gates, ev)
    record_gates(ws, run_id, report)
    _emit_json(
        {
            "metrics": ev.metrics,
            "champion": ev.champion_metrics,
            "slice_gaps": ev.slice_gaps,
            "gates": report.to_dict(),
        }
    )
    if not report.passed:
        raise typer.Exit(GateFailed.exit_code)


# ---------------------------------------------------------------- registry
@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")],
) -> None:
    """Move the `champion` alias to VERSION (or request approval when configured)."""
    from flywheel.registry.aliases import promote as do_promote

    out = do_promote(_workspace(), version, reason=reason)
    if out.pending:
        console.print(
            f"[yellow]pending[/]: promotion of version {version} waits for `flywheel approve {version}`"
        )
    else:
        console.print(
            f"[green]champion[/] → version {version} (was {out.entry.from_version or 'none'})"
        )


@app.command()
def approve(
    version: Annotated[str, typer.Argument(help="Model version whose promotion is pending.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")],
) -> None:
    """Approve a pending promotion (the approver must differ from the requester)."""
    from flywheel.registry.aliases import approve as do_approve

    out = do_approve(_workspace(), version, reason=reason)
    console.print(
        f"[green]approved[/]: champion → version {version} (was {out.entry.from_version or 'none'})"
    )


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")]) -> None:
    """Return `champion` to the previous champion."""
    from flywheel.registry.aliases import rollback as do_rollback

    out = do_rollback(_workspace(), reason=reason)
    console.print(
        f"[green]rolled back[/]: champion {out.entry.from_version} → {out.entry.to_version}"
    )


@registry_app.command("history")
def registry_history(
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Check the audit log's hash chain (broken: exit 11)."),
    ] = False,
    as_json: Annotated[bool, _JSON_OPTION] = False,
    action: Annotated[
        str | None,
        typer.Option(help="Only actions starting with this (promote, rollout_, retrain...)."),
    ] = None,
    last: Annotated[
        int | None, typer.Option(min=1, help="Only the last N entries (after --action).")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Each reason in full, with its evidence (JSON).")
    ] = False,
) -> None:
    """The audit log: who changed what, when, from, to, and why. The table shows each
    reason's first line; a rollout's evidence (JSON) follows it, shown by --full or --json."""
    from dataclasses import asdict

    from rich.markup import escape

    from flywheel.registry.aliases import history

    ws = _workspace()
    entries = history(ws)
    if action:
        entries = [e for e in entries if e.action.startswith(action)]
    if last is not None:
        entries = entries[-last:]
    if as_json:
        _emit_json([asdict(e) for e in entries])
    else:
        table = _table("#", "when", "who", "action", "from", "to", "reason")
        for e in entries:
            first, _, evidence = e.reason.partition("\n")
            short = evidence and not full
            reason = escape(first if short else e.reason)
            reason += " [dim](+ evidence: --full)[/]" if short else ""
            cells = (str(e.id), e.at, e.who, e.action, e.from_version or "", e.to_version or "")
            table.add_row(*map(escape, cells), reason)
        console.print(table)
    if verify:
        problems = ws.audit.verify()
        if problems:
            for p in problems:
                err_console.print(f"[red]tampered[/]: {p}", highlight=False)
            raise typer.Exit(AUDIT_CHAIN_BROKEN)
        (err_console if as_json else console).print("[green]audit chain intact[/]")


@registry_app.command("export")
def registry_export(
    ref: Annotated[
        str,
        typer.Argument(
            help="NAME[@ALIAS] or NAME/VERSION (a bare @ALIAS or VERSION: registry.model_name)."
        ),
    ] = "@champion",
    out: Annotated[
        Path, typer.Option(help="A new (or empty) folder to write the model to.")
    ] = Path("model"),
) -> None:
    """Write a registered version to a folder `flywheel serve --model-dir` serves without the
    registry (the MLflow model, its ONNX file sha-checked, and flywheel-model.json)."""
    from flywheel.registry.artifacts import split_model_ref
    from flywheel.registry.export import export_model_dir

    ws = _workspace()
    name, version_ref = split_model_ref(ref, ws.settings.registry.model_name)
    bundle = export_model_dir(ws, name, version_ref, out)
    console.print(
        f"[green]exported[/] {bundle['name']} v{bundle['version']} → {out.resolve()} "
        f"(onnx sha256 {bundle['onnx_sha256'][:16]}…); serve it with "
        f"`flywheel serve --model-dir {out}`"
    )


@registry_app.command("list")
def registry_list(as_json: Annotated[bool, _JSON_OPTION] = False) -> None:
    """Model versions with aliases and key tags."""
    from dataclasses import asdict

    from flywheel.registry.aliases import list_versions

    versions = list_versions(_workspace())
    if as_json:
        _emit_json([asdict(v) for v in versions])
        return
    table = _table("version", "aliases", "run", "snapshot", "onnx sha256", "created")
    for v in versions:
        table.add_row(
            v.version,
            ",".join(v.aliases),
            v.run_id or "",
            v.tags.get("flywheel.snapshot_id", ""),
            v.tags.get("flywheel.onnx_sha256", "")[:16],
            v.created_at,
        )
    console.print(table)


@registry_app.command("dora")
def registry_dora(
    since: Annotated[
        str,
        typer.Option(help="Start of the period: 30d, 12h or an ISO date (2025-01-31), UTC."),
    ] = "30d",
    as_json: Annotated[bool, _JSON_OPTION] = False,
) -> None:
    """DORA figures from the audit log: deployment frequency, lead time, change failure rate,
    time to restore (docs/registry.md#dora-figures)."""
    from flywheel.registry.dora import dora, format_duration

    report = dora(_workspace(), since)
    if as_json:
        _emit_json(report.to_dict())
        return
    cfr, median, p90 = report.change_failure_rate, report.lead_time_median_s, report.lead_time_p90_s
    per_day, days = report.deployments_per_day, format_duration(report.period_days * 86400)
    table = _table("figure", "value", title=f"{report.model} since {report.since:%Y-%m-%d %H:%M}")
    for figure, value in (
        ("deployments", f"{len(report.deployments)} in {days}"),
        ("per day / per week", f"{per_day:.2f} / {per_day * 7:.2f}"),
        ("lead time median / p90", f"{format_duration(median)} / {format_duration(p90)}"),
        ("change failure rate", "-" if cfr is None else f"{cfr:.0%}"),
        ("rollbacks (by self-healing)", f"{len(report.restores)} ({report.self_heals})"),
        ("time to restore median", format_duration(report.time_to_restore_median_s)),
        ("rollouts stopped", str(report.rollouts_stopped)),
    ):
        table.add_row(figure, value)
    console.print(table)
    fallback = [d.version for d in report.deployments if d.lead_time_from == "registration"]
    if fallback:
        console.print(f"lead time from the registration (run not found): v{', v'.join(fallback)}")


# ---------------------------------------------------------------- monitor
_MODEL_REF = typer.Option(
    "--model",
    "-m",
    help="NAME[@ALIAS] or NAME/VERSION (a bare @ALIAS or VERSION: registry.model_name; "
    "NAME alone: its champion).",
)


def _monitor_progress() -> Any:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


@monitor_app.command("check")
def monitor_check(
    current: Annotated[
        list[Path],
        typer.Option(
            "--current",
            help="Parquet or CSV files (or folders of them): `--current A B C`; each file is "
            "one window, in the order given.",
        ),
    ],
    more: Annotated[
        list[Path] | None,
        typer.Argument(help="More current files, after --current.", show_default=False),
    ] = None,
    model: Annotated[str, _MODEL_REF] = "@champion",
    reference: Annotated[
        str | None,
        typer.Option(help="holdout (default: the version's evaluation rows) or snapshot:<id>."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write a self-contained HTML report here.")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Each line with every feature's statistics.")
    ] = False,
) -> None:
    """Compare files you have with a model's reference: one JSON line per window (window,
    rows, alarm, drifted_features, performance when the target column is present, ...).
    Exit code 0 whatever the verdict; see `alarm` in each line."""
    from flywheel.monitoring.monitor import check_model, file_reference
    from flywheel.monitoring.sources import load_model

    ws = _workspace()
    with _monitor_progress() as bar:
        task = bar.add_task("monitor check", total=None)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total or None)

        chosen = reference or file_reference(ws.settings.monitoring.reference)
        loaded = load_model(ws, model, reference=chosen)
        paths = [*current, *(more or [])]
        results = check_model(ws, loaded, paths, progress=progress)
    _window_lines(results, full)
    if report is not None:
        from flywheel.monitoring.report import render_report

        windows = [r.to_dict(profile=True) for r in results]
        render_report(loaded.reference.to_dict(), windows, report)
        # stderr: stdout is the JSON lines a script reads
        err_console.print(f"[green]report[/] {report.resolve()}", highlight=False)


def _window_lines(results: list[Any], full: bool) -> None:
    """One JSON line per window; only the drifted features' statistics unless ``full``."""
    for r in results:
        line = r.to_dict()
        if not full:
            line["features"] = [f for f in line["features"] if f["drifted"]]
        sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


@monitor_app.command("run")
def monitor_run(
    model: Annotated[str, _MODEL_REF] = "@champion",
    as_json: Annotated[bool, _JSON_OPTION] = False,
    full: Annotated[
        bool, typer.Option("--full", help="With --json: every feature's statistics.")
    ] = False,
) -> None:
    """Evaluate the windows of the prediction log that ended since the last run (and refresh
    recent ones as their labels arrive); store them, audit each decision, post alarms to
    monitoring.webhook_url, update the server's gauges. Idempotent."""
    from flywheel.monitoring.monitor import run as run_monitor

    ws = _workspace()
    with _monitor_progress() as bar:
        task = bar.add_task("monitor run", total=None)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total or None)

        results = run_monitor(ws, model, progress=progress)
    if as_json:  # the lines `monitor check` prints
        _window_lines(results, full)
        return
    if not results:
        console.print("no window ended since the last run")
        return
    _print_windows([r.to_dict() for r in results])


def _print_windows(rows: list[dict[str, Any]]) -> None:
    table = _table("window", "rows", "status", "alarm", "drifted features", "labels")
    for r in rows:
        perf = r.get("performance") or {}
        done = perf.get("label_completeness")
        table.add_row(
            r["window"],
            str(r["rows"]),
            r["status"],
            "[red]ALARM[/]" if r["alarm"] else "-",
            ", ".join(r.get("drifted_features") or []),
            "" if done is None else f"{done:.0%}",
        )
    console.print(table)
    for r in rows:
        if r["alarm"]:
            console.print(f"[red]ALARM[/] {r['window']}: {r['reason']}", highlight=False)


@monitor_app.command("report")
def monitor_report(
    model: Annotated[str, _MODEL_REF] = "@champion",
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path(
        "monitoring-report.html"
    ),
    every: Annotated[
        str | None,
        typer.Option(
            "--rollup",
            help="Merge the stored windows into longer ones (e.g. 7d) from their profiles, "
            "without re-reading rows, and decide those.",
        ),
    ] = None,
) -> None:
    """A self-contained HTML report of the monitored windows of a version: distributions of
    the drifted features (reference vs current), drift over time, realised and estimated
    performance, label completeness."""
    from flywheel.monitoring.monitor import rollup, settings_of, stored_windows
    from flywheel.monitoring.report import render_report

    if every is not None:  # a malformed option is a usage error (exit 2), before any work
        from flywheel.errors import DataError, UsageError
        from flywheel.monitoring.sources import parse_every

        try:
            parse_every(every)
        except DataError as exc:
            raise UsageError(f"--rollup: {exc.message}", option="rollup") from None
    ws = _workspace()
    reference, windows = stored_windows(ws, model)
    if every is not None:
        cfg = settings_of(ws.settings.monitoring, ws.settings.seed)
        windows = [r.to_dict(profile=True) for r in rollup(reference, windows, every, cfg)]
    render_report(reference.to_dict(), windows, out)
    console.print(f"[green]report[/] {out.resolve()} ({len(windows)} windows)", highlight=False)


@monitor_app.command("status")
def monitor_status(as_json: Annotated[bool, _JSON_OPTION] = False) -> None:
    """The latest decision per monitored model."""
    from flywheel.monitoring.monitor import status

    latest = status(_workspace())
    if as_json:
        _emit_json(
            {k: {kk: vv for kk, vv in v.items() if kk != "profile"} for k, v in latest.items()}
        )
        return
    if not latest:
        console.print("nothing monitored yet: run `flywheel monitor run`")
        return
    for name, r in latest.items():
        state = "[red]ALARM[/]" if r["alarm"] else "no alarm"
        console.print(
            f"[bold]{name}[/] v{r.get('version')}: {state} — window {r['window']} "
            f"({r['rows']} rows): {r.get('reason', '')}",
            highlight=False,
        )


# ---------------------------------------------------------------- serving
@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default serving.host, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="REST + WebSocket port (default serving.port, 8080).")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (default serving.grpc_port, 8081).")
    ] = None,
    no_grpc: Annotated[
        bool, typer.Option("--no-grpc", help="Do not start the gRPC server.")
    ] = False,
    mqtt_url: Annotated[
        str | None,
        typer.Option(
            help="MQTT broker URL, e.g. mqtt://127.0.0.1:1883 (default serving.mqtt_url: off)."
        ),
    ] = None,
    model_ref: Annotated[
        str, typer.Option(help="Alias or version of the registered model to serve.")
    ] = "champion",
    model_dir: Annotated[
        Path | None,
        typer.Option(
            help="Serve a folder written by `flywheel registry export` instead of the "
            "registry (no MLflow needed: what a serving image bakes in).",
        ),
    ] = None,
    max_batch_rows: Annotated[int | None, typer.Option(help="Rows per micro-batch.")] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="Extra batching linger under load (ms).")
    ] = None,
    gather_turns: Annotated[
        int | None,
        typer.Option(help="Event-loop turns a batch waits under load (0: none)."),
    ] = None,
) -> None:
    """Serve the registered model over REST, MLflow /invocations, Open Inference v2 (REST +
    gRPC), WebSocket and MQTT, from one process."""
    from flywheel.serving.config import ServedModel, ServingConfig
    from flywheel.serving.fronts import build_fronts
    from flywheel.serving.server import serve_all

    s = _settings()
    overrides = {"host": host, "port": port, "mqtt_url": mqtt_url, "grpc_port": grpc_port}
    serving: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if no_grpc:
        serving["grpc_port"] = None
    s = s.model_copy(update={"serving": s.serving.model_copy(update=serving)})
    sources = None
    name, ref = s.registry.model_name, model_ref
    if model_dir is not None:
        from flywheel.serving.sources import ModelDirSource

        bundle = ModelDirSource(model_dir)
        name, ref = bundle.name, bundle.files.version
        sources = {name: bundle}
    config = ServingConfig.from_settings(
        s,
        max_batch_rows=max_batch_rows,
        max_wait_ms=max_wait_ms,
        gather_turns=gather_turns,
        models=(ServedModel(name, ref=ref),),
    )
    doors = [f"REST http://{config.host}:{config.port} (+ ws /v1/stream)"]
    fronts = build_fronts(s)  # checks their settings before anything listens
    doors += [front.describe() for front in fronts]
    where = f"{name} v{ref} from {model_dir}" if model_dir is not None else f"{name}@{ref}"
    err_console.print(f"serving {where}: " + "; ".join(doors))
    serve_all(s, config, sources=sources, fronts=fronts)


@app.command()
def predict(
    json_rows: Annotated[
        str | None, typer.Option("--json", help="One record or a list of records as JSON.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(help="A file of records: JSON, CSV (.csv) or Parquet (.parquet)."),
    ] = None,
    protocol: Annotated[str, typer.Option(help="rest | mlflow | v2 | grpc | ws | mqtt.")] = "rest",
    url: Annotated[
        str | None,
        typer.Option(
            help="Server URL (default from serving settings for the protocol); HOST:PORT "
            "gets the protocol's scheme (http, ws, mqtt)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Served model name (default registry.model_name).")
    ] = None,
) -> None:
    """Send records to a running `flywheel serve` over any protocol and print the answer."""
    from flywheel.serving.client import predict_remote

    s = _settings()
    records = _read_records(json_rows, file)
    target = url or _default_url(s, protocol)
    api_key = s.serving.api_key.get_secret_value() if s.serving.api_key else None
    answer = predict_remote(
        records,
        protocol=protocol,
        url=target,
        model=model or s.registry.model_name,
        api_key=api_key,
        mqtt_request_topic=s.serving.mqtt_request_topic,
        mqtt_reply_prefix=s.serving.mqtt_reply_prefix,
    )
    console.print_json(json.dumps(answer, default=str))


def _read_records(json_rows: str | None, file: Path | None) -> list[dict[str, Any]]:
    if (json_rows is None) == (file is None):
        raise UsageError("Give exactly one of --json or --file.")
    if file is not None:
        return _file_records(file)
    return _json_records(str(json_rows), None)


_PARQUET_MAGIC = b"PAR1"


def _file_records(file: Path) -> list[dict[str, Any]]:
    """The records of ``--file``: a JSON file (one object, a list of them, or
    ``{"records": [...]}``), a CSV file (``.csv``) or a Parquet file (``.parquet``, ``.pq``,
    or any name whose bytes start as Parquet's do). Anything unreadable, empty or malformed
    is a :class:`DataError` (exit 4) naming the file."""
    name = str(file)
    if not file.exists():
        raise DataError(
            f"No file at {name!r}. Fix: check the path (relative paths are from the current "
            "folder).",
            file=name,
        )
    if file.is_dir():
        raise DataError(
            f"{name!r} is a folder: --file takes one JSON, CSV or Parquet file of records.",
            file=name,
        )
    try:
        with open(file, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise DataError(f"Cannot read {name!r}: {exc.strerror or exc}.", file=name) from exc
    if not head:
        raise DataError(f"The file {name!r} is empty. Fix: pass a file with records.", file=name)
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq") or head == _PARQUET_MAGIC:
        rows = _table_records(file, parquet=True)
    elif suffix in (".csv", ".tsv"):
        rows = _table_records(file, parquet=False)
    else:
        try:
            text = file.read_text(encoding="utf-8-sig")  # a byte-order mark is fine
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{name!r} is not UTF-8 text (byte {exc.start}): --file takes JSON, CSV "
                "(.csv) or Parquet (.parquet).",
                file=name,
            ) from exc
        except OSError as exc:
            raise DataError(f"Cannot read {name!r}: {exc.strerror or exc}.", file=name) from exc
        rows = _json_records(text, name)
    if not rows:
        raise DataError(f"The file {name!r} holds no records. Fix: add at least one.", file=name)
    return rows


def _table_records(file: Path, *, parquet: bool) -> list[dict[str, Any]]:
    """A CSV or Parquet file's rows as JSON-ready records, read as ingest reads the file
    (:func:`flywheel.data.files.read_file_table`: pyarrow, only an empty cell missing, its
    errors); pyarrow only, so the serve-only install reads them too."""
    from flywheel.data.files import read_file_table

    table = read_file_table(file, parquet=parquet)
    return [{str(k): _plain(v) for k, v in row.items()} for row in table.to_pylist()]


def _plain(value: Any) -> Any:
    """One cell as JSON sends it: NaN None, times ISO, decimals floats."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):  # a Parquet struct cell
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (date, time)):  # datetime too
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def _json_records(text: str, file: str | None) -> list[dict[str, Any]]:
    """The records in JSON ``text``: ``--json``'s, or (``file``) a file's."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno}"
        if file is None:
            raise DataError(f"The records are not valid JSON: {where}.") from exc
        raise DataError(
            f"The file {file!r} is not valid JSON ({where}): --file takes JSON, CSV (.csv) "
            "or Parquet (.parquet).",
            file=file,
        ) from exc
    rows = (
        data
        if isinstance(data, list)
        else data.get("records", [data])
        if isinstance(data, dict)
        else None
    )
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        where = "" if file is None else f" (in {file!r})"
        raise DataError(f"Records must be a JSON object or a list of objects{where}.")
    return rows


def _default_url(s: Settings, protocol: str) -> str:
    host = "127.0.0.1" if s.serving.host in ("0.0.0.0", "::") else s.serving.host
    if protocol == "grpc":
        return f"{host}:{s.serving.grpc_port or 8081}"
    if protocol == "ws":
        return f"ws://{host}:{s.serving.port}"
    if protocol == "mqtt":
        return s.serving.mqtt_url or "mqtt://127.0.0.1:1883"
    return f"http://{host}:{s.serving.port}"


# ---------------------------------------------------------------- the loop
@app.command()
def run(
    days: Annotated[
        int | None,
        typer.Option(
            help="Append this many simulated days first (default: 365 on an empty source, else none)."
        ),
    ] = None,
    customers: Annotated[int, typer.Option(help="Customers in a new world.")] = 5000,
    params: Annotated[Path | None, typer.Option(help="params.yaml for training.")] = None,
    trials: Annotated[int | None, typer.Option(help="Optuna trials.")] = None,
) -> None:
    """The loop so far: simulate → ingest → validate → train → evaluate → gates → register."""
    from flywheel.pipelines.steps import run_loop
    from flywheel.training.params import load_params

    ws = _workspace()
    s = ws.settings
    train_params = load_params(params or s.training.params_file)
    with _progress() as (on_step, report):
        result = run_loop(
            ws,
            days=days,
            customers=customers,
            params=train_params,
            trials=trials,
            on_step=on_step,
            progress=report,
        )
    _print_outcome(s, result.outcome)
    for note in result.notes:
        console.print(note)
    _print_where_to_look(s, result)


def _print_where_to_look(s: Settings, result: Any) -> None:
    uri = s.tracking.uri or ""
    ui = f"mlflow ui --backend-store-uri {mask_url(uri)}" + (
        f" --default-artifact-root {s.tracking.artifact_location}"
        if s.tracking.artifact_location
        else ""
    )
    console.rule("where to look")
    console.print(f"snapshot:    {result.snapshot_id}  (flywheel data show {result.snapshot_id})")
    console.print(f"MLflow UI:   {ui}" if not uri.startswith("http") else f"MLflow UI:   {uri}")
    if result.outcome.card_path:
        console.print(f"model card:  {result.outcome.card_path}")
    console.print("audit log:   flywheel registry history")


# continuous training, lineage and the console: listed after the loop's own commands
app.command(name="retrain")(_retrain_command)
app.command(name="worker")(_worker_command)
app.command(name="replay")(_replay_command)
app.command(name="lineage")(_lineage_command)
app.command(name="console")(_console_command)


def _one_line_summaries(group: typer.Typer) -> None:
    """Each command's summary in a group's command list is its help's first paragraph as
    one line, wrapped to the terminal (Typer's rich panel keeps the docstring's own line
    breaks, which made ragged lines at any width other than the source's)."""
    for info in group.registered_commands:
        if info.short_help is None and info.callback is not None:
            text = info.help or inspect.getdoc(info.callback) or ""
            info.short_help = " ".join(text.split("\n\n")[0].split()) or None
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_summaries(sub.typer_instance)


def main() -> None:
    """Entry point: run the app; the process exits with the documented code (docs/cli.md).

    Domain errors print one clean line and their own code; an unexpected error prints one
    line naming what failed and the crash log holding its traceback, and exits 70."""
    _one_line_summaries(app)
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except FlywheelError as exc:
        _print_error(exc)
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = INTERRUPTED
    except typer.TyperException as exc:  # usage errors (typer vendors click: not click.*)
        show = getattr(exc, "show", None)
        if show is None:
            code = _internal_error(exc)
        else:
            show()
            code = exc.exit_code
    except Exception as exc:
        code = _internal_error(exc)
    _close_workspace()
    if code == INTERRUPTED:  # Ctrl-C (typer turns KeyboardInterrupt into Exit(130))
        err_console.print("aborted")
    sys.exit(code if isinstance(code, int) else 0)


def _close_workspace() -> None:
    """Close what the command's workspace opened (prediction log, audit connections)."""
    ws = _state.pop("workspace", None)
    if ws is None:
        return
    try:
        ws.close()
    except Exception:  # the command's own outcome is what the user needs to see
        logging.getLogger("flywheel.cli").warning("closing the workspace failed", exc_info=True)


def _internal_error(exc: BaseException) -> int:
    """Write the traceback to a crash log; tell the user what failed and where it is."""
    import traceback

    from rich.markup import escape

    command = " ".join(["flywheel", *sys.argv[1:]])
    where = _innermost_frame(exc)
    log_path = _write_crash_log(exc, command)
    err_console.print(
        "[red]error[/] (internal): "
        + escape(  # text, not markup: a "[x]" in the exception's text must show as written
            f"`{command}` failed unexpectedly: {type(exc).__name__}: {exc}{where}. This is a "
            "bug in flywheel; the full traceback "
            + (
                f"is in {log_path}."
                if log_path
                else "could not be written to a file:\n" + "".join(traceback.format_exception(exc))
            )
        ),
        highlight=False,
        markup=True,
        soft_wrap=True,
    )
    return INTERNAL_ERROR


def _innermost_frame(exc: BaseException) -> str:
    """`` (at flywheel/x.py:12)``: the deepest frame in flywheel's code, else the deepest."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    ours = [f for f in frames if f"{os.sep}flywheel{os.sep}" in f.filename]
    frame = (ours or frames)[-1]
    path = Path(frame.filename)
    short = "/".join(path.parts[-2:]) if ours else path.name
    return f" (at {short}:{frame.lineno})"


def _write_crash_log(exc: BaseException, command: str) -> Path | None:
    """The traceback under ``<home>/logs/`` (or the temp folder if home is unusable)."""
    import tempfile
    import traceback
    from datetime import datetime

    ws = _state.get("workspace")
    settings = ws.settings if ws is not None else None
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    name = f"crash-{stamp}-{os.getpid()}.log"
    text = (
        f"flywheel {__version__}, Python {sys.version.split()[0]}\n"
        f"command: {command}\n"
        f"cwd: {Path.cwd()}\n\n" + "".join(traceback.format_exception(exc))
    )
    folders = [Path(tempfile.gettempdir()) / "flywheel-logs"]
    if settings is not None:
        folders.insert(0, settings.home / "logs")
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue
    return None


def _print_error(exc: FlywheelError) -> None:
    from rich.markup import escape

    # the message is text, not markup: "[region]" or "[smhdw]" must show as written
    err_console.print(f"[red]error[/] ({exc.kind}): {escape(exc.message)}", highlight=False)
    for v in exc.details.get("violations", []) or []:
        line = v if isinstance(v, str) else getattr(v, "message", str(v))
        err_console.print(f"  - {escape(line)}", highlight=False)
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        err_console.print_exception()
