"""HTTP/1.1 client connections to one origin and their keep-alive pool, on asyncio protocols and
httptools' parser (llhttp, the parser Node.js uses; uvicorn already depends on it).

Why not aiohttp's client, which this replaced: a bare forwarder on the same server stack answered
~7,300 requests/s through aiohttp's client and ~21,000 through this one (bench/README.md). aiohttp's
client builds a dozen objects and tasks per request for features a gateway's backend connection does
not use (cookies, redirects, proxies, multipart, tracing signals, decompression).

What it does, and no more: requests with a bytes body; responses read whole or as chunks as they
arrive (Content-Length, chunked, or until the connection closes); keep-alive reuse; TLS; a connect
timeout, and a read timeout on silence between reads; at most `limit` connections, with waiters queued
and counted. A reused connection that the server had closed while it was idle (uvicorn closes idle
connections after 5 s) is retried once on a new one: the server closed it before reading the request.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES: Final = 256 * 1024  # a response head larger than this is not an API's
HIGH_WATER: Final = 256 * 1024  # buffered body bytes above which reading pauses until the reader catches up
# An idle connection older than this is closed, not reused: a load balancer or NAT on the way may have
# dropped it without a word (AWS's NAT gateway after 350 s), and a request sent on it would wait out the
# read timeout. aiohttp's default, which this replaced.
KEEPALIVE_SECONDS: Final = 15.0
# A stream read to its last event ([DONE]) may still owe its body's closing bytes (the last chunk's
# terminator): the connection waits this long, dropping at most DRAIN_BYTES, to be reused rather than
# closed. Over TLS to a commercial API a new connection costs a handshake on the next stream's first token.
DRAIN_SECONDS: Final = 1.0
DRAIN_BYTES: Final = 64 * 1024
DNS_TTL_SECONDS: Final = 300.0  # a host's addresses are looked up again after this (aiohttp's setting here)
_FORBIDDEN = frozenset(b"\r\n\x00")  # what would end a header line, or the head, early


class TransportError(Exception):
    """The exchange failed below HTTP: the connection, or the bytes on it."""


class ConnectFailed(TransportError):
    """No connection could be opened (refused, unresolvable, TLS handshake)."""


class Disconnected(TransportError):
    """The server closed the connection, or sent what is not HTTP, before the response was whole."""


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


class Response:
    """A response whose head has arrived; its body is read with `read()` or `chunks()`, then the
    response is `release()`d (its connection goes back to the pool if reusable) or `close()`d."""

    __slots__ = ("_conn", "_headers", "_let_go", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self._headers: dict[str, str] | None = None
        # Released or closed: later calls do nothing. Given back twice (the relay and the exchange
        # both close a stream), the connection went to two requests at once.
        self._let_go = False

    @property
    def headers(self) -> Mapping[str, str]:
        """Lower-cased names; repeated headers joined with ", " (RFC 9110 5.3)."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for raw_name, raw_value in self._conn.head:
                name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            self._headers = headers
        return self._headers

    @property
    def content_type(self) -> str:
        """The media type alone, lower-cased: "" when there is none."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        conn = self._conn
        while not conn.complete:
            await conn.wait()
        return conn.take()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes in pieces, as they arrive."""
        conn = self._conn
        conn.streaming = True
        while True:
            if conn.buffered:
                yield conn.take()
            elif conn.complete:
                return
            else:
                await conn.wait()

    def release(self) -> None:
        if not self._let_go:
            self._let_go = True
            self._conn.done()

    def close(self) -> None:
        if not self._let_go:
            self._let_go = True
            self._conn.close()


class _Connection(asyncio.Protocol):
    """One connection; one request at a time. The parser's callbacks fill in the response, and the
    one waiting coroutine, if any, is woken by each event (head, body bytes, end, loss)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.idle_since = 0.0
        self.head: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.status = 0
        self.has_head = self.complete = self.keep_alive = False
        self.error: BaseException | None = None
        self.body: list[bytes] = []
        self.buffered = 0
        self._paused = False
        self.streaming = False  # read in pieces: reading pauses while too much is buffered
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self.received = False  # any byte of the current response
        self.expecting = False  # a request is out and its final response not yet whole
        self._informational = False  # the message being parsed is a 1xx, not the response
        self._draining = False  # released before its body's end: the rest is read and dropped
        self._drained = False  # the drained body ended: back to the pool once the bytes read are parsed

    # ---- one exchange ----

    def send(self, data: bytes) -> None:
        self.head, self._head_bytes, self.status = [], 0, 0
        self.has_head = self.complete = self.keep_alive = self.received = False
        self.body, self.buffered, self.streaming, self.expecting = [], 0, False, True
        if self.transport is None or self.transport.is_closing():
            # Closed between being handed over and its taker running: nothing was sent, so the pool
            # sends the request again on a new connection (Pool.request).
            raise Disconnected("the connection closed before the request went out")
        self._last_read = self.loop.time()
        self._timer = self.loop.call_later(self.pool.read_timeout, self._check_silence)
        self.transport.write(data)

    async def wait(self) -> None:
        """Until the next event; raises what ended the exchange."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body, self.buffered = [], 0
        self._resume()
        return data

    def _resume(self) -> None:
        """Reading again, if it was paused for a slow reader."""
        if self._paused and self.transport is not None:
            self._paused = False
            self._last_read = self.loop.time()  # the silence while paused was ours
            self.transport.resume_reading()

    def done(self) -> None:
        """The caller is finished with the response: keep the connection if it can carry another,
        once the body's end has arrived (see DRAIN_SECONDS)."""
        if not (self.keep_alive and self.error is None and self.transport is not None):
            self.close()
        elif self.complete:
            self.pool.put(self)
        else:
            self._draining = True
            self.body, self.buffered, self.streaming = [], 0, False
            self._resume()
            self._disarm()
            self._timer = self.loop.call_later(DRAIN_SECONDS, self.close)

    def close(self, free_slot: bool = True) -> None:
        self._disarm()
        self._draining = self._drained = False
        if self.transport is not None:
            self.transport.close()  # connection_lost tells the pool
            self.transport = None
            if free_slot:
                self.pool.dropped(self)

    # ---- read timeout: silence between reads ----

    def _check_silence(self) -> None:
        self._timer = None
        silence = self.loop.time() - self._last_read
        if self._paused:  # the reader is slow, not the server (aiohttp stopped its timer here too)
            self._timer = self.loop.call_later(self.pool.read_timeout, self._check_silence)
        elif silence < self.pool.read_timeout:
            self._timer = self.loop.call_later(self.pool.read_timeout - silence, self._check_silence)
        else:
            self._fail(TimeoutError(f"no data for {self.pool.read_timeout:g} s"))
            self.close()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self._wake()

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        self.received = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(Disconnected(f"unreadable HTTP response: {exc}"))
            self.close()
            return
        if self._drained:
            # Not from on_message_complete: bytes behind the end (a response nobody asked for) would
            # close it after a queued request had been handed it.
            self._drained = False
            self.pool.put(self)
        if not self.has_head:
            # Counted here, not per header: the parser buffers a header until its end, which an
            # endless one never reaches while the server keeps the read timer from firing.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(Disconnected(f"response head over {MAX_HEAD_BYTES} bytes"))
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport = None
            self.pool.dropped(self)
        if self.has_head and not self.complete and self._ends_with_close():
            self.on_message_complete()  # the body ran until the connection closed (RFC 9112 6.3)
        else:
            self._fail(Disconnected("the server closed the connection"))

    def _ends_with_close(self) -> bool:
        names = {name.lower() for name, _ in self.head}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # ---- httptools callbacks ----

    def on_message_begin(self) -> None:
        # A response nobody asked for (after the answer, or on an idle connection): the connection is
        # out of step with its requests and must carry no other. Raising stops the parser here.
        if not self.expecting:
            raise Disconnected("the server sent a response that no request asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # informational (103 Early Hints): the answer follows
            self._informational = True
            self.head = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.has_head = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._draining:
            self.buffered += len(body)  # dropped, only counted
            if self.buffered > DRAIN_BYTES:
                raise Disconnected("a released response's rest is too long to drain")
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.streaming and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete, self.expecting = True, False
        self._disarm()
        if self._draining:
            self._draining, self._drained = False, True
        self._wake()


class Pool:
    """Connections to one origin (scheme, host, port): idle ones reused last-in first-out, at most
    `limit` open, and requests beyond that queued in arrival order."""

    def __init__(
        self,
        origin: str,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        waits: PoolWaits,
    ) -> None:
        url = urlsplit(origin)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {origin!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.waits = waits
        self.loop = asyncio.get_running_loop()
        self._addresses: list[str] = []
        self._resolved_at = float("-inf")
        self._idle: list[_Connection] = []
        self._open = 0
        self._queue: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()

    async def request(self, data: bytes) -> Response:
        """Sends one serialised request; returns once the response's head has arrived."""
        conn = await self._acquire()
        try:
            try:
                return await self._exchange(conn, data)
            except Disconnected:
                if not conn.reused or conn.received:
                    raise
            # The server had closed this idle connection as the request went out: it never read it.
            conn = await self._acquire(fresh=True)
            return await self._exchange(conn, data)
        except BaseException:
            conn.close()
            raise

    async def _exchange(self, conn: _Connection, data: bytes) -> Response:
        conn.send(data)
        while not conn.has_head:
            await conn.wait()
        return Response(conn)

    async def _acquire(self, fresh: bool = False) -> _Connection:
        if not fresh and self._idle:
            if self.loop.time() - self._idle[-1].idle_since > KEEPALIVE_SECONDS:
                for stale in list(self._idle):  # the newest is stale, so all are
                    stale.close()
            while self._idle:
                conn = self._idle.pop()
                if conn.transport is not None and not conn.transport.is_closing():
                    conn.reused = True
                    return conn
        if self._open >= self.limit:
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self._queue.append(waiter)
            self.waits.queued += 1
            started = time.monotonic()
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and (passed := waiter.result()) is not None:
                    self.put(passed)  # handed over as this waiter was cancelled: pass it on
                elif waiter.done() and not waiter.cancelled():
                    self._wake_next()
                else:
                    self._queue.remove(waiter)
                raise
            finally:
                self.waits.queued -= 1
                self.waits.seconds += time.monotonic() - started
            if handed is not None and not fresh:
                handed.reused = True
                return handed
            if handed is not None:
                # A retry must go on a new connection: this one, just released, may be closing too
                # (a server that closes after each answer). Its slot is this request's to open one in.
                handed.close(free_slot=False)
                self._open -= 1  # taken again at once by _connect: no waiter can come between
        return await self._connect()

    async def _connect(self) -> _Connection:
        self._open += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await self._open_one()
        except TimeoutError:
            self._closed_one()
            raise
        except OSError as exc:  # refused, unresolvable, TLS (ssl.SSLError is an OSError)
            self._closed_one()
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        except BaseException:
            self._closed_one()
            raise
        return conn

    async def _open_one(self) -> _Connection:
        """A connection to the first of the host's addresses that takes one. Each but the last gets its
        share of the connect timeout, so an address that drops packets (an IPv6 route that goes
        nowhere) does not use it all; one that failed goes to the back of the list for the next
        connections, as a cached DNS answer keeps its order (aiohttp tried addresses in parallel)."""
        if self.loop.time() - self._resolved_at > DNS_TTL_SECONDS:
            infos = await self.loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            self._resolved_at = self.loop.time()
        addresses = list(self._addresses)
        failure: Exception = OSError(f"no address for {self.host}")
        for i, address in enumerate(addresses):
            share = None if i == len(addresses) - 1 else self.connect_timeout / len(addresses)
            try:
                async with asyncio.timeout(share):
                    _, conn = await self.loop.create_connection(
                        lambda: _Connection(self),
                        address,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl is not None else None,
                    )
                return conn
            except (OSError, TimeoutError) as exc:
                failure = exc
                if address in self._addresses and len(self._addresses) > 1:
                    self._addresses.remove(address)
                    self._addresses.append(address)
        raise failure

    def put(self, conn: _Connection) -> None:
        """A reusable connection: to the first waiter, else idle."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def dropped(self, conn: _Connection) -> None:
        """A connection closed: it leaves the idle list and the count, and a waiter may open one."""
        if conn in self._idle:
            self._idle.remove(conn)
        self._closed_one()

    def _closed_one(self) -> None:
        self._open -= 1
        self._wake_next()

    def _wake_next(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # free to open a connection of its own
                return

    def close(self) -> None:
        for conn in list(self._idle):
            conn.close()


def breaks_head(text: str) -> bool:
    """Whether `text` would end a header line, or the head, early: it must never reach the wire."""
    return not _FORBIDDEN.isdisjoint(text.encode())


def request_line(method: str, target: str) -> bytes:
    return f"{method} {target} HTTP/1.1\r\n".encode("latin-1")


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Header lines (without the blank line ending the head). Refuses a name or value that would split
    the head: such text must never reach the wire."""
    lines = []
    for name, value in headers.items():
        line = f"{name}: {value}\r\n".encode()
        if _FORBIDDEN.intersection(line[:-2]) or not name or ":" in name:
            raise ValueError(f"header {name!r} has characters not allowed in HTTP")
        lines.append(line)
    return b"".join(lines)


def encode_head(method: str, target: str, headers: Mapping[str, str]) -> bytes:
    """A request line and its header lines (without the blank line ending the head)."""
    return request_line(method, target) + encode_headers(headers)
