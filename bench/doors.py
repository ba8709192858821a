"""The other doors against the main one: REST, gRPC and MQTT of ONE ``flywheel serve`` (issue #12).

Run: ``.venv/bin/python -m bench.doors [--quick] [--home DIR] [--rounds N] [--duration S]``

One run, unattended:

1. ``flywheel run`` in a temp FLYWHEEL_HOME makes a champion (or ``--home`` reuses one);
2. ``flywheel serve`` is started pinned to one core (``taskset -c 0``) with REST, gRPC and
   MQTT on (Mosquitto at ``--mqtt-broker``, default 127.0.0.1:1883, with a topic root and
   client id of its own, so other users of the broker are not disturbed);
3. from the other core, at 16 requests in flight, one 1-row request at a time: REST
   ``/v1/predict`` (wrk, one connection per request in flight), gRPC ``ModelInfer`` (h2load
   on one HTTP/2 connection, 16 streams, the request the serving benchmark sends: one typed
   FP64/BYTES tensor per feature; and the same with ``raw_input_contents``, as tritonclient
   sends), and the MQTT round trip (QoS 1 request → reply, paho clients in ``--clients``
   processes); ``--rounds`` alternating rounds, the median reported;
4. for each: req/s, p50, p99, the server's CPU per answered request (``/proc/<pid>/stat``
   utime+stime over the run ÷ the 2xx answers its ``/metrics`` counted), the load tool's
   own CPU (is the client the bottleneck?), the ratio to REST and PASS/MISS against the
   goals: gRPC ≥ 5,000 req/s, MQTT ≥ 3,000 req/s, both with p99 ≤ 20 ms;
5. ``bench/results/doors.json``.

Native load tools are used where installed (``apt-get install -y wrk nghttp2-client``);
without them a multi-process Python client takes their place (and says so). The numbers
depend on what else the machine runs: the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.serving import load, procs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "doors.json"
PY = sys.executable
FLYWHEEL = str(Path(PY).parent / "flywheel")
GOALS = {"grpc": 5000.0, "mqtt": 3000.0}  # req/s per server core, issue #12
P99_GOAL_MS = 20.0


def say(msg: str) -> None:
    print(f"[bench.doors {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Door:
    """One measured door; latencies in ms; ``server_cpu_us``: server CPU per 2xx answer."""

    name: str
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    answered: int
    errors: int
    server_cpu_us: float | None
    client_cpu_share: float  # the load tool's CPU seconds / wall seconds
    tool: str
    batch_rows: float | None = None  # mean rows per micro-batch during the run
    rounds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- server


class Watch:
    """The server's CPU time and its own count of answers, before and after a run."""

    def __init__(self, server: procs.Server, protocol: str) -> None:
        self.server, self.protocol = server, protocol

    def _cpu_s(self) -> float:
        assert self.server.proc is not None
        fields = Path(f"/proc/{self.server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _counts(self) -> tuple[int, int, float, float]:
        """(2xx answers, other answers) of this protocol; (rows, batches) of every batch."""
        _, text = self.server.get("/metrics")
        ok = other = 0
        rows = batches = 0.0
        for line in text.decode().splitlines():
            if (
                line.startswith("flywheel_requests_total{")
                and f'protocol="{self.protocol}"' in line
            ):
                value = int(float(line.rsplit(" ", 1)[1]))
                if 'status="200"' in line:
                    ok += value
                else:
                    other += value
            elif line.startswith("flywheel_batch_rows_sum"):
                rows += float(line.rsplit(" ", 1)[1])
            elif line.startswith("flywheel_batch_rows_count"):
                batches += float(line.rsplit(" ", 1)[1])
        return ok, other, rows, batches

    def __enter__(self) -> Watch:
        self.cpu0, self.counts0 = self._cpu_s(), self._counts()
        self.usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.client_cpu = (usage.ru_utime - self.usage0.ru_utime) + (
            usage.ru_stime - self.usage0.ru_stime
        )
        self.cpu = self._cpu_s() - self.cpu0
        counts = self._counts()
        self.ok, self.other = counts[0] - self.counts0[0], counts[1] - self.counts0[1]
        batches = counts[3] - self.counts0[3]
        self.batch_rows = (counts[2] - self.counts0[2]) / batches if batches else None

    def door(self, name: str, rps: float, p50: Any, p99: Any, errors: int, tool: str) -> Door:
        return Door(
            name,
            round(rps, 1),
            None if p50 is None else round(p50, 3),
            None if p99 is None else round(p99, 3),
            self.ok,
            errors + self.other,
            round(self.cpu / self.ok * 1e6, 1) if self.ok else None,
            round(self.client_cpu / self.wall, 2),
            tool,
            None if self.batch_rows is None else round(self.batch_rows, 2),
        )


def clean_env(home: Path) -> dict[str, str]:
    """The caller's environment without any FLYWHEEL_* setting, then FLYWHEEL_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    return {**env, "FLYWHEEL_HOME": str(home), "PYTHONPATH": str(ROOT)}


def build_champion(env: dict[str, str], customers: int, log: Path) -> None:
    say(f"flywheel run --customers {customers} (FLYWHEEL_HOME={env['FLYWHEEL_HOME']}) ...")
    with log.open("wb") as out:
        done = subprocess.run(
            [FLYWHEEL, "run", "--customers", str(customers)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise SystemExit(f"`flywheel run` failed ({done.returncode}); log {log}")


_ROW = """
import json, math
from flywheel.config import load_settings
from flywheel.data.snapshots import latest_snapshot, read_snapshot
settings = load_settings()
frame = read_snapshot(settings, latest_snapshot(settings, settings.source.dataset))
print(frame.dropna().iloc[len(frame.dropna()) // 2].to_json())
"""


def sample_row(env: dict[str, str], inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """One real snapshot row (no nulls), the model's inputs only, as JSON values."""
    out = subprocess.run(
        [PY, "-c", _ROW], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        t["name"]: str(row[t["name"]]) if t["datatype"] == "BYTES" else float(row[t["name"]])
        for t in inputs
    }


def start_server(
    env: dict[str, str], work: Path, core: int, broker: str, root: str
) -> tuple[procs.Server, int, int]:
    port, grpc_port = procs.free_port(), procs.free_port()
    env = {
        **env,
        # the shared broker: topics and a client id of this run's own
        "FLYWHEEL_SERVING__MQTT_CLIENT_ID": f"{root}-server",
        "FLYWHEEL_SERVING__MQTT_REQUEST_TOPIC": f"{root}/predict/#",
        "FLYWHEEL_SERVING__MQTT_REPLY_PREFIX": f"{root}/reply",
        "FLYWHEEL_SERVING__MQTT_ERROR_TOPIC": f"{root}/errors",
    }
    argv = [FLYWHEEL, "serve", "--port", str(port), "--grpc-port", str(grpc_port)]
    server = procs.Server(
        "flywheel",
        [*argv, "--mqtt-url", f"mqtt://{broker}"],
        port,
        ("/v2/models", b"", ""),
        env=env,
        cwd=ROOT,
        log_path=work / "serve.log",
        core=core,
        ready=lambda: _get_ok(port, "/v2/health/ready"),
    )
    cold = server.start()
    say(f"flywheel serve pinned to core {core}: ready in {cold:.1f} s")
    return server, port, grpc_port


def _get_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


# --------------------------------------------------------------------------- bodies


def grpc_request(model: str, row: dict[str, Any], raw: bool) -> bytes:
    """A ModelInferRequest, gRPC-framed: typed FP64/BYTES contents (as the serving benchmark
    sends) or FP32/BYTES raw_input_contents (as tritonclient sends)."""
    from flywheel.serving._proto import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    for name, value in row.items():
        text = isinstance(value, str)
        tensor = request.inputs.add(name=name, shape=[1], datatype="BYTES" if text else "FP64")
        if raw:
            data = value.encode() if text else b""
            tensor.datatype = "BYTES" if text else "FP32"
            request.raw_input_contents.append(
                struct.pack("<I", len(data)) + data if text else struct.pack("<f", value)
            )
        elif text:
            tensor.contents.bytes_contents.append(value.encode())
        else:
            tensor.contents.fp64_contents.append(value)
    return load.grpc_frame(request)


def check_grpc(grpc_port: int, framed: bytes) -> None:
    """One ModelInfer through a real gRPC client, so h2load (which sees only HTTP status)
    measures answers, not errors."""
    import grpc

    from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
    from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(pb.ModelInferRequest.FromString(framed[5:]), timeout=10)
    if not answer.outputs:
        raise RuntimeError(f"gRPC ModelInfer answered no outputs: {answer}")


# --------------------------------------------------------------------------- load: REST, gRPC


def rest_wrk(watch: Watch, port: int, body: bytes, args: argparse.Namespace, work: Path) -> Door:
    script = load.lua_script(work / "v1.lua", body, "application/json")
    url = f"http://127.0.0.1:{port}/v1/predict"
    load.run_wrk(url, script, args.inflight, 1, args.load_core)  # warm-up
    with watch:
        result, _ = load.run_wrk(url, script, args.inflight, args.duration, args.load_core)
    tool = f"wrk -t1 -c{args.inflight}"
    return watch.door("REST /v1/predict", result.rps, result.p50_ms, result.p99_ms, 0, tool)


def grpc_h2load(
    watch: Watch, name: str, grpc_port: int, framed: bytes, args: argparse.Namespace
) -> Door:
    with watch:
        r = load.h2load_grpc(f"127.0.0.1:{grpc_port}", framed, args.inflight, args.duration)
    return watch.door(name, r.rps, r.p50_ms, r.p99_ms, r.errors, r.detail)


def _pct(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


async def _py_worker(kind: str, target: str, body: bytes, inflight: int, window: Any) -> Any:
    """One client process: ``inflight`` requests in a loop; latencies in the window."""
    start_at, stop_at = window
    times: list[float] = []
    errors = 0
    if kind == "rest":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight))
        headers = {"Content-Type": "application/json"}

        async def once() -> bool:
            async with session.post(target, data=body, headers=headers) as response:
                await response.read()
                return response.status == 200
    else:
        import grpc

        from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
        from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc

        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest.FromString(body[5:])

        async def once() -> bool:
            await stub.ModelInfer(request, timeout=10)
            return True

    async def worker() -> None:
        nonlocal errors
        while (t0 := time.monotonic()) < stop_at:
            try:
                ok = await once()
            except Exception:
                ok = False
            now = time.monotonic()
            if start_at <= now < stop_at:
                if ok:
                    times.append((now - t0) * 1e3)
                else:
                    errors += 1

    await asyncio.gather(*(worker() for _ in range(inflight)))
    await (session.close() if kind == "rest" else channel.close())
    return times, errors


def _py_process(kind: str, target: str, body: bytes, n: int, window: Any, queue: Any) -> None:
    queue.put(asyncio.run(_py_worker(kind, target, body, n, window)))


def python_load(
    watch: Watch, name: str, kind: str, target: str, body: bytes, args: argparse.Namespace
) -> Door:
    """The fallback without wrk/h2load: ``--clients`` processes, asyncio in each."""
    parts = load.split(args.inflight, args.clients)
    now = time.monotonic()
    window = (now + 2.0, now + 2.0 + args.duration)
    results = load.run_processes(_py_process, [(kind, target, body, n, window) for n in parts])
    times = [t for r in results for t in r[0]]
    errors = sum(r[1] for r in results)
    tool = f"python {'aiohttp' if kind == 'rest' else 'grpc.aio'}, {len(parts)} processes"
    return watch.door(
        name, len(times) / args.duration, _pct(times, 0.5), _pct(times, 0.99), errors, tool
    )


# --------------------------------------------------------------------------- load: MQTT


def mqtt_door(
    watch: Watch,
    broker: tuple[str, int],
    root: str,
    payload: bytes,
    args: argparse.Namespace,
    quick_ack: bool = True,
) -> Door:
    """MQTT round trips (:func:`bench.serving.load.mqtt_paho`); ``quick_ack=False``: clients
    that leave delayed ACKs on meet the broker's Nagle (see ``load.QuickAck``)."""
    with watch:
        r = load.mqtt_paho(
            *broker, root, payload, args.inflight, args.duration, clients=args.clients,
            quick_ack=quick_ack,
        )  # fmt: skip
    name = "MQTT round trip" + ("" if quick_ack else " (plain client)")
    return watch.door(name, r.rps, r.p50_ms, r.p99_ms, r.errors, r.detail)


# --------------------------------------------------------------------------- report


def verdicts(doors: dict[str, Door]) -> list[dict[str, Any]]:
    rest = doors["rest"].rps
    out = []
    for key, goal in (("grpc", GOALS["grpc"]), ("mqtt", GOALS["mqtt"])):
        door = doors[key]
        ok = door.rps >= goal and door.p99_ms is not None and door.p99_ms <= P99_GOAL_MS
        out.append(
            {
                "door": door.name,
                "goal": f">= {goal:,.0f} req/s, p99 <= {P99_GOAL_MS:g} ms",
                "rps": door.rps,
                "p99_ms": door.p99_ms,
                "ratio_to_rest": round(door.rps / rest, 3) if rest else None,
                "verdict": "PASS" if ok else "MISS",
            }
        )
    return out


def print_report(out: dict[str, Any]) -> None:
    doors = out["doors"]
    rest = doors["rest"]["rps"]
    print()
    print(f"16 in flight, 1-row requests, server pinned to core {out['config']['server_core']}")
    head = f"{'door':<28}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}"
    print(head + f"{'x REST':>8}{'batch':>7}{'client CPU':>12}  tool")
    for door in doors.values():
        cpu = door["server_cpu_us"]
        print(
            f"{door['name']:<28}{door['rps']:>9,.0f}{_f(door['p50_ms']):>9}"
            f"{_f(door['p99_ms']):>9}{(f'{cpu:,.0f}' if cpu else '-'):>12}"
            f"{door['rps'] / rest if rest else 0:>8.2f}{_f(door['batch_rows'], 1):>7}"
            f"{door['client_cpu_share']:>12.2f}  {door['tool']}"
            + (f"  ERRORS {door['errors']}" if door["errors"] else "")
        )
    print()
    for goal in out["goals"]:
        print(
            f"{goal['verdict']}  {goal['door']}: {goal['rps']:,.0f} req/s "
            f"({goal['ratio_to_rest']:.2f}x REST), p99 {_f(goal['p99_ms'])} ms; goal {goal['goal']}"
        )
    load_avg = out["config"]["load_avg_at_start"], out["config"]["load_avg_at_end"]
    print(f"load average at start {load_avg[0]}, at end {load_avg[1]}")


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s runs, one round")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 2, quick 1)")
    parser.add_argument("--inflight", type=int, default=16, help="requests in flight")
    parser.add_argument("--clients", type=int, default=4, help="processes of a Python client")
    parser.add_argument("--home", type=Path, help="reuse a FLYWHEEL_HOME with a champion")
    parser.add_argument("--customers", type=int, default=2000, help="`flywheel run` world size")
    parser.add_argument("--mqtt-broker", default="127.0.0.1:1883", help="Mosquitto HOST:PORT")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--python-clients", action="store_true", help="no wrk/h2load")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    return args


def measure_round(
    server: procs.Server,
    ports: tuple[int, int],
    bodies: dict[str, bytes],
    args: argparse.Namespace,
    work: Path,
    root: str,
) -> dict[str, Door]:
    port, grpc_port = ports
    host, mqtt_port = args.mqtt_broker.rsplit(":", 1)
    native = not args.python_clients
    doors: dict[str, Door] = {}
    rest = Watch(server, "rest")
    if native and shutil.which("wrk"):
        doors["rest"] = rest_wrk(rest, port, bodies["rest"], args, work)
    else:
        url = f"http://127.0.0.1:{port}/v1/predict"
        with rest:
            doors["rest"] = python_load(rest, "REST /v1/predict", "rest", url, bodies["rest"], args)
    for key, name in (("grpc", "gRPC ModelInfer (typed)"), ("grpc_raw", "gRPC ModelInfer (raw)")):
        watch = Watch(server, "grpc")
        if native and shutil.which("h2load"):
            doors[key] = grpc_h2load(watch, name, grpc_port, bodies[key], args)
        else:
            target = f"127.0.0.1:{grpc_port}"
            with watch:
                doors[key] = python_load(watch, name, "grpc", target, bodies[key], args)
    broker = (host, int(mqtt_port))
    doors["mqtt"] = mqtt_door(Watch(server, "mqtt"), broker, root, bodies["mqtt"], args)
    doors["mqtt_plain"] = mqtt_door(
        Watch(server, "mqtt"), broker, root, bodies["mqtt"], args, quick_ack=False
    )
    for door in doors.values():
        cpu = f"{door.server_cpu_us:,.0f} µs/req" if door.server_cpu_us else "-"
        say(f"  {door.name}: {door.rps:,.0f} req/s, p99 {_f(door.p99_ms)} ms, server CPU {cpu}")
    return doors


def median_doors(rounds: list[dict[str, Door]]) -> dict[str, Door]:
    """Per door, the round with the median req/s (its own latencies and CPU)."""
    out = {}
    for key in rounds[0]:
        ordered = sorted((r[key] for r in rounds), key=lambda d: d.rps)
        door = ordered[(len(ordered) - 1) // 2]
        door.rounds = [r[key].rps for r in rounds]
        out[key] = door
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs.install_cleanup()
    if shutil.which("taskset") is None:
        raise SystemExit("taskset is missing: apt-get install -y util-linux")
    host, mqtt_port = args.mqtt_broker.rsplit(":", 1)
    with socket.create_connection((host, int(mqtt_port)), timeout=2):
        pass  # no broker: fail now, not after `flywheel run`
    work = Path(tempfile.mkdtemp(prefix="bench-doors-"))
    home = args.home.resolve() if args.home else work / "home"
    env = clean_env(home)
    root = f"flywheel-doors-{secrets.token_hex(4)}"
    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "inflight": args.inflight,
            "server_core": args.server_core,
            "load_core": args.load_core,
            "mqtt_broker": args.mqtt_broker,
            "load_avg_at_start": os.getloadavg(),
            "cpu_count": os.cpu_count(),
        },
    }
    try:
        if args.home is None:
            build_champion(env, args.customers, work / "flywheel-run.log")
        server, port, grpc_port = start_server(env, work, args.server_core, args.mqtt_broker, root)
        meta = json.loads(server.get("/v2/models/churn")[1])
        row = sample_row(env, meta["inputs"])
        bodies = {
            "rest": orjson.dumps({"records": [row]}),
            "grpc": grpc_request(meta["name"], row, raw=False),
            "grpc_raw": grpc_request(meta["name"], row, raw=True),
            "mqtt": orjson.dumps({"records": [row]}),
        }
        check_grpc(grpc_port, bodies["grpc"])
        check_grpc(grpc_port, bodies["grpc_raw"])
        os.sched_setaffinity(0, {args.load_core})  # this process and its clients: load core
        load.mqtt_ready(host, int(mqtt_port), root, bodies["mqtt"], 60)
        rounds = []
        for n in range(args.rounds):
            say(f"round {n + 1} of {args.rounds} (load average {os.getloadavg()[0]:.2f})")
            rounds.append(measure_round(server, (port, grpc_port), bodies, args, work, root))
        doors = median_doors(rounds)
        out["doors"] = {k: d.to_dict() for k, d in doors.items()}
        out["goals"] = verdicts(doors)
        server.stop()
    finally:
        procs.stop_all()
        out["config"]["load_avg_at_end"] = os.getloadavg()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=2, default=str))
        if args.keep:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_report(out)
    say(f"results: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
