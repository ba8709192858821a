"""Where a flywheel server's cold start and idle memory go (``bench.cold_start --explain``).

- Time: the server run once under ``python -X importtime``; module import time (self time,
  summed per package) against the cold start measured in the same start.
- Memory, by kind: ``/proc/PID/status`` (anonymous: the Python heap, arenas, ONNX Runtime's
  allocations; file-backed: the code of the shared libraries) and ``/proc/PID/smaps``
  summed per mapped file, grouped by the package that ships it.
- Memory, by package: a fresh interpreter of the same venv imports the modules the server
  imported, in the server's own order (importtime prints a module once its imports are done,
  so each module's dependencies come before it), reading its RSS after each; what a module
  adds is charged to its package. Idle RSS minus the RSS after the last import is what the
  running server holds beyond its code: the model, the servers' threads and buffers.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
_STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads")
_SMAPS_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def parse_importtime(text: str) -> list[tuple[int, int, int, str]]:
    """(self µs, cumulative µs, depth, module) in the order the imports finished."""
    rows = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)))
    return rows


def package_of(module: str) -> str:
    """A module's package; flywheel's own split one level further (flywheel.serving, ...)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "flywheel" and len(parts) > 1 else parts[0]


def import_time_by_package(rows: list[tuple[int, int, int, str]]) -> dict[str, float]:
    """Seconds of import (self time) per package, largest first."""
    totals: dict[str, int] = defaultdict(int)
    for self_us, _, _, module in rows:
        totals[package_of(module)] += self_us
    return {k: v / 1e6 for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def status_mib(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in _STATUS_KEYS:
            number = float(value.split()[0])
            out[key] = number if key == "Threads" else number / 1024
    return out


def _mapping_owner(path: str) -> str:
    if not path:
        return "[anonymous]"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if path.startswith("["):
        return path
    return Path(path).name


def smaps_by_owner(pid: int, top: int = 15) -> dict[str, float]:
    """RSS MiB per mapping owner (a package's shared objects, libpython, [heap], anonymous)."""
    totals: dict[str, int] = defaultdict(int)
    owner = "[anonymous]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if _SMAPS_HEADER.match(line):
            fields = line.split(None, 5)
            owner = _mapping_owner(fields[5].strip() if len(fields) > 5 else "")
        elif line.startswith("Rss:"):
            totals[owner] += int(line.split()[1])
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    return {k: v / 1024 for k, v in ranked[:top]}


_IMPORT_RSS = """
import importlib, json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
out, base = [], rss()
for name in json.loads(sys.argv[1]):
    if name in sys.modules or name == "__main__":
        continue
    try:
        importlib.import_module(name)
    except BaseException as exc:  # a module that only imports in its context: counted later
        out.append([name, None, type(exc).__name__])
        continue
    out.append([name, rss(), None])
print(json.dumps({"base": base, "after": out}))
"""


def import_rss(python: Path, modules: list[str], env: dict[str, str]) -> dict[str, Any]:
    """RSS MiB each package adds when its modules are imported in the server's order."""
    done = subprocess.run(
        [str(python), "-c", _IMPORT_RSS, json.dumps(modules)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if done.returncode != 0:
        return {"error": done.stderr[-1000:]}
    data = json.loads(done.stdout.strip().splitlines()[-1])
    before = data["base"]
    totals: dict[str, int] = defaultdict(int)
    failed = 0  # importtime also lists the imports that failed (nt, msvcrt, ...): none here
    for name, after, _ in data["after"]:
        if after is None:
            failed += 1
            continue
        totals[package_of(name)] += after - before
        before = after
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    return {
        "interpreter_mib": data["base"] / 2**20,
        "after_imports_mib": before / 2**20,
        "by_package_mib": {k: v / 2**20 for k, v in ranked},
        "not_importable_alone": failed,
        "note": "each package charged with what its import loaded first (its dependencies too)",
    }


def summarise(
    cold_s: float, idle: dict[str, Any], log_text: str, python: Path, env: dict[str, str]
) -> dict[str, Any]:
    """Everything for one server: cold start and imports, memory by kind and by package."""
    rows = parse_importtime(log_text)
    by_pkg = import_time_by_package(rows)
    modules = [name for _, _, _, name in rows]
    memory = import_rss(python, modules, env)
    after = memory.get("after_imports_mib")
    return {
        "cold_start_under_importtime_s": cold_s,
        "imports_s": sum(by_pkg.values()),
        "modules_imported": len(rows),
        "import_s_by_package": dict(list(by_pkg.items())[:15]),
        "idle_status_mib": idle["status"],
        "idle_smaps_mib": idle["smaps"],
        "import_rss": memory,
        "runtime_beyond_imports_mib": (idle["status"]["VmRSS"] - after) if after else None,
    }


def print_explain(explained: dict[str, dict[str, Any]]) -> None:
    for key, e in explained.items():
        if "error" in e:
            print(f"\n{key}: not explained: {e['error']}")
            continue
        st = e["idle_status_mib"]
        print(
            f"\n{key}: cold start {e['cold_start_under_importtime_s']:.2f} s under -X importtime,"
            f" of which imports {e['imports_s']:.2f} s ({e['modules_imported']} modules);"
            f" idle RSS {st['VmRSS']:.0f} MiB = anonymous {st['RssAnon']:.0f}"
            f" + file-backed {st['RssFile']:.0f}, {st['Threads']:.0f} threads"
        )
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(e["import_s_by_package"].items())[:10])
        print(f"  import s by package: {top}")
        mem = e["import_rss"]
        if "error" in mem:
            print(f"  import RSS: {mem['error'][-300:]}")
        else:
            pk = ", ".join(f"{k} {v:.0f}" for k, v in list(mem["by_package_mib"].items())[:10])
            print(
                f"  RSS MiB: interpreter {mem['interpreter_mib']:.0f}, after imports "
                f"{mem['after_imports_mib']:.0f}, running server beyond imports "
                f"{e['runtime_beyond_imports_mib']:.0f}; by package: {pk}"
            )
        sm = ", ".join(f"{k} {v:.0f}" for k, v in list(e["idle_smaps_mib"].items())[:8])
        print(f"  idle RSS MiB by mapping: {sm}")
