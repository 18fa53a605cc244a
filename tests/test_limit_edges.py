"""Edges of leases (gateway/limit_lease.py) and of the script's corrections (gateway/limit_store.py),
against a real redis-server, driving the Limiter as tests/test_limit_lease.py does: a corrected log
keeps its expiry, a lease moved to its last use is not expired at its first, a lease does not outlive
the UTC day of its budgets, its unused part goes back after an outage, and an asker whose lease others
used up asks again under a name of its own. (Each was found by an independent review.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis as redis_client

from gateway.config import LimitsPolicy
from gateway.limit_store import Window
from gateway.limits import Limiter
from gateway.principal import Limits, Principal
from tests.servers import free_port
from tests.services import RedisServer
from tests.test_limit_lease import ESTIMATE, FEATURES, PRICE, _admit, _run


def test_a_window_whose_only_entry_was_corrected_still_admits_only_its_limit(redis: RedisServer) -> None:
    """A correction removes a log's only entry (Redis deletes the emptied key) and adds it again: the
    log comes back without its expiry, outlives its total, and the next check after the window subtracts
    the entry from a total of 0: a negative total admits the limit and more. (A tokens window's
    correction did this before leases too; a lease's end now corrects requests windows as well.)"""
    key = Principal("r1", key_limits=Limits(tokens_per_minute=2 * ESTIMATE))

    async def scenario(make: Callable[..., Limiter]) -> None:
        limiter = make(window_ms=1000)
        ticket = await _admit(limiter, key)
        assert ticket is not None
        ticket.settle(2 * ESTIMATE, 0.0)  # it used twice its estimate: the window is full
        await asyncio.sleep(1.1)  # the correction went, and the window has passed: its entry leaves
        got = [await _admit(limiter, key) for _ in range(4)]
        assert len([t for t in got if t is not None]) == 2  # the limit, not more

    _run(redis.url, scenario)


def test_a_lease_moved_to_its_last_use_is_not_expired_at_its_first(redis: RedisServer) -> None:
    """A lease's entries move to its last use when it ends, but the log and its total still expire one
    window after the lease was counted: when no other check touches them in between, the requests the
    lease admitted late leave the window early, and another gateway is admitted the whole limit."""
    key = Principal("r2", key_limits=Limits(requests_per_minute=320))
    window = [Window("key:r2:requests", 320, 1)]

    async def scenario(make: Callable[..., Limiter]) -> None:
        leasing = make(lease_seconds=0.7, window_ms=2000)
        plain = make(lease_seconds=0, window_ms=2000).store  # another gateway, without leases
        start = time.monotonic()
        assert await _admit(leasing, key) is not None  # alone
        assert await _admit(leasing, key) is not None  # takes a lease, at T
        await asyncio.sleep(0.5 - (time.monotonic() - start))
        assert await _admit(leasing, key) is not None  # from the lease, at T + 0.5 s
        # The lease ends at T + 0.7 s (2 used); nothing touches the key until the first one has left.
        await asyncio.sleep(2.15 - (time.monotonic() - start))
        verdicts = [await plain.check(f"p{i}", window, []) for i in range(320)]
        # The lease's 2 are in the window until T + 2.5 s.
        assert len([v for v in verdicts if v is not None and v.over is None]) == 320 - 2

    _run(redis.url, scenario)


def test_a_request_after_midnight_is_charged_to_the_new_day_though_its_first_budget_is_monthly(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease is keyed by its plan and its first budget's name; with a monthly budget first (the key's)
    and a daily one after (the team's), the day changes and the key does not: the lease counted on
    yesterday's team budget goes on admitting today's requests, charged to yesterday."""
    server = redis_client.Redis.from_url(redis.url)
    key = Principal(
        "r3", team="r3", key_limits=Limits(usd_per_month=1000.0), team_limits=Limits(usd_per_day=1000.0)
    )
    evening = 1_796_169_599.5  # 2026-12-01 23:59:59.5 UTC
    clock = [evening]
    monkeypatch.setattr(time, "time", lambda: clock[0])

    async def scenario(make: Callable[..., Limiter]) -> None:
        limiter = make()
        for _ in range(3):  # alone, then a lease, then from it
            assert await _admit(limiter, key) is not None
        clock[0] = evening + 0.7  # 2026-12-02 00:00:00.2
        assert await _admit(limiter, key) is not None

    _run(redis.url, scenario)
    assert time.strftime("%Y-%m-%d", time.gmtime(evening + 0.7)) == "2026-12-02"
    assert float(server.get("t:spent:team:r3:day:2026-12-02") or 0) >= 0.01  # its reserve


class _Cuttable:
    """A TCP proxy to Redis that can be cut (its connections dropped, new ones refused) and restored:
    an outage in which nothing sent after the cut reaches Redis, while Redis keeps its counts."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self._writers), return_exceptions=True)
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, upstream_writer}

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
            finally:
                sink.close()

        await asyncio.gather(
            copy(reader, upstream_writer), copy(upstream_reader, writer), return_exceptions=True
        )


def test_what_a_budget_lease_did_not_use_goes_back_after_an_outage_that_kept_it_from_redis(
    redis: RedisServer,
) -> None:
    """The correction that gives a lease's unused part back is due while Redis cannot be reached: it
    waits, and goes once Redis is back (before, it was dropped, and the whole lease stayed spent in the
    day's budget). A correction in a call that reached Redis and then failed may have run: that one is
    dropped, as before leases."""
    server = redis_client.Redis.from_url(redis.url)
    key = Principal("r4", key_limits=Limits(usd_per_day=1000.0))
    day = time.strftime("%Y-%m-%d", time.gmtime())
    proxy = _Cuttable(redis.port)

    async def scenario(make: Callable[..., Limiter]) -> None:
        await proxy.open()
        limiter = make(lease_seconds=0.5)
        for _ in range(3):  # alone, then a lease of 0.04, then from it: 0.03 of 0.05 used
            assert await _admit(limiter, key) is not None
        assert float(server.get(f"t:spent:key:r4:day:{day}") or 0) > 0.03 + 1e-9  # the lease is counted
        await proxy.cut()
        await asyncio.sleep(0.7)  # the lease ended: its end cannot be sent
        assert float(server.get(f"t:spent:key:r4:day:{day}") or 0) > 0.03 + 1e-9
        await proxy.open()
        await asyncio.sleep(1.5)  # Redis is tried again: the end goes
        await limiter.close(wait=0)
        await proxy.cut()

    _run(f"redis://127.0.0.1:{proxy.port}/0", scenario)
    assert float(server.get(f"t:spent:key:r4:day:{day}") or 0) == pytest.approx(0.03)


def test_an_asker_that_finds_its_lease_used_up_asks_again_under_a_name_of_its_own(redis: RedisServer) -> None:
    """Requests that run between a lease's arrival and its asker's return can use it up; the asker then
    asks again with the same rid, and a lease of the same size is the same member of the log ("rid:4"):
    ZADD moves the first lease's entry instead of adding one, the total counts both, and when the entry
    leaves the window the first lease's units stay in the total while the key is busy."""
    server = redis_client.Redis.from_url(redis.url)
    key = Principal("r5", key_limits=Limits(requests_per_minute=1000))

    def admit_now(limiter: Limiter) -> None:
        """A request that finds the lease in place: admitted without an await (the fast path)."""
        coro = limiter.admit(key, LimitsPolicy(), lambda: FEATURES, PRICE, "openai")
        with pytest.raises(StopIteration) as done:  # it returned at its first step
            coro.send(None)
        assert done.value.value is not None and done.value.value.lease is not None

    async def scenario(make: Callable[..., Limiter]) -> None:
        limiter = make(lease_seconds=0.3, window_ms=1500)
        plain = make(lease_seconds=0, window_ms=1500).store
        assert await _admit(limiter, key) is not None  # alone
        asker = asyncio.ensure_future(_admit(limiter, key))
        await asyncio.sleep(0)
        assert limiter.leases is not None
        (slot,) = limiter.leases._slots.values()
        assert slot.asking is not None

        def use_up(_: object) -> None:
            """Runs after the lease is in place, before the asker resumes: 4 requests use it up."""
            for _ in range(4):
                admit_now(limiter)

        slot.asking.add_done_callback(use_up)
        assert await asker is not None
        await asyncio.sleep(0.5)  # both leases ended
        assert await plain.check("keep", [Window("key:r5:requests", 1000, 1)], []) is not None
        log: list[bytes] = server.zrange("t:limit:key:r5:requests", 0, -1)  # type: ignore[assignment]
        counted = sum(int(m.rsplit(b":", 1)[1]) for m in log)
        assert int(server.get("t:limit:key:r5:requests:total") or 0) == counted == 1 + 4 + 1 + 1

    _run(redis.url, scenario)
