"""A lean, auto-pipelined connection to Redis for what every request does (its limits check).

redis-py's pipeline costs tens of microseconds of Python per call (a pipeline object, a pooled
connection, per-command bookkeeping): a fifth of a worker's CPU at full load. Here hiredis packs
a command and parses the replies, a command is one write on one connection, and replies are
matched to commands in order. Failures are raised as `ConnectionError` or `TimeoutError`, which
`RedisLink.run` takes for an outage, and as `Unsent` when the command surely never reached Redis;
error replies are returned, as `hiredis.ReplyError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import Any, cast

import hiredis
from redis.connection import parse_url


class Unsent(ConnectionError):
    """The command was not written to Redis (no connection, or held behind one that failed): it did
    not run, and sending it again cannot run it twice."""


class RedisWire(asyncio.Protocol):
    def __init__(self, url: str, timeout: float) -> None:
        self._options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader = hiredis.Reader()
        # Commands sent, oldest first: (future of the reply, deadline).
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        # One timer watches the oldest command's deadline: a timer per command cost ~2 us each.
        self._watchdog: asyncio.TimerHandle | None = None
        # Commands held while replies are awaited, written together when the next reply arrives: under
        # load, one write and one Redis wake-up carry several requests' checks (the `crossover w1
        # limits` bench row went from 0.58x to 0.72x of w1), and alone a command still goes at once.
        self._held: list[bytes] = []

    def call(self, *command: Any) -> Awaitable[Any]:
        """The reply to `command`: once connected, a future written at once (no coroutine)."""
        if self._transport is None or self._connecting is not None:  # not before AUTH and SELECT
            return self._connect_and_call(command)
        return self._send(hiredis.pack_command(command))

    async def _connect_and_call(self, command: tuple[Any, ...]) -> Any:
        if self._transport is None or self._connecting is not None:  # else connected since the call
            await self._connect()
        return await self._send(hiredis.pack_command(command))

    def _send(self, payload: bytes) -> asyncio.Future[Any]:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise Unsent("the connection to Redis is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self._timeout
        waiting = self._waiting
        if waiting:
            self._held.append(payload)
        else:
            transport.write(payload)
        waiting.append((future, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._watch)
        return future

    async def _connect(self) -> None:
        # The set-up is a task of its own: a caller that leaves (its client gone) must not cancel it
        # under the others waiting on it.
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._set_up())
            connecting.add_done_callback(self._set_up_done)
        await asyncio.shield(connecting)

    def _set_up_done(self, task: asyncio.Task[None]) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers are told, not the loop

    async def _set_up(self) -> None:
        try:
            await asyncio.wait_for(self._open(), self._timeout)
        except BaseException as exc:  # refused, timed out, or cancelled by close()
            self._drop()
            raise Unsent(f"cannot connect to Redis: {type(exc).__name__}") from None

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
        for command in hello:
            if isinstance(await self._send(hiredis.pack_command(command)), hiredis.ReplyError):
                raise ConnectionError("Redis refused the connection's set-up")

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, without the base class
        self._reader = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if not self._waiting:
                    continue  # a reply to a command that timed out
                future = self._waiting.popleft()[0]
                if not future.done():
                    future.set_result(reply)
        except hiredis.ProtocolError:  # not Redis (a URL with another service's port): an outage, not a bug
            self._fail(ConnectionError("the server at the Redis URL does not speak Redis"))
            self._drop()
            return
        if self._held and self._transport is not None:
            held, self._held = self._held, []
            self._transport.write(b"".join(held))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionError("the connection to Redis was lost"))

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        loop, deadline = asyncio.get_running_loop(), self._waiting[0][1]
        if loop.time() + 0.001 < deadline:  # the oldest command came later than the one it was set for
            self._watchdog = loop.call_at(deadline, self._watch)
            return
        self._fail(TimeoutError("Redis did not answer in time"))
        self._drop()  # later replies would answer the wrong commands

    def _fail(self, exc: Exception) -> None:
        written = len(self._waiting) - len(self._held)  # the held ones are the newest
        self._held.clear()
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(exc if written > 0 else Unsent(str(exc)))
            written -= 1

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._drop()
