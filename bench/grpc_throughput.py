"""gRPC ModelInfer throughput check: req/s and latency percentiles at a fixed concurrency.

Run: ``.venv/bin/python -m bench.grpc_throughput [--concurrency 16] [--rows 1] [--seconds 5]``

It builds the tiny churn model of the serving tests (3 features: 2 numeric, 1 categorical),
starts ``flywheel.serving.grpc.serve_grpc`` in a subprocess (so client and server do not share
a GIL), then a ``grpc.aio`` client keeps ``--concurrency`` ModelInfer calls in flight on one
channel for ``--seconds`` after a warm-up, sending raw tensors as tritonclient does. A check,
not a benchmark against other servers: the number depends on the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ server process


def serve(port: int, model_json: Path) -> None:
    from flywheel.serving.config import ServedModel, ServingConfig
    from flywheel.serving.grpc import serve_grpc
    from flywheel.serving.predictor import Predictor
    from flywheel.serving.sources import ModelFiles, StaticSource
    from flywheel.training.features import FeatureSpec

    spec = json.loads(model_json.read_text())
    files = ModelFiles(
        spec["version"],
        Path(spec["path"]),
        [FeatureSpec(n, k) for n, k in spec["features"]],
        spec["task"],
        spec["classes"],
        spec["sha256"],
    )
    predictor = Predictor(
        ServingConfig(models=(ServedModel("churn"),), poll_interval_s=0.0),
        {"churn": StaticSource({files.version: files}, {"champion": "1"})},
    )
    asyncio.run(serve_grpc(predictor, "127.0.0.1", port))


# ------------------------------------------------------------------ client


def _request(rows: int) -> Any:
    import struct

    from flywheel.serving._proto import grpc_predict_v2_pb2 as pb

    rng = np.random.default_rng(0)
    request = pb.ModelInferRequest(
        model_name="churn", outputs=[{"name": "label"}, {"name": "probabilities"}]
    )
    numeric = {"tenure": rng.integers(0, 72, rows), "charges": rng.normal(70, 20, rows)}
    for name, values in numeric.items():
        request.inputs.add(name=name, datatype="FP32", shape=[rows])
        request.raw_input_contents.append(values.astype("<f4").tobytes())
    plans = [p.encode() for p in rng.choice(["basic", "pro", "max"], rows)]
    request.inputs.add(name="plan", datatype="BYTES", shape=[rows])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(p)) + p for p in plans))
    return request


async def load(
    port: int, concurrency: int, rows: int, seconds: float, warmup: float
) -> dict[str, Any]:
    import grpc

    from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
    from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc

    request = _request(rows)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 60
        while not (
            await stub.ServerReady(pb.ServerReadyRequest(), wait_for_ready=True, timeout=60)
        ).ready:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not get ready within 60 s")
            await asyncio.sleep(0.1)
        latencies: list[float] = []
        measuring = False
        stop_at = time.monotonic() + warmup + seconds

        async def worker() -> None:
            while (now := time.perf_counter()) and time.monotonic() < stop_at:
                await stub.ModelInfer(request)
                if measuring:
                    latencies.append(time.perf_counter() - now)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring, start = True, time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000.0
    return {
        "concurrency": concurrency,
        "rows_per_request": rows,
        "requests": len(ms),
        "req_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16, help="calls kept in flight")
    parser.add_argument("--rows", type=int, default=1, help="rows per ModelInfer request")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured warm-up")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # server subprocess
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.serve)
        return

    from tests.unit.serving_models import build

    with tempfile.TemporaryDirectory() as tmp:
        files = build(Path(tmp), family="logreg", version="1")
        spec = Path(tmp) / "model.json"
        spec.write_text(
            json.dumps(
                {
                    "version": files.version,
                    "path": str(files.model_path),
                    "task": files.task,
                    "features": [(f.name, f.kind) for f in files.feature_specs],
                    "classes": files.classes,
                    "sha256": files.onnx_sha256,
                }
            )
        )
        port = _free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.grpc_throughput",
                "--serve",
                str(spec),
                "--port",
                str(port),
            ]
        )
        try:
            result = asyncio.run(load(port, args.concurrency, args.rows, args.seconds, args.warmup))
        finally:
            server.terminate()
            server.wait(10)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
