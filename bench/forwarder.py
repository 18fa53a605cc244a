"""A bare forwarder: the floor for any Python gateway on the same stack (Starlette, uvicorn, uvloop,
httptools, one worker).

One route, POST /v1/chat/completions: the request body is sent unchanged to --upstream, and the
upstream's status, content type and body come back unchanged; a text/event-stream answer is relayed
chunk by chunk as it arrives. No parsing, validation, routing, metrics or error mapping.

--client chooses the HTTP client to the upstream: aiohttp, httpx, or http1 (the gateway's own,
providers/http1.py), each with a keep-alive pool sized like the gateway's (16,384 connections), so
bench/run.sh can compare them under the same load.

    python3 bench/forwarder.py --client aiohttp --upstream http://127.0.0.1:18080/json/v1/chat/completions --port 18082
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

REQUEST_HEADERS = {"Content-Type": "application/json"}
POOL = 16384  # the gateway's default: a stream holds its connection for its whole length

Handler = Callable[[Request], Awaitable[Response]]


def _is_stream(content_type: str) -> bool:
    return content_type.startswith("text/event-stream")


class _Released(Protocol):
    """aiohttp's response and providers/http1.py's: the same four members."""

    status: int

    async def read(self) -> bytes: ...

    def release(self) -> Any: ...


async def _answer(resp: _Released, content_type: str | None, chunks: AsyncIterator[bytes]) -> Response:
    """The upstream's answer as it came: relayed chunk by chunk if a stream, else read whole."""
    headers = {"content-type": content_type or "application/json"}
    if _is_stream(headers["content-type"]):

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                resp.release()

        return StreamingResponse(relay(), status_code=resp.status, headers=headers)
    try:
        data = await resp.read()
    finally:
        resp.release()
    return Response(data, status_code=resp.status, headers=headers)


def aiohttp_app(upstream: str) -> Starlette:
    import aiohttp

    session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=600),
            skip_auto_headers=("User-Agent",),
        )
        try:
            yield
        finally:
            await session.close()

    async def chat(request: Request) -> Response:
        assert session is not None
        body = await request.body()
        resp = await session.post(upstream, data=body, headers=REQUEST_HEADERS)
        return await _answer(resp, resp.headers.get("Content-Type"), resp.content.iter_any())

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)


def httpx_app(upstream: str) -> Starlette:
    import httpx

    client: httpx.AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal client
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL),
            timeout=httpx.Timeout(600.0, connect=5.0),
        )
        try:
            yield
        finally:
            await client.aclose()

    async def chat(request: Request) -> Response:
        assert client is not None
        body = await request.body()
        req = client.build_request("POST", upstream, content=body, headers=REQUEST_HEADERS)
        resp = await client.send(req, stream=True)
        content_type = resp.headers.get("content-type", "application/json")
        headers = {"content-type": content_type}
        if _is_stream(content_type):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()

            return StreamingResponse(relay(), status_code=resp.status_code, headers=headers)
        try:
            data = await resp.aread()
        finally:
            await resp.aclose()
        return Response(data, status_code=resp.status_code, headers=headers)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)


def http1_app(upstream: str) -> Starlette:
    from urllib.parse import urlsplit

    from providers.http1 import Pool, PoolWaits, encode_head

    pool: Pool | None = None
    url = urlsplit(upstream)
    head = encode_head("POST", url.path, {"host": url.netloc, **REQUEST_HEADERS})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal pool
        pool = Pool(f"{url.scheme}://{url.netloc}", POOL, 5.0, 600.0, PoolWaits())
        try:
            yield
        finally:
            pool.close()

    async def chat(request: Request) -> Response:
        assert pool is not None
        body = await request.body()
        resp = await pool.request(b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body))
        return await _answer(resp, resp.headers.get("content-type"), resp.chunks())

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=["aiohttp", "httpx", "http1"], default="aiohttp")
    parser.add_argument(
        "--upstream", required=True, help="full URL, e.g. http://127.0.0.1:18080/json/v1/chat/completions"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18082)
    args = parser.parse_args()
    app = {"aiohttp": aiohttp_app, "httpx": httpx_app, "http1": http1_app}[args.client](args.upstream)

    import uvicorn

    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
