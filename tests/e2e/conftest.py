"""End-to-end helpers: drive the real `flywheel` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]

FLYWHEEL_BIN = str(Path(sys.prefix) / "bin" / "flywheel")  # the installed entry point


def newcomer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any FLYWHEEL_* or MLFLOW_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    return {**env, "COLUMNS": "200", **(extra or {})}


def flywheel(
    cwd: Path, *args: str, code: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``flywheel ARGS`` in ``cwd`` as a user would (no FLYWHEEL_*
    variables but those in ``env``); assert the exit code and that no traceback shows."""
    proc = subprocess.run(
        [FLYWHEEL_BIN, *args],
        cwd=cwd,
        env=newcomer_env(env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    shown = (
        f"flywheel {' '.join(args)}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{shown}"
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    return proc


def flywheel_together(
    cwd: Path, *commands: list[str], code: int = 0
) -> list[subprocess.CompletedProcess[str]]:
    """`flywheel` for each of ``commands`` (argument lists), all at once, as independent
    processes (they must not write the same files); each checked as `flywheel` checks it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(commands))) as pool:
        futures = [pool.submit(flywheel, cwd, *args, code=code) for args in commands]
        return [f.result() for f in futures]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """Run `python -m flywheel ARGS` with a private home; returns the completed process."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_"))}
    base_env.update(
        FLYWHEEL_HOME=str(tmp_path / "fw"),
        FLYWHEEL_CONFIG=os.devnull,
        COLUMNS="200",
        GIT_PYTHON_REFRESH="quiet",
    )

    def run(
        *args: str, env: dict[str, str] | None = None, ok: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "flywheel", *args],
            capture_output=True,
            text=True,
            env={**base_env, **(env or {})},
            cwd=cwd or tmp_path,
            timeout=900,
            check=False,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"flywheel {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )
        return proc

    return run


def cancer_folder(cwd: Path, **settings: Any) -> Any:
    """Make ``cwd`` a flywheel folder on scikit-learn's bundled breast-cancer table (569 rows,
    30 numeric features; no download): ``cancer.csv`` ingested as dataset and registered
    model ``cancer``, training from ``params.yaml`` (written by the caller before each
    `flywheel train`), gates loose enough for a deliberately worse version to register;
    ``settings`` adds top-level blocks to ``flywheel.yaml``. Returns the table."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.to_csv(cwd / "cancer.csv", index=False)
    write_settings(cwd, **settings)
    flywheel(cwd, "ingest", "--file", "cancer.csv", "--target", "target")
    return frame


def start_serve(
    args: list[str], cwd: Path, port: int, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``args`` (a `flywheel serve` command line) as a user would and wait until the
    REST port says ready (two minutes at most)."""
    import httpx

    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=newcomer_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server not ready in time"
        time.sleep(0.2)


def stop_serve(proc: subprocess.Popen[str]) -> str:
    """SIGINT (Ctrl-C), as a user stops it: it must exit 0 without a traceback; returns
    its stderr."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err, err
    return err


def triton_labels(address: str, records: list[dict[str, Any]], *, grpc: bool = False) -> list[int]:
    """Ask with the official Open Inference Protocol client at its defaults (tritonclient's
    HTTP client sends binary tensor data; ``grpc``: its gRPC client) for model ``churn``."""
    import numpy as np

    if grpc:
        import tritonclient.grpc as client_lib

        client: Any = client_lib.InferenceServerClient(address)
        inputs_meta = client.get_model_metadata("churn", as_json=True)["inputs"]
    else:
        import tritonclient.http as client_lib  # type: ignore[no-redef]

        client = client_lib.InferenceServerClient(address)
        inputs_meta = client.get_model_metadata("churn")["inputs"]
    inputs = []
    for meta in inputs_meta:
        values = [r[meta["name"]] for r in records]
        if meta["datatype"] == "BYTES":
            array = np.array([v.encode() for v in values], dtype=object).reshape(-1, 1)
        else:
            array = np.array([np.nan if v is None else v for v in values], np.float32)
            array = array.reshape(-1, 1)
        tensor = client_lib.InferInput(meta["name"], list(array.shape), meta["datatype"])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("churn", inputs)
    return [int(v) for v in result.as_numpy("label").reshape(-1)]


# --------------------------------------------------------------------------- shared folders
# Training through the CLI costs a process start and a fit per call: folders several modules
# start from are built once per session and copied (`copy_folder`) for each test that writes.

SMALL_WORLD_GATES = {
    "min_metrics": {"roc_auc": 0.6},
    "max_slice_gap": {"roc_auc": 0.5},
    "champion_margin": 0.05,
}


def _rewrite_paths(folder: Path, moves: list[tuple[str, str]]) -> None:
    """Point the absolute paths MLflow and the snapshot manifests recorded at their copies:
    every text column of ``mlflow.db`` and every manifest, ``MLmodel`` and YAML file (the
    audit ledger is hash-chained and holds no path: it is left byte for byte)."""
    import sqlite3

    for db in folder.rglob("mlflow.db"):
        with sqlite3.connect(db) as con:
            tables = [
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                for column in [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]:
                    for old, new in moves:
                        con.execute(
                            f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                            f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                            (old, new, old),
                        )
        con.close()
    for path in folder.rglob("*"):
        if path.is_file() and (path.suffix in (".json", ".yaml", ".yml") or path.name == "MLmodel"):
            text = path.read_text(errors="surrogateescape")
            changed = text
            for old, new in moves:
                changed = changed.replace(old, new)
            if changed != text:
                path.write_text(changed, errors="surrogateescape")


def copy_folder(
    src: Path, dest: Path, *, home: str = ".flywheel", to_home: Path | None = None
) -> Path:
    """A private copy of the flywheel folder ``src`` (its home ``src/home``) at ``dest``, with
    every absolute path recorded inside rewritten to the copy, so the copy reads and writes
    only itself. ``to_home``: put the home there instead of ``dest/home`` (for a test that
    sets ``FLYWHEEL_HOME``). No process may have ``src`` open. Returns ``dest``."""
    import shutil

    src, dest = src.resolve(), dest.resolve()
    target_home = (to_home or dest / home).resolve()
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(home))
    shutil.copytree(src / home, target_home, symlinks=True)
    moves = [(f"{src / home}/", f"{target_home}/"), (f"{src}/", f"{dest}/")]
    _rewrite_paths(target_home, moves)
    return dest


def write_settings(cwd: Path, **settings: Any) -> None:
    """Rewrite ``cwd/flywheel.yaml`` as `cancer_folder` writes it, with ``settings`` on top."""
    import yaml

    base: dict[str, Any] = {
        "source": {"dataset": "cancer"},
        "registry": {"model_name": "cancer"},
        "training": {"params_file": "params.yaml"},
        "gates": {
            "champion_margin": 1.0,
            "min_metrics": {"roc_auc": 0.5},
            "max_slice_gap": {"roc_auc": 1.0},
        },
    }
    (cwd / "flywheel.yaml").write_text(yaml.safe_dump({**base, **settings}))


@pytest.fixture(scope="session")
def cancer_ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `cancer_folder` (no extra settings), ingested once per session; copy it to write."""
    cwd = tmp_path_factory.mktemp("cancer-ingested")
    cancer_folder(cwd)
    return cwd


@pytest.fixture(scope="session")
def cancer_champion(cancer_ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cancer_ingested` plus v1 (``family: logreg``, ``cv_folds: 0``) trained and promoted
    ("first champion"), once per session; copy it to write."""
    cwd = copy_folder(cancer_ingested, tmp_path_factory.mktemp("cancer-champion") / "f")
    (cwd / "params.yaml").write_text("family: logreg\ncv_folds: 0\n")
    assert "registered cancer version 1" in flywheel(cwd, "train").stdout
    flywheel(cwd, "promote", "1", "--reason", "first champion")
    return cwd


@pytest.fixture(scope="session")
def churn_1500(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where `flywheel run --customers 1500` (a year, the default days) registered
    churn v1 with the embedded defaults: the world the replays go on from. Built once per
    session; copy it (`copy_folder`) to write."""
    folder = tmp_path_factory.mktemp("churn-1500")
    flywheel(folder, "run", "--customers", "1500")
    return folder


def replay_json(cwd: Path, days: int, per_day: int, *drift: str) -> dict[str, Any]:
    """`flywheel replay --days D --drift S ... --requests-per-day N --json` in ``cwd``: its
    summary."""
    import json

    args = ["replay", "--days", str(days), "--requests-per-day", str(per_day), "--json"]
    for spec in drift:
        args += ["--drift", spec]
    summary: dict[str, Any] = json.loads(flywheel(cwd, *args).stdout)
    return summary


@pytest.fixture(scope="session")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A folder where `flywheel run --days 240 --customers 1500` (the same seed every time)
    registered churn v1 as the first champion, with ``SMALL_WORLD_GATES`` in its
    ``flywheel.yaml`` and the default home ``./.flywheel``; and that run's stdout. Built once
    per session; copy it (`copy_folder`) to write."""
    import yaml

    folder = tmp_path_factory.mktemp("small-world")
    (folder / "flywheel.yaml").write_text(yaml.safe_dump({"gates": SMALL_WORLD_GATES}))
    out = flywheel(folder, "run", "--days", "240", "--customers", "1500").stdout
    return folder, out
