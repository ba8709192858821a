"""Load generators, all run on the load core: wrk (throughput and latency at N connections),
a sequential keep-alive client, gRPC ModelInfer (h2load, else a grpc.aio client), MQTT round
trips (paho clients in several processes), and an exact-count client for the prediction-log
check."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import multiprocessing as mp
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.serving.procs import pinned

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
GRPC_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Result:
    """One measured scenario; latencies in ms. ``errors``: non-2xx + socket errors."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    duration_s: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> Result:
    """wrk's ``--latency`` report → :class:`Result`."""

    def number(pattern: str, default: float = 0.0) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else default

    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", out, re.M))
    requests = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if requests is None:
        raise ValueError(f"unparsed wrk output:\n{out}")
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), "
        r"timeout (\d+)",
        out,
    )
    non2xx = int(number(r"Non-2xx or 3xx responses: (\d+)"))
    sock = sum(int(x) for x in socket_errors.groups()) if socket_errors else 0
    detail = []
    if non2xx:
        detail.append(f"non-2xx {non2xx}")
    if sock:
        detail.append(
            "socket errors connect/read/write/timeout " + "/".join(socket_errors.groups())
        )  # type: ignore[union-attr]
    return Result(
        rps=number(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=_ms(percentiles["50"]) if "50" in percentiles else None,
        p99_ms=_ms(percentiles["99"]) if "99" in percentiles else None,
        requests=int(requests.group(1)),
        errors=non2xx + sock,
        duration_s=_ms(requests.group(2) + requests.group(3)) / 1e3,
        detail="; ".join(detail),
    )


def lua_script(path: Path, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> Path:
    level = "=" * 4  # long bracket that cannot occur in a JSON body
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = [{level}[{body.decode()}]{level}]",
        f'wrk.headers["Content-Type"] = "{ctype}"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk_command(
    url: str, script: Path, connections: int, duration: float, core: int | None
) -> list[str]:
    return pinned(
        core,
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
    )


def run_wrk(
    url: str, script: Path, connections: int, duration: float, core: int | None
) -> tuple[Result, str]:
    cmd = wrk_command(url, script, connections, duration, core)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse_wrk(out.stdout), out.stdout


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential(port: int, path: str, body: bytes, ctype: str, n: int) -> Result:
    """One keep-alive connection, ``n`` one-row requests one after another."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": ctype}
    times: list[float] = []
    errors = 0
    started = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            response.read()
            ok = 200 <= response.status < 300
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            ok = False
        times.append((time.perf_counter() - t0) * 1e3)
        errors += not ok
    elapsed = time.perf_counter() - started
    conn.close()
    return Result(
        n / elapsed, _percentile(times, 0.50), _percentile(times, 0.99), n, errors, elapsed
    )


# --------------------------------------------------------------------------- gRPC


def v2_grpc_request(
    model: str, row: dict[str, Any], strings: set[str], output: str | None = "predict_proba"
) -> Any:
    """A KServe v2 ``ModelInferRequest``: one input per column, content type "pd"."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.parameters["content_type"].string_param = "pd"
    for name, value in row.items():
        tensor = request.inputs.add(name=name, shape=[1])
        if name in strings:
            tensor.datatype = "BYTES"
            tensor.parameters["content_type"].string_param = "str"
            tensor.contents.bytes_contents.append(str(value).encode())
        else:
            tensor.datatype = "FP64"
            tensor.contents.fp64_contents.append(float("nan") if value is None else value)
    if output:
        request.outputs.add(name=output)
    return request


def grpc_ready(target: str, request: Any) -> bool:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=2)
            return True
        except grpc.RpcError:
            return False


async def _grpc_load(target: str, request: Any, concurrency: int, duration: float) -> Result:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request, timeout=30)  # connection + warm-up
        times: list[float] = []
        errors = 0
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    await stub.ModelInfer(request, timeout=10)
                    times.append((time.perf_counter() - t0) * 1e3)
                except grpc.aio.AioRpcError:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    done = len(times) + errors
    return Result(
        len(times) / elapsed,
        _percentile(times, 0.5) if times else None,
        _percentile(times, 0.99) if times else None,
        done,
        errors,
        elapsed,
        f"python grpc.aio client, {concurrency} in flight",
    )


def grpc_load(target: str, request: Any, concurrency: int, duration: float) -> Result:
    """``concurrency`` ModelInfer calls in flight: h2load where installed (a Python client
    tops out near the server's rate: one core runs both the client's gRPC and its Python),
    else a ``grpc.aio`` client."""
    if shutil.which("h2load"):
        return h2load_grpc(target, grpc_frame(request), concurrency, duration)
    return asyncio.run(_grpc_load(target, request, concurrency, duration))


def grpc_frame(request: Any) -> bytes:
    """A protobuf message as one gRPC message frame (uncompressed): what h2load sends."""
    body = request.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def h2load_grpc(
    target: str, framed: bytes, concurrency: int, duration: float, warmup: float = 1.0
) -> Result:
    """h2load (nghttp2, C) as a gRPC load tool: ``concurrency`` ModelInfer calls in flight on
    one HTTP/2 connection, as one gRPC channel carries them. It checks HTTP status only; a
    gRPC error is a 200 with grpc-status in the trailers, so callers check one answer with a
    real client first (``grpc_ready``) and the server's own error count after."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        data, log = Path(tmp) / "request.bin", Path(tmp) / "requests.tsv"
        data.write_bytes(framed)
        cmd = [
            "h2load",
            "-c1",
            f"-m{concurrency}",
            "-d",
            str(data),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--warm-up-time",
            f"{max(1, round(warmup))}",
            "-D",
            f"{max(1, round(duration))}",
            "--log-file",
            str(log),
            f"http://{target}{GRPC_INFER_PATH}",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 60)
        if out.returncode != 0:
            raise RuntimeError(f"h2load failed ({out.returncode}): {out.stderr or out.stdout}")
        times = [int(line.split("\t")[2]) / 1e3 for line in log.read_text().splitlines()]
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out.stdout)
    failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out.stdout)
    return Result(
        float(rate.group(1)) if rate else 0.0,
        _percentile(times, 0.50) if times else None,
        _percentile(times, 0.99) if times else None,
        len(times),
        sum(int(x) for x in failed.groups()) if failed else 0,
        duration,
        f"h2load, one HTTP/2 connection, {concurrency} streams",
    )


# --------------------------------------------------------------------------- exact count


async def _counted(
    port: int, path: str, body: bytes, prefix: str, n: int, concurrency: int
) -> tuple[int, int]:
    """Send ``n`` requests with X-Request-Id ``prefix-i``; return (2xx answers, others)."""
    import aiohttp

    ok = bad = 0
    queue = iter(range(n))
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker() -> None:
            nonlocal ok, bad
            for i in queue:
                headers = {"Content-Type": "application/json", "X-Request-Id": f"{prefix}-{i}"}
                try:
                    async with s.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if 200 <= response.status < 300:
                            ok += 1
                        else:
                            bad += 1
                except aiohttp.ClientError:
                    bad += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, bad


def counted(
    port: int, path: str, body: bytes, prefix: str, n: int, concurrency: int = 16
) -> tuple[int, int]:
    return asyncio.run(_counted(port, path, body, prefix, n, concurrency))


# --------------------------------------------------------------------------- MQTT


class QuickAck:
    """A client socket that acknowledges what it reads at once (TCP_QUICKACK after a read).

    Why: Mosquitto leaves Nagle's algorithm on unless ``set_tcp_nodelay true`` (the system
    broker here does), so once it has sent a client the PUBACK of its request it holds the
    reply until that PUBACK is acknowledged, and a client with nothing to send acknowledges
    only when its delayed-ACK timer fires: ~40 ms per QoS 1 round trip, whatever the server
    does. A client that acknowledges at once (or a broker with ``set_tcp_nodelay true``)
    does not wait; ``mqtt_paho(quick_ack=False)`` measures the plain client."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _mqtt_process(
    broker: tuple[str, int],
    root: str,
    wid: int,
    inflight: int,
    window: tuple[float, float],
    payload: bytes,
    quick_ack: bool,
    queue: Any,
) -> None:
    """One paho client with its own network loop, callbacks only: ``inflight`` QoS 1
    requests on ``root/predict/c<wid>/<n>``, each answered on ``root/reply/c<wid>/<n>``;
    puts (latencies in ms of the answers in ``window``, error answers) on ``queue``."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    start_at, stop_at = window
    finished = [False]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{root}-c{wid}")
    client.max_inflight_messages_set(0)  # unlimited: the server's Receive Maximum decides
    sent: dict[str, float] = {}
    times: list[float] = []
    errors = [0]
    counter = itertools.count()
    prefix = f"{root}/predict/c{wid}/"

    def send() -> None:
        key = str(next(counter))
        sent[key] = time.monotonic()
        client.publish(prefix + key, payload, qos=1)

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if quick_ack:
            c._sock = QuickAck(c._sock)
        c.subscribe(f"{root}/reply/c{wid}/#", qos=1)

    def on_subscribe(c: Any, userdata: Any, mid: Any, rc: Any, props: Any) -> None:
        for _ in range(inflight):
            send()

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        t0 = sent.pop(message.topic.rsplit("/", 1)[1], None)
        if t0 is None:
            return
        now = time.monotonic()
        if start_at <= now < stop_at:
            if b'"error"' in message.payload:
                errors[0] += 1
            else:
                times.append((now - t0) * 1e3)
        if now < stop_at:
            send()
        elif not sent:
            finished[0] = True

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(broker[0], broker[1], 30)
    give_up = stop_at + 2.0  # answers lost (e.g. sent before the adapter subscribed)
    while not finished[0] and time.monotonic() < give_up:
        client.loop(0.05)
    client.disconnect()
    queue.put((times, errors[0]))


def run_processes(target: Callable[..., None], arglists: list[tuple[Any, ...]]) -> list[Any]:
    """``target(*args, queue)`` in one process per arglist; what each put on the queue."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=target, args=(*a, queue), daemon=True) for a in arglists]
    for w in workers:
        w.start()
    try:
        return [queue.get(timeout=300) for _ in workers]
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.kill()


def split(total: int, parts: int) -> list[int]:
    """``total`` requests in flight over at most ``parts`` clients."""
    return [n for n in (total // parts + (i < total % parts) for i in range(parts)) if n]


def mqtt_paho(
    host: str,
    port: int,
    root: str,
    payload: bytes,
    concurrency: int,
    duration: float,
    *,
    clients: int = 4,
    quick_ack: bool = True,
    warmup: float = 1.0,
) -> Result:
    """QoS 1 round trips (MQTT 3.1.1 clients: the adapter answers on the derived reply
    topic) through the broker, ``concurrency`` in flight over ``clients`` paho processes."""
    parts = split(concurrency, clients)
    now = time.monotonic()
    window = (now + 0.5 + warmup, now + 0.5 + warmup + duration)  # connect, warm up
    results = run_processes(
        _mqtt_process,
        [((host, port), root, i, n, window, payload, quick_ack) for i, n in enumerate(parts)],
    )
    times = [t for r in results for t in r[0]]
    errors = sum(r[1] for r in results)
    return Result(
        len(times) / duration,
        _percentile(times, 0.5) if times else None,
        _percentile(times, 0.99) if times else None,
        len(times) + errors,
        errors,
        duration,
        f"paho, {len(parts)} processes, QoS 1, {concurrency} in flight"
        + (", quick ACKs" if quick_ack else ""),
    )


def mqtt_ready(host: str, port: int, root: str, payload: bytes, timeout: float) -> None:
    """Wait until the adapter answers (it subscribes once the model is loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        results = run_processes(
            _mqtt_process, [((host, port), root, 99, 1, (now, now + 0.5), payload, True)]
        )
        if results[0][0]:
            return
    raise RuntimeError("no MQTT answer from the flywheel adapter")


def mqtt_load(
    host: str,
    port: int,
    root: str,
    payload: bytes,
    concurrency: int,
    duration: float,
    ready_timeout: float = 120.0,
) -> Result:
    """Round trips through the broker once the adapter answers (:func:`mqtt_paho`)."""
    mqtt_ready(host, port, root, payload, ready_timeout)
    return mqtt_paho(host, port, root, payload, concurrency, duration)
