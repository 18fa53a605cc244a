"""The shared circuit and GPU meter against a real redis-server, two links standing for two gateway
processes: what one reports, the other sees; Redis lost or restarted, each goes on locally and
writes its state back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway import shared_meter
from gateway.accounting import BackendMeter
from gateway.breaker import CircuitBreaker
from gateway.config import Redis, Settings, build, parse
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from gateway.runtime import Runtime
from gateway.shared_breaker import SharedBreaker
from gateway.shared_meter import SharedMeter
from gateway.shared_window import decode, encode, settled
from gateway.state import GatewayState
from tests.services import RedisServer


@pytest.fixture
async def links(redis: RedisServer) -> AsyncIterator[tuple[RedisLink, RedisLink]]:
    settings = Redis(redis.url, "t", 0.2, 0.05)
    pair = RedisLink(settings, Recorder(Metrics())), RedisLink(settings, Recorder(Metrics()))
    yield pair
    for link in pair:
        await link.close()


async def test_a_circuit_is_one_across_processes(
    links: tuple[RedisLink, RedisLink], redis: RedisServer
) -> None:
    now = [100.0]
    changes: list[tuple[str, bool]] = []

    def breaker(link: RedisLink) -> SharedBreaker:
        return SharedBreaker(
            "local/r1", 2, 10, link, lambda n, o: changes.append((n, o)), clock=lambda: now[0]
        )

    a, b = breaker(links[0]), breaker(links[1])
    a.record(False)
    await a.drained()
    b.record(False)  # the second failure in a row, counted across both: open
    await b.drained()
    assert b.open and not b.allow()
    a.refresh()
    await a.drained()
    assert a.open and not a.allow() and a.retry_after() == pytest.approx(10, abs=0.5)
    # Each heard it from Redis: b's own streak was one failure, a's too.
    assert changes == [("local/r1", True)] * 2

    now[0] += 10
    assert b.allow()  # b's trial
    b.record(True)  # succeeds: closed everywhere
    await b.drained()
    a.refresh()
    await a.drained()
    assert not a.open and a.allow()
    assert changes == [("local/r1", True)] * 2 + [("local/r1", False)]  # b's close is its caller's to say

    # A healthy circuit's successes cost no Redis call.
    calls = int((await links[0].client.info("stats"))["total_commands_processed"])
    for _ in range(20):
        a.record(True)
    await a.drained()
    assert int((await links[0].client.info("stats"))["total_commands_processed"]) == calls + 1  # the INFO

    # Redis restarts empty while a holds the circuit open: a writes it back, b sees it again.
    a.record(False)
    a.record(False)
    await a.drained()
    redis.stop()
    redis.start()
    for breaker in (a, b):
        for _ in range(2):  # the first call meets the dropped connection: local until retry_seconds
            breaker.refresh()
            await breaker.drained()
            await asyncio.sleep(0.1)
    assert a.open and b.open and links[0].up and links[1].up


async def test_a_meter_counts_every_process_and_forgets_a_dead_one(
    links: tuple[RedisLink, RedisLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_meter, "PROCESS_TTL", 1.0)
    idle: list[float] = []
    a = SharedMeter("local", 3600.0, 1, links[0], idle.append)  # a dollar a second
    b = SharedMeter("local", 3600.0, 1, links[1], idle.append)
    slot = a.start()
    await a.settle()
    await b.settle()
    assert (a.running, b.running) == (1, 1)  # b counts a's request (spill-over reads this)
    held = b.start()
    await b.settle()
    await asyncio.sleep(0.2)
    cost = await held.cost(held.stop())
    # b's request shared the GPU with a's for its whole life: half the rate.
    assert 0.1 < cost < 0.2
    # a dies without a word: its request stops counting after PROCESS_TTL.
    await a.close()
    await asyncio.sleep(1.2)
    await b.settle()
    assert b.running == 0
    assert slot.meter is a


async def test_without_redis_a_meter_meters_its_share_locally(redis: RedisServer) -> None:
    redis.stop()
    idle: list[float] = []
    link = RedisLink(Redis(redis.url, "t", 0.1, 60), Recorder(Metrics()))
    meter = SharedMeter("local", 3600.0, 2, link, idle.append)  # one of two workers: half the rate
    try:
        await meter.settle()
        slot = meter.start()
        await asyncio.sleep(0.3)
        cost = await slot.cost(slot.stop())
        await asyncio.sleep(0.3)
        await meter.settle()
    finally:
        await meter.close()
        await link.close()
    assert not link.up and meter.running == 0
    assert cost == pytest.approx(0.15, abs=0.05)
    assert sum(idle) == pytest.approx(0.15, abs=0.05)


async def test_a_reload_that_turns_redis_on_or_off_keeps_the_circuit(redis: RedisServer) -> None:
    def settings(shared: bool) -> Settings:
        backend = {
            "kind": "openai_compatible",
            "base_url": "http://127.0.0.1:1/v1",
            "models": [{"name": "m"}],
            "circuit_breaker": {"failures": 1, "cooldown_seconds": 60},
            "gpu_usd_per_hour": 2.0,
        }
        redis_spec = {"redis": {"url": redis.url}} if shared else {}
        return build(parse({"backends": {"b": backend}, **redis_spec}), {})

    configs = iter([settings(False), settings(True)])
    state = GatewayState(Runtime(settings(True)), Metrics(), loader=lambda: next(configs))
    try:
        assert isinstance(state.breakers["b"], SharedBreaker) and isinstance(state.meters["b"], SharedMeter)
        state.breakers["b"].record(False)
        assert await state.reload()  # Redis off: local objects, the circuit still open
        assert type(state.breakers["b"]) is CircuitBreaker and state.breakers["b"].open
        assert isinstance(state.meters["b"], BackendMeter) and state.shared is None
        assert await state.reload()  # and on again
        assert isinstance(state.breakers["b"], SharedBreaker) and state.breakers["b"].open
        assert isinstance(state.meters["b"], SharedMeter)
    finally:
        await state.close()


def test_the_shared_window_counts_only_requests_every_process_has_pushed() -> None:
    now = 1000.0
    entries = [(now - 0.2, 0.9, False), (now - 5, 0.1, False), (now - 3, None, True), (now - 4, 0.5, False)]
    assert settled(entries, 2, now) == [(0.5, False), (None, True)]  # oldest first; the fresh one waits
    assert [decode(encode(e).encode()) for e in entries] == entries
