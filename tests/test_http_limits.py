"""The listening side over real sockets: bounded headers, timeouts on reading a request and between
requests, and no redirect built from a client's Host header."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SIM_KEY, sim_backend
from tests.servers import Server, start_gateway

HEADER_SECONDS = 2  # short, so a stalled client is seen closed soon; every wait below is bounded at 30 s
LIMITS = {"header_timeout_seconds": HEADER_SECONDS, "body_timeout_seconds": 2, "keep_alive_seconds": 1}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, openai_sim: Server) -> Iterator[Server]:
    config = {"server": {"http": LIMITS}, "backends": {"openai": sim_backend(openai_sim, {"name": "gpt-4o"})}}
    server = start_gateway(tmp_path_factory.mktemp("limits"), config, env={"SIM_OPENAI_KEY": SIM_KEY})
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the gateway closes (a socket timeout, 30 s, fails the test)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def send_and_read(server: Server, data: bytes) -> bytes:
    with connect(server) as sock:
        # The gateway may refuse before reading it all; its answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_to_end(sock)


def request_with(headers: bytes) -> bytes:
    return b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n"


def status_and_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split()[1]), json.loads(body)["error"]


def test_allowed_headers_pass_and_one_more_is_431(gw: Server) -> None:
    allowed = b"".join(b"x-h%d: v\r\n" % i for i in range(99))  # with host: 100, the default limit
    assert send_and_read(gw, request_with(allowed) + b"")[:12] == b"HTTP/1.1 200"
    status, error = status_and_error(send_and_read(gw, request_with(allowed + b"x-more: v\r\n")))
    assert status == 431
    assert error["code"] == "request_header_fields_too_large"
    assert "100 headers" in error["message"]


def test_one_huge_header_is_431(gw: Server) -> None:
    status, error = status_and_error(
        send_and_read(gw, request_with(b"x-big: " + b"a" * 16 * 2**20 + b"\r\n"))
    )
    assert (status, error["type"]) == (431, "invalid_request_error")
    # One header over its 8 KiB line limit, the head well within 32 KiB.
    status, error = status_and_error(send_and_read(gw, request_with(b"x-big: " + b"a" * 9000 + b"\r\n")))
    assert status == 431 and "8192" in error["message"]


def test_a_long_url_is_414(gw: Server) -> None:
    status, _ = status_and_error(send_and_read(gw, b"GET /v1/" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n"))
    assert status == 414


def test_anthropic_paths_get_anthropic_shape(gw: Server) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(200))
    answer = send_and_read(gw, b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert answer.startswith(b"HTTP/1.1 431") and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"  # a client's mistake, as Anthropic types it


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_oversized_heads_do_not_grow_memory(gw: Server) -> None:
    """Eight clients each sending one 16 MiB header, and eight sending 100,000 headers, none of them ending
    its head: unbounded, the gateway held all of it (over 200 MB); bounded, it keeps a few KiB each."""
    send_and_read(gw, request_with(b"x-warm: up\r\n"))
    before = rss_kib(gw.process.pid)
    heads = [
        b"GET /v1/models HTTP/1.1\r\nx-big: " + b"a" * 16 * 2**20,
        b"GET / HTTP/1.1\r\n" + b"x-h: v\r\n" * 100_000,
    ]
    clients = [connect(gw) for _ in range(16)]
    try:
        for i, sock in enumerate(clients):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(heads[i % 2])
        assert rss_kib(gw.process.pid) - before < 32 * 1024
        assert {read_to_end(sock)[:12] for sock in clients} == {b"HTTP/1.1 431"}
    finally:
        for sock in clients:
            sock.close()


def test_slowloris_is_cut_off_at_the_header_timeout(gw: Server) -> None:
    with connect(gw) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nx-slow: ")
        sent = 0
        answer = b""
        # A byte every half second, as long as the gateway listens (30 s at most: then it never closed).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            sock.settimeout(0.5)
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                continue
        sock.settimeout(30)
        answer += read_to_end(sock)
    status, error = status_and_error(answer)
    assert status == 408 and error["code"] == "request_timeout"
    assert sent < 30 * 2  # it did not run to the deadline


def test_a_silent_connection_is_closed(gw: Server) -> None:
    with connect(gw) as sock:
        assert read_to_end(sock) == b""  # closed without an answer, as nothing was asked


def test_an_idle_kept_alive_connection_is_closed(gw: Server) -> None:
    with connect(gw) as sock:
        sock.sendall(request_with(b""))
        answer = read_to_end(sock)  # one answer, then the keep-alive timeout closes the connection
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


def unrouted(server: Server, status_class: str) -> float:
    """crossover_requests_total of requests refused before routing, of one status class."""
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    labels = f'backend="none",model="none",route="none",status_class="{status_class}"'
    found = [
        line for line in metrics.splitlines() if line.startswith(f"crossover_requests_total{{{labels}}}")
    ]
    return float(found[0].split()[-1]) if found else 0.0


def test_a_stalled_body_is_408_and_counted_as_one(gw: Server) -> None:
    refused, cancelled = unrouted(gw, "4xx"), unrouted(gw, "cancelled")
    with connect(gw) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + b'{"model": "gpt-4o"'
        )
        status, error = status_and_error(read_to_end(sock))
    assert status == 408 and "body" in error["message"]
    # The app counts the 408 it was part of, not a client that left.
    assert (unrouted(gw, "4xx"), unrouted(gw, "cancelled")) == (refused + 1, cancelled)


def test_a_refused_pipelined_request_does_not_take_the_earlier_ones_place(
    gw: Server, openai_sim: Server
) -> None:
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"delay": 1}]).raise_for_status()
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
    first = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    second = request_with(b"".join(b"x-h%d: v\r\n" % i for i in range(150)))
    try:
        answer = send_and_read(gw, first + second)  # both in one write, the first still being answered
    finally:
        httpx.post(openai_sim.url + "/_sim/faults", json=[]).raise_for_status()
    # The earlier request gets its own answer, then the connection closes.
    assert answer.startswith(b"HTTP/1.1 200") and b"chat.completion" in answer and b" 431 " not in answer


def test_a_client_leaving_mid_body_is_no_gateway_error(gw: Server) -> None:
    with connect(gw) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + b'{"model": "gpt-4o"'
        )
        time.sleep(0.2)  # the gateway is reading the body when the client hangs up
    ok = httpx.get(gw.url + "/metrics", timeout=10)  # a request after it: the log is written by then
    cancelled = 'crossover_requests_total{backend="none",model="none",route="none",status_class="cancelled"}'
    deadline = time.monotonic() + 10
    while cancelled not in ok.text and time.monotonic() < deadline:
        time.sleep(0.1)
        ok = httpx.get(gw.url + "/metrics", timeout=10)
    assert cancelled in ok.text
    assert "unexpected error" not in gw.log_text() and "Traceback" not in gw.log_text()


def read_one_answer(sock: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(answer.partition(b"\r\n\r\n")[2]) < length:
        answer += sock.recv(65536)
    return answer


def test_a_stalled_body_after_an_early_answer_only_closes(gw: Server) -> None:
    with connect(gw) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        assert read_one_answer(sock).startswith(b"HTTP/1.1 404")  # at once, without reading the body
        sock.sendall(b"x")  # more body: not idle between requests, so the body timeout applies
        assert read_to_end(sock) == b""  # closed, and no second answer to the same request


def test_a_slow_but_steady_body_is_read(gw: Server) -> None:
    """The body timeout is the longest silence, not the body's whole time."""
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with connect(gw) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        for i in range(0, len(body), len(body) // 4 + 1):  # four pieces, one second apart: 3 s in all
            time.sleep(1)
            sock.sendall(body[i : i + len(body) // 4 + 1])
        answer = read_to_end(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"echo: hi" in answer


def test_a_second_request_sent_slowly_on_a_kept_alive_connection_is_408(gw: Server) -> None:
    with connect(gw) as sock:
        sock.sendall(request_with(b""))
        first = read_one_answer(sock)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /v1/models HTTP/1.1\r\n")  # within keep-alive, and then nothing more
        status, _ = status_and_error(read_to_end(sock))
    assert status == 408


@pytest.mark.parametrize("path", ["/v1/chat/completions/", "/v1/messages/"])
def test_a_trailing_slash_is_404_not_a_redirect_to_the_host_header(gw: Server, path: str) -> None:
    response = httpx.post(gw.url + path, json={}, headers={"host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert "evil.example" not in response.text
    if path.startswith("/v1/messages"):
        assert response.json()["error"]["type"] == "not_found_error"
    else:
        assert response.json()["error"]["code"] == "unknown_url"
