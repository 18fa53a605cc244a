"""The transport every provider shares: one pooled aiohttp session per backend, failures mapped
to UpstreamError once, and SSE bodies read as batches of events.

aiohttp rather than httpx: on this machine its client forwarded several times more requests per
second (bench/README.md).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from providers.base import ErrorCode, UpstreamError
from providers.errors import error_from_response, error_from_transport, redact
from providers.sse import Event, SSEDecoder


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


class PoolWaits:
    """Requests waiting for a free pooled connection: how many now, and the seconds waited in all.
    Read by whoever exports metrics (providers never import the gateway)."""

    __slots__ = ("_taken", "queued", "seconds")

    def __init__(self) -> None:
        self.queued = 0
        self.seconds = 0.0
        self._taken = 0.0

    def take(self) -> float:
        """Seconds waited since the last call (for a counter)."""
        seconds, self._taken = self.seconds - self._taken, self.seconds
        return seconds


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector that counts its queue. Not an aiohttp TraceConfig (connection_queued_start/end):
    any trace config makes aiohttp send a dozen signals per request, measured at 4.4% of the
    gateway's CPU under 1,000 concurrent streams, while this costs nothing until the pool is full.
    It overrides a private method: tests/test_upstream_pool.py fails if aiohttp renames it."""

    def __init__(self, waits: PoolWaits, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool_waits = waits

    async def _wait_for_available_connection(self, *args: Any, **kwargs: Any) -> None:
        waits = self._pool_waits
        waits.queued += 1
        started = time.monotonic()
        try:
            await super()._wait_for_available_connection(*args, **kwargs)
        finally:  # cancelled while queued, too
            waits.queued -= 1
            waits.seconds += time.monotonic() - started


class HttpClient:
    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.base = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self.pool_waits = PoolWaits()
        # Lower-cased once: every request carries headers of its own (its x-request-id).
        self._configured = {k.lower(): v for k, v in config.headers.items()}

    def _client(self) -> aiohttp.ClientSession:
        # Built lazily, inside the running loop, and reused for every call.
        if self._session is None:
            c = self.config
            self._session = aiohttp.ClientSession(
                connector=_Connector(self.pool_waits, limit=c.max_connections, ttl_dns_cache=300),
                # sock_connect, not connect: aiohttp's `connect` also covers the wait for a free
                # pooled connection, so a queued request failed as "timed out" after 5 s.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=c.connect_timeout, sock_read=c.read_timeout
                ),
                headers={"Content-Type": "application/json", **c.headers},
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _per_request(self, headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
        """A request's own headers on top of the configured ones; where both name one (a list header
        such as `anthropic-beta`), the values are joined rather than the configured one replaced."""
        if not headers:
            return None
        configured = self._configured
        return {
            k: f"{configured[k.lower()]},{v}" if k.lower() in configured else v for k, v in headers.items()
        }

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
        data = None if body is None else orjson.dumps(body)
        kwargs: dict[str, Any] = {}
        if limit_seconds is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=limit_seconds)
        if headers:
            kwargs["headers"] = self._per_request(headers)
        try:
            async with self._client().request(method, url, data=data, **kwargs) as resp:
                raw = await resp.read()
                if resp.status >= 400 and resp.status != 404:
                    raise self.error(resp.status, resp.headers, raw)
                return resp.status, raw
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise error_from_transport(self.config.name, exc) from None

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

    async def open_stream(
        self, url: str, body: Any, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        try:
            resp = await self._client().post(url, data=orjson.dumps(body), headers=self._per_request(headers))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise error_from_transport(self.config.name, exc) from None
        if resp.status < 400 and resp.content_type.startswith("text/event-stream"):
            return resp
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise error_from_transport(self.config.name, exc) from None
        finally:
            resp.release()
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
        if self._session is not None:
            await self._session.close()
            self._session = None


class SSEStream:
    """An upstream SSE body as batches of events (see providers.base.EventStream).

    `transform` sees each event first and returns it (possibly rewritten), None to end the stream
    (OpenAI's `[DONE]`), or raises UpstreamError (an `error` event)."""

    __slots__ = ("_backend", "_done", "_resp", "_transform")

    def __init__(
        self, backend: str, resp: aiohttp.ClientResponse, transform: Callable[[Event], Event | None]
    ) -> None:
        self._backend = backend
        self._resp = resp
        self._transform = transform
        self._done = False

    async def __aiter__(self) -> AsyncIterator[list[Event]]:
        decoder = SSEDecoder()
        try:
            async for chunk in self._resp.content.iter_any():
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
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise error_from_transport(self._backend, exc) from None
        self._done = True  # the body ended: the upstream is done talking

    async def aclose(self) -> None:
        if self._done:
            self._resp.release()
        else:
            # Dropping the connection is what tells vLLM to abort generation and free its KV cache.
            self._resp.close()
