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


def _documented_exit_codes() -> set[int]:
    table = DOC[DOC.index("| exit code | meaning |") :].split("\n\n")[0]
    return {int(line.split("|")[1]) for line in table.splitlines()[2:]}


def test_every_error_class_exit_code_is_documented() -> None:
    import flywheel.errors as errors
    from flywheel.cli import AUDIT_CHAIN_BROKEN, INTERNAL_ERROR, INTERRUPTED

    codes = {getattr(errors, name).exit_code for name in errors.__all__} - {1}
    codes |= {AUDIT_CHAIN_BROKEN, INTERNAL_ERROR, INTERRUPTED}
    assert codes <= _documented_exit_codes()


def test_every_documented_exit_code_has_a_subprocess_test() -> None:
    tests = (Path(__file__).parents[1] / "e2e" / "test_exit_codes.py").read_text()
    untested = [c for c in sorted(_documented_exit_codes()) if f"def test_{c}_" not in tests]
    assert not untested, f"documented exit codes without a test in test_exit_codes.py: {untested}"
