"""The request examples of the serving docs, sent as written to a served churn champion.

docs/serving.md, grpc.md, websocket.md and mqtt.md show curl commands, Open Inference v2
bodies, grpcurl, tritonclient and websockets snippets and MQTT payloads. A newcomer copies
them after `flywheel run`: every one must be answered, not refused with 422 "missing
required field(s)". The champion of the session's `small_world` (`flywheel run`, the churn
model's 14 features) is served by `flywheel serve` on free ports, and each example is:

- read out of its fenced block (the ``-d '...'`` of every curl and grpcurl command, the
  JSON objects of the ``json`` blocks, ``records=`` in Python, the client snippets);
- checked statically: every record holds exactly the served model's input names;
- sent as written (only the documented ports are changed) and answered without an error,
  its sample answer (the ``# {...}`` after a curl, the answer blocks) holding the keys the
  server really answers with;
- the client snippets run as written; the server's own request counters must show answers
  and no error.

``{...}`` placeholders in the JSON blocks stand for a record: they are filled with the first
of ``examples/customers.json`` before being sent.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import FLYWHEEL_BIN, copy_folder, start_serve, stop_serve

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCS = ("serving", "grpc", "websocket", "mqtt")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
CUSTOMER = json.loads((REPO / "examples" / "customers.json").read_text())[0]
# Keys of the request envelopes; any other key makes an object a bare record.
ENVELOPE = {"id", "model", "version", "records", "record", "items", "columns", "inputs"}
MQTT_BROKER = ("127.0.0.1", 1883)


def blocks(doc: str) -> list[tuple[str, str]]:
    """The fenced blocks of ``docs/<doc>.md``: (language, text)."""
    return FENCE.findall((REPO / "docs" / f"{doc}.md").read_text(encoding="utf-8"))


def shell_commands(text: str) -> list[str]:
    """A shell block's commands: a command runs from a line starting in the first column up to
    the next such line (continuations and quoted JSON are indented); ``\\`` joins lines.
    Comment lines are kept as their own commands (they hold the sample answers)."""
    commands: list[str] = []
    for line in text.splitlines():
        if line[:1] not in ("", " ", "\t") or not commands:
            commands.append(line)
        else:
            commands[-1] += "\n" + line
    return [re.sub(r"\\\n\s*", " ", c) for c in commands if c.strip()]


def json_objects(text: str, *, starts: str = r"^\s*") -> list[Any]:
    """Every JSON object in ``text`` that begins at a match of ``starts`` + ``{`` and parses."""
    decoder = json.JSONDecoder()
    found, end = [], 0
    for match in re.finditer(starts + r"\{", text, re.M):
        at = match.end() - 1
        if at < end:
            continue
        try:
            obj, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            continue
        found.append(obj)
    return found


@dataclass
class Curl:
    path: str
    body: Any
    answer: Any  # the sample answer in the comments that follow, or None
    more: list[Any]  # other request bodies shown in those comments (the 2-D tensor form)


def curl_examples(doc: str) -> list[Curl]:
    """Each ``curl ... -d '...'`` of the doc's shell blocks, with the comment lines after it."""
    out: list[Curl] = []
    for lang, text in blocks(doc):
        if lang not in ("bash", "sh", "shell"):
            continue
        commands = shell_commands(text)
        for i, command in enumerate(commands):
            if not command.startswith("curl "):
                continue
            body = re.search(r"-d '(.*?)'", command, re.S)
            url = re.search(r"\s(?:https?://)?[\w.]+:\d+(/\S*)", command)
            assert body and url, f"{doc}.md: a curl without an inline -d body:\n{command}"
            comments = []
            for later in commands[i + 1 :]:
                if not later.startswith("#"):
                    break
                comments += [re.sub(r"^#\s?", "", ln) for ln in later.splitlines()]
            shown = json_objects("\n".join(comments))
            requests = [o for o in shown if "inputs" in o]
            answers = [o for o in shown if "inputs" not in o]
            assert len(answers) <= 1, answers
            out.append(
                Curl(url.group(1), json.loads(body.group(1)), (answers or [None])[0], requests)
            )
    return out


def grpcurl_infer_bodies(doc: str) -> list[Any]:
    """The ``-d '...'`` bodies of the doc's grpcurl ModelInfer commands."""
    out = []
    for lang, text in blocks(doc):
        for command in shell_commands(text) if lang in ("bash", "sh", "shell") else []:
            if command.startswith("grpcurl ") and command.rstrip().endswith("/ModelInfer"):
                body = re.search(r"-d '(.*?)'", command, re.S)
                assert body, command
                out.append(json.loads(body.group(1)))
    return out


def json_block_objects(doc: str) -> list[Any]:
    """The JSON objects of the doc's ``json`` blocks, one per object that starts a line;
    ``{...}`` placeholders filled with a real customer record."""
    filled = json.dumps(CUSTOMER)
    out = []
    for lang, text in blocks(doc):
        if lang == "json":
            out += json_objects(text.replace("{...}", filled), starts=r"^")
    return out


def is_answer(obj: dict[str, Any]) -> bool:
    return bool({"prediction", "predictions", "error", "outputs"} & obj.keys())


def python_records(doc: str) -> list[dict[str, Any]]:
    """The literal ``records=[...]`` arguments of the doc's Python blocks."""
    out: list[dict[str, Any]] = []
    for lang, text in blocks(doc):
        if lang != "python":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.keyword) and node.arg == "records":
                out += ast.literal_eval(node.value)
    return out


def client_snippets(doc: str) -> list[str]:
    """The doc's Python code that asks a server: ``python`` blocks that open a client, and
    the ``python - <<'EOF'`` heredocs of shell blocks."""
    out = []
    for lang, text in blocks(doc):
        if lang == "python" and re.search(
            r"InferenceServerClient\(|websockets\.connect\(|insecure_channel\(", text
        ):
            out.append(text)
        if lang in ("bash", "sh", "shell"):
            out += re.findall(r"^python3? - <<'EOF'[^\n]*\n(.*?)^EOF$", text, re.S | re.M)
    return out


def records_in(body: Any, features: list[str]) -> Iterator[tuple[str, set[str]]]:
    """(where, the feature names it carries) for every record or column set in a request."""
    if isinstance(body, list):
        for i, item in enumerate(body):
            yield from ((f"[{i}]{w}", k) for w, k in records_in(item, features))
        return
    assert isinstance(body, dict), body
    if "items" in body:
        for i, item in enumerate(body["items"]):
            yield f"items[{i}].record", set(item["record"])
    if "record" in body:
        yield "record", set(body["record"])
    if "records" in body:
        for i, record in enumerate(body["records"]):
            yield f"records[{i}]", set(record)
    if "columns" in body and isinstance(body["columns"], dict):
        yield "columns", set(body["columns"])
    if "dataframe_split" in body:
        yield "dataframe_split.columns", set(body["dataframe_split"]["columns"])
    if "inputs" in body:
        tensors = body["inputs"]
        names = {t["name"] for t in tensors}
        if len(tensors) == 1 and not names & set(features):  # one [n, n_features] tensor
            width = int(tensors[0]["shape"][-1])
            columns = set(features) if width == len(features) else {f"<{width} columns>"}
            yield "inputs (one 2-D tensor)", columns
        else:
            yield "inputs", names
    if not body.keys() & (ENVELOPE | {"dataframe_split"}):
        yield "record", set(body)


def assert_full_records(where: str, body: Any, features: list[str]) -> None:
    found = list(records_in(body, features))
    assert found, f"{where}: no record found in {body!r}"
    want = set(features)
    for place, names in found:
        assert names == want, (
            f"{where} {place}: missing {sorted(want - names)}, unknown {sorted(names - want)}"
        )


# --------------------------------------------------------------------------- the server


@dataclass
class Served:
    port: int
    grpc_port: int
    features: list[str]
    mqtt_prefix: str | None  # the served MQTT topics' prefix, when a broker answers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> dict[str, float]:
        """``flywheel_requests_total`` summed by status class: ``ok`` and ``failed``."""
        text = httpx.get(f"{self.url}/metrics").text
        out = {"ok": 0.0, "failed": 0.0}
        for status, value in re.findall(
            r'^flywheel_requests_total\{[^}]*status="(\d+)"[^}]*\} (\S+)$', text, re.M
        ):
            out["ok" if status == "200" else "failed"] += float(value)
        return out

    def localize(self, code: str) -> str:
        """The documented ports (8080 REST, 8081 gRPC) replaced by the served ones."""
        return re.sub(
            r"(?<=:)8081\b", str(self.grpc_port), re.sub(r"(?<=:)8080\b", str(self.port), code)
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _broker_up() -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(MQTT_BROKER) == 0


@pytest.fixture(scope="module")
def served(
    small_world: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = copy_folder(small_world[0], tmp_path_factory.mktemp("docs-examples") / "f")
    port, grpc_port = _free_port(), _free_port()
    settings = yaml.safe_load((folder / "flywheel.yaml").read_text()) or {}
    serving: dict[str, Any] = {"port": port, "grpc_port": grpc_port}
    prefix = None
    if _broker_up():  # private topics on the shared broker: no other server answers them
        prefix = f"fw-docs-{uuid.uuid4().hex[:8]}"
        serving.update(
            mqtt_url=f"mqtt://{MQTT_BROKER[0]}:{MQTT_BROKER[1]}",
            mqtt_request_topic=f"{prefix}/predict/#",
            mqtt_reply_prefix=f"{prefix}/reply",
            mqtt_error_topic=f"{prefix}/errors",
            mqtt_client_id=prefix,
        )
    settings["serving"] = serving
    (folder / "flywheel.yaml").write_text(yaml.safe_dump(settings))
    proc = start_serve([FLYWHEEL_BIN, "serve"], folder, port)
    try:
        (model,) = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert model["name"] == "churn", model
        features = [i["name"] for i in model["inputs"]]
        assert len(features) == 14 and "tenure_months" in features, features
        yield Served(port, grpc_port, features, prefix)
    finally:
        if proc.poll() is None:
            stop_serve(proc)


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("doc", DOCS)
def test_every_request_record_holds_the_models_inputs(doc: str, served: Served) -> None:
    bodies = [(f"curl {c.path}", b) for c in curl_examples(doc) for b in [c.body, *c.more]]
    bodies += [("grpcurl ModelInfer", b) for b in grpcurl_infer_bodies(doc)]
    bodies += [("json block", o) for o in json_block_objects(doc) if not is_answer(o)]
    bodies += [("python records=", {"records": python_records(doc)})] if python_records(doc) else []
    assert bodies, f"docs/{doc}.md shows no request body"
    for where, body in bodies:
        if where == "grpcurl ModelInfer":  # proto JSON: the tensors are named as v2 REST's
            body = {"inputs": body["inputs"]}
        assert_full_records(f"docs/{doc}.md, {where}", body, served.features)


def _sample_matches(where: str, sample: dict[str, Any], real: dict[str, Any]) -> None:
    assert set(sample) == set(real), (
        f"{where}: the sample answer's keys {sorted(sample)} are not the server's {sorted(real)}"
    )
    for key in ("model", "model_name", "version", "model_version", "classes"):
        if key in real:
            assert sample[key] == real[key], (
                f"{where}: sample {key} {sample[key]!r} != {real[key]!r}"
            )


def test_serving_curl_examples_are_answered(served: Served) -> None:
    examples = curl_examples("serving")
    assert {c.path for c in examples} >= {
        "/v1/predict",
        "/invocations",
        "/v2/models/churn/infer",
    }
    for example in examples:
        answers = [
            httpx.post(served.url + example.path, json=b) for b in [example.body, *example.more]
        ]
        for answer in answers:
            assert answer.status_code == 200, f"curl {example.path}: {answer.text}"
        if example.answer is not None:
            _sample_matches(f"curl {example.path}", example.answer, answers[0].json())


def test_grpcurl_example_is_answered(served: Served) -> None:
    import grpc
    from google.protobuf import json_format

    from flywheel.serving._proto import grpc_predict_v2_pb2 as pb
    from flywheel.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc

    (body,) = grpcurl_infer_bodies("grpc")
    request = json_format.ParseDict(body, pb.ModelInferRequest())  # grpcurl's JSON mapping
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert answer.model_name == "churn" and [o.name for o in answer.outputs] == [
        "label",
        "probabilities",
    ]


def test_websocket_messages_are_answered(served: Served) -> None:
    import websockets

    objects = json_block_objects("websocket")
    messages = [o for o in objects if not is_answer(o)]
    samples = [o for o in objects if "prediction" in o]
    assert len(messages) >= 2 and samples, objects

    async def ask() -> list[dict[str, Any]]:
        answers = []
        async with websockets.connect(f"ws://127.0.0.1:{served.port}/v1/stream") as ws:
            for message in messages:
                await ws.send(json.dumps(message))
                for _ in message.get("items", [message]):
                    answers.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        return answers

    answers = asyncio.run(ask())
    assert [a for a in answers if "error" in a] == []
    _sample_matches("websocket answer", samples[0], answers[0])


def test_mqtt_payloads_are_answered(served: Served) -> None:
    objects = json_block_objects("mqtt")
    payloads = [o for o in objects if not is_answer(o)]
    samples = [o for o in objects if "predictions" in o]
    assert len(payloads) >= 3 and samples, objects
    (sample,) = samples
    # The client's id is echoed as `id` and `client_id`; `request_id` is the server's own.
    assert sample.get("client_id") == sample.get("id"), sample
    assert re.fullmatch(r"[0-9a-f]{24}", sample["request_id"]), sample
    for payload in payloads:  # "the JSON body of POST /v1/predict, plus an optional id"
        body = {k: v for k, v in payload.items() if k != "id"}
        answer = httpx.post(f"{served.url}/v1/predict", json=body)
        assert answer.status_code == 200, f"mqtt payload {payload}: {answer.text}"
    if served.mqtt_prefix is None:  # no broker here: the REST answer plus the echoed ids
        with_id = next(p for p in payloads if "id" in p)
        real = httpx.post(
            f"{served.url}/v1/predict",
            json={k: v for k, v in with_id.items() if k != "id"},
            headers={"X-Request-ID": with_id["id"]},
        ).json()
        _sample_matches("mqtt answer", sample, {"id": with_id["id"], **real})
        return
    answers = _mqtt_round_trips(served.mqtt_prefix, payloads)
    assert [a for a in answers if "error" in a] == []
    (real,) = [a for a in answers if "id" in a]
    assert real["client_id"] == real["id"] != real["request_id"], real
    _sample_matches("mqtt answer", sample, real)


def _mqtt_round_trips(prefix: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Publish each payload (MQTT 3.1.1, QoS 1) to ``<prefix>/predict/docs/<n>`` and return
    the answers from the derived reply topics, in order."""
    import paho.mqtt.client as mqtt

    answers: dict[str, dict[str, Any]] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{prefix}-asker")
    subscribed = threading.Event()
    client.on_message = lambda _c, _u, msg: answers.__setitem__(
        msg.topic.rsplit("/", 1)[-1], json.loads(msg.payload)
    )
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(*MQTT_BROKER)
    client.loop_start()
    try:
        client.subscribe(f"{prefix}/reply/docs/#", qos=1)
        assert subscribed.wait(30), "no SUBACK from the broker"  # before any request goes
        for n, payload in enumerate(payloads):
            client.publish(f"{prefix}/predict/docs/{n}", json.dumps(payload), qos=1)
        deadline = time.monotonic() + 30
        while len(answers) < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert len(answers) == len(payloads), answers
    return [answers[str(n)] for n in range(len(payloads))]


@pytest.mark.parametrize(("doc", "expected"), [("serving", 2), ("grpc", 2), ("websocket", 1)])
def test_client_snippets_run_and_are_answered(doc: str, expected: int, served: Served) -> None:
    snippets = client_snippets(doc)
    assert len(snippets) == expected, f"docs/{doc}.md: {len(snippets)} client snippets"
    for code in snippets:
        before = served.counts()
        compiled = compile(
            served.localize(code), f"docs/{doc}.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        done = eval(compiled, {"__name__": "__docs__"})  # the docs' own code
        if inspect.iscoroutine(done):  # top-level await / async with
            asyncio.run(done)
        deadline = time.monotonic() + 5  # a door may count a request just after answering it
        while (after := served.counts())["ok"] == before["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert after["failed"] == before["failed"], f"docs/{doc}.md snippet refused:\n{code}"
        assert after["ok"] > before["ok"], f"docs/{doc}.md snippet asked nothing:\n{code}"
