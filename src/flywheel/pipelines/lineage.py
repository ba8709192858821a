"""Lineage: a model version, or one served prediction, traced back to where it came from.

    from flywheel.pipelines.lineage import lineage

    lineage(ws, "3")            # churn v3 (registry.model_name); also "v3", "churn/3", "@champion"
    lineage(ws, "fw-0a1b2c…")   # a prediction: the server's request id, or a client's id

Anything that is not a version reference is looked up in the prediction log (SQLite or
PostgreSQL): first as the server's request id, else as a client id exactly one prediction
carries (the rule feedback uses, :mod:`flywheel.predlog.feedback`). The answer is one
JSON-ready dict, the chain read backwards:

``request`` (when a request id: id, client id, time, protocol, rollout role, the version
that answered and any shadow that scored it, its latest label) → ``model``/``version``
(aliases, registration time, the ONNX file's sha256) → ``run`` (the MLflow run: params, a
few holdout metrics, the git commit, start time) → ``snapshot`` (id, sha256, rows, time
range, the source URL masked and its query, parent) → ``trigger`` (a retraining pipeline's
trigger and evidence, from its run record ``<home>/pipelines/runs/<id>.json``; a version
trained by hand says so) → ``pipeline_run``; and forward: ``rollouts`` (each rollout this
version took part in and how it ended, from the audit ledger and the rollout store),
``promoted_at`` (when it first became champion) and ``history`` (its registry entries in
the audit ledger). ``warnings`` lists links that disagree (a snapshot whose sha256 differs
from the one the version recorded, a pipeline record naming another run).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.config import mask_url
from flywheel.errors import FlywheelError, NotFound, UsageError
from flywheel.tracking import TAG

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from flywheel.config import Settings
    from flywheel.registry.audit import AuditEntry
    from flywheel.workspace import Workspace

__all__ = ["BY_HAND", "find_request", "lineage", "pipeline_runs_dir", "version_ref"]

BY_HAND = "by hand (flywheel train/run)"
# The few run metrics shown: the holdout's and the decision threshold.
_METRIC = re.compile(r"^(holdout_.+|decision_threshold)$")
# a version number (a 24-digit string is a request id that happens to be all digits)
_VERSION = re.compile(r"^v?(\d{1,9})$")
_ENDS = {
    "rollout_promote": "promoted",
    "rollout_rollback": "rolled_back",
    "rollout_abort": "aborted",
}
_CHAMPION_MOVES = ("promote", "approve", "rollback", "self_heal")
_REGISTRY_ACTIONS = ("register", "promote_requested", *_CHAMPION_MOVES)


# --------------------------------------------------------------------------- the target


def version_ref(target: str, default_model: str) -> tuple[str, str] | None:
    """``(model, version or @alias)`` when ``target`` names a version: ``3``, ``v3``,
    ``NAME/3``, ``NAME/v3``, ``@ALIAS``; None otherwise (a request id)."""
    text = target.strip()
    if text.startswith("@") and len(text) > 1:
        return default_model, text
    name, slash, tail = text.rpartition("/")
    match = _VERSION.match(tail)
    if match is None or (slash and not name):
        return None
    return (name or default_model), match.group(1)


def lineage(ws: Workspace, target: str) -> dict[str, Any]:
    """The lineage of a model version or of a logged prediction (see the module docstring);
    :class:`NotFound` when ``target`` is neither a registered version nor a logged id."""
    if not isinstance(target, str) or not target.strip():
        raise UsageError(
            f"Name a model version or a request id to trace, got {target!r}.", field="target"
        )
    settings = ws.settings
    ref = version_ref(target, settings.registry.model_name)
    request = None
    if ref is None:
        url = settings.serving.prediction_log_url or ""
        request = find_request(url, target.strip())
        if request is None:
            raise NotFound(
                f"{target.strip()!r} is neither a model version (VERSION, vN, NAME/VERSION, "
                f"@ALIAS) nor a request id or client id in the prediction log at "
                f"{mask_url(url)!r}. Fix: pass a version from `flywheel registry list`, or the "
                "request_id a prediction answered with (or the X-Request-ID its client sent).",
                target=target.strip(),
                searched=["registry versions", mask_url(url)],
            )
        ref = (request["model"], request["version"])
    return {"request": request, **_version_lineage(ws, *ref, request=request)}


# --------------------------------------------------------------------------- the prediction


def find_request(url: str, rid: str) -> dict[str, Any] | None:
    """The logged prediction ``rid`` names (a server request id, else a client id exactly
    one request carries), or None. Reads only: a missing SQLite log is not created. A
    client id several requests share is a :class:`UsageError` listing some of them."""
    from flywheel.predlog.stores import parse_url

    kind, target = parse_url(url)
    reader = _sqlite_rows if kind == "sqlite" else _pg_rows
    try:
        rows, label = reader(target, rid)
    except FlywheelError:
        raise
    except Exception as exc:  # the drivers' own errors, translated at the boundary
        from flywheel.predlog.records import PredictionLogError

        raise PredictionLogError(
            f"Cannot read the prediction log at {mask_url(url)!r}: {exc}. Check "
            "serving.prediction_log_url and that the database is up.",
            url=mask_url(url),
        ) from exc
    if not rows:
        return None
    ids = sorted({r[0] for r in rows})
    if len(ids) > 1:
        raise UsageError(
            f"Client id {rid!r} is carried by {len(ids)} predictions ({', '.join(ids[:5])}"
            f"{', …' if len(ids) > 5 else ''}); pass the server's request_id instead.",
            client_id=rid,
            request_ids=ids[:20],
        )
    return _request(rows, label)


_ROW_SQL = (
    "SELECT request_id, ts, model, version, protocol, role, client_id FROM prediction_log "
    "WHERE {col} = {mark} ORDER BY id"
)
_LABEL_SQL = (
    "SELECT label{cast}, received_at FROM prediction_feedback WHERE request_id = {mark} "
    "ORDER BY received_at DESC, id DESC LIMIT 1"
)


def _sqlite_rows(path: str, rid: str) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None]:
    import sqlite3

    if not Path(path).is_file():
        return [], None
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute(_ROW_SQL.format(col="request_id", mark="?"), (rid,)).fetchall()
        if not rows:
            rows = conn.execute(_ROW_SQL.format(col="client_id", mark="?"), (rid,)).fetchall()
        if len({r[0] for r in rows}) != 1:
            return rows, None
        label = conn.execute(_LABEL_SQL.format(cast="", mark="?"), (rows[0][0],)).fetchone()
        return rows, label
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # a log nothing was written to yet
            return [], None
        raise
    finally:
        conn.close()


def _pg_rows(conninfo: str, rid: str) -> tuple[list[tuple[Any, ...]], tuple[Any, ...] | None]:
    import psycopg

    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        exists = conn.execute("SELECT to_regclass('prediction_log')").fetchone()
        if exists is None or exists[0] is None:
            return [], None
        rows = conn.execute(_ROW_SQL.format(col="request_id", mark="%s"), (rid,)).fetchall()
        if not rows:
            rows = conn.execute(_ROW_SQL.format(col="client_id", mark="%s"), (rid,)).fetchall()
        if len({r[0] for r in rows}) != 1:
            return rows, None
        sql = _LABEL_SQL.format(cast="::text", mark="%s")
        return rows, conn.execute(sql, (rows[0][0],)).fetchone()


def _request(rows: list[tuple[Any, ...]], label: tuple[Any, ...] | None) -> dict[str, Any]:
    """One request's rows (a champion's, a shadow's): the answering one first."""
    answered = next((r for r in rows if r[5] != "shadow"), rows[0])
    request_id, ts, model, version, protocol, role, client_id = answered
    return {
        "id": request_id,
        "client_id": client_id,
        "ts": _iso(float(ts)),
        "protocol": protocol,
        "role": role or None,
        "model": model,
        "version": str(version),
        "shadows": [str(r[3]) for r in rows if r is not answered],
        "label": None if label is None else json.loads(label[0]),
        "label_ts": None if label is None else _iso(float(label[1])),
    }


# --------------------------------------------------------------------------- the version


def _version_lineage(
    ws: Workspace, name: str, ref: str, *, request: dict[str, Any] | None
) -> dict[str, Any]:
    from flywheel.registry._client import aliases_of, mlflow_errors

    with mlflow_errors(f"trace {name} {ref}", ws, name):
        mv = _registered(ws, name, ref, request)
        aliases = sorted(a for a, v in aliases_of(ws.client, name).items() if v == str(mv.version))
        run = _run(ws, mv)
    tags = dict(mv.tags or {})
    snapshot_id = tags.get(TAG["snapshot_id"]) or (run or {}).get("snapshot_id")
    snapshot = _snapshot(ws, snapshot_id, tags.get(TAG["snapshot_sha256"]))
    record = _pipeline_record(ws.settings, name, str(mv.version), mv.run_id)
    entries = ws.audit.entries(name)
    out: dict[str, Any] = {
        "model": name,
        "version": str(mv.version),
        "aliases": aliases,
        "registered_at": _iso(mv.creation_timestamp / 1000),
        "sha256": tags.get(TAG["onnx_sha256"]),
        "run": run,
        "snapshot": snapshot,
        "trigger": _trigger(record, entries, str(mv.version)),
        "pipeline_run": _without(record, "trigger"),
        "rollouts": _rollouts(ws, entries, str(mv.version), record),
        "promoted_at": _promoted_at(entries, str(mv.version)),
        "history": _history(entries, str(mv.version)),
    }
    out["warnings"] = _warnings(out, tags, record)
    return out


def _registered(ws: Workspace, name: str, ref: str, request: dict[str, Any] | None) -> ModelVersion:
    """The registered version ``ref`` (a number or ``@alias``) names."""
    from flywheel.registry._client import alias_version, get_version

    version = alias_version(ws.client, name, ref[1:]) if ref.startswith("@") else ref
    if version is None:
        raise NotFound(
            f"Model {name!r} has no version with alias {ref[1:]!r}. Fix: pass a version "
            "from `flywheel registry list`.",
            model=name,
            alias=ref[1:],
        )
    try:
        return get_version(ws.client, name, version)
    except NotFound as exc:
        if request is None:
            raise
        raise NotFound(
            f"Request {request['id']} was answered by {name} v{version}, which the registry "
            f"({mask_url(ws.tracking_uri)}) does not hold (served from a model folder, or "
            "another registry?).",
            model=name,
            version=version,
        ) from exc


def _run(ws: Workspace, mv: ModelVersion) -> dict[str, Any] | None:
    """The version's MLflow run: params, a few metrics, the git commit, when it started."""
    from mlflow.exceptions import MlflowException

    if not mv.run_id:
        return None
    try:
        run = ws.client.get_run(mv.run_id)
    except MlflowException as exc:
        return {"id": mv.run_id, "missing": f"the run cannot be read: {exc.message}"}
    info, data = run.info, run.data
    return {
        "id": info.run_id,
        "name": info.run_name,
        "status": info.status,
        "experiment_id": info.experiment_id,
        "started": _iso(info.start_time / 1000) if info.start_time else None,
        "params": dict(sorted(data.params.items())),
        "metrics": {k: v for k, v in sorted(data.metrics.items()) if _METRIC.match(k)},
        "git_commit": data.tags.get(TAG["git_commit"]),
        "snapshot_id": data.tags.get(TAG["snapshot_id"]),
    }


def _snapshot(ws: Workspace, snapshot_id: str | None, tagged_sha: str | None) -> dict[str, Any]:
    if not snapshot_id:
        return {"id": None, "sha256": tagged_sha, "missing": "the version names no snapshot"}
    try:
        m = ws.snapshot(snapshot_id)
    except NotFound as exc:
        return {"id": snapshot_id, "sha256": tagged_sha, "missing": exc.message}
    source = {k: (mask_url(v) if k == "url" else v) for k, v in m.source.items()}
    return {
        "id": m.id,
        "dataset": m.dataset,
        "sha256": m.sha256,
        "rows": m.rows,
        "created_at": m.created_at,
        "time_range": list(m.time_range) if m.time_range else None,
        "timestamp_column": m.timestamp_column,
        "source": source,
        "parent": m.parent,
        "contract_version": m.contract_version,
    }


# --------------------------------------------------------------------------- pipeline runs


def pipeline_runs_dir(settings: Settings) -> Path:
    """Where the retraining pipeline keeps one JSON record per run."""
    return settings.home / "pipelines" / "runs"


def _pipeline_record(
    settings: Settings, name: str, version: str, run_id: str | None
) -> dict[str, Any] | None:
    """The pipeline run that produced ``version`` (its run id preferred, the newest
    otherwise), or None when the version was trained by hand."""
    found: list[dict[str, Any]] = []
    folder = pipeline_runs_dir(settings)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a record being written, or not one
        if not isinstance(record, dict) or str(record.get("version")) != version:
            continue
        if record.get("model") not in (None, name):
            continue
        found.append({**record, "path": str(path)})
    if not found:
        return None
    found.sort(key=lambda r: (r.get("run_id") == run_id, str(_at(r.get("trigger")))))
    return found[-1]


def _at(trigger: Any) -> Any:
    return trigger.get("at") if isinstance(trigger, dict) else None


def _trigger(
    record: dict[str, Any] | None, entries: list[AuditEntry], version: str
) -> dict[str, Any]:
    if record is not None and isinstance(record.get("trigger"), dict):
        return dict(record["trigger"])
    registered = next(
        (e for e in entries if e.action == "register" and e.to_version == version), None
    )
    return {
        "kind": "manual",
        "reason": BY_HAND,
        "who": registered.who if registered else None,
        "at": registered.at if registered else None,
    }


def _without(record: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    return None if record is None else {k: v for k, v in record.items() if k != key}


# --------------------------------------------------------------------------- the ledger


def _detail(reason: str) -> dict[str, Any]:
    """The JSON evidence a rollout entry's reason ends with ({} when none)."""
    try:
        value = json.loads(reason.rsplit("\n", 1)[-1])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _rollouts(
    ws: Workspace, entries: list[AuditEntry], version: str, record: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Each rollout ``version`` took part in (as challenger or champion), oldest first."""
    found: dict[str, dict[str, Any]] = {}
    for e in entries:
        if not e.action.startswith("rollout_") or version not in (e.to_version, e.from_version):
            continue
        rid = _detail(e.reason).get("rollout")
        if not rid:
            continue
        item = found.setdefault(str(rid), _rollout_from_ledger(str(rid), e, version))
        item["ended_at"] = e.at if e.action in _ENDS else item["ended_at"]
        item["status"] = _ENDS.get(e.action, item["status"])
        item["outcome"] = e.reason.split("\n", 1)[0] if e.action in _ENDS else item["outcome"]
    if record and record.get("rollout_id") and str(record["rollout_id"]) not in found:
        rid = str(record["rollout_id"])
        found[rid] = {"id": rid, "role": "challenger", "strategy": None, "status": None}
        found[rid].update(outcome=None, started_at=None, ended_at=None)
    return [_with_store(ws, item) for item in found.values()]


def _rollout_from_ledger(rid: str, entry: AuditEntry, version: str) -> dict[str, Any]:
    detail = _detail(entry.reason)
    return {
        "id": rid,
        "role": "challenger" if entry.to_version == version else "champion",
        "strategy": detail.get("strategy"),
        "status": "running",
        "outcome": None,
        "started_at": entry.at if entry.action == "rollout_start" else None,
        "ended_at": None,
    }


def _with_store(ws: Workspace, item: dict[str, Any]) -> dict[str, Any]:
    """The rollout store's word on status and reason, where it still holds the rollout."""
    from flywheel.rollout.actions import store_of

    try:
        state = store_of(ws).get(item["id"])
    except FlywheelError:
        state = None
    if state is None:
        return item
    ended = not state.active
    return {
        **item,
        "strategy": state.strategy,
        "status": state.status,
        "outcome": state.reason
        if ended
        else f"in progress: step {state.step}, challenger {state.weight:g}%",
        "champion": state.champion,
        "challenger": state.challenger,
        "started_at": item["started_at"] or _iso(state.started_at),
        "ended_at": item["ended_at"] or (_iso(state.updated_at) if ended else None),
    }


def _promoted_at(entries: list[AuditEntry], version: str) -> str | None:
    """When ``version`` first became champion by a promotion (or an approval)."""
    return next(
        (e.at for e in entries if e.action in ("promote", "approve") and e.to_version == version),
        None,
    )


def _history(entries: list[AuditEntry], version: str) -> list[dict[str, Any]]:
    """The registry's entries about ``version``: registered, requested, became champion or
    stepped down."""
    return [
        {
            "at": e.at,
            "action": e.action,
            "who": e.who,
            "from": e.from_version,
            "to": e.to_version,
            "reason": e.reason.split("\n", 1)[0],
        }
        for e in entries
        if e.action in _REGISTRY_ACTIONS
        and (e.to_version == version or (e.action in _CHAMPION_MOVES and e.from_version == version))
    ]


def _warnings(
    out: dict[str, Any], tags: dict[str, str], record: dict[str, Any] | None
) -> list[str]:
    found = []
    snap, run = out["snapshot"], out["run"] or {}
    tagged = tags.get(TAG["snapshot_sha256"])
    if snap.get("missing"):
        found.append(f"snapshot {snap['id']}: {snap['missing']}")
    elif tagged and tagged != snap["sha256"]:
        found.append(f"snapshot {snap['id']} sha256 {snap['sha256']} != {tagged} on the version")
    if run.get("missing"):
        found.append(f"run {run['id']}: {run['missing']}")
    for key, have in (("run_id", run.get("id")), ("snapshot_id", snap.get("id"))):
        if record and record.get(key) and have and record[key] != have:
            found.append(f"pipeline run {record.get('id')} names {key} {record[key]}, not {have}")
    return found


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()
