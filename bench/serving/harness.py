"""Orchestration: model → servers one at a time on the server core → load from the load core
→ tables + ``bench/results/serving.json``. See the package docstring and bench/README.md."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.serving import h2h, load, procs
from bench.serving.report import goal_records, print_report

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "serving.json"
MLSERVER_VENV = ROOT / "bench" / ".venvs" / "mlserver"
PY = sys.executable
ALL_PEERS = ("bare_const", "bare_onnx", "fastapi_const", "fastapi_predict", "mlserver", "mlflow")
QUICK_PEERS = ("bare_const", "fastapi_const", "mlflow")
UVICORN = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--workers",
    "1",
    "--log-level",
    "warning",
    "--no-access-log",
    "--host",
    "127.0.0.1",
]


def say(msg: str) -> None:
    print(f"[bench.serving {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- model


def build_model(home: Path, env: dict[str, str], customers: int, log: Path) -> None:
    say(f"flywheel run --customers {customers} (FLYWHEEL_HOME={home}) ...")
    with log.open("wb") as out:
        done = subprocess.run(
            [PY, "-m", "flywheel", "run", "--customers", str(customers)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"`flywheel run` failed ({done.returncode}); log {log}:\n{tail}")


def prepare(work: Path, env: dict[str, str]) -> dict[str, Any]:
    say("preparing the sklearn dump, the ONNX file, one snapshot row, a second version ...")
    log = work / "prep.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [PY, "-m", "bench.serving.prep", str(work)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise SystemExit(f"model preparation failed; log {log}:\n{log.read_text()[-3000:]}")
    return json.loads((work / "prep.json").read_text())


def ensure_mlserver() -> Path:
    """MLServer lives in its own venv (its pins clash with the project's); the model libraries
    get the project's exact versions so the joblib pickle loads."""
    pins = [
        f"{dist}=={md.version(dist)}"
        for dist in ("scikit-learn", "numpy", "pandas", "scipy", "joblib")
    ]
    # uvloop 0.22+ drops the implicit loop of get_event_loop(): MLServer 1.7.1's parallel
    # inference worker calls it and dies ("There is no current event loop")
    wanted = ["mlserver>=1.7,<1.8", "mlserver-sklearn>=1.7,<1.8", "uvloop<0.22", *pins]
    marker = MLSERVER_VENV / "bench-requirements.txt"
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if binary.exists() and marker.exists() and marker.read_text() == "\n".join(wanted):
        return binary
    say(f"creating {MLSERVER_VENV.relative_to(ROOT)} ({' '.join(wanted)}) ...")
    shutil.rmtree(MLSERVER_VENV, ignore_errors=True)
    subprocess.run([PY, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = [
        str(MLSERVER_VENV / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, *wanted], check=True)
    marker.write_text("\n".join(wanted))
    return binary


# --------------------------------------------------------------------------- bodies


def bodies(prep: dict[str, Any]) -> dict[str, bytes]:
    row, strings = prep["row"], set(prep["string_features"])
    v2_inputs = [
        {
            "name": k,
            "shape": [1],
            "datatype": "BYTES" if k in strings else "FP64",
            "data": [v],
            **({"parameters": {"content_type": "str"}} if k in strings else {}),
        }
        for k, v in row.items()
    ]
    # the same body for MLServer and flywheel (MLServer needs the pandas content types), each
    # asking for its probabilities output by its name (an unknown output name is refused)
    v2 = {"inputs": v2_inputs, "parameters": {"content_type": "pd"}}
    return {
        "record": orjson.dumps(row),
        "v1": orjson.dumps({"records": [row]}),
        "invocations": orjson.dumps({"dataframe_records": [row]}),
        "v2": orjson.dumps({**v2, "outputs": [{"name": "predict_proba"}]}),
        "v2_flywheel": orjson.dumps({**v2, "outputs": [{"name": "probabilities"}]}),
    }


# --------------------------------------------------------------------------- servers


def make_server(
    name: str,
    prep: dict[str, Any],
    body: dict[str, bytes],
    work: Path,
    env: dict[str, str],
    args: argparse.Namespace,
) -> tuple[procs.Server, list]:
    """A server and its endpoints: [(label, path, body)], the first one is its main one."""
    port = procs.free_port()
    features = {
        n: ("string" if n in prep["string_features"] else "float") for n in prep["features"]
    }
    peer_env = {
        "BENCH_FEATURES": json.dumps(features),
        "BENCH_MODEL_JOBLIB": prep["joblib"],
        "BENCH_ONNX_PATH": prep["onnx"],
    }
    common = {"port": port, "cwd": ROOT, "log_path": work / f"{name}.log", "core": args.server_core}
    model = prep["model_name"]
    if name == "flywheel":
        argv = flywheel_argv(port, args, work)
        endpoints = [
            ("/v1/predict", "/v1/predict", body["v1"]),
            ("/invocations", "/invocations", body["invocations"]),
            ("V2 REST", f"/v2/models/{model}/infer", body["v2_flywheel"]),
        ]
        server = procs.Server(
            name, argv, probe=("/v1/predict", body["v1"], "application/json"), env=env, **common
        )
        return server, endpoints
    if name in ("bare_const", "bare_onnx"):
        mode = "constant" if name == "bare_const" else "onnx"
        argv = [
            PY,
            "-m",
            "uvicorn",
            "bench.serving.peers:bare_app",
            "--factory",
            *UVICORN,
            "--port",
            str(port),
        ]
        env2 = {**peer_env, "BENCH_BARE_MODE": mode}
        return procs.Server(
            name, argv, probe=("/", body["record"], "application/json"), env=env2, **common
        ), [("/", "/", body["record"])]
    if name in ("fastapi_const", "fastapi_predict"):
        mode = "constant" if name == "fastapi_const" else "predict"
        argv = [
            PY,
            "-m",
            "uvicorn",
            "bench.serving.peers:fastapi_app",
            "--factory",
            *UVICORN,
            "--port",
            str(port),
        ]
        env2 = {**peer_env, "BENCH_FASTAPI_MODE": mode}
        return procs.Server(
            name, argv, probe=("/predict", body["record"], "application/json"), env=env2, **common
        ), [("/predict", "/predict", body["record"])]
    if name == "mlflow":
        argv = [
            str(Path(PY).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            prep["sklearn_uri"],
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        env2 = {
            "MLFLOW_TRACKING_URI": prep["tracking_uri"],  # it execs the venv's uvicorn:
            "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_REGISTRY_URI": prep["tracking_uri"],
        }
        return procs.Server(
            name,
            argv,
            probe=("/invocations", body["invocations"], "application/json"),
            env=env2,
            **common,
        ), [("/invocations", "/invocations", body["invocations"])]
    if name == "mlserver":
        binary = ensure_mlserver()
        folder = work / "mlserver"
        folder.mkdir(exist_ok=True)
        grpc_port, metrics_port = procs.free_port(), procs.free_port()
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "host": "127.0.0.1",
                    "http_port": port,
                    "grpc_port": grpc_port,
                    "metrics_port": metrics_port,
                    "debug": False,
                }
            )
        )
        (folder / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": model,
                    "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": prep["joblib"], "version": "v1"},
                }
            )
        )
        path = f"/v2/models/{model}/infer"
        server = procs.Server(
            name,
            [str(binary), "start", str(folder)],
            probe=(path, body["v2"], "application/json"),
            **common,
        )
        server.grpc_port = grpc_port  # type: ignore[attr-defined]
        return server, [("V2 REST", path, body["v2"])]
    raise SystemExit(f"unknown peer {name!r}; known: {', '.join(ALL_PEERS)}")


def flywheel_argv(port: int, args: argparse.Namespace, work: Path) -> list[str]:
    """``flywheel serve`` once the CLI has it (``--entry auto``), else the bench launcher."""
    entry = args.entry
    if entry == "auto":
        probe = subprocess.run(
            [PY, "-m", "flywheel", "serve", "--help"], capture_output=True, text=True, cwd=ROOT
        )
        entry = "cli" if probe.returncode == 0 and "--port" in probe.stdout else "launcher"
    args.entry_used = entry
    if entry == "cli":  # gRPC is measured in its own process: no second listener on 8081
        return [PY, "-m", "flywheel", "serve", "--port", str(port), "--no-grpc"]
    return [
        PY,
        "-m",
        "bench.serving.fw_launcher",
        "--port",
        str(port),
        "--predlog",
        f"sqlite:///{work / 'predictions.db'}",
    ]


# --------------------------------------------------------------------------- measuring


def warm_and_measure_idle(server: procs.Server, n: int) -> float:
    path, body, ctype = server.probe
    load.sequential(server.port, path, body, ctype, n)
    time.sleep(1.0)
    return server.rss_mib()


def wrk_scenarios(
    server: procs.Server,
    endpoints: list,
    work: Path,
    args: argparse.Namespace,
    out: dict[str, Any],
    counts: dict[str, int],
) -> None:
    for label, path, body in endpoints:
        script = load.lua_script(
            work / f"{server.name}-{abs(hash(path))}.lua", body, "application/json"
        )
        url = f"http://127.0.0.1:{server.port}{path}"
        warm, _ = load.run_wrk(url, script, 16, args.warmup, args.load_core)  # discarded
        counts["wrk_ok"] += warm.requests - warm.errors
        counts["wrk_slack"] += 16
        for connections in (16, 64):
            result, _ = load.run_wrk(url, script, connections, args.duration, args.load_core)
            key = f"c{connections}"
            out.setdefault(key, {})[f"{server.name} {label}"] = result.to_dict()
            counts["wrk_ok"] += result.requests - result.errors
            counts["wrk_slack"] += connections
            say(
                f"  {server.name} {label} c{connections}: {result.rps:,.0f} req/s, "
                f"p99 {result.p99_ms} ms, errors {result.errors}"
            )
    label, path, body = endpoints[0]
    seq = load.sequential(server.port, path, body, "application/json", args.sequential)
    counts["client_ok"] += seq.requests - seq.errors
    out.setdefault("sequential", {})[f"{server.name} {label}"] = seq.to_dict()
    say(f"  {server.name} {label} sequential: p50 {seq.p50_ms:.3f} ms, p99 {seq.p99_ms:.3f} ms")


def run_peer(
    name: str,
    prep: dict[str, Any],
    body: dict[str, bytes],
    work: Path,
    args: argparse.Namespace,
    out: dict[str, Any],
) -> None:
    server, endpoints = make_server(name, prep, body, work, {}, args)
    say(f"starting {name} ...")
    try:
        cold = server.start()
        idle = warm_and_measure_idle(server, 200)
        out["servers"][name] = {"cold_start_s": cold, "idle_rss_mib": idle}
        say(f"  {name}: cold start {cold:.2f} s, idle RSS {idle:.0f} MiB")
        counts = {"wrk_ok": 0, "wrk_slack": 0, "client_ok": 0}
        wrk_scenarios(server, endpoints, work, args, out, counts)
        if name == "mlserver":
            request = load.v2_grpc_request(
                prep["model_name"], prep["row"], set(prep["string_features"])
            )
            target = f"127.0.0.1:{server.grpc_port}"  # type: ignore[attr-defined]
            result = load.grpc_load(target, request, 16, args.duration)
            out.setdefault("grpc", {})["mlserver ModelInfer"] = result.to_dict()
            say(f"  mlserver gRPC: {result.rps:,.0f} req/s, p99 {result.p99_ms} ms")
    finally:
        server.stop()


# --------------------------------------------------------------------------- flywheel


def _metrics_2xx(server: procs.Server) -> int:
    _, text = server.get("/metrics")
    total = 0.0
    for line in text.decode().splitlines():
        if (
            line.startswith("flywheel_requests_total{")
            and re.search(r'status="2\d\d"', line)
            and re.search(r'route="(/v1/predict|/invocations|/v2/models/infer)"', line)
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _predlog_db(work: Path, home: Path) -> Path | None:
    for candidate in [work / "predictions.db", *sorted(home.rglob("*.db"))]:
        if candidate.exists():
            with contextlib.closing(sqlite3.connect(f"file:{candidate}?mode=ro", uri=True)) as db:
                found = db.execute("SELECT 1 FROM sqlite_master WHERE name='prediction_log'")
                if found.fetchone():
                    return candidate
    return None


def _rows(db_path: Path, prefix: str | None = None) -> tuple[int, int]:
    """(rows, distinct client ids), all or those whose client id (the X-Request-ID sent;
    the log's key is the server's own id) starts with prefix."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        where, params = ("WHERE client_id LIKE ?", (prefix + "%",)) if prefix else ("", ())
        column = "client_id" if prefix else "request_id"
        rows, distinct = db.execute(
            f"SELECT COUNT(*), COUNT(DISTINCT {column}) FROM prediction_log {where}", params
        ).fetchone()
    return int(rows), int(distinct)


def predlog_exact(server: procs.Server, work: Path, home: Path, n: int) -> dict[str, Any]:
    prefix = f"bench-{secrets.token_hex(4)}"
    ok, bad = load.counted(
        server.port, "/v1/predict", orjson.dumps({"records": [server.probe_row]}), prefix, n
    )  # type: ignore[attr-defined]
    db_path = _predlog_db(work, home)
    rows = distinct = 0
    deadline = time.time() + 30
    while db_path is not None and time.time() < deadline:
        rows, distinct = _rows(db_path, prefix)
        if rows >= ok:
            time.sleep(1.0)  # anything late (duplicates) shows up too
            rows, distinct = _rows(db_path, prefix)
            break
        time.sleep(0.2)
    return {
        "sent": n,
        "answered_2xx": ok,
        "failed": bad,
        "rows": rows,
        "distinct_ids": distinct,
        "db": str(db_path) if db_path else None,
        "exact": db_path is not None and rows == ok == distinct,
    }


def hot_swap(
    server: procs.Server,
    prep: dict[str, Any],
    body: bytes,
    work: Path,
    env: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    def version() -> str | None:
        status, answer = server.post("/v1/predict", body)
        return str(orjson.loads(answer).get("version")) if status == 200 else None

    before = version()
    script = load.lua_script(work / "hotswap.lua", body, "application/json")
    url = f"http://127.0.0.1:{server.port}/v1/predict"
    cmd = load.wrk_command(url, script, 16, args.duration, args.load_core)
    wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(args.duration / 3)
    promote = subprocess.run(
        [
            PY,
            "-m",
            "flywheel",
            "promote",
            prep["swap_version"],
            "--reason",
            "bench.serving hot swap",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    token = env["FLYWHEEL_ADMIN_TOKEN"]
    t0 = time.perf_counter()
    status, answer = server.post(
        "/admin/reload", b"{}", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    reload_s = time.perf_counter() - t0
    raw, _ = wrk.communicate(timeout=args.duration + 60)
    result = load.parse_wrk(raw)
    after = version()
    return {
        "wrk": result.to_dict(),
        "failed": result.errors,
        "version_before": before,
        "version_after": after,
        "promote_rc": promote.returncode,
        "promote_err": promote.stderr[-500:] if promote.returncode else "",
        "reload_status": status,
        "reload_answer": answer.decode(errors="replace")[:300],
        "reload_s": reload_s,
        "ok": result.errors == 0 and before != after and after == prep["swap_version"],
    }


def run_flywheel(
    prep: dict[str, Any],
    body: dict[str, bytes],
    work: Path,
    home: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    out: dict[str, Any],
) -> None:
    server, endpoints = make_server("flywheel", prep, body, work, env, args)
    server.probe_row = prep["row"]  # type: ignore[attr-defined]
    say(f"starting flywheel ({args.entry_used}) ...")
    counts = {"wrk_ok": 0, "wrk_slack": 0, "client_ok": 0}
    try:
        cold = server.start()
        counts["client_ok"] += 1
        idle = warm_and_measure_idle(server, 200)
        counts["client_ok"] += 200
        out["servers"]["flywheel"] = {
            "cold_start_s": cold,
            "idle_rss_mib": idle,
            "entry": args.entry_used,
        }
        say(f"  flywheel: cold start {cold:.2f} s, idle RSS {idle:.0f} MiB")
        wrk_scenarios(server, endpoints, work, args, out, counts)
        say("  prediction log: exact-count client ...")
        exact = predlog_exact(server, work, home, args.predlog_requests)
        counts["client_ok"] += exact["answered_2xx"]
        out["predlog_exact"] = exact
        say(f"  prediction log: {exact}")
        say("  hot swap under load ...")
        swap = hot_swap(server, prep, body["v1"], work, env, args)
        counts["wrk_ok"] += swap["wrk"]["requests"] - swap["wrk"]["errors"]
        counts["wrk_slack"] += 16
        counts["client_ok"] += 2
        out["hot_swap"] = swap
        say(
            f"  hot swap: failed {swap['failed']}, version {swap['version_before']} -> "
            f"{swap['version_after']} (reload {swap['reload_status']})"
        )
        answered = _metrics_2xx(server)
    finally:
        server.stop()  # SIGTERM: uvicorn drains, the prediction log is flushed and closed
    db_path = _predlog_db(work, home)
    rows = _rows(db_path)[0] if db_path else None
    lower = counts["wrk_ok"] + counts["client_ok"]
    out["predlog_total"] = {
        "rows": rows,
        "server_2xx": answered,
        "client_seen_2xx": lower,
        "wrk_in_flight_bound": counts["wrk_slack"],
        "exact": rows == answered and lower <= (rows or 0) <= lower + counts["wrk_slack"],
        "note": "wrk does not count answers still in flight when it stops; those rows are "
        "bounded by the connections of each wrk run",
    }
    say(f"  prediction log total: {out['predlog_total']}")


def _launcher(work: Path, *extra: str) -> list[str]:
    return [
        PY,
        "-m",
        "bench.serving.fw_launcher",
        *extra,
        "--predlog",
        f"sqlite:///{work / 'predictions-other.db'}",
    ]


def run_flywheel_grpc(
    prep: dict[str, Any],
    work: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    out: dict[str, Any],
) -> None:
    if importlib.util.find_spec("flywheel.serving.grpc") is None:
        out["not_measured"]["flywheel gRPC"] = "no flywheel.serving.grpc adapter in the tree"
        return
    port = procs.free_port()
    target = f"127.0.0.1:{port}"
    # flywheel's model has outputs label/probabilities: ask for all of them (no `outputs`)
    request = load.v2_grpc_request(
        prep["model_name"], prep["row"], set(prep["string_features"]), output=None
    )
    server = procs.Server(
        "flywheel_grpc",
        _launcher(work, "--grpc-port", str(port)),
        port,
        ("", b"", ""),
        env=env,
        cwd=ROOT,
        log_path=work / "fw-grpc.log",
        core=args.server_core,
        ready=lambda: load.grpc_ready(target, request),
    )
    say("starting flywheel gRPC ...")
    try:
        cold = server.start()
        out["servers"]["flywheel_grpc"] = {"cold_start_s": cold, "idle_rss_mib": None}
        load.grpc_load(target, request, 16, args.warmup)
        out["servers"]["flywheel_grpc"]["idle_rss_mib"] = server.rss_mib()
        result = load.grpc_load(target, request, 16, args.duration)
        out.setdefault("grpc", {})["flywheel ModelInfer"] = result.to_dict()
        say(f"  flywheel gRPC: {result.rps:,.0f} req/s, p99 {result.p99_ms} ms")
    finally:
        server.stop()


def run_flywheel_mqtt(
    prep: dict[str, Any],
    work: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    out: dict[str, Any],
) -> None:
    if importlib.util.find_spec("flywheel.serving.mqtt") is None:
        out["not_measured"]["flywheel MQTT"] = "no flywheel.serving.mqtt adapter in the tree"
        return
    host, port = args.mqtt_broker.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    except OSError as exc:
        out["not_measured"]["flywheel MQTT"] = f"no broker on {args.mqtt_broker} ({exc})"
        return
    root = f"flywheel-bench-{secrets.token_hex(4)}"
    argv = _launcher(work, "--mqtt", f"mqtt://{args.mqtt_broker}", "--topic-root", root)
    server = procs.Server(
        "flywheel_mqtt",
        argv,
        0,
        ("", b"", ""),
        env=env,
        cwd=ROOT,
        log_path=work / "fw-mqtt.log",
        core=args.server_core,
        ready=lambda: True,
    )
    say("starting flywheel MQTT (round trips through the broker) ...")
    try:
        server.start()
        payload = orjson.dumps({"records": [prep["row"]]})
        load.mqtt_load(host, int(port), root, payload, 16, args.warmup)  # waits for readiness
        result = load.mqtt_load(host, int(port), root, payload, 16, args.duration)
        result.detail += f"; broker {args.mqtt_broker} is not pinned"
        out.setdefault("mqtt", {})["flywheel MQTT round trip"] = result.to_dict()
        say(f"  flywheel MQTT: {result.rps:,.0f} req/s, p99 {result.p99_ms} ms")
    finally:
        server.stop()


def run_head_to_head(
    prep: dict[str, Any],
    body: dict[str, bytes],
    work: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    out: dict[str, Any],
) -> None:
    """flywheel /v1/predict and the bare ASGI constant app, alive together, in alternating
    wrk runs (see bench.serving.h2h): the stack-limit ratio without the drift between the
    single runs. A fresh flywheel process with its own prediction log."""
    if args.h2h_rounds <= 0 or "bare_const" not in args.peer_list:
        out["not_measured"]["head to head"] = "off (--h2h-rounds 0, or bare_const not a peer)"
        return
    fw_env = {**env, "FLYWHEEL_SERVING__PREDICTION_LOG_URL": f"sqlite:///{work / 'h2h.db'}"}
    fw, fw_endpoints = make_server("flywheel", prep, body, work, fw_env, args)
    bare, bare_endpoints = make_server("bare_const", prep, body, work, {}, args)
    fw.log_path, bare.log_path = work / "flywheel-h2h.log", work / "bare_const-h2h.log"
    say(f"head to head: flywheel /v1/predict vs bare_const, {args.h2h_rounds} rounds each ...")
    try:
        for server in (fw, bare):
            server.start()
            warm_and_measure_idle(server, 200)
        contenders = []
        for server, (_, path, data) in ((fw, fw_endpoints[0]), (bare, bare_endpoints[0])):
            script = load.lua_script(work / f"h2h-{server.name}.lua", data, "application/json")
            url = f"http://127.0.0.1:{server.port}{path}"
            contenders.append(h2h.Contender(server.name, url, script))
        for connections in (16, 64):
            result = h2h.interleave(
                contenders[0],
                contenders[1],
                connections,
                args.h2h_rounds,
                args.duration,
                args.load_core,
                say,
            )
            out.setdefault("head_to_head", {})[f"c{connections}"] = result
    finally:
        fw.stop()
        bare.stop()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 3 s runs, 300 sequential requests, 3 peers",
    )
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    parser.add_argument("--peers", help=f"comma list from {','.join(ALL_PEERS)} (or 'none')")
    parser.add_argument(
        "--home", type=Path, help="reuse a FLYWHEEL_HOME with a champion (skips `flywheel run`)"
    )
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument(
        "--entry",
        choices=("auto", "cli", "launcher"),
        default="auto",
        help="how to start flywheel (auto: `flywheel serve` when it exists)",
    )
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--mqtt-broker", default="127.0.0.1:1883")
    parser.add_argument("--keep", action="store_true", help="keep the temp work folder")
    parser.add_argument(
        "--h2h-rounds",
        type=int,
        help="alternating rounds of flywheel vs bare_const at the end (default 4, quick 2; 0: off)",
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = 1.0 if args.quick else 2.0
    args.sequential = 300 if args.quick else 2000
    if args.h2h_rounds is None:
        args.h2h_rounds = 2 if args.quick else 4
    args.predlog_requests = 500 if args.quick else 3000
    if args.peers == "none":
        args.peer_list = []
    elif args.peers:
        args.peer_list = [p.strip() for p in args.peers.split(",") if p.strip()]
    else:
        args.peer_list = list(QUICK_PEERS if args.quick else ALL_PEERS)
    args.entry_used = args.entry
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.install_cleanup()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} is missing: apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'}"
            )
    cores = sorted(os.sched_getaffinity(0))
    if {args.server_core, args.load_core} - set(cores) or args.server_core == args.load_core:
        raise SystemExit(
            f"need two distinct usable cores (have {cores}); see --server-core/--load-core"
        )
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    home = args.home.resolve() if args.home else work / "home"
    path = f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow runs uvicorn
    env = {
        **os.environ,
        "PATH": path,
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_ADMIN_TOKEN": secrets.token_urlsafe(24),
        # a fresh prediction log per run, also with --home: the whole-run check counts rows
        "FLYWHEEL_SERVING__PREDICTION_LOG_URL": f"sqlite:///{work / 'predictions.db'}",
        "PYTHONPATH": str(ROOT),
    }
    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "servers": {},
        "errors": {},
        "not_measured": {},
        "config": {
            "duration_s": args.duration,
            "quick": args.quick,
            "server_core": args.server_core,
            "load_core": args.load_core,
            "peers": args.peer_list,
            "load_avg_at_start": os.getloadavg(),
            "cpu_count": os.cpu_count(),
        },
    }
    try:
        if args.home is None:
            build_model(home, env, args.customers, work / "flywheel-run.log")
        prep = prepare(work, env)
        out["model"] = {
            k: prep[k]
            for k in (
                "model_name",
                "champion_version",
                "swap_version",
                "sklearn_uri",
                "snapshot_id",
                "sklearn_proba",
            )
        }
        body = bodies(prep)
        os.sched_setaffinity(0, {args.load_core})  # the harness and its clients: load core
        try:
            run_flywheel(prep, body, work, home, env, args, out)
        except Exception as exc:  # report it, still measure the peers
            out["errors"]["flywheel"] = f"{type(exc).__name__}: {exc}"
            say(f"flywheel failed: {exc}")
        for extra in (run_flywheel_grpc, run_flywheel_mqtt):
            try:
                extra(prep, work, env, args, out)
            except Exception as exc:
                out["errors"][extra.__name__.replace("run_", "")] = f"{type(exc).__name__}: {exc}"
                say(f"{extra.__name__} failed: {exc}")
        for name in args.peer_list:
            try:
                run_peer(name, prep, body, work, args, out)
            except Exception as exc:
                out["errors"][name] = f"{type(exc).__name__}: {exc}"
                say(f"{name} failed: {exc}")
        try:
            run_head_to_head(prep, body, work, env, args, out)
        except Exception as exc:
            out["errors"]["head to head"] = f"{type(exc).__name__}: {exc}"
            say(f"head to head failed: {exc}")
    finally:
        procs.stop_all()
        out["config"]["load_avg_at_end"] = os.getloadavg()
        out["goals"] = goal_records(out)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2, default=str))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"work folder kept: {work}")
    print_report(out)
    say(f"results: {RESULTS.relative_to(ROOT)}")
    return 0
