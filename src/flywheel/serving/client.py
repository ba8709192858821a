"""A small client for quick checks over every protocol (``flywheel predict``).

Each function sends the same rows and returns the server's answer as a dict in the native
``/v1/predict`` shape (``{"predictions": [...], "probabilities": ..., "model", "version"}``)
where the protocol carries it, so answers can be compared across protocols.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from flywheel.errors import FlywheelError, RemoteError, UsageError

__all__ = ["PROTOCOLS", "predict_remote"]

PROTOCOLS = ("rest", "mlflow", "v2", "grpc", "ws", "mqtt")


def predict_remote(
    records: list[dict[str, Any]],
    *,
    protocol: str,
    url: str,
    model: str = "churn",
    api_key: str | None = None,
    timeout: float = 10.0,
    mqtt_request_topic: str = "flywheel/predict/#",
    mqtt_reply_prefix: str = "flywheel/reply",
) -> dict[str, Any]:
    """Send ``records`` to a flywheel server over ``protocol`` and return its answer.

    MQTT requests go below the server's request topic filter (``<filter>/cli/<id>``) with an
    MQTT 5 response topic below ``mqtt_reply_prefix``."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
    if not records:
        raise UsageError("No records to send. Fix: pass --json '{...}' or --file rows.json.")
    headers = {"x-api-key": api_key} if api_key else {}
    if "://" not in url and protocol in _SCHEMES:  # host:port, as curl takes it
        url = f"{_SCHEMES[protocol]}://{url}"
    with _translated(url, protocol):
        if protocol in ("rest", "mlflow", "v2"):
            return _http(records, protocol, url.rstrip("/"), model, headers, timeout)
        if protocol == "grpc":
            return _grpc(records, url, model, timeout)
        if protocol == "ws":
            return asyncio.run(_ws(records, url, headers, timeout))
        return asyncio.run(_mqtt(records, url, timeout, mqtt_request_topic, mqtt_reply_prefix))


# the scheme a URL given as host:port gets, per protocol (gRPC's target is host:port itself)
_SCHEMES = {"rest": "http", "mlflow": "http", "v2": "http", "ws": "ws", "mqtt": "mqtt"}

_TRANSPORT_MODULES = ("httpx", "httpcore", "websockets", "aiomqtt", "paho")


@contextmanager
def _translated(url: str, protocol: str) -> Iterator[None]:
    """The transport libraries' errors (refused, timed out, closed) as :class:`RemoteError`."""
    try:
        yield
    except FlywheelError:
        raise
    except Exception as exc:
        transport = isinstance(exc, OSError | TimeoutError)
        if not (transport or type(exc).__module__.startswith(_TRANSPORT_MODULES)):
            raise
        raise RemoteError(
            f"Could not get an answer from {url} over {protocol}: "
            f"{type(exc).__name__}: {exc or 'timed out'}. "
            "Fix: start `flywheel serve`, or pass the server's address with --url.",
            url=url,
            protocol=protocol,
        ) from exc


def _http(
    records: list[dict[str, Any]],
    protocol: str,
    url: str,
    model: str,
    headers: dict[str, str],
    timeout: float,
) -> dict[str, Any]:
    import httpx

    if protocol == "rest":
        path, body = "/v1/predict", {"records": records}
    elif protocol == "mlflow":
        path, body = "/invocations", {"dataframe_records": records}
    else:
        path, body = f"/v2/models/{model}/infer", {"inputs": _v2_inputs(records)}
    response = httpx.post(
        url + path,
        content=orjson.dumps(body),
        timeout=timeout,
        headers={"content-type": "application/json", **headers},
    )
    if response.status_code >= 400:
        raise RemoteError(
            f"{protocol} {path} answered {response.status_code}: {response.text}",
            status=response.status_code,
        )
    answer: dict[str, Any] = response.json()
    return answer


def _v2_inputs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inputs = []
    for name in records[0]:
        values = [r.get(name) for r in records]
        numeric = all(v is None or isinstance(v, int | float) for v in values)
        data = (
            [float("nan") if v is None else v for v in values]
            if numeric
            else ["" if v is None else str(v) for v in values]
        )
        inputs.append(
            {
                "name": name,
                "datatype": "FP32" if numeric else "BYTES",
                "shape": [len(values)],
                "data": data,
            }
        )
    return inputs


def _grpc(records: list[dict[str, Any]], target: str, model: str, timeout: float) -> dict[str, Any]:
    import grpc

    from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
    from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name=model, id=uuid.uuid4().hex)
    for item in _v2_inputs(records):
        tensor = request.inputs.add(
            name=item["name"], datatype=item["datatype"], shape=item["shape"]
        )
        if item["datatype"] == "FP32":
            tensor.contents.fp32_contents.extend(item["data"])
        else:
            tensor.contents.bytes_contents.extend(s.encode() for s in item["data"])
    target = target.removeprefix("grpc://")
    with grpc.insecure_channel(target) as channel:
        try:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise RemoteError(
                f"gRPC ModelInfer at {target} failed: {exc.code().name}: {exc.details()}"
            ) from exc
    out: dict[str, Any] = {
        "model": reply.model_name,
        "version": reply.model_version,
        # the server's id (the one /v1/feedback and lineage take); reply.id echoes ours
        "request_id": reply.parameters["request_id"].string_param or reply.id,
        "client_id": reply.id,
    }
    for tensor in reply.outputs:
        c = tensor.contents
        values = list(
            c.int64_contents
            or c.fp32_contents
            or c.fp64_contents
            or [b.decode() for b in c.bytes_contents]
        )
        if tensor.name == "probabilities" and len(tensor.shape) == 2:
            k = int(tensor.shape[1])
            values = [values[i : i + k] for i in range(0, len(values), k)]
        out["predictions" if tensor.name == "label" else tensor.name] = values
    return out


async def _ws(
    records: list[dict[str, Any]], url: str, headers: dict[str, str], timeout: float
) -> dict[str, Any]:
    import websockets

    ids = [str(i) for i in range(len(records))]
    items = [{"id": i, "record": r} for i, r in zip(ids, records, strict=True)]
    async with websockets.connect(
        url.rstrip("/") + "/v1/stream", additional_headers=headers
    ) as socket:
        await socket.send(orjson.dumps({"items": items}).decode())
        answers: dict[str, Any] = {}
        while len(answers) < len(ids):
            frame = orjson.loads(await asyncio.wait_for(socket.recv(), timeout))
            answers[str(frame.get("id"))] = frame
    failed = [answers[i] for i in ids if "error" in answers[i]]
    if failed:  # as an HTTP door's 4xx: exit 12 with the server's words
        raise RemoteError(
            f"ws /v1/stream answered {len(failed)} of {len(ids)} record(s) with an error: "
            f"{orjson.dumps(failed[0]).decode()}",
            errors=len(failed),
        )
    return {"answers": [answers[i] for i in ids]}


async def _mqtt(
    records: list[dict[str, Any]], url: str, timeout: float, request_topic: str, reply_prefix: str
) -> dict[str, Any]:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from flywheel.serving.mqtt import parse_mqtt_url

    endpoint = parse_mqtt_url(url, key="--url")
    tag = uuid.uuid4().hex
    reply_topic = f"{reply_prefix.rstrip('/')}/cli/{tag}"
    base = request_topic.removesuffix("#").rstrip("/")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic, props.CorrelationData = reply_topic, tag.encode()
    async with aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        username=endpoint.username,
        password=endpoint.password,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe(reply_topic, qos=1)
        await client.publish(
            f"{base}/cli/{tag}",
            orjson.dumps({"records": records}),
            qos=1,
            properties=props,
        )
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                answer: dict[str, Any] = orjson.loads(message.payload)  # type: ignore[arg-type]
                if "error" in answer:  # as an HTTP door's 4xx: exit 12 with the server's words
                    raise RemoteError(
                        f"mqtt {base} answered an error: {orjson.dumps(answer).decode()}"
                    )
                return answer
    raise RemoteError("No MQTT answer.")  # pragma: no cover - the loop returns or times out
