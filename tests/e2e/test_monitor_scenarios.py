"""Drift and performance monitoring against the simulator's drift scenarios, as a user runs it.

One champion is trained on a 240-day world (Feb-Jul 2025 months, no drift). Four worlds then
continue it by 180 days with the same seed: a control without drift, and ``price_rise``,
``new_contract`` and ``ticket_churn`` from 2025-10-01. For each world its post-training months
(observed_at Aug 2025 .. Jan 2026) are replayed month by month through a real `flywheel serve`
(REST ``/v1/predict`` in requests of 100 rows, every label through ``/v1/feedback``), with its
own prediction log and monitor database, then `flywheel monitor run --json` reads the log in
windows of exactly one month each: every month is sent as the same number N of rows (N = the
smallest month of all the worlds; each month's N rows are a seeded random sample, so months
with the same rows in two worlds give the same sample) and ``monitoring.window_rows`` is N.

Run with ``-s`` to see the per-window table and the detection delays.
"""

from __future__ import annotations

import http.server
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests.e2e.conftest import (
    FLYWHEEL_BIN,
    flywheel,
    flywheel_together,
    start_serve,
    stop_serve,
)

pytestmark = pytest.mark.slow

TRAIN_DAYS = 240  # day 239 = 2025-08-28: closed months Jan..Jul, feature months Feb..Jul
MORE_DAYS = 180  # to day 419 = 2026-02-24: feature months through Jan 2026
DRIFT_DATE = "2025-10-01"  # day 273
DETECTED_BY = "2025-11"  # the control stays quiet at least this long (natural drift comes later)
FIRST_MONTH = "2025-10"  # the first month observed on or after the drift date
LAST_TRAINED = "2025-07-01"  # the training snapshot's last observed_at
SCENARIOS = ("price_rise", "new_contract", "ticket_churn")
WORLDS = ("control", *SCENARIOS)
# the issue's expectations: which features a scenario must drift (empty: performance only)
EXPECTED_FEATURES = {
    "price_rise": {"monthly_charges", "total_charges"},
    "new_contract": {"contract_type"},
    "ticket_churn": set(),
}
MODEL = "churn"
REQUEST_ROWS = 100
DROP = ["customer_id", "observed_at", "churned"]


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Hook(http.server.BaseHTTPRequestHandler):
    posts: list[tuple[str, dict[str, Any]]]
    lock: threading.Lock

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            self.posts.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@dataclass
class Webhook:
    url: str
    posts: list[tuple[str, dict[str, Any]]]
    lock: threading.Lock

    def received(self, world: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for path, body in self.posts if path == f"/hook/{world}"]


@dataclass
class World:
    name: str
    config: Path
    port: int
    months: dict[str, pd.DataFrame]
    server: Any = None
    results: list[dict[str, Any]] = field(default_factory=list)  # first `monitor run`
    hook_posts_after_run: int = 0

    def by_month(self) -> dict[str, dict[str, Any]]:
        return dict(zip(self.months, self.results, strict=True))


def _months(db: Path, rows: int | None = None) -> dict[str, pd.DataFrame]:
    """The world's months after the training snapshot, oldest first (``rows``: a seeded random
    sample of that many rows of each, in customer order)."""
    with sqlite3.connect(db) as con:
        df = pd.read_sql_query(
            "SELECT * FROM churn_features WHERE substr(observed_at, 1, 10) > ? "
            "ORDER BY observed_at, customer_id",
            con,
            params=(LAST_TRAINED,),
        )
    out = {}
    for month, g in df.groupby(df["observed_at"].str[:7], sort=True):
        g = g.reset_index(drop=True)
        if rows is not None:
            rng = np.random.default_rng([7, int(str(month).replace("-", ""))])
            g = g.iloc[np.sort(rng.choice(len(g), rows, replace=False))].reset_index(drop=True)
        out[str(month)] = g
    return out


def _replay(port: int, months: dict[str, pd.DataFrame]) -> None:
    """Each month's rows through REST in requests of REQUEST_ROWS; then its labels, one
    feedback call per month (a label list per request: one label per row)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for month, g in months.items():
            # exact values (Python's float repr), missing as null: pandas' to_json would
            # round to 10 decimals and move values that sit on a reference bin edge
            rows = g.drop(columns=DROP).astype(object)
            records = rows.where(rows.notna(), None).to_dict(orient="records")
            labels = g["churned"].astype(int).tolist()
            items = []
            for i in range(0, len(records), REQUEST_ROWS):
                answer = client.post("/v1/predict", json={"records": records[i : i + REQUEST_ROWS]})
                assert answer.status_code == 200, (month, answer.text)
                items.append(
                    {
                        "request_id": answer.json()["request_id"],
                        "label": labels[i : i + REQUEST_ROWS],
                    }
                )
            fb = client.post("/v1/feedback", json={"items": items})
            assert fb.status_code == 200, (month, fb.text)
            assert fb.json() == {"accepted": len(items), "unknown": []}, (month, fb.json())


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _monitor_audits(cwd: Path) -> int:
    entries = json.loads(flywheel(cwd, "registry", "history", "--json").stdout)
    return sum(1 for e in entries if e["action"] == "monitor")


def _feature(r: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in r["features"] if f["feature"] == name)


def _perf_cell(r: dict[str, Any]) -> str:
    perf = r.get("performance") or {}
    real, est = perf.get("realised") or {}, perf.get("estimated") or {}

    def one(m: str) -> str:
        e = est.get(m) or {}
        lo, hi = (e.get("ci95") or [None, None])[:2]
        return f"{m} {real.get(m, float('nan')):.3f} est [{lo or 0:.3f},{hi or 0:.3f}]"

    return "; ".join(one(m) for m in ("f1", "positive_rate")) + (
        f"; auc {real.get('roc_auc', float('nan')):.3f}"
    )


def _table(world: World) -> str:
    rows = world.results[0]["rows"] if world.results else 0
    lines = [f"\n== {world.name}: {len(world.results)} windows of {rows} rows"]
    lines.append(
        f"{'month':8} {'drift':5} {'share':>5} {'pred':4} {'breach':6} {'verdict':7} {'alarm':5}  "
        "drifted features | realised vs estimated | breach reason"
    )
    for month, r in world.by_month().items():
        perf = r.get("performance") or {}
        lines.append(
            f"{month:8} {r['drift']!s:5} {r['drift_share']:5.3f} {r['prediction_drift']!s:4} "
            f"{perf.get('breach', False)!s:6} {r['verdict']!s:7} {r['alarm']!s:5}  "
            f"{','.join(r['drifted_features']) or '-'} | {_perf_cell(r)} | "
            f"{perf.get('reason') or '-'}"
        )
    return "\n".join(lines)


def _detected(world: str, r: dict[str, Any]) -> bool:
    """The window shows the scenario the way the issue expects."""
    expected = EXPECTED_FEATURES[world]
    if expected:
        return bool(expected & set(r["drifted_features"]))
    perf = r.get("performance") or {}
    return bool(perf.get("breach")) and perf.get("realised") is not None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    posts: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()
    handler = type("Hook", (_Hook,), {"posts": posts, "lock": lock})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Webhook(f"http://127.0.0.1:{server.server_address[1]}", posts, lock)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE champion trained on the pre-drift world, and the four continued worlds' sources."""
    t0 = time.monotonic()
    cwd = tmp_path_factory.mktemp("monitor-scenarios")
    out = flywheel(cwd, "run", "--days", str(TRAIN_DAYS)).stdout
    assert "registered churn version 1" in out, out
    assert "version 1 is the first champion" in out, out
    with sqlite3.connect(cwd / ".flywheel" / "source.db") as con:
        last = con.execute("SELECT max(substr(observed_at, 1, 10)) FROM churn_features").fetchone()
    assert last == (LAST_TRAINED,), last  # the snapshot the champion was trained on ends here
    simulations = []
    for world in WORLDS:
        db = cwd / f"{world}.db"
        db.write_bytes((cwd / ".flywheel" / "source.db").read_bytes())
        (cwd / f"{world}-source.yaml").write_text(f"source:\n  url: sqlite:///{db}\n")
        drift = [] if world == "control" else ["--drift", f"{world}@{DRIFT_DATE}"]
        simulations.append(
            ["-c", f"{world}-source.yaml", "simulate", "--days", str(MORE_DAYS), *drift]
        )
    flywheel_together(cwd, *simulations)  # each world its own database: run side by side
    for world in WORLDS:
        with sqlite3.connect(cwd / f"{world}.db") as con:
            state = con.execute("SELECT seed, last_day, scenarios FROM sim_state").fetchone()
        assert state[0] == 42 and state[1] == TRAIN_DAYS + MORE_DAYS - 1, state
        assert json.loads(state[2]) == ([] if world == "control" else [f"{world}@273"]), state
    print(f"\n[setup] champion trained and 4 worlds simulated in {time.monotonic() - t0:.1f} s")
    return cwd


@pytest.fixture(scope="module")
def worlds(base: Path, webhook: Webhook) -> Iterator[dict[str, World]]:
    """Each world served, replayed, labelled and monitored once (servers left running)."""
    t0 = time.monotonic()
    full = {w: _months(base / f"{w}.db") for w in WORLDS}
    sizes = {w: {m: len(g) for m, g in months.items()} for w, months in full.items()}
    n = min(min(s.values()) for s in sizes.values())
    print(f"\n[setup] month sizes {json.dumps(sizes)}; N = {n} rows per month and window")
    out: dict[str, World] = {}
    ports: set[int] = set()
    for name in WORLDS:
        months = _months(base / f"{name}.db", rows=n)
        assert list(months) == [
            "2025-08",
            "2025-09",
            "2025-10",
            "2025-11",
            "2025-12",
            "2026-01",
        ]
        while (port := _free_port()) in ports:  # no server holds one yet: keep them apart
            pass
        ports.add(port)
        config = base / f"{name}.yaml"
        config.write_text(
            f"source:\n  url: sqlite:///{base / f'{name}.db'}\n"
            "serving:\n"
            f"  port: {port}\n"
            "  grpc_port: null\n"
            f"  prediction_log_url: sqlite:///{base / f'{name}-predictions.db'}\n"
            "  prediction_log_durability: commit\n"
            "monitoring:\n"
            f"  url: sqlite:///{base / f'{name}-monitor.db'}\n"
            f"  window_rows: {n}\n"
            f"  webhook_url: {webhook.url}/hook/{name}\n"
        )
        out[name] = World(name, config, port, months)

    def serve_and_replay(world: World) -> None:
        cmd = [FLYWHEEL_BIN, "-c", str(world.config), "serve"]
        world.server = start_serve(cmd, base, world.port)
        _replay(world.port, world.months)

    try:
        # the worlds share nothing but the registry they read: served and replayed side by
        # side; each `monitor run` (it writes the shared audit ledger) in turn, as before
        with ThreadPoolExecutor(max_workers=len(out)) as pool:
            for done in [pool.submit(serve_and_replay, world) for world in out.values()]:
                done.result()
        for name, world in out.items():
            run = flywheel(base, "-c", str(world.config), "monitor", "run", "--json", "--full")
            world.results = _json_lines(run.stdout)
            world.hook_posts_after_run = len(webhook.received(name))
        print(f"[setup] 4 worlds served, replayed and monitored in {time.monotonic() - t0:.1f} s")
        for world in out.values():
            print(_table(world))
        yield out
    finally:
        for world in out.values():
            if world.server is not None:
                stop_serve(world.server)


# --------------------------------------------------------------------------- tests


def test_every_month_is_one_full_window_with_all_labels(worlds: dict[str, World]) -> None:
    for world in worlds.values():
        n = len(next(iter(world.months.values())))
        assert len(world.results) == len(world.months), (world.name, world.results)
        for month, r in world.by_month().items():
            assert r["status"] == "ok" and r["rows"] == n, (world.name, month, r["reason"])
            assert r["model"] == MODEL and r["version"] == "1"
            assert r["performance"]["label_completeness"] == 1.0, (world.name, month)


def test_same_rows_give_the_same_verdicts_in_every_world(worlds: dict[str, World]) -> None:
    """Aug and Sep hold the same rows and labels in every world (the scenarios start on Oct
    1): the monitor must say exactly the same of them."""
    control = worlds["control"].by_month()
    for name in SCENARIOS:
        mine = worlds[name].by_month()
        for month in ("2025-08", "2025-09"):
            a, b = control[month], mine[month]
            assert a["drifted_features"] == b["drifted_features"], (name, month)
            assert a["features"] == b["features"], (name, month)
            assert a["performance"]["realised"] == b["performance"]["realised"], (name, month)


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_is_caught_as_the_issue_expects(worlds: dict[str, World], name: str) -> None:
    """price_rise and new_contract: an alarm whose drifted features include the scenario's
    (monthly_charges/total_charges, contract_type) in a month from the scenario on, and never
    those features before it; ticket_churn: an alarm with a realised performance breach, in a
    window where the features say nothing the control's same month does not say."""
    world, control = worlds[name], worlds["control"].by_month()
    months = list(world.months)
    first = months.index(FIRST_MONTH)
    rows = world.by_month()
    expected = EXPECTED_FEATURES[name]
    caught = [m for m in months[first:] if rows[m]["alarm"] and _detected(name, rows[m])]
    first_alarm = next((m for m in months[first:] if rows[m]["alarm"]), None)
    delay = months.index(caught[0]) - first if caught else None
    print(
        f"\n[{name}] first month {FIRST_MONTH}; first alarm on or after it: {first_alarm}; "
        f"first alarm showing the scenario ({sorted(expected) or 'performance breach'}): "
        f"{caught[0] if caught else None}; detection delay {delay} window(s); "
        f"alarms before the scenario: {[m for m in months[:first] if rows[m]['alarm']]}"
    )
    for m in months:
        stats = {
            f: round(_feature(rows[m], f)["value"], 3)
            for f in ("monthly_charges", "total_charges", "contract_type", "tickets_90d")
        }
        ctl = {f: round(_feature(control[m], f)["value"], 3) for f in stats}
        print(f"  {m} {name} {stats}  control {ctl}")
    assert caught, f"{name} never caught as expected:{_table(world)}"
    if expected:  # the scenario's feature moved well beyond the control's same month
        m = caught[0]
        mine = max(_feature(rows[m], f)["value"] for f in expected)
        theirs = max(_feature(control[m], f)["value"] for f in expected)
        assert mine >= 1.5 * theirs, (m, mine, theirs)
    for m in months[:first]:
        assert not expected & set(rows[m]["drifted_features"]), (name, m, rows[m]["reason"])
    if name == "ticket_churn":
        m = caught[0]
        extra = set(rows[m]["drifted_features"]) - set(control[m]["drifted_features"])
        # caught by the labels: the features say little the control does not (more churn
        # does age the survivors a little: a second-order drift, kept under 1.5x the effect
        # threshold); the scores may move (tickets are more frequent)
        small = {f: _feature(rows[m], f)["value"] for f in extra}
        print(f"  {m}: drifted beyond the control: {small or 'nothing'}")
        assert all(v < 1.5 * _feature(rows[m], f)["threshold"] for f, v in small.items()), small
        assert rows[m]["performance"]["breach"], rows[m]["reason"]
        assert not control[m]["performance"]["breach"], control[m]["performance"]["reason"]


def test_no_alarm_before_the_drift_or_without_it(worlds: dict[str, World]) -> None:
    """Before 2025-10-01 no world has drifted: no alarm there. The control world has no
    scenario but is not stationary (its customers age, plans and renewals mix): it may only
    alarm once that natural drift has grown past the scenarios' detection month, and then
    on feature drift alone (its labels still agree with its scores)."""
    false_alarms, natural = [], []
    for world in worlds.values():
        for month, r in world.by_month().items():
            if not r["alarm"]:
                continue
            perf = r["performance"] or {}
            drifted = {f: round(_feature(r, f)["value"], 3) for f in r["drifted_features"]}
            line = (
                f"{world.name} {month}: drift_share {r['drift_share']:.3f} drifted {drifted}; "
                f"perf breach: {perf.get('reason') or '-'}"
            )
            early = month < FIRST_MONTH or (world.name == "control" and month <= DETECTED_BY)
            if early or (world.name == "control" and perf.get("breach")):
                false_alarms.append(line)
            elif world.name == "control":
                natural.append(line)
    print(f"\n[control] alarms on natural drift (no scenario), after {DETECTED_BY}:")
    print("  " + "\n  ".join(natural or ["none"]))
    assert not false_alarms, f"{len(false_alarms)} alarm(s) where nothing drifted:\n  " + (
        "\n  ".join(false_alarms)
    )


def test_files_give_the_same_result_as_the_log(base: Path, worlds: dict[str, World]) -> None:
    """The same months as Parquet files through `monitor check`: the same result per window
    (the same drifted features, statistics, verdicts and realised performance)."""
    world = worlds["new_contract"]
    files = []
    for month, g in world.months.items():
        path = base / f"new_contract-{month}.parquet"
        g.to_parquet(path, index=False)
        files.append(str(path))
    html = base / "check.html"
    out = flywheel(
        base, "-c", str(world.config), "monitor", "check", "--full", "--current", *files,
        "--report", str(html),
    )  # fmt: skip
    checked = _json_lines(out.stdout)  # every stdout line JSON: the report's path on stderr
    assert html.stat().st_size > 0 and "report" in out.stderr
    assert [r["window"] for r in checked] == files
    score_gaps = []
    for (month, logged), filed in zip(world.by_month().items(), checked, strict=True):
        assert set(filed) == set(logged), month
        assert filed["rows"] == logged["rows"], month
        assert filed["drifted_features"] == logged["drifted_features"], (month, filed["reason"])
        for key in ("drift", "prediction_drift", "verdict"):
            assert filed[key] == logged[key], (month, key, filed["reason"], logged["reason"])
        assert filed["drift_share"] == pytest.approx(logged["drift_share"], abs=1e-9), month
        for a, b in zip(filed["features"], logged["features"], strict=True):
            assert a["feature"] == b["feature"] and a["drifted"] == b["drifted"], (month, a, b)
            if a["feature"] in ("__score__", "__prediction__"):
                if a["value"] != pytest.approx(b["value"], rel=1e-9, abs=1e-12):
                    score_gaps.append(f"{month} {a['feature']} file {a['value']} log {b['value']}")
                continue
            assert a["value"] == pytest.approx(b["value"], rel=1e-9, abs=1e-12), (month, a, b)
        fp, lp = filed["performance"], logged["performance"]
        assert fp["realised"] == pytest.approx(lp["realised"], rel=1e-9), month
        assert fp["breach"] == lp["breach"], (month, fp["reason"], lp["reason"])
        if fp["estimated"] != lp["estimated"]:
            f1f, f1l = fp["estimated"]["f1"], lp["estimated"]["f1"]
            score_gaps.append(f"{month} estimated f1 file {f1f} log {f1l}")
    print(f"\n[files] {len(checked)} files: the same drifted features as the log, window by window")
    assert not score_gaps, "score statistics differ between files and the log: " + "; ".join(
        score_gaps
    )


def test_second_run_is_idempotent_and_status_report_metrics(
    base: Path, worlds: dict[str, World], webhook: Webhook
) -> None:
    world = worlds["price_rise"]
    audits = _monitor_audits(base)
    assert audits == sum(len(w.results) for w in worlds.values())  # one per window
    again = flywheel(base, "-c", str(world.config), "monitor", "run", "--json")
    assert _json_lines(again.stdout) == []
    assert _monitor_audits(base) == audits
    assert len(webhook.received(world.name)) == world.hook_posts_after_run

    status = json.loads(
        flywheel(base, "-c", str(world.config), "monitor", "status", "--json").stdout
    )
    assert MODEL in status, status
    assert status[MODEL]["window"] == world.results[-1]["window"]
    assert status[MODEL]["alarm"] == world.results[-1]["alarm"]

    report = base / "r.html"
    flywheel(base, "-c", str(world.config), "monitor", "report", "--out", str(report))
    html = report.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith(("<!doctype html", "<html")), html[:200]
    assert "monthly_charges" in html

    latest = base / ".flywheel" / "monitoring" / "latest.json"
    assert latest.exists()
    alarm = json.loads(latest.read_text())["models"][MODEL]["alarm"]
    metrics = httpx.get(f"http://127.0.0.1:{world.port}/metrics").text
    assert f'flywheel_monitor_alarm{{model="{MODEL}"}} {float(alarm)}' in metrics, [
        line for line in metrics.splitlines() if "flywheel_monitor_alarm" in line
    ]


def test_webhook_gets_one_post_per_alarm_window(worlds: dict[str, World], webhook: Webhook) -> None:
    for world in worlds.values():
        alarms = [r["window"] for r in world.results if r["alarm"]]
        posts = webhook.received(world.name)
        print(f"\n[webhook] {world.name}: {len(alarms)} alarm window(s), {len(posts)} POST(s)")
        assert len(posts) == world.hook_posts_after_run
        assert [p["window"] for p in posts] == alarms
        for p in posts:
            assert p["model"] == MODEL and p["version"] == "1" and p["alarm"] is True, p
            assert MODEL in p["text"] and p["window"] in p["text"], p["text"]


# --------------------------------------------------------------------------- bad input


def _month_file(base: Path, world: World, name: str) -> tuple[pd.DataFrame, Path]:
    frame = next(iter(world.months.values())).copy()
    return frame, base / name


def test_bad_files_get_a_clear_error_or_a_clear_window(
    base: Path, worlds: dict[str, World]
) -> None:
    """A file missing a model column: exit 4 naming it; text in a numeric column: counted as
    invalid and named in the window's reason; an empty file: "insufficient data"; an
    unsupported file type: exit 4; extra columns: ignored."""
    world = worlds["control"]
    frame, missing = _month_file(base, world, "missing.parquet")
    frame.drop(columns=["monthly_charges"]).to_parquet(missing, index=False)
    out = flywheel(base, "monitor", "check", "--current", str(missing), code=4)
    assert "monthly_charges" in out.stderr + out.stdout

    typed = base / "typed.csv"
    bad = frame.assign(extra_column="ignored")
    bad["tenure_months"] = bad["tenure_months"].astype(object)
    bad.loc[:49, "tenure_months"] = "twelve"
    bad.to_csv(typed, index=False)
    empty = base / "empty.parquet"
    frame.head(0).to_parquet(empty, index=False)
    lines = _json_lines(
        flywheel(base, "monitor", "check", "--full", "--current", str(typed), str(empty)).stdout
    )
    assert [r["window"] for r in lines] == [str(typed), str(empty)]
    tenure = _feature(lines[0], "tenure_months")
    assert tenure["invalid"] == 50 and "tenure_months (50)" in lines[0]["reason"]
    assert "extra_column" not in {f["feature"] for f in lines[0]["features"]}
    assert lines[0]["performance"]["labelled"] == len(frame)  # `churned` gives the labels
    assert lines[1]["rows"] == 0 and lines[1]["status"] == "insufficient data"
    assert lines[1]["alarm"] is False and lines[1]["features"] == []

    text = base / "notes.txt"
    text.write_text("hello")
    out = flywheel(base, "monitor", "check", "--current", str(text), code=4)
    assert ".parquet or .csv" in out.stderr + out.stdout


def test_a_version_without_a_stored_reference_gets_one_from_its_holdout(
    base: Path, worlds: dict[str, World]
) -> None:
    """A version registered before monitoring (no reference.json): `monitor check` builds the
    reference from its run's holdout, re-derived from the snapshot, keeps it, and gives the
    same result as with the stored one."""
    world = worlds["new_contract"]
    frame, path = _month_file(base, world, "one-month.parquet")
    frame.to_parquet(path, index=False)
    before = _json_lines(
        flywheel(base, "monitor", "check", "--full", "--current", str(path)).stdout
    )
    stored = list((base / ".flywheel").rglob("reference.json"))
    assert stored, "registration stores the reference"
    for f in stored:  # as if registered before monitoring existed
        f.unlink()
    after = _json_lines(flywheel(base, "monitor", "check", "--full", "--current", str(path)).stdout)
    built = base / ".flywheel" / "monitoring" / "references" / MODEL / "1.json"
    assert built.exists()
    assert after[0]["reference"] == before[0]["reference"]
    assert after[0]["drifted_features"] == before[0]["drifted_features"]
    for a, b in zip(after[0]["features"], before[0]["features"], strict=True):
        assert a["feature"] == b["feature"] and a["value"] == pytest.approx(b["value"], rel=1e-9)


def test_a_rolling_reference_is_the_served_traffic_before_the_window(
    base: Path, worlds: dict[str, World]
) -> None:
    """`monitoring.reference: rolling:Nd`: the drift reference is the version's served traffic
    of the N days before the window (here: the three pre-drift months, logged minutes ago),
    and the price rise drifts against it; a first run, with nothing served before, keeps the
    holdout."""
    from flywheel.config import load_settings
    from flywheel.monitoring.decide import MonitorSettings, evaluate_window
    from flywheel.monitoring.monitor import _drift_reference
    from flywheel.monitoring.sources import load_model, log_batches
    from flywheel.monitoring.window import count_window
    from flywheel.workspace import Workspace

    world = worlds["price_rise"]
    url = f"sqlite:///{base / 'price_rise-predictions.db'}"
    ws = Workspace(load_settings(home=base / ".flywheel"))
    try:
        model = load_model(ws, "@champion")
        logged = pa.concat_tables(list(log_batches(url, model, None, None)))
        n = len(next(iter(world.months.values())))
        micros = logged.column("ts").cast(pa.int64()).to_numpy()
        # between the 3rd month's last row and the 4th's first: the log keeps ts as REAL
        # seconds, so the 4th month's own microseconds may round either side of it
        november = (float(micros[3 * n - 1]) + float(micros[3 * n])) / 2e6
        assert _drift_reference(ws, model, "rolling:1d", None, url) is model.reference
        rolling = _drift_reference(ws, model, "rolling:1d", november, url)
        assert rolling.rows == 3 * n and rolling.source.startswith("served traffic")
        window = count_window(rolling, [logged.slice(3 * n, n)])
        result = evaluate_window(rolling, window, "2025-11", MonitorSettings())
        assert "monthly_charges" in result.drifted_features, result.reason
    finally:
        ws.close()


def test_a_named_snapshot_can_be_the_reference(base: Path, worlds: dict[str, World]) -> None:
    """`--reference snapshot:<id>`: the snapshot's rows, scored by the model, are the
    reference (its target gives the reference metrics)."""
    world = worlds["new_contract"]
    frame = next(iter(world.months.values()))
    path = base / "snapshot-ref.parquet"
    frame.to_parquet(path, index=False)
    snapshots = json.loads(flywheel(base, "data", "list", "--json").stdout)
    snap = snapshots[0]["id"]
    out = flywheel(
        base, "monitor", "check", "--reference", f"snapshot:{snap}", "--current", str(path)
    )
    (line,) = _json_lines(out.stdout)
    assert line["reference"] == f"snapshot {snap}"
    assert line["status"] == "ok" and line["performance"]["reference"]["roc_auc"] > 0.5
    bad = flywheel(
        base,
        "monitor",
        "check",
        "--reference",
        "snapshot:snap-nope",
        "--current",
        str(path),
        code=3,
    )
    assert "snap-nope" in bad.stdout + bad.stderr
