"""The upstream transport's HTTP/1.1 (providers/http1.py) against servers that misbehave in the ways
real ones do: keep-alive connections closed while idle, bodies framed three ways, silence, early
closes. Each server is a real asyncio TCP server on loopback that writes the bytes given."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from providers import http1
from providers.base import UpstreamError
from providers.http import HttpClient, HttpConfig, SSEStream
from tests.servers import read_request

Reply = Callable[[int, int, bytes], Awaitable[bytes | None]]  # (connection, request on it, head) -> bytes
Make = Callable[..., Awaitable[tuple["Origin", HttpClient]]]


def answer(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(line + b"\r\n" for line in extra),
        body,
    )


class Origin:
    """A server that answers each request with what `reply` returns (None: close without a word)."""

    def __init__(
        self, reply: Reply, close_after: bool = False, tail: tuple[float, bytes] | None = None
    ) -> None:
        self.reply = reply
        self.tail = tail  # (seconds, bytes): written that long after each answer
        self.close_after = close_after  # close each connection after its first answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        connection, count = self.connections, 0
        try:
            while True:
                head, body = await read_request(reader)
                self.requests.append(head + body)
                count += 1
                data = await self.reply(connection, count, head)
                if data is None:
                    return
                writer.write(data)
                await writer.drain()
                if self.tail is not None:
                    await asyncio.sleep(self.tail[0])
                    writer.write(self.tail[1])
                if self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"


@pytest.fixture
async def origin_of() -> AsyncIterator[Make]:
    made: list[tuple[Origin, HttpClient]] = []

    async def make(
        reply: Reply,
        read_timeout: float = 30.0,
        close_after: bool = False,
        max_connections: int = 16384,
        tail: tuple[float, bytes] | None = None,
    ) -> tuple[Origin, HttpClient]:
        origin = Origin(reply, close_after, tail)
        base = await origin.start()
        config = HttpConfig(
            name="origin", base_url=base, read_timeout=read_timeout, max_connections=max_connections
        )
        client = HttpClient(config)
        made.append((origin, client))
        return origin, client

    yield make
    for origin, client in made:
        await client.close()
        origin.server.close()


async def test_a_kept_alive_connection_carries_the_next_requests(origin_of: Make) -> None:
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return answer(b'{"n":%d}' % count)

    origin, client = await origin_of(reply)
    for n in range(1, 4):
        assert await client.call("POST", client.base + "/chat/completions", {"q": n}) == (
            200,
            b'{"n":%d}' % n,
        )
    assert origin.connections == 1
    first = origin.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\ncontent-type: application/json\r\n" in first and first.endswith(b'\r\n\r\n{"q":1}')


async def test_an_idle_connection_the_server_closed_is_replaced_without_failing_the_request(
    origin_of: Make,
) -> None:
    # The race uvicorn's 5 s keep-alive timeout sets up: the server closes as the request goes out.
    async def reply(connection: int, count: int, head: bytes) -> bytes | None:
        return None if count == 2 else answer(b"{}")

    origin, client = await origin_of(reply)
    url = client.base + "/chat/completions"
    assert (await client.call("POST", url, {}))[0] == 200
    assert (await client.call("POST", url, {}))[0] == 200
    assert origin.connections == 2 and len(origin.requests) == 3


async def test_a_new_connection_closed_before_an_answer_is_a_502_and_is_not_sent_twice(
    origin_of: Make,
) -> None:
    async def reply(connection: int, count: int, head: bytes) -> None:
        return None

    origin, client = await origin_of(reply)
    with pytest.raises(UpstreamError) as caught:
        await client.call("POST", client.base + "/chat/completions", {})
    assert caught.value.status == 502 and "closed the connection" in caught.value.message
    assert len(origin.requests) == 1


async def test_a_connection_closed_mid_body_is_a_502(origin_of: Make) -> None:
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial'

    _origin, client = await origin_of(reply, close_after=True)
    with pytest.raises(UpstreamError) as caught:
        await client.call("POST", client.base + "/chat/completions", {})
    assert caught.value.status == 502


async def test_bodies_framed_by_length_or_by_chunks_are_read_whole_and_keep_the_connection(
    origin_of: Make,
) -> None:
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        if b"/chunked" in head:
            return b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{"a\r\n5\r\n":12}\r\n0\r\n\r\n'
        return answer(b'{"c":4}')

    origin, client = await origin_of(reply)
    assert await client.call("POST", client.base + "/chunked", {}) == (200, b'{"a":12}')
    assert await client.call("POST", client.base + "/length", {}) == (200, b'{"c":4}')
    assert origin.connections == 1


async def test_a_body_ending_with_the_connection_is_read_to_its_end(origin_of: Make) -> None:
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"b":3}'

    origin, client = await origin_of(reply, close_after=True)
    for _ in range(2):  # and the next request opens a new connection
        assert await client.call("GET", client.base + "/models") == (200, b'{"b":3}')
    assert origin.connections == 2


async def test_silence_longer_than_the_read_timeout_is_a_504(origin_of: Make) -> None:
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        await asyncio.sleep(5)
        return answer(b"{}")

    _origin, client = await origin_of(reply, read_timeout=0.3)
    with pytest.raises(UpstreamError) as caught:
        await client.call("POST", client.base + "/chat/completions", {})
    assert caught.value.status == 504


async def test_a_header_that_would_split_the_request_never_reaches_the_wire(origin_of: Make) -> None:
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return answer(b"{}")

    origin, client = await origin_of(reply)
    for bad in ({"x-request-id": "a\r\nx-injected: 1"}, {"x\r\ny": "1"}, {"x-a": "b\nc"}, {"x:y": "1"}):
        with pytest.raises(UpstreamError) as caught:
            await client.call("POST", client.base + "/chat/completions", {}, headers=bad)
        assert caught.value.status == 400
    assert origin.requests == []


async def test_an_unreachable_origin_is_a_503(unused_tcp_port: int) -> None:
    client = HttpClient(HttpConfig(name="nowhere", base_url=f"http://127.0.0.1:{unused_tcp_port}/v1"))
    with pytest.raises(UpstreamError) as caught:
        await client.call("POST", client.base + "/chat/completions", {})
    assert caught.value.status == 503 and "unreachable" in caught.value.message
    await client.close()


async def test_a_stream_read_slowly_is_delivered_whole_and_in_order(origin_of: Make) -> None:
    # 4 MiB in 64 KiB chunks, far above the high-water mark: reading pauses and resumes.
    piece = bytes(range(256)) * 256

    async def reply(connection: int, count: int, head: bytes) -> bytes:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(64))
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\n\r\n"
        )

    origin, client = await origin_of(reply)
    resp = await client.open_stream(client.base + "/chat/completions", {})
    received = bytearray()
    async for chunk in resp.chunks():
        received += chunk
        await asyncio.sleep(0.001)
    resp.release()
    assert bytes(received) == piece * 64
    assert (await client.call("POST", client.base + "/again", {}))[0] == 200
    assert origin.connections == 1  # the stream read to its end left the connection reusable


async def test_a_response_abandoned_mid_body_closes_its_connection(origin_of: Make) -> None:
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"

    origin, client = await origin_of(reply)
    resp = await client.open_stream(client.base + "/chat/completions", {})
    async for _ in resp.chunks():
        break
    resp.close()  # what tells vLLM to stop generating
    await asyncio.wait_for(origin.closed.wait(), 5)


async def test_an_idle_connection_older_than_the_keepalive_is_not_reused(
    origin_of: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A load balancer may drop an idle connection silently; a request sent on it would wait out the
    # read timeout.
    monkeypatch.setattr(http1, "KEEPALIVE_SECONDS", 0.2)

    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return answer(b"{}")

    origin, client = await origin_of(reply)
    url = client.base + "/chat/completions"
    await client.call("POST", url, {})
    await client.call("POST", url, {})
    assert origin.connections == 1
    await asyncio.sleep(0.3)
    await client.call("POST", url, {})
    assert origin.connections == 2


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_an_https_origin_is_verified_against_the_trusted_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(b'{"tls":true}'))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    base = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        # Not trusted: the handshake fails, and the backend is unreachable rather than spoofed.
        untrusted = HttpClient(HttpConfig(name="tls", base_url=base))
        with pytest.raises(UpstreamError) as caught:
            await untrusted.call("GET", base + "/models")
        assert caught.value.status == 503
        await untrusted.close()
        # Trusted (SSL_CERT_FILE, as OpenSSL reads it): the exchange goes through.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        trusted = HttpClient(HttpConfig(name="tls", base_url=base))
        assert await trusted.call("GET", base + "/models") == (200, b'{"tls":true}')
        await trusted.close()
    finally:
        server.close()


async def test_bytes_after_a_whole_response_are_not_read_into_it_nor_into_the_next(origin_of: Make) -> None:
    # A broken server (or a proxy) sending a second response nobody asked for: it must not be read
    # into this answer, nor be taken for the next request's.
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        n = len(origin.requests)  # across connections
        return answer(b'{"n":%d}' % n) + (answer(b'{"stray":1}') if n == 1 else b"")

    origin, client = await origin_of(reply)
    url = client.base + "/chat/completions"
    assert await client.call("POST", url, {}) == (200, b'{"n":1}')
    assert (await asyncio.wait_for(client.call("POST", url, {}), 5))[1] == b'{"n":2}'  # its own answer


async def test_bytes_arriving_on_an_idle_connection_retire_it(origin_of: Make) -> None:
    # Half a response arriving while the connection is idle would be completed by the next request's
    # answer, which would then be read as that half's body.
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        if connection == 1 and count == 1:
            asyncio.get_running_loop().call_later(0.05, stray.set)
        return answer(b'{"c":%d}' % connection)

    stray = asyncio.Event()
    origin, client = await origin_of(reply, read_timeout=2)
    url = client.base + "/chat/completions"
    assert await client.call("POST", url, {}) == (200, b'{"c":1}')
    await stray.wait()
    # What the server's writer would send: the head of a response and part of its body.
    transport = next(iter(origin.writers)).transport
    transport.write(b'HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n{"stray":')
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(client.call("POST", url, {}), 5) == (200, b'{"c":2}')


async def test_an_informational_response_is_skipped_for_the_final_one(origin_of: Make) -> None:
    # 103 Early Hints (RFC 8297) come before the answer on the same connection; aiohttp skipped them.
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        origin.writers[-1].write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n")
        await asyncio.sleep(0.05)  # the hint goes out while the answer is being made
        return answer(b'{"n":%d}' % count)

    origin, client = await origin_of(reply)
    url = client.base + "/chat/completions"
    assert await client.call("POST", url, {}) == (200, b'{"n":1}')
    assert await asyncio.wait_for(client.call("POST", url, {}), 5) == (200, b'{"n":2}')
    assert origin.connections == 1


async def test_a_stream_its_reader_is_slow_to_take_is_not_a_backend_timeout(origin_of: Make) -> None:
    # Reading pauses while the gateway's client is slow: that silence is ours, not the backend's
    # (aiohttp stopped its read timer while paused).
    piece = b"x" * (2 * http1.HIGH_WATER)

    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s" % (
            2 * len(piece),
            piece + piece,
        )

    _origin, client = await origin_of(reply, read_timeout=0.3)
    resp = await client.open_stream(client.base + "/chat/completions", {})
    received = 0
    async for chunk in resp.chunks():
        if not received:
            await asyncio.sleep(1.0)  # the client is slow to take the first piece
        received += len(chunk)
    resp.release()
    assert received == 2 * len(piece)


async def test_a_head_that_never_ends_is_refused_once_too_large(unused_tcp_port: int) -> None:
    # One header value without end: the parser would buffer it all, and the read timer never fires
    # on a server that keeps talking.
    sent = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nx-endless: ")
            while sent < 64 * http1.MAX_HEAD_BYTES:
                writer.write(b"a" * 65536)
                sent += 65536
                await writer.drain()
            await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", unused_tcp_port)
    client = HttpClient(
        HttpConfig(name="o", base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", read_timeout=2)
    )
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.call("POST", client.base + "/chat/completions", {})
        assert caught.value.status == 502
        assert sent < 64 * http1.MAX_HEAD_BYTES
    finally:
        await client.close()
        server.close()


async def test_credentials_in_the_base_url_are_sent_as_basic_auth(origin_of: Make) -> None:
    # A backend behind a proxy's basic auth, as aiohttp took it from the URL.
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return answer(b"{}")

    origin, plain = await origin_of(reply)
    base = plain.base.replace("http://", "http://user:s3cret@")
    client = HttpClient(HttpConfig(name="o", base_url=base, secrets=("s3cret",)))
    try:
        assert await client.call("POST", client.base + "/chat/completions", {}) == (200, b"{}")
        assert b"\r\nauthorization: Basic dXNlcjpzM2NyZXQ=\r\n" in origin.requests[0]
    finally:
        await client.close()


async def test_a_connection_the_server_closed_with_its_answer_is_not_handed_to_a_waiting_request(
    origin_of: Make,
) -> None:
    # A server that closes after each answer without saying `connection: close`: the closing
    # connection went to the next queued request, whose retry got the next closing one, and failed.
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return answer(b"{}")

    origin, client = await origin_of(reply, close_after=True, max_connections=1)
    calls = (client.call("POST", client.base + "/chat/completions", {}) for _ in range(4))
    assert await asyncio.wait_for(asyncio.gather(*calls), 5) == [(200, b"{}")] * 4
    assert len(origin.requests) == 4


async def test_a_reused_connection_closed_after_its_answer_began_is_not_sent_again(origin_of: Make) -> None:
    # The server had read the request: sending it again could generate (and bill) twice.
    async def reply(connection: int, count: int, head: bytes) -> bytes | None:
        if count == 2:
            origin.writers[-1].write(b"HTTP/1.1 200 OK\r\ncontent-le")
            return None  # and the connection closes
        return answer(b"{}")

    origin, client = await origin_of(reply)
    url = client.base + "/chat/completions"
    assert (await client.call("POST", url, {}))[0] == 200
    with pytest.raises(UpstreamError) as caught:
        await client.call("POST", url, {})
    assert caught.value.status == 502
    assert len(origin.requests) == 2 and origin.connections == 1


async def test_a_stream_closed_twice_gives_its_connection_back_once(origin_of: Make) -> None:
    # The relay and the exchange both close a stream (aiohttp's release was idempotent): a connection
    # given back twice was taken by two requests at once, and one got the other's answer.
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        n = len(origin.requests)
        if n == 1:
            event = b'data: {"a":1}\n\n'
            return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s" % (
                len(event),
                event,
            )
        await asyncio.sleep(0.05)
        return answer(b'{"n":%d}' % n)

    origin, client = await origin_of(reply)
    stream = SSEStream("origin", await client.open_stream(client.base + "/chat/completions", {}), lambda e: e)
    assert [len(batch) async for batch in stream] == [1]
    await stream.aclose()
    await stream.aclose()
    url = client.base + "/chat/completions"
    answers = await asyncio.wait_for(asyncio.gather(*(client.call("POST", url, {}) for _ in range(2))), 5)
    assert sorted(answers) == [(200, b'{"n":2}'), (200, b'{"n":3}')]


async def _stream_to_done(client: HttpClient) -> None:
    """Reads a stream up to its [DONE] event, as the OpenAI-compatible provider does, then lets it go."""
    resp = await client.open_stream(client.base + "/chat/completions", {})
    stream = SSEStream("origin", resp, lambda event: None if event.data == b"[DONE]" else event)
    async for _ in stream:
        pass
    await stream.aclose()


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
DONE_CHUNK = b"%x\r\n%s\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n")


async def test_a_stream_let_go_at_its_last_event_keeps_its_connection_once_its_end_arrives(
    origin_of: Make,
) -> None:
    # The last chunk's terminator comes 50 ms after [DONE]: waiting for it keeps the connection (over
    # TLS, the next stream's first token would otherwise wait for a handshake).
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return SSE_HEAD + DONE_CHUNK

    origin, client = await origin_of(reply, tail=(0.05, b"0\r\n\r\n"))
    for _ in range(3):
        await _stream_to_done(client)
        await asyncio.sleep(0.1)
    assert origin.connections == 1 and len(origin.requests) == 3


async def test_a_stream_whose_end_never_comes_is_closed_after_the_drain_time(
    origin_of: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "DRAIN_SECONDS", 0.1)

    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return SSE_HEAD + DONE_CHUNK  # and never the terminator

    origin, client = await origin_of(reply)
    await _stream_to_done(client)
    await asyncio.wait_for(origin.closed.wait(), 5)  # the gateway gave up on it
    await _stream_to_done(client)
    assert origin.connections == 2


async def test_an_address_that_drops_connections_gets_its_share_of_the_timeout_and_goes_last(
    origin_of: Make,
) -> None:
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return answer(b"{}")

    origin, client = await origin_of(reply)
    port = origin.server.sockets[0].getsockname()[1]
    # 127.0.0.2 on the same port: a listener that never accepts, its queue full, so a connection
    # attempt hangs as on a route that drops packets.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.2", port))
    blackhole.listen(0)
    fillers = [socket.create_connection(("127.0.0.2", port), timeout=1)]
    client = HttpClient(
        HttpConfig(name="origin", base_url=f"http://localhost:{port}/v1", connect_timeout=1.0)
    )
    try:
        pool = client._connections()
        # The DNS answer, as if resolved: the dead address first (an IPv6 one, typically).
        pool._addresses, pool._resolved_at = ["127.0.0.2", "127.0.0.1"], pool.loop.time()
        # The dead address had half of the 1 s, then the live one answered (with the whole second, the
        # dead one would have used it up: a 504).
        assert (await client.call("POST", client.base + "/chat/completions", {}))[0] == 200
        assert pool._addresses == ["127.0.0.1", "127.0.0.2"]  # the live one first from now on
    finally:
        await client.close()
        for s in (blackhole, *fillers):
            s.close()


async def test_a_drained_connection_that_turns_out_unusable_is_not_handed_to_a_waiting_request(
    origin_of: Make,
) -> None:
    # The body's end arrives with a response nobody asked for behind it: the drained connection was
    # given to the queued request at the end, then closed for the stray bytes, and the request was
    # sent on a closed connection.
    async def reply(connection: int, count: int, head: bytes) -> bytes:
        return SSE_HEAD + DONE_CHUNK if connection == 1 else answer(b"{}")

    stray = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    origin, client = await origin_of(reply, max_connections=1, tail=(0.05, b"0\r\n\r\n" + stray))
    await _stream_to_done(client)
    call = client.call("POST", client.base + "/chat/completions", {})  # queued while it drains
    assert await asyncio.wait_for(call, 5) == (200, b"{}")
    assert origin.connections == 2
