"""The drift-detection peers' venvs: ``bench/.venvs/evidently`` and ``bench/.venvs/nannyml``
(git-ignored), each made from its pinned lock ``bench/peers/<tool>.txt``.

Like ``bench.serving.harness.ensure_mlserver``: ``python -m venv`` + pip, and a marker file in
the venv holding the lock it was made from, so a second call with the same lock does nothing and
a changed lock rebuilds the venv.

    .venv/bin/python -m bench.peers.venvs [evidently] [nannyml] [--uv] [--force]
    .venv/bin/python -m bench.peers.venvs --compile     # re-lock <tool>.txt from <tool>.in (uv)

``--uv`` installs with the project's ``.venv/bin/uv`` instead of pip (same lock, faster).
Prints one JSON line per tool: the venv, whether it was (re)made and how long that took.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENVS = ROOT / "bench" / ".venvs"
TOOLS = ("evidently", "nannyml")
MARKER = "bench-requirements.txt"
# the lock is made for this interpreter and platform
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-unknown-linux-gnu"
# what the peers' processes should carry: NannyML posts usage events to Segment unless
# NML_DISABLE_USAGE_LOGGING is set (nannyml/usage_logging.py); Evidently's telemetry is only in
# its UI service and honours DO_NOT_TRACK (evidently/telemetry.py)
PEER_ENV = {"NML_DISABLE_USAGE_LOGGING": "1", "DO_NOT_TRACK": "1"}


def lock_file(tool: str) -> Path:
    return HERE / f"{tool}.txt"


def venv_dir(tool: str) -> Path:
    return VENVS / tool


def python(tool: str) -> Path:
    return venv_dir(tool) / "bin" / "python"


def uv_binary() -> Path:
    found = Path(sys.executable).parent / "uv"
    if found.exists():
        return found
    on_path = shutil.which("uv")
    if on_path is None:
        raise FileNotFoundError("uv is not in the project venv nor on PATH")
    return Path(on_path)


def ensure(tool: str, *, use_uv: bool = False, force: bool = False) -> dict[str, object]:
    """Make ``bench/.venvs/<tool>`` from its lock unless it already holds that lock."""
    if tool not in TOOLS:
        raise ValueError(f"unknown peer {tool!r}; expected one of {TOOLS}")
    venv, lock = venv_dir(tool), lock_file(tool).read_text()
    marker = venv / MARKER
    if not force and python(tool).exists() and marker.exists() and marker.read_text() == lock:
        return {"tool": tool, "venv": str(venv), "made": False}
    print(
        f"creating {venv.relative_to(ROOT)} from {lock_file(tool).relative_to(ROOT)} ...",
        file=sys.stderr,
    )
    started = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if use_uv:
        install = [str(uv_binary()), "pip", "install", "-q", "--python", str(python(tool))]
    else:
        install = [str(python(tool)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*install, "-r", str(lock_file(tool))], check=True)
    marker.write_text(lock)
    return {
        "tool": tool,
        "venv": str(venv),
        "made": True,
        "installer": "uv" if use_uv else "pip",
        "seconds": round(time.perf_counter() - started, 1),
    }


def compile_lock(tool: str) -> None:
    """Re-resolve ``<tool>.txt`` from ``<tool>.in`` with uv (needs the index)."""
    subprocess.run(
        [
            str(uv_binary()),
            "pip",
            "compile",
            "-q",
            str(HERE / f"{tool}.in"),
            "--python-version",
            PYTHON_VERSION,
            "--python-platform",
            PLATFORM,
            "--custom-compile-command",
            ".venv/bin/python -m bench.peers.venvs --compile",
            "-o",
            str(lock_file(tool)),
        ],
        cwd=ROOT,
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "tools", nargs="*", metavar="TOOL", help=f"{' / '.join(TOOLS)}; default: both"
    )
    parser.add_argument("--uv", action="store_true", help="install with uv instead of pip")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--compile", action="store_true", help="re-lock <tool>.txt, then stop")
    args = parser.parse_args(argv)
    tools = args.tools or list(TOOLS)
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        parser.error(f"unknown peer(s) {unknown}; expected {TOOLS}")
    for tool in tools:
        if args.compile:
            compile_lock(tool)
        else:
            print(json.dumps(ensure(tool, use_uv=args.uv, force=args.force)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
