"""``flywheel rollout ...``: start, watch and steer a rollout (docs/rollouts.md).

Run in the serving folder, the commands act on the rollout state in the registry's
database (the same functions as the admin routes), and every server follows within
``rollout.poll_s``; with ``--url`` they call a remote server's admin routes with the bearer
token from ``FLYWHEEL_ADMIN_TOKEN``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flywheel.errors import DataError, FlywheelError, RemoteError, UsageError

if TYPE_CHECKING:
    from flywheel.workspace import Workspace

__all__ = ["rollout_app"]

rollout_app = typer.Typer(
    help="Shadow, canary, A/B and blue-green rollouts of a challenger version.",
    no_args_is_help=True,
)


def _http_url(value: str | None) -> str | None:
    """--url must be http(s)://host[:port]: a malformed one is a usage error (exit 2), not a
    crash (``notaurl`` exited 70) nor an unreachable server (``127.0.0.1:8080`` exited 12)."""
    from urllib.parse import urlsplit

    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a URL ({exc}).") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter(
            f"{value!r} is not an http(s) URL of a server, such as http://127.0.0.1:8080."
        )
    return value


Url = Annotated[
    str | None,
    typer.Option(
        help="A remote server (http://host:8080): its admin routes, with the token "
        "from FLYWHEEL_ADMIN_TOKEN.",
        callback=_http_url,
    ),
]


def _nonblank_reason(value: str) -> str:
    """An empty or blank --reason is a usage error (exit 2), as a missing one is: checked
    here, before a remote server could answer it as a bad body (exit 4)."""
    if not value.strip():
        raise typer.BadParameter("a reason is required (every rollout change is audited).")
    return value


Reason = Annotated[
    str,
    typer.Option(help="Why (recorded in the audit log; not empty).", callback=_nonblank_reason),
]


def _remote(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import urllib.error
    import urllib.request

    from flywheel.cli import _settings

    token = _settings().admin_token
    if token is None:
        raise UsageError("--url needs the admin token: set FLYWHEEL_ADMIN_TOKEN.", field="url")
    request = urllib.request.Request(
        url.rstrip("/") + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {token.get_secret_value()}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise _answered(f"{url}{path}", exc.code, exc.read()) from exc
    except OSError as exc:
        raise RemoteError(f"Cannot reach {url}: {exc}", url=url) from exc


class Strategy(StrEnum):
    """A malformed --strategy is a usage error (exit 2), as any option's bad value; the
    plan's own check (flywheel.rollout.plan.STRATEGIES) stays out of the CLI's start-up."""

    canary = "canary"
    shadow = "shadow"
    ab = "ab"
    bluegreen = "bluegreen"


def _serving_workspace() -> Workspace:
    """The workspace of the folder `flywheel serve` runs in; NotFound (exit 3) where there is
    no registry (a command run in the wrong folder would otherwise create an empty one and
    say "no rollout yet")."""
    from flywheel.cli import _workspace
    from flywheel.errors import NotFound

    ws = _workspace()
    url = ws.settings.registry.audit_url or ""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise NotFound(
            f"No registry here: {ws.settings.home} holds no audit.db. Run `flywheel rollout` "
            "in the folder `flywheel serve` runs in, or pass --url http://HOST:PORT for a "
            "running server.",
            field="home",
        )
    return ws


def _answered(where: str, status: int, body: bytes) -> FlywheelError:
    """The server's error as the same error (and exit code) the command has locally: a
    second rollout exits 10, no such version 3, a bad plan or body 4, whether local or --url.
    An error shape or kind this CLI does not know stays a RemoteError (exit 12)."""
    try:
        error = json.loads(body)["error"]
        kind, message, details = error["kind"], str(error["message"]), dict(error["details"])
    except (ValueError, KeyError, TypeError):
        text = body.decode(errors="replace")[:500]
        return RemoteError(f"{where} answered {status}: {text}", status=status)
    cls = _error_kinds().get(kind)
    if cls is None:
        return RemoteError(f"{where} answered {status}: {message}", status=status, kind=kind)
    details = {k: v for k, v in details.items() if k != "message"}
    return cls(f"{message} ({where} answered {status})", **{**details, "status": status})


def _error_kinds() -> dict[str, type[FlywheelError]]:
    """Every error class by its kind (the server's input errors, not loaded here, are
    data errors: exit 4)."""
    kinds: dict[str, type[FlywheelError]] = {
        k: DataError for k in ("invalid_input", "bad_request", "too_many_rows")
    }
    todo = list(FlywheelError.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        kind = cls.__dict__.get("kind")  # its own, not one inherited
        if kind is not None and cls is not RemoteError:
            kinds.setdefault(kind, cls)
    return kinds


def _show(state: dict[str, Any], verb: str) -> None:
    from flywheel.cli import console, err_console

    for warning in (state.get("evidence") or {}).get("warnings") or []:
        err_console.print(f"[yellow]warning[/]: {warning}", highlight=False)
    console.print(
        f"[green]{verb}[/]: rollout {state['id']} ({state['strategy']} of v{state['challenger']} "
        f"against v{state['champion']}): {state['status']}, challenger {state['weight']:g}%"
        + (f" — {state['reason']}" if state.get("reason") else "")
    )


def _plan_fields(path: Path) -> dict[str, Any]:
    """A plan file's mapping, unvalidated (DataError, exit 4, when it is not one)."""
    import yaml

    if not path.is_file():
        raise DataError(f"Rollout plan {str(path)!r} does not exist.", field="plan")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML: {exc}", field="plan") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} must be a mapping of plan fields.", field="plan")
    return data


@rollout_app.command("start")
def start(
    plan: Annotated[
        Path | None, typer.Argument(help="A rollout plan (YAML); or use the flags below.")
    ] = None,
    challenger: Annotated[str | None, typer.Option(help="The version to roll out.")] = None,
    strategy: Annotated[
        Strategy | None, typer.Option(help="The strategy (default canary).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (audited).")] = None,
    url: Url = None,
) -> None:
    """Start a rollout of a challenger against the champion."""
    from flywheel.rollout.plan import load_plan

    if plan is None and challenger is None:
        raise UsageError("Pass a plan file or --challenger VERSION.", field="challenger")
    if plan is not None and challenger is None and strategy is None:
        parsed = load_plan(plan)  # its errors name the file
    else:
        # the file's fields as written, the flags over them, then one validation: validating
        # the file first would demand its challenger and fill its strategy's defaults (a
        # canary's steps), which another --strategy then refuses
        data: dict[str, Any] = {} if plan is None else _plan_fields(plan)
        if challenger is not None:
            data["challenger"] = challenger
        if strategy is not None:
            data["strategy"] = strategy.value
        flags = " with --challenger/--strategy"
        parsed = load_plan(data, "the plan" + flags if plan is None else f"{plan}{flags}")
    if url is not None:
        body = {"plan": parsed.model_dump(exclude_unset=True, mode="json"), "reason": reason}
        _show(_remote(url, "POST", "/admin/rollout/start", body), "started")
        return
    from flywheel.rollout import actions

    _show(actions.start(_serving_workspace(), parsed, reason=reason).to_dict(), "started")


@rollout_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: Url = None,
) -> None:
    """The active (or last) rollout: weights, per-arm counts, checks and the test's evidence."""
    from flywheel.cli import console

    if url is not None:
        out = _remote(url, "GET", "/admin/rollout")
    else:
        from flywheel.rollout.controller import describe

        out = describe(_serving_workspace())
    if as_json:
        console.print_json(json.dumps(out, default=str))
        return
    _print_status(out)


def _progress(state: dict[str, Any]) -> str:
    """Where the step stands: "step 2 of 4 (25%): 40 s of its 60 s interval, 200 requests
    per arm, inconclusive in 7160 s" (as Argo Rollouts' status shows the step)."""
    import time

    plan = state.get("plan") or {}
    steps = plan.get("steps") or []
    where = f"step {state['step'] + 1}" + (f" of {len(steps)}" if steps else "")
    elapsed = max(0.0, time.time() - float(state["step_started_at"]))
    text = (
        f"{where} ({state['weight']:g}%): {elapsed:.0f} s of its {plan.get('interval', 0):g} s "
        f"interval, {plan.get('min_requests', 0)} requests per arm"
    )
    deadline = plan.get("step_deadline")
    if deadline and state.get("status") == "running":
        text += f", inconclusive in {max(0.0, float(deadline) - elapsed):.0f} s"
    return text


def _print_status(out: dict[str, Any]) -> None:
    from rich.table import Table

    from flywheel.cli import console

    state = out.get("rollout")
    if state is None:
        console.print(f"{out['model']}: no rollout yet")
        return
    _show(state, "rollout")
    if state.get("status") in ("running", "paused"):
        console.print(f"  {_progress(state)}")
    weights = out.get("weights", {})
    table = Table("arm", "weight %", "requests", "errors", "p99 ms", title="this step")
    for arm, figures in (out.get("arms") or {}).items():
        p99 = figures.get("latency_p99_ms")
        table.add_row(
            arm,
            f"{weights.get(arm, 0):g}",
            str(figures["requests"]),
            str(figures["errors"]),
            "-" if p99 is None else f"{p99:.1f}",
        )
    console.print(table)
    analysis = out.get("analysis") or {}
    for check in analysis.get("checks", []):
        colour = {"ok": "green", "failed": "red"}.get(check["status"], "yellow")
        console.print(f"  [{colour}]{check['status']:7}[/] {check['name']}: {check['detail']}")
    test = analysis.get("test")
    if test:

        def num(key: str, spec: str = ".4g") -> str:  # JSON's null: no estimate, no bound yet
            return "n/a" if test.get(key) is None else format(test[key], spec)

        n = f"n = {test['n_challenger']} challenger, {test['n_champion']} champion"
        units = "answers" if test["metric"] in ("error_rate", "latency_ms") else "labelled outcomes"
        if not test.get("n_challenger") and not test.get("n_champion"):
            console.print(f"  test on {test['metric']}: no {units} yet ({n})")
        elif test.get("low") is None or test.get("high") is None:
            console.print(
                f"  test on {test['metric']}: challenger {num('challenger')} vs champion "
                f"{num('champion')}, too few {units} for an interval yet, {n}"
            )
        else:  # (the interval's bracket escaped: "[n/a, n/a]" was read as markup, and lost)
            console.print(
                f"  test on {test['metric']}: challenger {num('challenger')} vs champion "
                f"{num('champion')}, interval of the difference \\[{num('low')}, "
                f"{num('high')}], p = {num('p_value', '.3g')}, {n}"
            )
    if "replicas_silent" not in out:
        return  # an ended rollout
    alive, silent = out.get("replicas") or [], out.get("replicas_silent") or []
    if alive:
        console.print(f"  servers reporting: {', '.join(alive)}")
    else:
        console.print(
            "  [yellow]no server has written counts for this rollout in the last seconds: "
            "is `flywheel serve` running on this registry? (one that just started or is still "
            "loading the challenger reports within a few seconds)[/]"
        )
    if silent:
        console.print(f"  [dim]silent (stopped?): {', '.join(silent)}[/]")


def _action(name: str, doc: str) -> None:
    def command(reason: Reason, url: Url = None) -> None:
        if url is not None:
            _show(_remote(url, "POST", f"/admin/rollout/{name}", {"reason": reason}), name)
            return
        from flywheel.rollout import actions

        _show(getattr(actions, name)(_serving_workspace(), reason=reason).to_dict(), name)

    command.__doc__ = doc
    rollout_app.command(name)(command)


_action("pause", "Hold the rollout at its current weights (no step advances).")
_action(
    "resume",
    "Resume a paused rollout (the step's clock restarts; an A/B test paused at max_requests "
    "gets max_requests more per arm).",
)
_action("promote", "Promote the challenger now (through the registry; approval if required).")
_action("abort", "Stop the rollout: the champion takes all traffic again.")
_action("switch", "Blue-green: send all traffic to the other version (run again to switch back).")
