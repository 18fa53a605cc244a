"""The upstream transport seen from outside: waits for a pooled connection are exported, and a
backend that answers a stream with something else is named for what it did. Against the OpenAI
simulator, through a gateway whose backend pool holds one connection."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from providers.http import HttpClient, HttpConfig
from tests.conftest import SIM_KEY
from tests.servers import Server, start_gateway, until

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, openai_sim: Server) -> Iterator[Server]:
    backend = {
        "kind": "openai_compatible",
        "base_url": openai_sim.url + "/v1",
        "api_key": "${SIM_OPENAI_KEY}",
        "models": [{"name": "gpt-4o"}],
        "max_connections": 1,
    }
    server = start_gateway(
        tmp_path_factory.mktemp("pool"), {"backends": {"sim": backend}}, env={"SIM_OPENAI_KEY": SIM_KEY}
    )
    yield server
    server.stop()


def _sample(gateway: Server, name: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    found = re.search(rf'^{name}{{backend="sim"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_request_waiting_for_a_pooled_connection_shows_in_the_metrics(
    gateway: Server, openai_sim: Server
) -> None:
    httpx.delete(openai_sim.url + "/_sim/requests")
    # Longer than one housekeeping round (5 s), so one falls while the second request waits.
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"delay": 7}])
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, gateway.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert until(lambda: len(httpx.get(openai_sim.url + "/_sim/requests").json()) == 1)
        second = pool.submit(httpx.post, gateway.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert until(lambda: _sample(gateway, "crossover_upstream_pool_queued") == 1)
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert until(lambda: _sample(gateway, "crossover_upstream_pool_queued") == 0)
    # The second request waited from its arrival until the first one's 7 s delay had passed.
    assert until(lambda: _sample(gateway, "crossover_upstream_pool_wait_seconds_total") >= 1.0)


async def test_a_request_cancelled_while_queued_leaves_the_queue(openai_sim: Server) -> None:
    client = HttpClient(HttpConfig(name="sim", base_url=openai_sim.url + "/v1", max_connections=1))
    url = client.base + "/chat/completions"
    headers = {"Authorization": f"Bearer {SIM_KEY}"}
    try:
        async with httpx.AsyncClient() as sim:
            await sim.post(openai_sim.url + "/_sim/faults", json=[{"delay": 5}])
        holder = asyncio.create_task(client.call("POST", url, CHAT, headers=headers))
        waiter = asyncio.create_task(client.call("POST", url, CHAT, headers=headers))
        for _ in range(300):  # the second request queues behind the first's 5 s delay
            if client.pool_waits.queued:
                break
            await asyncio.sleep(0.01)
        assert client.pool_waits.queued == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert client.pool_waits.queued == 0 and client.pool_waits.take() > 0
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
    finally:
        await client.close()


def test_a_stream_answered_with_plain_json_says_what_the_backend_did(
    gateway: Server, openai_sim: Server
) -> None:
    completion = {"id": "x", "object": "chat.completion", "choices": []}
    httpx.post(openai_sim.url + "/_sim/faults", json=[{"body": completion}])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert raised.value.status_code == 502
    assert (
        "backend 'sim' answered a streamed request with application/json instead of an event stream (HTTP 200)"
        in raised.value.message
    )
