"""The monitor's three jobs: check files, run over new windows of the prediction log, and say
where each model stands. Both current-data paths end in :func:`decide.evaluate_window`, so a
file and a logged window with the same rows give the same result object."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from flywheel.config import MonitoringSettings
from flywheel.errors import DataError
from flywheel.monitoring.decide import MonitorSettings, WindowResult, decide, evaluate_window
from flywheel.monitoring.drift import DriftSettings
from flywheel.monitoring.profile import Reference
from flywheel.monitoring.sources import Model, file_windows, load_model, log_batches, parse_every
from flywheel.monitoring.store import MonitorStore, write_latest
from flywheel.monitoring.window import WindowCounter

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = [
    "check",
    "check_model",
    "file_reference",
    "rollup",
    "run",
    "settings_of",
    "status",
    "stored_windows",
]

log = logging.getLogger("flywheel.monitoring")

Progress = Callable[[str, int, int], None]


def _quiet(phase: str, done: int, total: int) -> None:
    return None


def settings_of(m: MonitoringSettings, seed: int = 0) -> MonitorSettings:
    return MonitorSettings(
        drift=DriftSettings(
            w1=m.w1_threshold, js=m.js_threshold, fdr=m.fdr, draws=m.null_draws, seed=seed
        ),
        min_rows=m.min_rows,
        drift_share=m.drift_share,
        persist_k=m.persist_k,
        persist_m=m.persist_m,
        cooldown=m.cooldown_windows,
        min_completeness=m.min_label_completeness,
        max_drop=m.max_drop,
        estimate_metric=m.estimate_metric,
    )


# --------------------------------------------------------------------------- files


def check(
    ws: Workspace,
    model_ref: str,
    paths: Sequence[Path],
    *,
    reference: str | None = None,
    cooldown: int = 0,
    progress: Progress = _quiet,
) -> list[WindowResult]:
    """Each file (or each file of a folder) as one window, in order; decisions with
    persistence across them (no cooldown unless given)."""
    m = ws.settings.monitoring
    model = load_model(ws, model_ref, reference=reference or file_reference(m.reference))
    return check_model(ws, model, paths, cooldown=cooldown, progress=progress)


def check_model(
    ws: Workspace,
    model: Model,
    paths: Sequence[Path],
    *,
    cooldown: int = 0,
    progress: Progress = _quiet,
) -> list[WindowResult]:
    """:func:`check` with the model (and its reference) already loaded."""
    cfg = dataclasses.replace(
        settings_of(ws.settings.monitoring, ws.settings.seed), cooldown=cooldown
    )
    results = []
    windows = list(file_windows(model, paths))
    for i, (name, batches) in enumerate(windows):
        progress(f"window {i + 1}/{len(windows)}", i, len(windows))
        counter = WindowCounter(model.reference)
        for batch in batches:
            counter.add(batch)
        results.append(evaluate_window(model.reference, counter.result(), name, cfg))
    progress("done", len(windows), len(windows))
    return decide(results, cfg)


def file_reference(configured: str) -> str:
    # a rolling reference is made of served traffic: files are compared with the holdout
    return "holdout" if configured.startswith("rolling:") else configured


# --------------------------------------------------------------------------- the log


def _bounds(every: float, ts: float) -> tuple[float, float]:
    start = math.floor(ts / every) * every
    return start, start + every


def _iso(ts: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(math.floor(ts)))
    micros = round((ts - math.floor(ts)) * 1e6)
    return f"{whole}.{micros:06d}Z" if micros else f"{whole}Z"


def _name(start: float, end: float) -> str:
    return f"{_iso(start)}/{_iso(end)}"


def _time_windows(
    batches: Iterator[pa.Table], every: float, now: float
) -> Iterator[tuple[float, float, list[pa.Table]]]:
    """Cut time-ordered batches into [start, end) windows; only windows that ended by ``now``."""
    import pyarrow.compute as pc

    current: tuple[float, float] | None = None
    parts: list[pa.Table] = []
    for batch in batches:
        secs = pc.divide(pc.cast(pc.cast(batch.column("ts"), pa.int64()), pa.float64()), 1e6)
        values = secs.to_numpy(zero_copy_only=False)
        i = 0
        while i < len(values):
            if current is None:
                current = _bounds(every, float(values[i]))
            j = int((values[i:] < current[1]).sum()) + i  # ordered by ts
            if j > i:
                parts.append(batch.slice(i, j - i))
            i = j
            if i < len(values):  # the window ended inside this batch
                yield current[0], current[1], parts
                current, parts = None, []
    if current is not None and current[1] <= now:
        yield current[0], current[1], parts


def _micros(batch: pa.Table) -> Any:
    return batch.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)


_MARGIN_S = 1e-3  # far beyond a float's resolution of today's epoch seconds (~0.2 µs)


def _from_micros(batches: Iterator[pa.Table], start: float | None) -> Iterator[pa.Table]:
    """The rows at or after ``start``, compared in the whole µs the windows are cut in."""
    if start is None:
        yield from batches
        return
    lo = round(start * 1e6)
    for batch in batches:
        ts = _micros(batch)
        if len(ts) and ts[0] < lo:
            batch = batch.slice(int(np.searchsorted(ts, lo, side="left")))
        if batch.num_rows:
            yield batch


def _row_windows(
    batches: Iterator[pa.Table], size: int
) -> Iterator[tuple[float, float, list[pa.Table]]]:
    """Windows of at least ``size`` rows, cut only where the timestamp changes (the rows of
    one request share one, and the next run starts after the last window's end); a last,
    partial window is left for a later run."""
    parts: list[pa.Table] = []
    have, first, last = 0, 0, 0  # rows taken, µs of the first and the last row taken
    for batch in batches:
        ts = _micros(batch)
        i, n = 0, len(ts)
        while i < n:
            if have >= size:  # full: take the rows that share the last timestamp, then cut
                k = i
                while k < n and ts[k] == last:
                    k += 1
                if k > i:
                    parts.append(batch.slice(i, k - i))
                    have, i = have + k - i, k
                if i < n:
                    yield first / 1e6, last / 1e6 + 1e-6, parts
                    parts, have = [], 0
                continue
            take = min(size - have, n - i)
            parts.append(batch.slice(i, take))
            first = int(ts[i]) if have == 0 else first
            last = int(ts[i + take - 1])
            have, i = have + take, i + take
    if have >= size:
        yield first / 1e6, last / 1e6 + 1e-6, parts


def run(
    ws: Workspace,
    model_ref: str,
    *,
    now: float | None = None,
    progress: Progress = _quiet,
    notify: bool = True,
) -> list[WindowResult]:
    """Evaluate the windows of the prediction log that ended since the last run (and
    refresh the recent ones still waiting for labels); store them, append each new
    decision to the audit ledger, post alarms to the webhook, update ``latest.json``.
    Running it again with nothing new changes nothing."""
    m = ws.settings.monitoring
    cfg = settings_of(m, ws.settings.seed)
    model = load_model(ws, model_ref)
    holdout = model.reference
    name, version = holdout.model, str(holdout.version)
    store = MonitorStore(m.url or "")
    url = ws.settings.serving.prediction_log_url or ""
    now = time.time() if now is None else now
    try:
        stored = store.windows(name, version)
        keep = [w for w in stored if w["status"] == "ok"]
        # windows still waiting for labels: counted again from where the oldest one starts
        horizon = stored[-m.label_horizon_windows :] if m.label_horizon_windows else []
        waiting = [w for w in horizon if w["status"] == "ok" and _waiting(w)]
        last_end = store.last_end(name, version)
        start = waiting[0]["start"] if waiting else last_end
        if waiting:
            first = stored.index(waiting[0])
            keep = [w for w in stored[:first] if w["status"] == "ok"]
        drift_ref = _drift_reference(ws, model, m.reference, start, url)
        if m.window_rows:
            # a row window starts at its first row's time in whole µs, rounded from the
            # log's float seconds, so it may lie just after that row: read a little before
            # and cut at the µs (a refreshed window keeps its rows and its name)
            early = None if start is None else start - _MARGIN_S
            batches = log_batches(url, model, early, now)
            windows = _row_windows(_from_micros(batches, start), m.window_rows)
        else:
            batches = log_batches(url, model, start, now)
            windows = _time_windows(batches, parse_every(m.every), now)
        results: list[WindowResult] = []
        for i, (lo, hi, parts) in enumerate(windows):
            progress(f"window {_name(lo, hi)}", i, 0)
            results.append(_evaluate(drift_ref, holdout, parts, _name(lo, hi), lo, hi, cfg))
        decide(results, cfg, history=[bool(w["verdict"]) for w in keep])
        known = {w["window"]: w for w in stored}
        for r in results:
            before = known.get(r.window)
            new = store.save(r.to_dict(profile=True))
            if new or (before and bool(before["alarm"]) != r.alarm):
                _record(ws, r, notify=notify)
        latest = store.latest()
        if latest:
            write_latest(ws.settings.home, latest)
        progress("done", len(results), len(results))
        return results
    finally:
        store.dispose()


def _waiting(window: dict[str, Any]) -> bool:
    perf = window.get("performance")
    if not perf:
        return False
    return float(perf.get("label_completeness") or 0.0) < 1.0


def _evaluate(
    drift_ref: Reference,
    holdout: Reference,
    parts: list[pa.Table],
    name: str,
    lo: float,
    hi: float,
    cfg: MonitorSettings,
) -> WindowResult:
    counter = WindowCounter(drift_ref)
    perf_counter = WindowCounter(holdout, sketches=False) if drift_ref is not holdout else None
    for part in parts:
        counter.add(part)
        if perf_counter is not None:
            perf_counter.add(part)
    window = counter.result()
    window.start, window.end = lo, hi
    result = evaluate_window(drift_ref, window, name, cfg)
    if perf_counter is not None and result.status == "ok":
        from flywheel.monitoring.performance import assess_performance

        held = perf_counter.result()
        result.performance = assess_performance(
            holdout,
            held,
            min_completeness=cfg.min_completeness,
            max_drop=cfg.max_drop,
            estimate_metric=cfg.estimate_metric or ("f1" if holdout.positive else "accuracy"),
        )
        if result.performance.breach and not result.verdict:
            result.verdict = True
            result.reason = result.performance.reason
    return result


def _drift_reference(
    ws: Workspace, model: Model, configured: str, start: float | None, url: str
) -> Reference:
    """The holdout reference, a snapshot's, or served traffic of the N days before ``start``."""
    if configured == "holdout":
        return model.reference
    if configured.startswith("snapshot:"):
        return load_model(
            ws, f"{model.artifacts.name}/{model.artifacts.version}", reference=configured
        ).reference
    days = int(configured.removeprefix("rolling:").removesuffix("d"))
    if start is None:  # the first run: no served traffic before its first window
        log.info("rolling reference: first run, so the holdout is the reference")
        return model.reference
    end = start
    lo = end - days * 86400
    tables = list(log_batches(url, model, lo, end))
    rows = sum(t.num_rows for t in tables)
    if rows < 500:
        log.warning(
            "rolling reference: only %d served rows in the %d days before; using the holdout",
            rows,
            days,
        )
        return model.reference
    from flywheel.monitoring.reference import build_reference

    table = pa.concat_tables(tables, promote_options="default").drop_columns(["ts"])
    held = model.reference
    ref = build_reference(
        model=held.model,
        version=held.version,
        source=f"served traffic {_name(lo, end)}",
        frame=table,
        specs=model.specs,
        task=held.task,
        classes=held.classes,
        threshold=held.threshold,
        target=held.target,
        importance=held.importance,
    )
    return ref


def _record(ws: Workspace, r: WindowResult, *, notify: bool) -> None:
    """The decision to the audit ledger; an alarm to the webhook."""
    m = ws.settings.monitoring
    verdict = "ALARM" if r.alarm else ("insufficient data" if r.status != "ok" else "ok")
    ws.audit.append(
        who=ws.settings.user,
        action="monitor",
        model=r.model,
        from_version=None,
        to_version=r.version,
        reason=f"window {r.window}: {verdict} ({r.rows} rows): {r.reason}"[:2000],
    )
    if r.alarm and notify and m.webhook_url:
        from flywheel.monitoring.alerts import alarm_payload, post_alarm

        token = m.webhook_token.get_secret_value() if m.webhook_token else None
        post_alarm(m.webhook_url, alarm_payload(r.to_dict()), token=token)


def status(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The latest decision per monitored model."""
    store = MonitorStore(ws.settings.monitoring.url or "")
    try:
        return store.latest()
    finally:
        store.dispose()


def rollup(
    reference: Reference, windows: Sequence[dict[str, Any]], every: str, cfg: MonitorSettings
) -> list[WindowResult]:
    """Stored windows merged into longer ones (``every``, e.g. ``7d``) from their profiles
    (counts added, sketches merged), without re-reading a row; decided again."""
    from flywheel.monitoring.profile import WindowProfile

    length = parse_every(every)
    groups: dict[float, WindowProfile] = {}
    for w in windows:
        if not w.get("profile") or w.get("start") is None:
            continue
        profile = WindowProfile.from_dict(w["profile"])
        key = _bounds(length, float(w["start"]))[0]
        groups[key] = groups[key].merge(profile, reference) if key in groups else profile
    results = []
    for start in sorted(groups):
        window = groups[start]
        window.start, window.end = start, start + length
        results.append(evaluate_window(reference, window, _name(start, start + length), cfg))
    return decide(results, cfg)


def stored_windows(ws: Workspace, model_ref: str) -> tuple[Reference, list[dict[str, Any]]]:
    model = load_model(ws, model_ref)
    store = MonitorStore(ws.settings.monitoring.url or "")
    try:
        windows = store.windows(model.reference.model, str(model.reference.version))
    finally:
        store.dispose()
    if not windows:
        raise DataError(
            f"No monitored windows for {model.reference.model} v{model.reference.version}: "
            "run `flywheel monitor run` first (or `flywheel monitor check ... --report`).",
            field="model",
        )
    return model.reference, windows
