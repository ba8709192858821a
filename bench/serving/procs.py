"""Server processes: start pinned (``taskset -c CORE``), wait for the first prediction, measure
RSS, stop. Every process started here is registered and stopped at exit, on Ctrl-C and on
SIGTERM (its whole process group: MLflow and MLServer spawn workers)."""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

_LIVE: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _kill_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    # workers that outlived their parent (same group) go too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop_all() -> None:
    while _LIVE:
        _kill_group(_LIVE.pop())


def install_cleanup() -> None:
    atexit.register(stop_all)

    def on_signal(signum: int, frame: Any) -> None:
        stop_all()
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def pinned(core: int | None, argv: list[str]) -> list[str]:
    return argv if core is None else ["taskset", "-c", str(core), *argv]


@dataclass
class Server:
    """One server under test. ``probe`` = (path, body, content type) of a real prediction."""

    name: str
    argv: list[str]
    port: int
    probe: tuple[str, bytes, str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    log_path: Path | None = None
    core: int | None = 0
    proc: subprocess.Popen[bytes] | None = None
    cold_start_s: float | None = None
    ready: Any = None  # callable -> bool; default: POST the probe, expect 200

    def start(self, timeout: float = 240.0) -> float:
        """Start; return seconds from process start to the first successful prediction."""
        assert self.log_path is not None
        log = self.log_path.open("wb")
        env = {**os.environ, **self.env}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            pinned(self.core, self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
        )
        _LIVE.append(self.proc)
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if (self.ready or self.post_ok)():
                self.cold_start_s = time.perf_counter() - t0
                return self.cold_start_s
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.name} gave no prediction within {timeout:.0f}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def post(
        self,
        path: str,
        body: bytes,
        ctype: str = "application/json",
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", path, body, {"Content-Type": ctype, **(headers or {})})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def post_ok(self) -> bool:
        path, body, ctype = self.probe
        try:
            return self.post(path, body, ctype, timeout=2.0)[0] == 200
        except OSError:
            return False

    def rss_mib(self) -> float:
        """Resident memory of the server's whole process tree (workers included)."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**20

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            with contextlib.suppress(ValueError):
                _LIVE.remove(self.proc)

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
