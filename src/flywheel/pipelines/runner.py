"""The retraining pipeline's local runner machinery: the run record, transient errors, retries.

A pipeline run is one JSON record, ``<home>/pipelines/runs/<id>.json``, written atomically
(a temporary file, then ``os.replace``), so a process killed at any point leaves the last
complete record. :func:`is_transient` tells a failure worth retrying (a database locked or
down, an object store or tracking server unreachable) from one that is not (a contract
violation, a failed gate, a bad setting); :func:`call_with_retries` retries the former with
exponential backoff. Nothing here knows the steps: :mod:`flywheel.pipelines.retrain` does.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from flywheel.errors import ConfigError, ContractViolation, GateFailed, NotFound, UsageError

__all__ = [
    "FINAL",
    "PipelineRun",
    "StepRecord",
    "all_runs",
    "call_with_retries",
    "is_transient",
    "runs_dir",
]

T = TypeVar("T")

# status of a run: running (or killed while running) | failed | gated | finished
FINAL = ("gated", "finished", "skipped")  # skipped: an automatic trigger, no new data
# words in a driver's or server's message that mean "try again later"
_TRANSIENT_WORDS = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "connection refused",
    "could not connect",
    "connection reset",
    "connection aborted",
    "server closed the connection",
    "connection timed out",
    "timed out",
    "temporarily unavailable",
    "too many connections",
    "the database system is starting up",
    "the database system is shutting down",
    "max retries exceeded",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
)
# class names of transient errors in libraries imported only when used (requests, urllib3,
# botocore, aiohttp): matched by name so that this module imports none of them
_TRANSIENT_CLASSES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ConnectTimeout",
    "ReadTimeout",
    "ProtocolError",
    "NewConnectionError",
    "DisconnectionError",
}
# MLflow error codes of a tracking server that is overloaded or down
_TRANSIENT_MLFLOW_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
# error classes (by name, in the MRO) whose message is worth reading for the words above:
# DB-API drivers (sqlite3, ADBC, psycopg), SQLAlchemy, MLflow, HTTP clients, OS errors
_WORDY_CLASSES = {
    "DatabaseError",
    "OperationalError",
    "InterfaceError",
    "MlflowException",
    "HTTPError",
    "ClientError",
    "RequestException",
    "OSError",
}
_NEVER = (ContractViolation, GateFailed, ConfigError, UsageError, NotFound)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _one_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):  # refused, reset, socket timeouts
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    module = type(exc).__module__
    if names & _TRANSIENT_CLASSES:
        return True
    if module.startswith("psycopg") and "OperationalError" in names:  # the server, not SQL
        return True
    if getattr(exc, "connection_invalidated", False):  # SQLAlchemy: the connection dropped
        return True
    code = getattr(exc, "error_code", None)
    if module.startswith("mlflow") and code in _TRANSIENT_MLFLOW_CODES:
        return True
    if module.startswith("flywheel") or not names & _WORDY_CLASSES:
        return False  # ours quote the cause (judged on its own); others are not I/O
    text = str(exc).lower()
    return any(word in text for word in _TRANSIENT_WORDS)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is worth retrying: a database locked,
    busy or unreachable, a connection refused, reset or timed out, a tracking server or
    object store that answered 5xx or could not be reached. A contract violation, a failed
    gate, a bad setting or a missing object never is."""
    chain = list(_chain(exc))
    if any(isinstance(e, _NEVER) for e in chain):
        return False
    return any(_one_transient(e) for e in chain)


def call_with_retries(
    fn: Callable[[], T],
    *,
    retries: int,
    backoff_s: float,
    retryable: Callable[[BaseException], bool] = is_transient,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``; on a ``retryable`` error, up to ``retries`` more tries, waiting
    ``backoff_s``, then twice as long each time. ``on_retry(attempt, wait, exc)`` is told
    before each wait. The last error (or any other) propagates."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if attempt > retries or not retryable(exc):
                raise
            wait = backoff_s * 2 ** (attempt - 1)
            if on_retry is not None:
                on_retry(attempt, wait, exc)
            sleep(wait)


# --------------------------------------------------------------------------- the record


def runs_dir(home: Path) -> Path:
    """``<home>/pipelines/runs``: one JSON record per pipeline run."""
    return home / "pipelines" / "runs"


@dataclass
class StepRecord:
    status: str = "pending"  # pending | running | done | failed | gated | skipped
    output: dict[str, Any] | None = None
    attempts: int = 0
    error: str | None = None
    seconds: float = 0.0  # the step's own time, all attempts together
    started_at: float | None = None  # wall clock of the last attempt
    ended_at: float | None = None


@dataclass
class PipelineRun:
    """One run of the retraining pipeline, as stored (see the module docstring)."""

    id: str
    model: str
    trigger: dict[str, Any]  # kind, at, reason, evidence, key
    created_at: float  # wall clock
    at: float  # the data clock when it was triggered
    status: str = "running"  # running | failed | gated | finished
    steps: dict[str, StepRecord] = field(default_factory=dict)
    snapshot_id: str | None = None
    run_id: str | None = None  # the MLflow training run
    version: str | None = None
    rollout_id: str | None = None
    error: dict[str, Any] | None = None  # kind, message, step: why it failed or was gated
    finished_at: float | None = None
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str | None:
        return self.trigger.get("key")

    @property
    def done(self) -> bool:
        """Finished or gated: nothing left to resume."""
        return self.status in FINAL

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        body["steps"] = {name: asdict(step) for name, step in self.steps.items()}
        return body

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> PipelineRun:
        known = {f.name for f in fields(cls)} - {"path", "steps"}
        steps = {name: StepRecord(**step) for name, step in (data.get("steps") or {}).items()}
        return cls(**{k: v for k, v in data.items() if k in known}, steps=steps, path=path)

    @classmethod
    def load(cls, home: Path, run_id: str) -> PipelineRun:
        """The stored run; :class:`NotFound` naming the folder and what it holds."""
        path = runs_dir(home) / f"{run_id}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            held = sorted(p.stem for p in runs_dir(home).glob("*.json"))[-5:]
            raise NotFound(
                f"No pipeline run {run_id!r} in {str(runs_dir(home))!r}; the latest are "
                f"{held or 'none'}. Use an id that `flywheel retrain` printed.",
                run=run_id,
            ) from None
        return cls.from_dict(data, path)

    def save(self, home: Path) -> Path:
        """Write the record atomically; returns its path."""
        folder = runs_dir(home)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.id}.json"
        tmp = folder / f".{self.id}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)
        self.path = path
        return path

    def step(self, name: str) -> StepRecord:
        return self.steps.setdefault(name, StepRecord())


def all_runs(home: Path) -> list[PipelineRun]:
    """Every readable record, oldest first (a record being written is skipped)."""
    found = []
    for path in sorted(runs_dir(home).glob("*.json")):
        try:
            found.append(PipelineRun.from_dict(json.loads(path.read_text("utf-8")), path))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda r: (r.created_at, r.id))
