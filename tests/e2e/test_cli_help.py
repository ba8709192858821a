"""`flywheel --help` as a user reads it in an 80-column terminal: each command's summary in
the command lists is wrapped as one paragraph (the docstrings' own line breaks made ragged
lines), for the top level and for the sub-command groups."""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import FLYWHEEL_BIN, newcomer_env


def _commands_panel(cwd: Path, *group: str) -> list[str]:
    proc = subprocess.run(
        [FLYWHEEL_BIN, *group, "--help"],
        cwd=cwd, env=newcomer_env({"COLUMNS": "80"}), capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    panel = proc.stdout.split("Commands ")[1].splitlines()[1:]
    return [line for line in panel if line.startswith("│")]


@pytest.mark.parametrize("group", [(), ("rollout",), ("monitor",), ("registry",)])
def test_command_summaries_wrap_as_one_paragraph(tmp_path: Path, group: tuple[str, ...]) -> None:
    rows = _commands_panel(tmp_path, *group)
    assert rows, "no command list"
    start = len(re.match(r"│ \S+\s+", rows[0]).group())  # type: ignore[union-attr]
    room = len(rows[0]) - 2 - start  # the summary column: up to "│" and the space before it
    entries: list[list[str]] = []
    for row in rows:
        name, text = row[2:start].strip(), row[start:-1].rstrip()
        if name:
            entries.append([text])
        else:
            entries[-1].append(text)
    for lines in entries:
        # every line of a summary but its last is full: the next line's first word would
        # not have fitted on it (a line break kept from the source leaves it short)
        for line, following in itertools.pairwise(lines):
            assert len(line) + 1 + len(following.split()[0]) > room, (lines, room)
