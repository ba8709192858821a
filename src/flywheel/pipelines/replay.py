"""``flywheel replay``: advance the churn world day by day and let the loop run on its clock.

Each simulated day: the day's customers go to the server as prediction requests (the server's
data clock set to that day, so the log, the monitor's windows and the triggers run on the
simulation's time), the true outcomes come back as feedback once a billing period has closed
and the label delay has passed, the monitor judges the day's window, the triggers decide, and
a retrain (the same pipeline as ``flywheel retrain``) registers a challenger and starts its
rollout, which the server's rollout agent promotes or rolls back while the next days' traffic
flows. At the end: a timeline (HTML, with plots) of all of it.

Where the day's traffic comes from: an "oracle" copy of the world, simulated one billing
period ahead in ``<home>/replay/oracle.db`` (same seed, same scenarios, so the same rows;
a source-only scenario such as ``cancellation_tickets`` breaks the source and not the oracle), gives
each period's feature rows as of the period's first day and, once the period has closed, its
labels. The configured source (what ingest reads) only ever holds the days that have passed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.errors import RemoteError, UsageError
from flywheel.workspace import Workspace

__all__ = ["DayRecord", "ReplayOptions", "ReplayResult", "replay", "replay_scenarios"]

log = logging.getLogger("flywheel.pipelines.replay")

Progress = Callable[[str, int, int], None]
DAY = 86400.0
PROTOCOL_PATHS = {"rest": "/v1/predict", "mlflow": "/invocations"}
SELF_POLL_S = 0.25  # the rollout agent's poll in the server the replay starts itself


def _quiet(phase: str, done: int, total: int) -> None:
    return None


@dataclass
class ReplayOptions:
    days: int
    drift: list[str] = field(default_factory=list)  # NAME@DAY: DAY counted from the replay's start
    label_delay: int = 7  # days after a billing period closes before its labels come back
    url: str | None = None  # a running server; None: start one on this home
    protocol: str = "rest"  # rest | mlflow
    requests_per_day: int = 2000
    concurrency: int = 16
    monitor_every: int = 7  # run the monitor (and the triggers) every N days: a weekly job
    out: Path | None = None  # the timeline's path (default <home>/replay/timeline.html)


@dataclass
class DayRecord:
    day: str  # ISO date
    requests: int = 0
    errors: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # answers per version
    labels: int = 0  # labels posted this day
    champion: str | None = None
    trigger: dict[str, Any] | None = None
    retrain: dict[str, Any] | None = None
    wall_start: float = 0.0  # time.time() when the day began (maps ledger entries to days)


@dataclass
class ReplayResult:
    first_day: str
    last_day: str
    days: list[DayRecord]
    timeline: Path
    seconds: dict[str, float]  # wall time per part: traffic, feedback, monitor, retrain, ...
    retrains: int
    promotions: int
    rollbacks: int
    champion_before: str | None
    champion_after: str | None
    events: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "first_day": self.first_day,
            "last_day": self.last_day,
            "days": len(self.days),
            "requests": sum(d.requests for d in self.days),
            "errors": sum(d.errors for d in self.days),
            "retrains": self.retrains,
            "promotions": self.promotions,
            "rollbacks": self.rollbacks,
            "champion_before": self.champion_before,
            "champion_after": self.champion_after,
            "timeline": str(self.timeline),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def replay_scenarios(specs: list[str], first_day: int, start: dt.date) -> list[str]:
    """``NAME@DAY`` (days from the replay's first day) or ``NAME@YYYY-MM-DD`` -> the world's
    ``NAME@DAY`` (days from its start)."""
    from flywheel.simulate import parse_scenario

    out = []
    for spec in specs:
        name, _, when = spec.partition("@")
        if when.strip().isdigit():
            spec = f"{name.strip()}@{first_day + int(when)}"
        out.append(parse_scenario(spec, start).spec())
    return out


def _epoch(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()


# ---------------------------------------------------------------- the server
class _Server:
    """The server the traffic goes to: ``url``, or a ``flywheel serve`` started here."""

    def __init__(self, ws: Workspace, url: str | None) -> None:
        self.ws = ws
        self.proc: subprocess.Popen[bytes] | None = None
        token = ws.settings.admin_token
        self.token = token.get_secret_value() if token is not None else None
        labels = ws.settings.serving.labels_key
        self.labels_key = labels.get_secret_value() if labels is not None else None
        self.poll_s = ws.settings.rollout.poll_s if url is not None else SELF_POLL_S
        if url is None:
            self.url = self._start()
        else:
            self.url = url.rstrip("/")
            if self.token is None:
                raise UsageError(
                    "Replaying against --url needs the server's admin token (the replay sets "
                    "its data clock). Fix: set FLYWHEEL_ADMIN_TOKEN."
                )

    def _start(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.token = self.token or secrets.token_urlsafe(24)
        self.labels_key = self.labels_key or secrets.token_urlsafe(24)
        env = dict(os.environ)
        env.update(
            {
                "FLYWHEEL_HOME": str(self.ws.settings.home),
                "FLYWHEEL_ADMIN_TOKEN": self.token,
                "FLYWHEEL_SERVING__LABELS_KEY": self.labels_key,
                "FLYWHEEL_ROLLOUT__POLL_S": str(self.poll_s),
            }
        )
        log_path = self.ws.settings.home / "replay" / "serve.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flywheel", "serve", "--port", str(port), "--no-grpc"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RemoteError(
                    f"`flywheel serve` exited with {self.proc.returncode} before it was ready; "
                    f"see {log_path}."
                )
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return url
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RemoteError(f"`flywheel serve` was not ready within 90 s; see {log_path}.")

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"authorization": f"Bearer {self.token}", "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise RemoteError(
                f"{method} {path} answered {exc.code}: {exc.read().decode(errors='replace')}",
                status=exc.code,
            ) from None

    def labels_headers(self) -> dict[str, str]:
        return {"x-api-key": self.labels_key} if self.labels_key else {}

    def set_clock(self, at: float) -> None:
        self.admin("POST", "/admin/clock", {"at": at})

    def input_names(self, model: str) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/v2/models/{model}", timeout=10) as r:
            meta = json.loads(r.read())
        return [i["name"] for i in meta["inputs"]]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- traffic
async def _send(
    url: str,
    path: str,
    protocol: str,
    rows: list[dict[str, Any]],
    concurrency: int,
) -> list[tuple[str | None, str | None]]:
    """POST each row as one request; (request id, version) per row, (None, None) on error."""
    import aiohttp
    import orjson

    out: list[tuple[str | None, str | None]] = [(None, None)] * len(rows)
    key = "records" if protocol == "rest" else "dataframe_records"
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def one(i: int) -> None:
            body = orjson.dumps({key: [rows[i]]})
            try:
                async with session.post(path, data=body, headers=headers) as r:
                    await r.read()
                    if r.status < 400:
                        out[i] = (
                            r.headers.get("x-request-id"),
                            r.headers.get("flywheel-model-version"),
                        )
            except aiohttp.ClientError:
                pass

        queue = iter(range(len(rows)))

        async def worker() -> None:
            for i in queue:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def _post_feedback(server: _Server, items: list[tuple[str, int]]) -> int:
    accepted = 0
    for lo in range(0, len(items), 5000):
        chunk = items[lo : lo + 5000]
        request = urllib.request.Request(
            server.url + "/v1/feedback",
            data=json.dumps({"items": [{"request_id": r, "label": y} for r, y in chunk]}).encode(),
            method="POST",
            headers={"content-type": "application/json", **server.labels_headers()},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            accepted += int(json.loads(r.read())["accepted"])
    return accepted


# ---------------------------------------------------------------- the world
class _World:
    """The configured source (what ingest reads) and the oracle one period ahead."""

    def __init__(self, ws: Workspace, scenarios: list[str]) -> None:
        from flywheel.simulate import world_info

        self.ws = ws
        self.info = world_info(ws.settings)
        self.scenarios = sorted(set(self.info.scenarios) | set(scenarios))
        oracle = ws.settings.home / "replay" / "oracle.db"
        oracle.parent.mkdir(parents=True, exist_ok=True)
        oracle.unlink(missing_ok=True)  # rebuilt: the world may have new scenarios
        self.oracle_url = f"sqlite:///{oracle.as_posix()}"
        self.oracle_settings = ws.settings.model_copy(
            update={"source": ws.settings.source.model_copy(update={"url": self.oracle_url})}
        )
        self.oracle_last = -1
        self.source_last = self.info.last_day
        self.pools: dict[int, Any] = {}

    @property
    def start(self) -> dt.date:
        return self.info.start

    def day_number(self, day: dt.date) -> int:
        return (day - self.start).days

    def period_bounds(self, day: dt.date) -> tuple[dt.date, dt.date]:
        """(first day, first day of the next period): billing periods are calendar months."""
        first = day.replace(day=1)
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        return first, nxt

    def advance_source(self, through: dt.date) -> None:
        """The configured source holds every day up to ``through``."""
        from flywheel.simulate import simulate

        n = self.day_number(through) - self.source_last
        if n > 0:
            simulate(self.ws.settings, days=n, scenarios=self.scenarios)
            self.source_last += n

    def _advance_oracle(self, through: int) -> None:
        from flywheel.simulate import SOURCE_ONLY, simulate

        n = through - self.oracle_last
        if n <= 0:
            return
        # the world as it is: a scenario that breaks only the source's copy stays out
        world = [s for s in self.scenarios if s.partition("@")[0] not in SOURCE_ONLY]
        kwargs: dict[str, Any] = {"scenarios": world}
        if self.oracle_last < 0:
            kwargs.update(customers=self.info.customers, start=self.start)
        simulate(self.oracle_settings, days=n, **kwargs)
        self.oracle_last = through

    def pool(self, day: dt.date) -> Any:
        """The period's feature rows (as of its first day), its labels and churn days."""
        first, nxt = self.period_bounds(day)
        key = self.day_number(first)
        if key not in self.pools:
            import pandas as pd
            import sqlalchemy as sa

            self._advance_oracle(self.day_number(nxt) - 1)
            engine = sa.create_engine(self.oracle_url)
            try:
                with engine.connect() as conn:
                    frame = pd.read_sql_query(
                        sa.text(
                            "SELECT f.*, e.churn_day AS _churn_day FROM churn_features f "
                            "LEFT JOIN churn_events e ON e.customer_id = f.customer_id "
                            "WHERE f.observed_at >= :lo AND f.observed_at < :hi"
                        ),
                        conn,  # the oracle is SQLite: datetimes are ISO text
                        params={
                            "lo": first.isoformat(),
                            "hi": (first + dt.timedelta(days=1)).isoformat(),
                        },
                    )
            finally:
                engine.dispose()
            self.pools = {key: frame}  # one period at a time
        return self.pools[key]


# ---------------------------------------------------------------- the loop
@dataclass
class _Pending:
    label_day: dt.date
    items: list[tuple[str, int]]


def replay(
    ws: Workspace,
    options: ReplayOptions,
    *,
    progress: Progress = _quiet,
) -> ReplayResult:
    """Replay ``options.days`` days; see the module docstring."""
    from flywheel.pipelines.timeline import write_timeline

    if options.days < 1:
        raise UsageError("--days must be at least 1.", option="days")
    if options.protocol not in PROTOCOL_PATHS:
        raise UsageError(
            f"--protocol {options.protocol!r}: the replay sends over {', '.join(PROTOCOL_PATHS)}.",
            option="protocol",
        )
    _ensure_plan(ws)
    # labels come back up to a billing period plus the delay after the request: the monitor
    # re-reads that many recent windows for them (else early-month windows never see labels)
    m = ws.settings.monitoring
    m.label_horizon_windows = max(m.label_horizon_windows, 32 + options.label_delay)
    world = _World(ws, [])
    first = world.info.last_date + dt.timedelta(days=1)
    world.scenarios = sorted(
        set(world.scenarios)
        | set(replay_scenarios(options.drift, world.day_number(first), world.start))
    )
    model = ws.settings.registry.model_name
    champion_before = _champion(ws)
    if champion_before is None:
        raise UsageError(
            "There is no champion to serve. Fix: run `flywheel run` first (it trains, "
            "registers and promotes the first model)."
        )
    seconds: defaultdict[str, float] = defaultdict(float)
    records: list[DayRecord] = []
    pending: list[_Pending] = []
    t0 = time.perf_counter()
    server = _Server(ws, options.url)
    seconds["server start"] += time.perf_counter() - t0
    try:
        names = server.input_names(model)
        for i in range(options.days):
            day = first + dt.timedelta(days=i)
            progress(f"day {day.isoformat()}", i, options.days)
            rec = DayRecord(day=day.isoformat(), wall_start=time.time())
            records.append(rec)
            _one_day(ws, options, world, server, names, day, rec, pending, seconds)
            if (i + 1) % options.monitor_every == 0 or i + 1 == options.days:
                _judge(ws, world, day, rec, seconds)
                if rec.retrain is not None:
                    _wait_applied(ws, seconds)
            rec.champion = _champion(ws)
        t = time.perf_counter()
        world.advance_source(first + dt.timedelta(days=options.days - 1))
        seconds["simulate"] += time.perf_counter() - t
    finally:
        server.close()
    progress("timeline", options.days, options.days)
    t = time.perf_counter()
    events = _events(ws, records)
    out = options.out or ws.settings.home / "replay" / "timeline.html"
    result = ReplayResult(
        first_day=records[0].day,
        last_day=records[-1].day,
        days=records,
        timeline=out,
        seconds=dict(seconds),
        retrains=sum(1 for d in records if d.retrain and d.retrain.get("status") != "skipped"),
        promotions=sum(1 for e in events if e["action"] == "promote"),  # the alias moved
        rollbacks=sum(1 for e in events if e["action"] in ("rollout_rollback", "rollback")),
        champion_before=champion_before,
        champion_after=_champion(ws),
        events=events,
    )
    write_timeline(ws, result, out)
    result.seconds["timeline"] = time.perf_counter() - t
    _write_json(result, out.with_suffix(".json"))
    return result


def _ensure_plan(ws: Workspace) -> None:
    """A retrain's rollout plan for the simulated clock: steps judged on requests, not on
    wall-clock intervals (a simulated day lasts about a second). A configured plan wins."""
    r = ws.settings.retrain
    if r.rollout_plan is not None or r.rollout == "none":
        return
    plan = ws.settings.home / "replay" / "rollout-plan.yaml"
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_text(
        f"strategy: {r.rollout}\n"
        + ("steps: [10, 50, 100]\n" if r.rollout == "canary" else "")
        + "interval: 0s\nmin_requests: 200\n"
        + "guardrails:\n  max_score_psi: 0.25\n",
        encoding="utf-8",
    )
    r.rollout_plan = plan


def _one_day(
    ws: Workspace,
    options: ReplayOptions,
    world: _World,
    server: _Server,
    names: list[str],
    day: dt.date,
    rec: DayRecord,
    pending: list[_Pending],
    seconds: defaultdict[str, float],
) -> None:
    t = time.perf_counter()
    pool = world.pool(day)
    seconds["simulate"] += time.perf_counter() - t
    server.set_clock(_epoch(day) + 1.0)
    # labels whose time has come: posted first, stamped with this day
    t = time.perf_counter()
    due = [p for p in pending if p.label_day <= day]
    pending[:] = [p for p in pending if p.label_day > day]
    items = [item for p in due for item in p.items]
    if items:
        rec.labels = _post_feedback(server, items)
    seconds["feedback"] += time.perf_counter() - t
    # the day's requests: customers still with us today, drawn with a seeded generator
    t = time.perf_counter()
    n_day = world.day_number(day)
    churn = pool["_churn_day"]
    eligible = pool[churn.isna() | (churn >= n_day)]
    rng = np.random.default_rng([ws.settings.seed, n_day])
    take = rng.integers(0, len(eligible), options.requests_per_day)
    chosen = eligible.iloc[take]
    rows = chosen[names].astype(object).where(chosen[names].notna(), None).to_dict("records")
    answers = asyncio.run(
        _send(
            server.url,
            PROTOCOL_PATHS[options.protocol],
            options.protocol,
            rows,
            options.concurrency,
        )
    )
    labels = chosen[ws.settings.source.target].astype(int).tolist()
    seconds["traffic"] += time.perf_counter() - t
    versions: Counter[str] = Counter()
    answered: list[tuple[str, int]] = []
    for (rid, version), y in zip(answers, labels, strict=True):
        if rid is None:
            rec.errors += 1
            continue
        versions[version or "?"] += 1
        answered.append((rid, y))
    rec.requests = len(rows)
    rec.versions = dict(versions)
    if len(versions) > 1:  # a rollout is serving: its agent judges on its own (wall) clock,
        t = time.perf_counter()  # so give it two polls per simulated day to keep pace
        time.sleep(2 * server.poll_s)
        seconds["rollout wait"] += time.perf_counter() - t
    _, period_end = world.period_bounds(day)
    pending.append(_Pending(period_end + dt.timedelta(days=options.label_delay), answered))
    if day + dt.timedelta(days=1) == period_end:  # the period closed: the source learns it
        t = time.perf_counter()
        world.advance_source(day)
        seconds["simulate"] += time.perf_counter() - t


def _wait_logged(ws: Workspace, lo: float, hi: float, expected: int, timeout: float = 30.0) -> None:
    """Wait until the server's log writer has committed the day's answered requests (it
    writes in the background), so the monitor sees the whole day."""
    import sqlalchemy as sa

    from flywheel.config import sqlalchemy_url
    from flywheel.predlog.stores import TABLE

    engine = sa.create_engine(sqlalchemy_url(ws.settings.serving.prediction_log_url or ""))
    sql = sa.text(f"SELECT COUNT(*) FROM {TABLE} WHERE ts >= :lo AND ts < :hi AND role != 'shadow'")
    deadline = time.monotonic() + timeout
    try:
        while True:
            with engine.connect() as conn:
                n = int(conn.execute(sql, {"lo": lo, "hi": hi}).scalar_one())
            if n >= expected or time.monotonic() > deadline:
                if n < expected:
                    log.warning("the log holds %s of the day's %s answers", n, expected)
                return
            time.sleep(0.05)
    finally:
        engine.dispose()


def _wait_applied(ws: Workspace, seconds: defaultdict[str, float], timeout: float = 30.0) -> None:
    """After a retrain: wait until the server routes by the rollout it started (its agent
    has applied it and stored this replica's counts), so the next day's traffic meets the
    challenger. Without it, how many simulated days passed before the agent's next poll
    depended on the machine's speed: a day of traffic takes ~40 ms on a fast one."""
    from flywheel.rollout.actions import store_of

    t = time.perf_counter()
    store = store_of(ws)
    state = store.active(ws.settings.registry.model_name)
    deadline = time.monotonic() + timeout
    while state is not None and not store.replicas(state.id) and time.monotonic() < deadline:
        time.sleep(0.05)
    if state is not None and not store.replicas(state.id):
        log.warning("the server did not apply rollout %s within %g s", state.id, timeout)
    seconds["rollout wait"] += time.perf_counter() - t


def _judge(
    ws: Workspace, world: _World, day: dt.date, rec: DayRecord, seconds: defaultdict[str, float]
) -> None:
    """End of the day: one turn of the worker (the monitor's windows, then the triggers,
    then maybe a retrain) on the simulated clock."""
    from flywheel.pipelines.worker import tick

    now = _epoch(day + dt.timedelta(days=1))
    t = time.perf_counter()
    _wait_logged(ws, _epoch(day), now, rec.requests - rec.errors)
    seconds["log flush"] += time.perf_counter() - t
    result = tick(ws, now=now, before_retrain=lambda: world.advance_source(day), notify=False)
    for step, took in result.seconds.items():
        seconds["simulate" if step == "before retrain" else step] += took
    decision = result.decision
    if decision is not None and decision["fire"]:
        rec.trigger = decision
    elif decision is not None and decision["suppressed"]:
        rec.trigger = {"fired": False, "suppressed": decision["suppressed"]}
    if result.retrain is not None:
        rec.retrain = result.retrain


def _champion(ws: Workspace) -> str | None:
    from flywheel.registry._client import alias_version

    return alias_version(ws.client, ws.settings.registry.model_name, "champion")


def _events(ws: Workspace, records: list[DayRecord]) -> list[dict[str, Any]]:
    """The ledger's entries written during the replay, each placed on its simulated day."""
    starts = [d.wall_start for d in records]
    out = []
    for entry in ws.audit.entries():
        at = dt.datetime.fromisoformat(entry.at).timestamp()
        if at < starts[0]:
            continue
        i = max(0, int(np.searchsorted(starts, at, side="right")) - 1)
        out.append(
            {
                "day": records[i].day,
                "action": entry.action,
                "from": entry.from_version,
                "to": entry.to_version,
                "reason": entry.reason.splitlines()[0] if entry.reason else "",
            }
        )
    return out


def _write_json(result: ReplayResult, path: Path) -> None:
    body = {
        "summary": result.summary(),
        "days": [d.__dict__ for d in result.days],
        "events": result.events,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
