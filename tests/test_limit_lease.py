"""Leases (gateway/limit_lease.py) against a real redis-server: a busy key costs a round trip a lease,
not a request; limits still hold exactly across processes; what a lease does not use comes back; its
entries leave a window after its last use, not its first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import redis as redis_client

from gateway.config import Redis
from gateway.limit_lease import Leases
from gateway.limit_store import Budget, Correction, RedisStore, Verdict, Window
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from tests.services import RedisServer

DAY = "team:t:day:2026-12-01"


def _run(url: str, scenario: Callable[[Callable[..., Leases]], Awaitable[None]]) -> None:
    """Run `scenario` with a maker of Leases (each with a store of its own, as a gateway has)."""

    async def main() -> None:
        link = RedisLink(Redis(url, "t", 1.0, 1.0), Recorder(Metrics()))
        made: list[Leases] = []

        def make(lifetime: float = 1.0, window_ms: int = 60_000) -> Leases:
            made.append(Leases(RedisStore(link, window_ms=window_ms), lifetime))
            return made[-1]

        try:
            await scenario(make)
        finally:
            for leases in made:
                await leases.close()
            await link.close()

    asyncio.run(main())


def _admitted(verdicts: list[Verdict | None]) -> list[Verdict]:
    return [v for v in verdicts if v is not None and v.over is None]


def test_a_busy_key_costs_a_round_trip_a_lease_and_redis_ends_up_with_what_was_used(
    redis: RedisServer,
) -> None:
    server = redis_client.Redis.from_url(redis.url)
    windows = [Window("key:a:requests", 10_000, 1), Window("team:t:tokens", 1_000_000, 50)]
    budgets = [Budget(DAY, 1000.0, 0.01, 60)]

    async def scenario(make: Callable[..., Leases]) -> None:
        leases = make()
        server.config_resetstat()
        verdicts = [await leases.check(f"r{i}", windows, budgets) for i in range(300)]
        calls = server.info("commandstats")["cmdstat_evalsha"]["calls"]
        assert len(_admitted(verdicts)) == 300
        assert calls <= 12, calls  # a lease twice as large as the demand seen so far, each time
        # What every answer says is left counts down by one, as without leases.
        assert [v.remaining[0] for v in _admitted(verdicts)] == list(range(9_999, 9_699, -1))
        for i in range(150):  # corrected while their lease lasts
            leases.correct(Correction(f"r{i}", (("team:t:tokens", 50, 20),), ((DAY, 0.004 - 0.01),)))
        await asyncio.sleep(1.1)  # the lease has ended: the rest are corrected in Redis
        for i in range(150, 300):
            leases.correct(Correction(f"r{i}", (("team:t:tokens", 50, 20),), ((DAY, 0.004 - 0.01),)))

    _run(redis.url, scenario)
    assert server.get("t:limit:key:a:requests:total") == b"300"
    assert server.get("t:limit:team:t:tokens:total") == str(300 * 20).encode()
    assert float(server.get(f"t:spent:{DAY}") or 0) == pytest.approx(300 * 0.004)


def test_two_processes_leasing_admit_exactly_the_limit_under_a_burst(redis: RedisServer) -> None:
    server = redis_client.Redis.from_url(redis.url)
    window = [Window("key:b:requests", 60, 1)]

    async def scenario(make: Callable[..., Leases]) -> None:
        first, second = make(), make()
        server.config_resetstat()
        verdicts = await asyncio.gather(
            *(leases.check(f"r{i}", window, []) for i in range(100) for leases in (first, second))
        )
        admitted = _admitted(verdicts)
        assert len(admitted) == 60
        assert sorted(v.remaining[0] for v in admitted) == list(range(60))
        # Leases were taken (fewer calls than requests), but none past half the window.
        assert server.info("commandstats")["cmdstat_evalsha"]["calls"] < 200

    _run(redis.url, scenario)
    assert server.get("t:limit:key:b:requests:total") == b"60"
    assert server.zcard("t:limit:key:b:requests") < 60  # some entries are leases


def test_what_a_lease_does_not_use_comes_back_when_it_ends(redis: RedisServer) -> None:
    window = [Window("key:c:requests", 160, 1)]

    async def scenario(make: Callable[..., Leases]) -> None:
        holder, other = make(lifetime=0.5), make()
        held = _admitted([await holder.check(f"h{i}", window, []) for i in range(3)])
        assert len(held) == 3
        # The holder has a lease with units left; the other gateway gets all the rest, and no more.
        answers = [await other.check(f"o{i}", window, []) for i in range(200)]
        got = len(_admitted(answers))
        assert 150 <= got < 157 and answers[-1] is not None and answers[-1].over == "rate"
        await asyncio.sleep(0.6)  # the holder's lease ended: its unused units are back
        again = [await other.check(f"p{i}", window, []) for i in range(20)]
        assert got + len(_admitted(again)) == 160 - 3

    _run(redis.url, scenario)


def test_a_lease_stays_in_the_window_until_after_its_last_use(redis: RedisServer) -> None:
    """A lease counted at T and last used at T + 0.5 s leaves a 2 s window at T + 2.5 s, not T + 2 s:
    a request it admitted late must not leave the window early."""
    window = [Window("key:d:requests", 320, 1)]

    async def scenario(make: Callable[..., Leases]) -> None:
        leasing = make(lifetime=0.7, window_ms=2000)
        plain = RedisStore(leasing.store.link, window_ms=2000)  # fills the window, one by one
        start = time.monotonic()
        first = await leasing.check("r1", window, [])  # alone: no demand seen yet
        second = await leasing.check("r2", window, [])  # takes a lease of 4
        assert first is not None and second is not None and first.over is None and second.over is None
        await asyncio.sleep(0.5 - (time.monotonic() - start))
        assert (await leasing.check("r3", window, [])) is not None  # from the lease, at T + 0.5 s
        await asyncio.sleep(0.8 - (time.monotonic() - start))  # the lease ended: 2 used of 4
        fill = [await plain.check(f"f{i}", window, []) for i in range(320)]
        assert len(_admitted(fill)) == 320 - 3
        await asyncio.sleep(2.15 - (time.monotonic() - start))  # r1 has left; the lease has not
        early = [await plain.check(f"e{i}", window, []) for i in range(5)]
        assert len(_admitted(early)) == 1
        await asyncio.sleep(2.65 - (time.monotonic() - start))  # now the lease has
        late = [await plain.check(f"l{i}", window, []) for i in range(5)]
        assert len(_admitted(late)) == 2
        await plain.close()

    _run(redis.url, scenario)


def test_a_lease_asked_for_by_a_client_that_left_still_serves_and_does_not_count_it(
    redis: RedisServer,
) -> None:
    server = redis_client.Redis.from_url(redis.url)
    window = [Window("key:e:requests", 1000, 1)]

    async def scenario(make: Callable[..., Leases]) -> None:
        leases = make()
        assert await leases.check("r1", window, []) is not None
        asking = asyncio.ensure_future(leases.check("r2", window, []))  # asks for a lease
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(leases.check("r3", window, []))
        await asyncio.sleep(0)
        asking.cancel()  # its client left while the lease was being counted
        verdict = await waiting
        assert verdict is not None and verdict.over is None
        server.config_resetstat()
        assert await leases.check("r4", window, []) is not None
        assert server.info("commandstats").get("cmdstat_evalsha") is None  # from the lease

    _run(redis.url, scenario)
    assert server.get("t:limit:key:e:requests:total") == b"3"  # r1, r3, r4: not r2
