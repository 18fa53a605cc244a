"""A lean, pipelined connection to Redis for what every request does (its limits check).

redis-py's pipeline costs tens of microseconds of Python per call (a pipeline object, a pooled
connection, per-command bookkeeping): a fifth of a worker's CPU at full load. Here hiredis packs
the commands and parses the replies, a batch is one write on one connection, and replies are
matched to batches in order. Failures are raised as `ConnectionError` or `TimeoutError`, which
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
        # Batches sent, oldest first: (replies expected, replies so far, future, timeout handle).
        self._waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]], asyncio.TimerHandle]] = deque()

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to `commands`, sent in one write."""
        if self._transport is None:
            await self._connect()
        return await self._send(commands)

    def _send(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError("the connection to Redis is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        timer = loop.call_later(self._timeout, self._timed_out)
        self._waiting.append((len(commands), [], future, timer))
        transport.write(b"".join(hiredis.pack_command(command) for command in commands))
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
            for reply in await self._send(hello):
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
            expected, replies, future, timer = self._waiting[0]
            replies.append(reply)
            if len(replies) == expected:
                self._waiting.popleft()
                timer.cancel()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionError("the connection to Redis was lost"))

    def _timed_out(self) -> None:
        self._fail(TimeoutError("Redis did not answer in time"))
        self._drop()  # later replies would answer the wrong batches

    def _fail(self, exc: Exception) -> None:
        while self._waiting:
            _, _, future, timer = self._waiting.popleft()
            timer.cancel()
            if not future.done():
                future.set_exception(exc)

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def close(self) -> None:
        self._drop()
