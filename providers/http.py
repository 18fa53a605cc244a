"""The transport every provider shares: one pool of HTTP/1.1 connections per backend
(providers/http1.py), failures mapped to UpstreamError once, and SSE bodies read as batches of events.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from providers.base import ErrorCode, UpstreamError
from providers.errors import error_from_response, error_from_transport, redact
from providers.http1 import Pool, PoolWaits, Response, TransportError, encode_headers, request_line
from providers.sse import Event, SSEDecoder

__all__ = ["HttpClient", "HttpConfig", "PoolWaits", "SSEStream"]


@dataclass(frozen=True, slots=True)
class HttpConfig:
    name: str  # the backend's name, used in error messages
    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # redacted from any upstream text shown to clients
    connect_timeout: float = 5.0
    read_timeout: float = 600.0
    # A stream holds its connection for its whole length, so the pool must be sized in concurrent
    # streams, not in requests per second: with 256, the 257th stream waited silently in the
    # gateway. Far above what one worker holds (bench/README.md), so that the backend's own queue,
    # which it reports, is where requests wait; waits here are exported (PoolWaits).
    max_connections: int = 16384


_TRANSPORT_ERRORS = (TransportError, TimeoutError)


class HttpClient:
    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.base = config.base_url.rstrip("/")
        url = urlsplit(self.base)
        self._prefix = f"{url.scheme}://{url.netloc}"  # what the URLs given start with
        self._origin = f"{url.scheme}://{url.netloc.rpartition('@')[2]}"  # the pool's: no credentials
        self._pool: Pool | None = None
        self.pool_waits = PoolWaits()
        # Lower-cased once: every request carries headers of its own (its x-request-id).
        self._configured = {k.lower(): v for k, v in config.headers.items()}
        if url.username is not None and "authorization" not in self._configured:
            # Credentials in the URL (a proxy's basic auth), sent as aiohttp sent them.
            user_pass = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
            self._configured["authorization"] = "Basic " + base64.b64encode(user_pass).decode()
        self._host = url.netloc.rpartition("@")[2]
        # The header lines every request carries, encoded once.
        self._fixed = encode_headers(self._base_headers(self._configured))

    def _base_headers(self, configured: Mapping[str, str]) -> dict[str, str]:
        return {"host": self._host, "content-type": "application/json", **configured}

    def _connections(self) -> Pool:
        # Built lazily, inside the running loop, and reused for every call.
        if self._pool is None:
            c = self.config
            self._pool = Pool(
                self._origin, c.max_connections, c.connect_timeout, c.read_timeout, self.pool_waits
            )
        return self._pool

    def _encode(self, method: str, url: str, body: Any, headers: Mapping[str, str] | None) -> bytes:
        """The whole request on the wire. A request's own headers go on top of the configured ones;
        where both name one (a list header such as `anthropic-beta`), the values are joined rather
        than the configured one replaced."""
        if not url.startswith(self._prefix):
            raise ValueError(f"a URL not on {self._origin}")  # not the URL: it may hold credentials
        target = url[len(self._prefix) :] or "/"
        data = b"" if body is None else orjson.dumps(body)
        try:
            if not headers:
                lines = self._fixed
            elif any(k.lower() in self._configured for k in headers):
                merged = dict(self._configured)
                for k, v in headers.items():
                    merged[k.lower()] = f"{merged[k.lower()]},{v}" if k.lower() in merged else v
                lines = encode_headers(self._base_headers(merged))
            else:
                lines = self._fixed + encode_headers(headers)
            head = request_line(method, target) + lines
        except ValueError as exc:
            raise UpstreamError(400, str(exc), code=ErrorCode.INVALID_VALUE) from None
        if body is None and method == "GET":
            return head + b"\r\n"
        return b"%scontent-length: %d\r\n\r\n%s" % (head, len(data), data)

    async def _send(self, method: str, url: str, body: Any, headers: Mapping[str, str] | None) -> Response:
        data = self._encode(method, url, body, headers)
        try:
            return await self._connections().request(data)
        except _TRANSPORT_ERRORS as exc:
            raise error_from_transport(self.config.name, exc) from None

    async def _read(self, resp: Response) -> bytes:
        """The whole body; the connection goes back to the pool, or is closed if the read failed."""
        try:
            raw = await resp.read()
        except _TRANSPORT_ERRORS as exc:
            resp.close()
            raise error_from_transport(self.config.name, exc) from None
        except BaseException:
            resp.close()
            raise
        resp.release()
        return raw

    def error(self, status: int, headers: Mapping[str, str], raw: bytes) -> UpstreamError:
        return error_from_response(self.config.name, status, headers, raw, self.config.secrets)

    async def call(
        self,
        method: str,
        url: str,
        body: Any = None,
        limit_seconds: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One whole exchange; returns (status, body) and raises UpstreamError for status >= 400,
        except 404, which the caller may want to read as "not supported"."""
        if limit_seconds is not None:
            try:
                async with asyncio.timeout(limit_seconds):
                    return await self.call(method, url, body, headers=headers)
            except TimeoutError as exc:
                raise error_from_transport(self.config.name, exc) from None
        resp = await self._send(method, url, body, headers)
        raw = await self._read(resp)
        if resp.status >= 400 and resp.status != 404:
            raise self.error(resp.status, resp.headers, raw)
        return resp.status, raw

    async def post_json(
        self, url: str, body: Any, headers: Mapping[str, str] | None = None
    ) -> tuple[dict[str, Any], bytes]:
        status, raw = await self.call("POST", url, body, headers=headers)
        if status == 404:
            raise self.error(404, {}, raw)
        return self.parse(raw), raw

    def parse(self, raw: bytes) -> dict[str, Any]:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamError(
                502, f"backend '{self.config.name}' returned an unreadable body", retryable=True
            )
        return parsed

    async def model_ids(self) -> list[str]:
        """GET /models: OpenAI and Anthropic both list `{"data": [{"id": ...}, ...]}`."""
        status, raw = await self.call("GET", self.base + "/models", limit_seconds=5)
        if status == 404:
            raise self.error(404, {}, raw)
        try:
            return [str(m["id"]) for m in orjson.loads(raw)["data"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UpstreamError(
                502, f"backend '{self.config.name}' returned an unreadable model list"
            ) from None

    async def open_stream(self, url: str, body: Any, headers: Mapping[str, str] | None = None) -> Response:
        resp = await self._send("POST", url, body, headers)
        if resp.status < 400 and resp.content_type == "text/event-stream":
            return resp
        raw = await self._read(resp)
        if resp.status >= 400:
            raise self.error(resp.status, resp.headers, raw)
        # Say what it did: "failed (HTTP 502)" read as if the backend had failed, though it answered.
        what = redact(resp.content_type or "no content type", self.config.secrets)
        raise UpstreamError(
            502,
            f"backend '{self.config.name}' answered a streamed request with {what} "
            f"instead of an event stream (HTTP {resp.status})",
            code=ErrorCode.UPSTREAM_ERROR,
            retryable=True,
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class SSEStream:
    """An upstream SSE body as batches of events (see providers.base.EventStream).

    `transform` sees each event first and returns it (possibly rewritten), None to end the stream
    (OpenAI's `[DONE]`), or raises UpstreamError (an `error` event)."""

    __slots__ = ("_backend", "_done", "_resp", "_transform")

    def __init__(self, backend: str, resp: Response, transform: Callable[[Event], Event | None]) -> None:
        self._backend = backend
        self._resp = resp
        self._transform = transform
        self._done = False

    async def __aiter__(self) -> AsyncIterator[list[Event]]:
        decoder = SSEDecoder()
        try:
            async for chunk in self._resp.chunks():
                batch = []
                for raw_event in decoder.feed(chunk):
                    event = self._transform(raw_event)
                    if event is None:
                        self._done = True
                        break
                    batch.append(event)
                if batch:
                    yield batch
                if self._done:
                    return
        except _TRANSPORT_ERRORS as exc:
            raise error_from_transport(self._backend, exc) from None
        self._done = True  # the body ended: the upstream is done talking

    async def aclose(self) -> None:
        if self._done:
            self._resp.release()  # back to the pool if the body was read to its end
        else:
            # Dropping the connection is what tells vLLM to abort generation and free its KV cache.
            self._resp.close()
