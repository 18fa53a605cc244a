"""A lean, pipelined connection to Redis for what every request does (its limits check).

redis-py's pipeline costs tens of microseconds of Python per call (a pipeline object, a pooled
connection, per-command bookkeeping): a fifth of a worker's CPU at full load. Here hiredis packs
a command and parses the replies, a command is one write on one connection, and replies are
matched to commands in order. Failures are raised as `ConnectionError` or `TimeoutError`, which
`RedisLink.run` takes for an outage; error replies are returned, as `hiredis.ReplyError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import hiredis
from redis.connection import parse_url


class RedisWire(asyncio.Protocol):
    def __init__(self, url: str, timeout: float) -> None:
        self._options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._reader = hiredis.Reader()
        # Batches sent, oldest first: (replies expected, replies so far, future, deadline).
        self._waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]], float]] = deque()
        # One timer watches the oldest batch's deadline: a timer per batch cost each request ~2 us.
        self._watchdog: asyncio.TimerHandle | None = None

    async def call(self, *command: Any) -> Any:
        """The reply to one command."""
        if self._transport is None:
            await self._connect()
        return (await self._send(hiredis.pack_command(command), 1))[0]

    def _send(self, payload: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """Write `payload` (`replies` commands) at once; its future gets their replies."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError("the connection to Redis is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        deadline = loop.time() + self._timeout
        self._waiting.append((replies, [], future, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._watch)
        transport.write(payload)
        return future

    async def _connect(self) -> None:
        if self._connecting is not None:  # another call is connecting: wait for it
            await asyncio.shield(self._connecting)
            return
        connecting = self._connecting = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._open(), self._timeout)
        except BaseException as exc:
            failure = ConnectionError(f"cannot connect to Redis: {type(exc).__name__}")
            connecting.set_exception(failure)
            connecting.exception()  # retrieved: the waiters are told, not the loop
            self._connecting = None
            self._drop()
            if isinstance(exc, asyncio.CancelledError):
                raise  # the caller's own cancellation (its client left), not an outage
            raise failure from None
        connecting.set_result(None)
        self._connecting = None

    async def _open(self) -> None:
        loop, o = asyncio.get_running_loop(), self._options
        if "path" in o:
            await loop.create_unix_connection(lambda: self, o["path"])
        else:
            await loop.create_connection(lambda: self, o.get("host", "localhost"), o.get("port", 6379))
        hello: list[tuple[Any, ...]] = []
        if o.get("password"):
            hello.append(
                ("AUTH", o["username"], o["password"]) if o.get("username") else ("AUTH", o["password"])
            )
        if o.get("db"):
            hello.append(("SELECT", o["db"]))
        if hello:
            payload = b"".join(hiredis.pack_command(command) for command in hello)
            for reply in await self._send(payload, len(hello)):
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError("Redis refused the connection's set-up")

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, without the base class
        self._reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if not self._waiting:
                continue  # a reply to a batch that timed out
            expected, replies, future, _ = self._waiting[0]
            replies.append(reply)
            if len(replies) == expected:
                self._waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionError("the connection to Redis was lost"))

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        loop, deadline = asyncio.get_running_loop(), self._waiting[0][3]
        if loop.time() + 0.001 < deadline:  # the oldest batch came later than the one it was set for
            self._watchdog = loop.call_at(deadline, self._watch)
            return
        self._fail(TimeoutError("Redis did not answer in time"))
        self._drop()  # later replies would answer the wrong batches

    def _fail(self, exc: Exception) -> None:
        while self._waiting:
            _, _, future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._drop()
