"""A stack sampler for a server when neither py-spy nor pyinstrument is installed.

    python -m bench.serving.sampler OUT.json LABEL_FILE -m MODULE [ARGS...]

runs ``python -m MODULE ARGS...`` in this process with a daemon thread that, every
``SAMPLE_S``, reads every other thread's Python stack (``sys._current_frames``) and counts,
per label, each busy stack's leaf function (self time) and every function on it (inclusive
time). The label is the text of LABEL_FILE (re-read every 0.1 s), so a benchmark marks its
phases by writing that file; OUT.json is rewritten every 2 s and at exit.

Limits, unlike py-spy: the sampler needs the GIL, so it looks when the running thread lets
go of it (at the interpreter's switch interval or a C call that releases it); C code that
holds the GIL shows as the Python function that called it; a thread counts as idle when
its leaf is a known wait (the event loop's own run, a pool worker's queue get, sleep,
select). Its own cost is a few per cent of a core at the default interval.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

SAMPLE_S = 0.002
# leaf functions of a thread that waits (it holds no CPU while there), outside flywheel's code
IDLE = {
    "run_forever",
    "run_until_complete",
    "run",
    "_worker",
    "wait",
    "select",
    "sleep",
    "get",
    "_wait_for_tstate_lock",
    "poll",
    "serve",
    "main_loop",
    "_run_once",
    "accept",
    "recv",
}


class Sampler:
    """Counts busy stacks per label; see the module docstring."""

    def __init__(self, out: Path, label_file: Path) -> None:
        self.out, self.label_file = out, label_file
        self.label = "-"
        self.samples: dict[str, Counter[str]] = {}
        self.self_time: dict[str, Counter[str]] = {}
        self.inclusive: dict[str, Counter[str]] = {}
        self.threads: dict[str, Counter[str]] = {}
        self._stop = threading.Event()

    def _read_label(self) -> None:
        with contextlib.suppress(OSError):
            self.label = self.label_file.read_text().strip() or "-"

    def _sample(self, me: int) -> None:
        names = {t.ident: t.name for t in threading.enumerate()}
        label = self.label
        busy = self.samples.setdefault(label, Counter())
        own = self.self_time.setdefault(label, Counter())
        incl = self.inclusive.setdefault(label, Counter())
        per_thread = self.threads.setdefault(label, Counter())
        busy["ticks"] += 1
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            code = frame.f_code
            if code.co_name in IDLE and "/src/flywheel/" not in code.co_filename:
                continue
            seen: set[str] = set()
            leaf = True
            f: Any = frame
            while f is not None:
                code = f.f_code
                where = f"{code.co_name} ({_short(code.co_filename)}:{code.co_firstlineno})"
                if leaf:  # self time by the line it was on
                    own[f"{where} line {f.f_lineno}"] += 1
                    leaf = False
                if where not in seen:
                    incl[where] += 1
                    seen.add(where)
                f = f.f_back
            busy["busy"] += 1
            per_thread[_thread(names.get(ident, "?"))] += 1

    def run(self) -> None:
        me = threading.get_ident()
        last_label = last_dump = time.monotonic()
        while not self._stop.is_set():
            time.sleep(SAMPLE_S)
            now = time.monotonic()
            if now - last_label > 0.1:
                self._read_label()
                last_label = now
            self._sample(me)
            if now - last_dump > 2.0:
                self.dump()
                last_dump = now

    def dump(self) -> None:
        data = {
            label: {
                "ticks": self.samples[label]["ticks"],
                "busy_samples": self.samples[label]["busy"],
                "threads": dict(self.threads[label].most_common()),
                "self": dict(self.self_time[label].most_common(60)),
                "inclusive": dict(self.inclusive[label].most_common(120)),
            }
            for label in list(self.samples)
        }
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.out)

    def stop(self) -> None:
        self._stop.set()
        self.dump()


def _short(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("flywheel", "site-packages", "python3.11"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + (anchor != "flywheel") :])
    return "/".join(parts[-2:])


def _thread(name: str) -> str:
    return name.rsplit("_", 1)[0] if name[-1:].isdigit() else name


def main() -> None:
    if len(sys.argv) < 5 or sys.argv[3] != "-m":
        raise SystemExit(__doc__)
    out, label_file, module = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[4]
    sampler = Sampler(out, label_file)
    threading.Thread(target=sampler.run, name="bench-sampler", daemon=True).start()
    atexit.register(sampler.stop)
    sys.argv = [module, *sys.argv[5:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
