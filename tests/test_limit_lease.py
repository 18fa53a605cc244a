"""Leases (gateway/limit_lease.py) through the Limiter, against a real redis-server: a busy key costs a
round trip a lease, not a request; limits still hold exactly across processes; what a lease does not
use comes back; its entries leave a window after its last use, not its first. And a limiter closed by
a reload lets the checks in flight finish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import redis as redis_client

from classifier import extract_features
from gateway.config import LimitsPolicy, Price, Redis
from gateway.limit_store import RedisStore, Window
from gateway.limits import Limiter, RateLimited, Ticket
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from tests.services import RedisServer

BUSY = Principal(
    "busy",
    team="t",
    key_limits=Limits(requests_per_minute=10_000),
    team_limits=Limits(tokens_per_minute=1_000_000, usd_per_day=1000.0),
)
FEATURES = extract_features({"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 40})
ESTIMATE = 10 + 40  # 40 characters / 4, and max_tokens
PRICE = Price(input=0.0002, output=0.0002)  # USD a token: 0.01 reserved a request


def _run(url: str, scenario: Callable[[Callable[..., Limiter]], Awaitable[None]]) -> None:
    """Run `scenario` with a maker of Limiters (each with a store of its own, as a gateway has)."""

    async def main() -> None:
        link = RedisLink(Redis(url, "t", 1.0, 1.0), Recorder(Metrics()))
        made: list[Limiter] = []

        def make(lease_seconds: float = 1.0, window_ms: int = 60_000) -> Limiter:
            made.append(Limiter(RedisStore(link, window_ms=window_ms), Recorder(Metrics()), lease_seconds))
            return made[-1]

        try:
            await scenario(make)
        finally:
            for limiter in made:
                await limiter.close(wait=0)
            await link.close()

    asyncio.run(main())


async def _admit(limiter: Limiter, principal: Principal) -> Ticket | None:
    """The request's ticket; None if it was refused."""
    try:
        ticket = await limiter.admit(principal, LimitsPolicy(), lambda: FEATURES, PRICE, "openai")
    except RateLimited:
        return None
    assert ticket is not None
    return ticket


def _left(ticket: Ticket | None) -> int:
    assert ticket is not None
    return int(ticket.headers["x-ratelimit-remaining-requests"])


def _evalsha(server: redis_client.Redis) -> int:
    calls: int = server.info("commandstats").get("cmdstat_evalsha", {"calls": 0})["calls"]
    return calls


def test_a_busy_key_costs_a_round_trip_a_lease_and_redis_ends_up_with_what_was_used(
    redis: RedisServer,
) -> None:
    server = redis_client.Redis.from_url(redis.url)

    async def scenario(make: Callable[..., Limiter]) -> None:
        limiter = make()
        server.config_resetstat()
        tickets = [await _admit(limiter, BUSY) for _ in range(300)]
        assert _evalsha(server) <= 12  # each lease twice as large as the demand seen so far
        # What every answer says is left counts down by one, as without leases.
        assert [_left(t) for t in tickets] == list(range(9_999, 9_699, -1))
        # Settled: the first ones after their lease ended (it was used up), most while it lasts
        # (corrected into it), the last ones after it ended (corrected in Redis).
        for ticket in tickets[:250]:
            assert ticket is not None
            ticket.settle(20, 0.004)
        await asyncio.sleep(1.1)
        for ticket in tickets[250:]:
            assert ticket is not None
            ticket.settle(20, 0.004)

    _run(redis.url, scenario)
    assert server.get("t:limit:key:busy:requests:total") == b"300"
    assert server.get("t:limit:team:t:tokens:total") == str(300 * 20).encode()
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert float(server.get(f"t:spent:team:t:day:{day}") or 0) == pytest.approx(300 * 0.004)


def test_two_processes_leasing_admit_exactly_the_limit_under_a_burst(redis: RedisServer) -> None:
    server = redis_client.Redis.from_url(redis.url)
    key = Principal("b", key_limits=Limits(requests_per_minute=60))

    async def scenario(make: Callable[..., Limiter]) -> None:
        first, second = make(), make()
        server.config_resetstat()
        tickets = await asyncio.gather(
            *(_admit(limiter, key) for _ in range(100) for limiter in (first, second))
        )
        admitted = [t for t in tickets if t is not None]
        assert len(admitted) == 60
        assert sorted(_left(t) for t in admitted) == list(range(60))
        # Leases were taken (fewer calls than requests), but none past half the window.
        assert _evalsha(server) < 200

    _run(redis.url, scenario)
    assert server.get("t:limit:key:b:requests:total") == b"60"
    assert server.zcard("t:limit:key:b:requests") < 60  # some entries are leases


def test_what_a_lease_does_not_use_comes_back_when_it_ends(redis: RedisServer) -> None:
    key = Principal("c", key_limits=Limits(requests_per_minute=160))

    async def scenario(make: Callable[..., Limiter]) -> None:
        holder, other = make(lease_seconds=0.5), make()
        assert None not in [await _admit(holder, key) for _ in range(3)]
        # The holder has a lease with units left; the other gateway gets all the rest, and no more.
        got = [await _admit(other, key) for _ in range(200)]
        admitted = len([t for t in got if t is not None])
        assert 150 <= admitted < 157 and got[-1] is None
        await asyncio.sleep(0.6)  # the holder's lease ended: its unused units are back
        again = [await _admit(other, key) for _ in range(20)]
        assert admitted + len([t for t in again if t is not None]) == 160 - 3

    _run(redis.url, scenario)


def test_a_lease_stays_in_the_window_until_after_its_last_use(redis: RedisServer) -> None:
    """A lease counted at T and last used at T + 0.5 s leaves a 2 s window at T + 2.5 s, not T + 2 s:
    a request it admitted late must not leave the window early."""
    key = Principal("d", key_limits=Limits(requests_per_minute=320))
    window = [Window("key:d:requests", 320, 1)]

    async def scenario(make: Callable[..., Limiter]) -> None:
        leasing = make(lease_seconds=0.7, window_ms=2000)
        plain = make(lease_seconds=0, window_ms=2000).store  # fills the window, one by one
        start = time.monotonic()
        assert await _admit(leasing, key) is not None  # alone: no demand seen yet
        assert await _admit(leasing, key) is not None  # takes a lease of 4
        await asyncio.sleep(0.5 - (time.monotonic() - start))
        assert await _admit(leasing, key) is not None  # from the lease, at T + 0.5 s
        await asyncio.sleep(0.8 - (time.monotonic() - start))  # the lease ended: 2 used of 4

        async def fill(n: int) -> int:
            verdicts = [await plain.check(f"f{i}", window, []) for i in range(n)]
            return len([v for v in verdicts if v is not None and v.over is None])

        assert await fill(320) == 320 - 3
        await asyncio.sleep(2.15 - (time.monotonic() - start))  # the first has left; the lease has not
        assert await fill(5) == 1
        await asyncio.sleep(2.65 - (time.monotonic() - start))  # now the lease has
        assert await fill(5) == 2

    _run(redis.url, scenario)


def test_a_lease_asked_for_by_a_client_that_left_still_serves_and_does_not_count_it(
    redis: RedisServer,
) -> None:
    server = redis_client.Redis.from_url(redis.url)
    key = Principal("e", key_limits=Limits(requests_per_minute=1000))

    async def scenario(make: Callable[..., Limiter]) -> None:
        limiter = make()
        assert await _admit(limiter, key) is not None
        asking = asyncio.ensure_future(_admit(limiter, key))  # asks for a lease
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(_admit(limiter, key))
        await asyncio.sleep(0)
        asking.cancel()  # its client left while the lease was being counted
        assert await waiting is not None
        server.config_resetstat()
        assert await _admit(limiter, key) is not None
        assert _evalsha(server) == 0  # from the lease

    _run(redis.url, scenario)
    assert server.get("t:limit:key:e:requests:total") == b"3"  # the first, the waiting one, the last


def test_a_check_in_flight_when_a_reload_closes_the_limiter_finishes(redis: RedisServer) -> None:
    key = Principal(
        "f", key_limits=Limits(requests_per_minute=10), team="t", team_limits=Limits(usd_per_day=1.0)
    )

    async def scenario(make: Callable[..., Limiter]) -> None:
        limiter = make(lease_seconds=0)
        checking = asyncio.ensure_future(_admit(limiter, key))
        await asyncio.sleep(0)  # its check is on its way to Redis
        closing = asyncio.ensure_future(limiter.close())
        ticket = await checking  # counted, not failed as an outage (that would be a 503 for a budget)
        assert ticket is not None and _left(ticket) == 9
        assert not closing.done()  # it waits for the ticket to settle, too
        ticket.settle(0, 0.0)
        await asyncio.wait_for(closing, 5)

    _run(redis.url, scenario)
