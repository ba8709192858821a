"""The CLI and its docs cannot drift apart: every command and option is documented."""

from __future__ import annotations

from pathlib import Path

import typer.main

from flywheel.cli import app

DOC = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()


def _commands() -> list[tuple[str, object]]:
    group = typer.main.get_command(app)
    found: list[tuple[str, object]] = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        if subs:
            found += [(f"{name} {sub}", c) for sub, c in subs.items()]
        else:
            found.append((name, cmd))
    return found


def test_every_command_is_in_the_reference() -> None:
    missing = [name for name, _ in _commands() if f"`flywheel {name}" not in DOC]
    assert not missing, f"commands missing from docs/cli.md: {missing}"


def test_every_option_has_help_text() -> None:
    bare = [
        f"{name} {param.name}"
        for name, cmd in _commands()
        for param in cmd.params  # type: ignore[attr-defined]
        if not getattr(param, "help", None) and param.param_type_name == "option"
    ]
    assert not bare, f"options without help: {bare}"
