"""The README's and docs/quickstart.md's command blocks, run literally, as a newcomer runs them.

Each document gets a fresh copy of the repository (what `git clone` gives) as the current
folder; its `.venv` is the environment these tests run in (so `make demo` finds it installed).
No ``FLYWHEEL_*`` or ``MLFLOW_*`` variable is set and the venv is not on ``PATH``: the
documents' own ``source .venv/bin/activate`` and ``export`` lines are what set things up.
Every line runs through bash (the installed ``flywheel`` entry point, never the in-process
runner) and must exit 0; servers (``flywheel serve``, ``mlflow ui``) are started in the
background, must answer, and are stopped with SIGINT (Ctrl-C) when the document ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
# `make test` is this very suite (CI runs it through .ci/run); running it here would recurse.
NOT_RUN_HERE = {"make test"}
SERVERS = re.compile(r"^(flywheel serve|mlflow ui|mlflow server)\b")
STATE = re.compile(r"^(source|export|cd|\.)\s")


def bash_blocks(doc: Path) -> list[list[str]]:
    """The commands of each ```bash block: one per line (``\\`` continues a line);
    blank and comment-only lines dropped."""
    blocks = re.findall(r"^```bash\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M)
    out = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        out.append([ln.strip() for ln in joined.splitlines() if ln.strip() and ln[0] != "#"])
    return out


def bare(command: str) -> str:
    """The command without its trailing ``# comment`` (for matching; the line runs as is)."""
    return re.sub(r"\s+#[^'\"]*$", "", command)


def _port(command: str, default: int) -> int:
    found = re.search(r"--port[ =](\d+)", command)
    return int(found.group(1)) if found else default


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Newcomer:
    """A shell session in a fresh clone: runs a document's lines one by one."""

    clone: Path
    env: dict[str, str]
    state: list[str] = field(default_factory=list)  # source/export/cd lines so far
    servers: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def script(self, command: str) -> str:
        return "\n".join(["set -o pipefail", *self.state, command])

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["bash", "-c", self.script(command)],
            cwd=self.clone,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        shown = f"$ {command}\n-- stdout:\n{proc.stdout[-4000:]}\n-- stderr:\n{proc.stderr[-4000:]}"
        assert proc.returncode == 0, f"exited {proc.returncode}\n{shown}"
        assert "Traceback" not in proc.stdout + proc.stderr, shown
        if STATE.match(command):
            self.state.append(command)
        self.outputs[bare(command)] = proc.stdout
        return proc

    def start(self, command: str) -> None:
        """A server line: start it as the user would in another terminal, wait until it
        answers, and check what it serves."""
        if command.startswith("flywheel serve"):
            ports = [_port(command, 8080), 8081]
        else:
            ports = [_port(command, 5000)]
        busy = [p for p in ports if _port_open(p)]
        assert not busy, f"port(s) {busy} already taken on this machine; `{command}` needs them"
        log = self.clone / f".server-{len(self.servers)}.log"
        proc = subprocess.Popen(
            ["bash", "-c", self.script(f"exec {command}")],
            cwd=self.clone,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.servers.append((command, proc, log))
        base = f"http://127.0.0.1:{ports[0]}"
        if command.startswith("flywheel serve"):
            self._wait(proc, log, f"{base}/v2/health/ready")
            meta = httpx.get(f"{base}/v2/models/churn", timeout=5).json()
            assert meta["name"] == "churn" and meta["versions"], meta
            assert _port_open(8081), "flywheel serve did not open its gRPC port 8081"
        else:
            self._wait(proc, log, f"{base}/health")
            self._check_mlflow(base)

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], log: Path, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server exited {proc.returncode}:\n{log.read_text()}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{url} did not answer in {timeout} s:\n{log.read_text()}")

    @staticmethod
    def _check_mlflow(base: str) -> None:
        """The MLflow client, at its defaults, sees what flywheel registered."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=base, registry_uri=base)
        champion = client.get_model_version_by_alias("churn", "champion")
        assert champion.tags.get("flywheel.onnx_sha256"), champion.tags
        run = client.get_run(champion.run_id)
        assert "holdout_roc_auc" in run.data.metrics, sorted(run.data.metrics)

    def stop_servers(self) -> dict[str, tuple[int, str]]:
        """Ctrl-C every server; their exit codes and logs."""
        done = {}
        for command, proc, log in reversed(self.servers):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            done[bare(command)] = (proc.returncode, log.read_text(errors="replace"))
        self.servers.clear()
        return done


def _fresh_clone(dest: Path) -> Path:
    """The repository's files (tracked and new, not ignored) copied as a clone would have
    them, with ``.venv`` pointing at this test run's environment."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    stamp = VENV / ".main"
    if not stamp.exists() or not (VENV / "bin" / "uv").exists():
        pytest.fail(
            f"{VENV} was not installed by `make install`/`make install-dev` (no {stamp}): "
            "run the tests with `make test` so `make demo` finds its environment."
        )
    (dest / ".venv").symlink_to(VENV, target_is_directory=True)
    # The install stamps must look newer than the copies, or `make demo` would reinstall
    # (and re-point the editable install at this temporary copy).
    for name in ("pyproject.toml", "requirements/main.lock", "requirements/dev.lock"):
        os.utime(dest / name, (0, 0))
    return dest


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[Newcomer]:
    clone = _fresh_clone(tmp_path / "flywheel")
    venv_bin = str(VENV / "bin")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLYWHEEL_", "MLFLOW_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    # `make demo` replays a year (minutes); here 45 days, which still cross a month's end and
    # so retrain once: the CI's time budget. The year is the same code, longer (bench.replay).
    env["DEMO_DAYS"] = "45"
    session = Newcomer(clone, env)
    try:
        yield session
    finally:
        session.stop_servers()


def _walk(session: Newcomer, doc: Path) -> list[str]:
    """Run every line of every bash block of ``doc``; returns the lines run."""
    ran = []
    for block in bash_blocks(doc):
        for command in block:
            if bare(command) in NOT_RUN_HERE:
                continue
            if SERVERS.match(command):
                session.start(command)
            else:
                session.run(command)
            ran.append(bare(command))
    return ran


def test_readme_commands_run_as_written(newcomer: Newcomer) -> None:
    ran = _walk(newcomer, REPO / "README.md")
    assert ran == ["make demo"], ran
    out = newcomer.outputs["make demo"]
    assert "is the first champion" in out
    assert (newcomer.clone / ".flywheel" / "mlflow.db").exists()
    # ... and the flywheel turned: 45 days replayed, ending with where to look
    assert "replayed 45 days (2026-01-01 to 2026-02-14)" in out
    timeline = newcomer.clone / ".flywheel" / "replay" / "timeline.html"
    assert f"timeline:     {timeline}" in out and timeline.exists()


def test_quickstart_commands_run_as_written(newcomer: Newcomer) -> None:
    ran = _walk(newcomer, REPO / "docs" / "quickstart.md")
    assert "flywheel serve" in ran and any(c.startswith("mlflow ui") for c in ran)
    out = newcomer.outputs

    predicts = [c for c in ran if c.startswith("flywheel predict")]
    protocols = {m.group(1) for c in predicts if (m := re.search(r"--protocol (\w+)", c))}
    assert protocols >= {"mlflow", "v2", "grpc", "ws"}, protocols
    for command in predicts:
        answer = json.loads(out[command])
        rows = (
            answer.get("predictions")
            or answer.get("answers")
            or (answer.get("outputs") or [{}])[0].get("data")
        )
        assert rows is not None and len(rows) == 3, (command, answer)

    # promote 2 then rollback: the champion is back on version 1, version 2 exists
    versions = {v["version"]: v for v in json.loads(out["flywheel registry list --json"])}
    assert "champion" in versions["1"]["aliases"] and "2" in versions, versions

    stopped = newcomer.stop_servers()
    code, log = stopped["flywheel serve"]
    assert code == 0, f"flywheel serve exited {code} on Ctrl-C:\n{log[-3000:]}"
    assert "Traceback" not in log
