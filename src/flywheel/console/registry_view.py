"""The Models view's data: registered models, their versions (aliases, metrics, gates), a
version's model card and lineage, and the audit ledger with filters.

Reads go through the registry's own helpers (:mod:`flywheel.registry._client`, MLflow's
client, ``mlflow-skinny`` in the serving install), imported when a route is first called,
so mounting the console imports no MLflow."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.errors import NotFound

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = ["audit_entries", "registered_models", "unknown_model", "version_detail", "versions"]

_TAGS = ("family", "task", "target", "dataset", "snapshot_id", "threshold", "approval", "gates")


def registered_models(ws: Workspace) -> list[dict[str, Any]]:
    """Every registered model with its aliases (the configured one first)."""
    from flywheel.registry._client import mlflow_errors

    with mlflow_errors("list registered models", ws):
        found = ws.client.search_registered_models()
    out = [
        {
            "name": m.name,
            "aliases": {a: str(v) for a, v in (m.aliases or {}).items()},
            "versions": max((int(v.version) for v in m.latest_versions or []), default=0),
            "configured": m.name == ws.settings.registry.model_name,
        }
        for m in found
    ]
    return sorted(out, key=lambda m: (not m["configured"], m["name"]))


def versions(ws: Workspace, name: str) -> list[dict[str, Any]]:
    """The versions of ``name``, newest first: aliases, the flywheel tags, the run's metrics."""
    from flywheel.registry._client import mlflow_errors, registered_aliases, versions_of

    with mlflow_errors(f"list versions of {name!r}", ws, name):
        client = ws.client
        aliases = registered_aliases(client, name)
        if aliases is None:
            raise unknown_model(ws, name)
        found = versions_of(client, name)
        metrics = {v.run_id: _run_metrics(client, v.run_id) for v in found if v.run_id}
    out = []
    for v in reversed(found):
        tags = dict(v.tags or {})
        out.append(
            {
                "version": str(v.version),
                "aliases": sorted(a for a, ver in aliases.items() if ver == str(v.version)),
                "created_at": _iso(v.creation_timestamp / 1000),
                "run_id": v.run_id,
                "tags": {k: tags[f"flywheel.{k}"] for k in _TAGS if f"flywheel.{k}" in tags},
                "metrics": metrics.get(v.run_id or "") or {},
            }
        )
    return out


def unknown_model(ws: Workspace, name: str) -> NotFound:
    """NotFound naming ``name`` and the models the registry holds."""
    from flywheel.registry._client import mlflow_errors

    with mlflow_errors("list registered models", ws):
        names = sorted(m.name for m in ws.client.search_registered_models())
    return NotFound(
        f"No registered model {name!r}; the registry holds: {', '.join(names) or 'none'}.",
        model=name,
        field="model",
    )


def version_detail(ws: Workspace, name: str, version: str) -> dict[str, Any]:
    """One version: its model card (Markdown), gate report, metrics, params and lineage."""
    from flywheel.registry._client import get_version, mlflow_errors

    with mlflow_errors(f"read {name} v{version}", ws, name):
        client = ws.client
        mv = get_version(client, name, version)
        run = client.get_run(mv.run_id) if mv.run_id else None
        gates = _run_json(client, mv.run_id, "gate_report.json") if mv.run_id else None
    return {
        "name": name,
        "version": str(mv.version),
        "card": mv.description or "",
        "gates": gates,
        "metrics": dict(run.data.metrics) if run else {},
        "params": dict(run.data.params) if run else {},
        "lineage": _lineage(ws, name, str(mv.version)),
    }


def _lineage(ws: Workspace, name: str, version: str) -> dict[str, Any]:
    from flywheel.errors import FlywheelError
    from flywheel.pipelines.lineage import lineage

    try:
        return lineage(ws, f"{name}/{version}")
    except FlywheelError as exc:
        return {"error": exc.message}


def _run_metrics(client: Any, run_id: str) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in client.get_run(run_id).data.metrics.items()}
    except Exception:  # a deleted run: the version still lists
        return {}


def _run_json(client: Any, run_id: str, path: str) -> Any:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, path, tmp)
            return json.loads(Path(local).read_text())
    except Exception:  # no such artifact (an older run)
        return None


def audit_entries(
    ws: Workspace,
    *,
    model: str | None = None,
    action: str | None = None,
    who: str | None = None,
    text: str | None = None,
    limit: int = 200,
) -> dict[str, Any]:
    """Ledger entries, newest first, filtered; and the actions and users seen (for the
    filter's choices)."""
    entries = ws.audit.entries(model or None)
    actions = sorted({e.action for e in entries})
    users = sorted({e.who for e in entries})
    found = [
        e.to_dict()
        for e in reversed(entries)
        if (not action or e.action == action)
        and (not who or e.who == who)
        and (not text or text.lower() in (e.reason or "").lower())
    ]
    return {"entries": found[:limit], "total": len(found), "actions": actions, "users": users}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")
