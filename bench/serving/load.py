"""Load generators, all run on the load core: wrk (throughput and latency at N connections),
a sequential keep-alive client, a gRPC ModelInfer client, and an exact-count client for the
prediction-log check."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.serving.procs import pinned

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


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
    return asyncio.run(_grpc_load(target, request, concurrency, duration))


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


async def _mqtt_load(
    host: str,
    port: int,
    root: str,
    payload: bytes,
    concurrency: int,
    duration: float,
    ready_timeout: float,
) -> Result:
    """Round trips through the broker: publish to ``root/predict/bench/<i>`` (QoS 1, no
    response topic: the adapter answers on ``root/reply/bench/<i>``), ``concurrency`` in
    flight, each worker waiting for its own reply."""
    import aiomqtt

    waiting: dict[str, asyncio.Future[bytes]] = {}
    counter = iter(range(10**12))
    # aiomqtt warns on every publish while more than 10 wait for the broker's acks: expected
    # with 16 in flight, and it would drown the report
    quiet = logging.getLogger("bench.mqtt")
    quiet.setLevel(logging.ERROR)
    async with aiomqtt.Client(host, port, identifier=f"{root}-client", logger=quiet) as client:
        await client.subscribe(f"{root}/reply/#", qos=1)

        async def reader() -> None:
            async for message in client.messages:
                future = waiting.pop(str(message.topic).rsplit("/", 1)[-1], None)
                if future is not None and not future.done():
                    future.set_result(bytes(message.payload))

        read_task = asyncio.create_task(reader())

        async def once(timeout: float) -> float | None:
            key = str(next(counter))
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            waiting[key] = future
            t0 = time.perf_counter()
            await client.publish(f"{root}/predict/bench/{key}", payload, qos=1)
            try:
                answer = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                waiting.pop(key, None)
                return None
            return (time.perf_counter() - t0) * 1e3 if b'"error"' not in answer else None

        deadline = time.perf_counter() + ready_timeout
        while await once(2.0) is None:  # the adapter subscribes after loading the model
            if time.perf_counter() > deadline:
                read_task.cancel()
                raise RuntimeError("no MQTT answer from the flywheel adapter")
        times: list[float] = []
        errors = 0
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                took = await once(10.0)
                if took is None:
                    errors += 1
                else:
                    times.append(took)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await read_task
    return Result(
        len(times) / elapsed,
        _percentile(times, 0.5) if times else None,
        _percentile(times, 0.99) if times else None,
        len(times) + errors,
        errors,
        elapsed,
        f"aiomqtt client, QoS 1, {concurrency} in flight",
    )


def mqtt_load(
    host: str,
    port: int,
    root: str,
    payload: bytes,
    concurrency: int,
    duration: float,
    ready_timeout: float = 120.0,
) -> Result:
    return asyncio.run(_mqtt_load(host, port, root, payload, concurrency, duration, ready_timeout))
