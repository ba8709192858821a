"""``flywheel lineage TARGET``: a model version, or one served prediction, back to its
trigger, snapshot and run (:mod:`flywheel.pipelines.lineage`), as a tree or as JSON."""

from __future__ import annotations

from typing import Annotated, Any

import typer

__all__ = ["lineage"]


def lineage(
    target: Annotated[
        str,
        typer.Argument(
            help="A model version (3, v3, NAME/3, @champion) or a prediction's request id "
            "(the server's request_id, or the client's X-Request-ID)."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (for scripts) instead of a tree.")
    ] = False,
) -> None:
    """Where a version or a prediction came from: request → version → MLflow run (params,
    git commit) → snapshot (sha256, source query, time range) → trigger; and its rollouts."""
    from flywheel.cli import _emit_json, _workspace, console
    from flywheel.pipelines.lineage import lineage as trace

    found = trace(_workspace(), target)
    if as_json:
        _emit_json(found)
        return
    console.print(_tree(found))


def _tree(found: dict[str, Any]) -> Any:
    """The chain read backwards, one branch per link: request, version (its rollouts and
    ledger entries), run, snapshot, trigger."""
    from rich.tree import Tree

    request = found["request"]
    what = "request " + request["id"] if request else _name(found)
    root = Tree(_line("lineage", f"of {what}", "bold"))
    if request:
        root.add(_request_line(request))
    version = root.add(_version_line(found))
    for rollout in found["rollouts"]:
        version.add(_rollout_line(rollout))
    for event in found["history"]:
        version.add(
            _line("ledger", f"{event['at']} {event['action']} by {event['who']}: {event['reason']}")
        )
    _run_node(root, found["run"])
    _snapshot_node(root, found["snapshot"])
    root.add(_trigger_line(found["trigger"], found["pipeline_run"]))
    for warning in found["warnings"]:
        root.add(_line("warning", warning, "yellow"))
    return root


def _line(kind: str, body: str, style: str = "cyan") -> Any:
    """``kind`` styled, then ``body`` as plain text (ids, reasons and queries may hold
    brackets that rich would read as markup)."""
    from rich.text import Text

    return Text.assemble((f"{kind:<9}", style), body)


def _name(found: dict[str, Any]) -> str:
    return f"{found['model']} v{found['version']}"


def _request_line(r: dict[str, Any]) -> Any:
    client = f" (client id {r['client_id']})" if r["client_id"] else ""
    role = f", {r['role']}" if r["role"] else ""
    shadows = f"; shadow v{', v'.join(r['shadows'])} scored it too" if r["shadows"] else ""
    label = f"; label {r['label']!r} at {r['label_ts']}" if r["label_ts"] else ""
    return _line(
        "request",
        f"{r['id']}{client} at {r['ts']} over {r['protocol']}{role}: "
        f"answered by {r['model']} v{r['version']}{shadows}{label}",
    )


def _version_line(found: dict[str, Any]) -> Any:
    aliases = f" [{', '.join(found['aliases'])}]" if found["aliases"] else ""
    champion = ""
    if found["promoted_at"]:
        # "since" only while it still is: after a rollback or a newer promotion, say when
        # it first became champion (the history lists every move)
        current = "champion" in (found["aliases"] or [])
        champion = f", {'champion since' if current else 'first champion'} {found['promoted_at']}"
    return _line(
        "version",
        f"{_name(found)}{aliases}, registered {found['registered_at']}"
        f"{champion}; onnx sha256 {found['sha256'] or '?'}",
    )


def _rollout_line(r: dict[str, Any]) -> Any:
    outcome = f": {r['outcome']}" if r.get("outcome") else ""
    return _line(
        "rollout",
        f"{r['id']} {r.get('strategy') or '?'} as {r['role']}, {r.get('status') or '?'}{outcome}",
    )


def _run_node(parent: Any, run: dict[str, Any] | None) -> Any:
    if run is None:
        return parent.add(_line("run", "none recorded"))
    if run.get("missing"):
        return parent.add(_line("run", f"{run['id']}: {run['missing']}"))
    node = parent.add(
        _line(
            "run",
            f"{run['id']} {run['name']} ({run['status']}, started {run['started']}); "
            f"git commit {run['git_commit'] or 'not recorded'}",
        )
    )
    node.add(_line("params", ", ".join(f"{k}={v}" for k, v in run["params"].items()), ""))
    node.add(_line("metrics", ", ".join(f"{k}={v:.4g}" for k, v in run["metrics"].items()), ""))
    return node


def _snapshot_node(parent: Any, snap: dict[str, Any]) -> Any:
    if snap.get("missing"):
        return parent.add(_line("snapshot", f"{snap['id']}: {snap['missing']}"))
    span = " → ".join(snap["time_range"]) if snap["time_range"] else "no time column"
    node = parent.add(
        _line(
            "snapshot",
            f"{snap['id']} sha256 {snap['sha256']}, {snap['rows']:,} rows, {span}; "
            f"parent {snap['parent'] or 'none'}",
        )
    )
    source = snap["source"]
    what = source.get("query") or source.get("file") or "?"
    where = source.get("url") or source.get("file") or "?"
    node.add(_line("source", f"{where} ({source.get('mode')}): {what}", ""))
    return node


def _trigger_line(trigger: dict[str, Any], run: dict[str, Any] | None) -> Any:
    if run is None:
        who = f" by {trigger['who']}" if trigger.get("who") else ""
        return _line("trigger", f"{trigger['reason']}{who}")
    return _line(
        "trigger",
        f"{trigger.get('kind')} at {trigger.get('at')}: {trigger.get('reason')}; "
        f"pipeline run {run.get('id')} ({run.get('status')})",
    )
