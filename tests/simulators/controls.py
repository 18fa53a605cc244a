"""What every simulator offers the tests besides its API: scripted faults and the requests it saw."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class Controls:
    """`POST /_sim/faults` queues faults, consumed one per API request; `GET /_sim/requests` lists
    what was received (`DELETE` clears it); `GET /_sim/headers`, the headers of interest per request
    (names, and values that are not secrets); `GET /_sim/traced`, each request's `x-request-id` and
    `traceparent`.

    In a fault, the text `$KEY` stands for the simulator's own API key: an upstream that echoes the
    key back in its errors, to prove the gateway never passes it on."""

    key = ""

    def __init__(self) -> None:
        self.faults: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, Any]] = []
        self.traced: list[dict[str, str | None]] = []

    def control_routes(self) -> list[Route]:
        return [
            Route("/_sim/faults", self.set_faults, methods=["POST"]),
            Route("/_sim/requests", self.get_requests, methods=["GET", "DELETE"]),
            Route("/_sim/headers", self.get_headers, methods=["GET"]),
            Route("/_sim/traced", self.get_traced, methods=["GET", "DELETE"]),
        ]

    def next_fault(self) -> dict[str, Any]:
        if not self.faults:
            return {}
        fault = self.faults.pop(0)
        return dict(orjson.loads(orjson.dumps(fault).replace(b"$KEY", self.key.encode())))

    async def set_faults(self, request: Request) -> Response:
        self.faults = list(await request.json())
        return JSONResponse({"ok": True})

    async def get_requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.requests.clear()
        return JSONResponse(self.requests)

    async def get_headers(self, request: Request) -> Response:
        return JSONResponse(self.headers)

    def trace(self, request: Request) -> None:
        self.traced.append({k: request.headers.get(k) for k in ("x-request-id", "traceparent")})

    async def get_traced(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.traced.clear()
        return JSONResponse(self.traced)
