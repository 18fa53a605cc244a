"""A backend pool of one connection, seen through the gateway while its clients walk away at each
point of an upstream exchange: while queued for the connection, while the backend has not answered,
and in the middle of a stream. Each must leave the slot free (a leak shows as the next request
hanging) and never hand the next request a connection still carrying the old answer. And a client
slow to read slows the backend down, rather than the gateway buffering the stream. The backend is a
raw HTTP/1.1 server on loopback, so that it can be slow (or fast) where the test needs it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from tests.servers import Server, free_port, read_request, start_gateway, until

FLOOD = 64 * 1024 * 1024
CHUNK = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
    }
)


def _completion(text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


class Backend:
    """Answers "slow" after 3 s, streams 100 events 50 ms apart, and answers anything else at once
    with the request's own text (so an answer given to the wrong request shows)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.flooded = self.flood_events = 0  # the flood written so far: bytes, events
        started = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(started),), daemon=True)
        self.thread.start()
        started.wait(5)

    async def _run(self, started: threading.Event) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        async with await asyncio.start_server(self._serve, "127.0.0.1", self.port):
            started.set()
            await self.stopping.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                _, raw = await read_request(reader)
                body = orjson.loads(raw)
                text = body["messages"][-1]["content"]
                if text == "garbage":  # not HTTP at all
                    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
                    await writer.drain()
                    break
                if text == "hint":  # 103 Early Hints before the answer
                    writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                if body.get("stream") and text == "cut":  # three events, then the connection drops
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    )
                    event = b"data: %s\n\n" % CHUNK
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event) * 3)
                    await writer.drain()
                    break
                if body.get("stream") and text == "flood":
                    await self._flood(writer)
                    continue
                if body.get("stream"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                    )
                    for _ in range(100):
                        event = b"data: %s\n\n" % CHUNK
                        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                        await writer.drain()
                        await asyncio.sleep(0.05)
                    event = b"data: [DONE]\n\n"
                    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
                    continue
                if text == "slow":
                    await asyncio.sleep(3)
                if text.startswith("overlap"):  # long enough for the next request to come meanwhile
                    await asyncio.sleep(0.3)
                answer = _completion(text)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(answer), answer)
                )
                await writer.drain()
        writer.close()

    async def _flood(self, writer: asyncio.StreamWriter) -> None:
        """As fast as the connection takes them: 64 MiB of events (backpressure decides the pace)."""
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        event = b"data: %s\n\n" % CHUNK
        batch = b"%x\r\n%s\r\n" % (len(event) * 512, event * 512)
        while self.flooded < FLOOD:
            writer.write(batch)
            self.flooded += len(batch)
            self.flood_events += 512
            await writer.drain()
        done = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(5)


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    backend = Backend()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Server]:
    config = {
        "backends": {
            "raw": {
                "kind": "openai_compatible",
                "base_url": f"http://127.0.0.1:{backend.port}/v1",
                "models": [{"name": "m"}],
                "max_connections": 1,
            }
        }
    }
    server = start_gateway(tmp_path_factory.mktemp("cancel"), config)
    yield server
    server.stop()


def _chat(text: str, stream: bool = False) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream}


def _answered(gateway: Server, text: str) -> None:
    """The pool's one connection is free and carries this request's own answer."""
    resp = httpx.post(gateway.url + "/v1/chat/completions", json=_chat(text), timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == text


def test_a_client_gone_mid_stream_frees_the_connection(gateway: Server) -> None:
    for n in range(3):
        with httpx.stream(
            "POST", gateway.url + "/v1/chat/completions", json=_chat("s", True), timeout=10
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # and the client hangs up
        _answered(gateway, f"after stream {n}")


def test_a_client_gone_before_the_backend_answered_frees_the_connection(gateway: Server) -> None:
    for n in range(3):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gateway.url + "/v1/chat/completions", json=_chat("slow"), timeout=0.5)
        _answered(gateway, f"after slow {n}")


def test_a_client_gone_while_queued_for_the_connection_frees_nothing_it_did_not_hold(gateway: Server) -> None:
    for n in range(3):
        holder = threading.Thread(
            target=lambda: httpx.post(gateway.url + "/v1/chat/completions", json=_chat("slow"), timeout=10)
        )
        holder.start()
        threading.Event().wait(0.3)
        with pytest.raises(httpx.ReadTimeout):  # queued behind the holder's 3 s
            httpx.post(gateway.url + "/v1/chat/completions", json=_chat("queued"), timeout=0.5)
        holder.join()
        _answered(gateway, f"after queued {n}")


def test_a_slow_client_slows_the_backend_instead_of_filling_the_gateway(
    gateway: Server, backend: Backend
) -> None:
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=_chat("flood", True), timeout=30
    ) as r:
        lines = r.iter_lines()
        next(lines)
        threading.Event().wait(2)  # the client stops reading; the flood fills the buffers on the way
        assert backend.flooded < FLOOD / 2
        received = sum(1 for line in lines if line.startswith("data: {"))
    assert received + 1 == backend.flood_events  # all of it, in the end
    _answered(gateway, "after the flood")


def _requests_counted(gateway: Server) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("crossover_requests_total{")
    )


def test_each_misbehaviour_of_the_backend_is_one_outcome_and_leaves_the_connection_free(
    gateway: Server,
) -> None:
    before = _requests_counted(gateway)
    statuses = []
    for text in ("garbage", "hint", "cut", "garbage", "hint", "cut"):
        resp = httpx.post(gateway.url + "/v1/chat/completions", json=_chat(text, text == "cut"), timeout=10)
        if text == "hint":
            assert resp.json()["choices"][0]["message"]["content"] == "hint"
        else:
            resp.read()
        statuses.append(resp.status_code)
    assert statuses[:3] == [502, 200, 200]  # a cut stream has begun: its failure is told inside it
    _answered(gateway, "after the misbehaviour")
    assert until(lambda: _requests_counted(gateway) - before == 7)


def test_a_stream_read_to_its_end_gives_its_connection_back_once(gateway: Server) -> None:
    # The relay and the exchange both close the stream; given back twice, the one connection went
    # to two requests at once.
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=_chat("s", True), timeout=30) as r:
        assert sum(1 for line in r.iter_lines() if line.startswith("data: {")) == 100
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda n: _answered(gateway, f"overlap {n}"), range(2)))
