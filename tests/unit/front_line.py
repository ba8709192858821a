"""A test-only front door in one file: JSON lines over TCP, registered by name.

``serving.fronts: {line: {factory: "tests.unit.front_line:front", port: 9000}}`` turns it on;
no flywheel file knows it. Each line is ``{"id": ..., "records": [...]}``; each answer line is
the native answer, or ``{"error": {...}}`` with the same kinds as every other door.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson

from flywheel.serving.predictor import Predictor
from flywheel.serving.types import PredictRequest


class LineFront:
    name = "line"

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._predictor: Predictor | None = None

    def describe(self) -> str:
        return f"line {self.host}:{self.port}"

    async def start(self, predictor: Predictor) -> None:
        self._predictor = predictor
        self._server = await asyncio.start_server(self._client, self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        predictor = self._predictor
        assert predictor is not None
        calls = predictor.calls
        try:
            async for line in reader:
                data: Any = None
                call = calls.begin("line", "line")
                try:
                    data = orjson.loads(line)
                    call.client_id = str(data.get("id")) if data.get("id") else None
                    response = await predictor.predict(
                        PredictRequest(
                            records=data["records"],
                            request_id=call.request_id,
                            client_id=call.client_id,
                            protocol="line",
                        )
                    )
                    answer: dict[str, Any] = response.to_dict()
                    status = 200
                except Exception as exc:
                    error = calls.failed(call, exc)
                    answer, status = {"error": error.to_dict()["error"]}, error.status
                calls.end(call, status)
                writer.write(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
                await writer.drain()
        finally:
            writer.close()


def front(settings: Any, block: Mapping[str, Any]) -> LineFront:
    return LineFront(str(block.get("host", "127.0.0.1")), int(block["port"]))
