"""Corrections reach Redis in the order they were made, once, and none that surely never ran is lost:
across calls that fail before reaching Redis, a check cancelled while the connection is made, replies
by which Redis refuses to run anything (BUSY, LOADING), a script Redis lost (NOSCRIPT), a backlog after
an outage (sent in short runs), and a limiter closed while a check is in flight (it waits for the
request that check admits). Against a real redis-server; each was found by an independent review."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
import redis as redis_client

from gateway.config import Redis
from gateway.limit_store import Budget, Correction, RedisStore, Window
from gateway.limits import Limiter
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from tests.services import RedisServer
from tests.test_limit_edges import _Cuttable
from tests.test_limit_lease import _admit


def test_corrections_of_two_unsent_calls_go_in_the_order_they_were_made(redis: RedisServer) -> None:
    """A lease's end moves its entry "rid:granted" to "rid:used", and a request it admitted that settles
    later moves "rid:used" on to "rid:used+tokens": the second correction only applies after the first.
    Two checks carrying them in turn fail together without reaching Redis (the connection cannot be
    made): each puts its corrections back at the head of the queue as its failure reaches it, oldest
    first, so the newer ends up first. Sent in that order, the second finds no "rid:used" and is
    skipped: its tokens are never counted (nor any later settle of that lease's)."""
    server = redis_client.Redis.from_url(redis.url)
    proxy = _Cuttable(redis.port)
    window = Window("key:q1:tokens", 1000, 10)

    async def main() -> None:
        await proxy.open()
        link = RedisLink(Redis(f"redis://127.0.0.1:{proxy.port}/0", "t", 1.0, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
        verdict = await store.check("lease", [window], [])  # "lease:10" in the log
        assert verdict is not None and verdict.over is None
        await proxy.cut()
        await asyncio.sleep(0.1)
        store.correct(Correction("lease", (("key:q1:tokens", 10, 5),), (), verdict.counted_at))  # its end
        first = asyncio.ensure_future(store.check("a", [window], []))
        await asyncio.sleep(0)  # it took the first correction and waits for the connection
        store.correct(Correction("lease", (("key:q1:tokens", 5, 8),), (), verdict.counted_at))  # a settle
        second = asyncio.ensure_future(store.check("b", [window], []))
        assert await first is None and await second is None  # Redis unreachable: neither ran
        await proxy.open()
        await asyncio.sleep(0.6)  # Redis is tried again: the corrections go
        await store.close()
        await link.close()
        await proxy.cut()

    asyncio.run(main())
    assert server.zrange("t:limit:key:q1:tokens", 0, -1) == [b"lease:8"]
    assert int(server.get("t:limit:key:q1:tokens:total") or 0) == 8


def test_a_check_cancelled_while_the_connection_is_made_does_not_lose_the_corrections_it_carries(
    redis: RedisServer,
) -> None:
    """A check takes the corrections waiting and then waits for the connection to Redis to be made (after
    a dropped connection, or at start). Its client leaves and its task is cancelled there: nothing was
    written, yet the corrections are neither sent nor put back (only `Unsent` puts them back), so the
    request's (or a lease's) unused reserve stays spent for the day."""
    server = redis_client.Redis.from_url(redis.url)
    proxy = _Cuttable(redis.port)
    budget = Budget("key:q2:day:2026-12-01", 100.0, 0.5, 3600)

    async def main() -> None:
        await proxy.open()
        link = RedisLink(Redis(f"redis://127.0.0.1:{proxy.port}/0", "t", 1.0, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
        verdict = await store.check("r", [], [budget])  # 0.5 reserved
        assert verdict is not None and verdict.over is None
        await proxy.cut()  # the connection drops; Redis is reachable again at once
        await proxy.open()
        await asyncio.sleep(0.05)
        store.correct(Correction("r", (), (("key:q2:day:2026-12-01", -0.4),), verdict.counted_at))
        check = asyncio.ensure_future(store.check("s", [], [Budget(budget.name, 100.0, 0.0, 3600)]))
        await asyncio.sleep(0)  # it took the correction and waits for the connection
        check.cancel()  # its client left
        await asyncio.sleep(0.2)
        assert await store.check("t", [], [Budget(budget.name, 100.0, 0.0, 3600)]) is not None
        await asyncio.sleep(0.1)
        await store.close()
        await link.close()
        await proxy.cut()

    asyncio.run(main())
    assert float(server.get("t:spent:key:q2:day:2026-12-01") or 0) == pytest.approx(0.1)


def test_corrections_in_a_call_redis_refused_unrun_are_not_lost(redis: RedisServer) -> None:
    """Redis answers some calls with an error before running anything: BUSY (another client's script
    runs long), LOADING (restarting from its dump: just after an outage, when the corrections that
    waited for it go), NOSCRIPT twice. The corrections the call carried surely did not run, yet they
    are dropped (only `Unsent` puts them back): a request's unused reserve stays spent for the day."""
    server = redis_client.Redis.from_url(redis.url)
    server.config_set("busy-reply-threshold", 10)
    budget = Budget("key:q3:day:2026-12-01", 100.0, 0.5, 3600)
    none = Budget(budget.name, 100.0, 0.0, 3600)

    async def main() -> None:
        link = RedisLink(Redis(redis.url, "t", 2.0, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
        verdict = await store.check("r", [], [budget])  # 0.5 reserved
        assert verdict is not None and verdict.over is None
        busy = asyncio.get_running_loop().run_in_executor(
            None,
            lambda: redis_client.Redis.from_url(redis.url).eval(
                "local x = 0 for i = 1, 80000000 do x = x + i end return 1", 0
            ),
        )
        await asyncio.sleep(0.1)  # the other client's script runs: Redis answers BUSY
        store.correct(Correction("r", (), ((budget.name, -0.4),), verdict.counted_at))
        assert await store.check("s", [], [none]) is None  # BUSY: nothing ran
        await busy
        await asyncio.sleep(0.4)  # Redis is tried again
        assert await store.check("t", [], [none]) is not None
        await asyncio.sleep(0.1)
        await store.close()
        await link.close()

    asyncio.run(main())
    assert float(server.get("t:spent:key:q3:day:2026-12-01") or 0) == pytest.approx(0.1)


def test_a_limiter_closed_while_a_check_is_in_flight_waits_for_the_request_it_admits(
    redis: RedisServer,
) -> None:
    """A reload closes the old limiter while one of its checks is in flight. The check ends and releases
    its hold (none left: the drain is set) before its ticket takes one: close() goes on, closes the store
    while the admitted request runs, and the request's correction, when it ends, is dropped."""
    server = redis_client.Redis.from_url(redis.url)
    key = Principal("q4", key_limits=Limits(tokens_per_minute=10_000))

    async def main() -> None:
        link = RedisLink(Redis(redis.url, "t", 1.0, 0.3), Recorder(Metrics()))
        limiter = Limiter(RedisStore(link), Recorder(Metrics()), lease_seconds=0)
        admitting = asyncio.ensure_future(_admit(limiter, key))
        await asyncio.sleep(0)  # its check is in flight
        closing = asyncio.ensure_future(limiter.close(wait=5.0))
        ticket = await admitting
        assert ticket is not None
        await asyncio.sleep(0.3)  # the request runs
        assert not closing.done()  # its store stays open for its correction
        ticket.settle(20, 0.0)
        await closing
        await link.close()

    asyncio.run(main())
    log: list[bytes] = server.zrange("t:limit:key:q4:tokens", 0, -1)  # type: ignore[assignment]
    assert [m.rsplit(b":", 1)[1] for m in log] == [b"20"]


def test_a_correction_resent_after_noscript_does_not_go_after_a_newer_one(redis: RedisServer) -> None:
    """Redis lost its scripts (restarted, failed over, SCRIPT FLUSH): a call carrying a lease's end gets
    NOSCRIPT, loads the script and sends itself again a round trip later. A check carrying a later
    correction of the same lease, sent in between, finds the script loaded and runs first: the later
    correction finds no entry to move and is skipped, its tokens never counted."""
    server = redis_client.Redis.from_url(redis.url)
    window = Window("key:q5:tokens", 1000, 10)

    async def main() -> None:
        link = RedisLink(Redis(redis.url, "t", 1.0, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
        verdict = await store.check("lease", [window], [])  # "lease:10" in the log
        assert verdict is not None
        server.script_flush()
        wire, later = store._wire, []
        call = wire.call

        def watched(*command: Any) -> Awaitable[Any]:
            """Redis's own connection, watched: once the script is being loaded, a newer check goes."""
            if command[0] in ("SCRIPT", "EVAL"):  # the script is being loaded
                store.correct(Correction("lease", (("key:q5:tokens", 5, 8),), (), verdict.counted_at))
                later.append(asyncio.ensure_future(store.check("b", [window], [])))
            return call(*command)

        wire.call = watched  # type: ignore[method-assign]
        store.correct(Correction("lease", (("key:q5:tokens", 10, 5),), (), verdict.counted_at))  # its end
        assert await store.check("a", [window], []) is not None
        assert len(later) == 1 and await later[0] is not None  # it found the script loaded
        await store.close()
        await link.close()

    asyncio.run(main())
    log: list[bytes] = server.zrange("t:limit:key:q5:tokens", 0, -1)  # type: ignore[assignment]
    assert b"lease:8" in log


def test_the_corrections_an_outage_held_back_do_not_make_the_first_check_after_it_time_out(
    redis: RedisServer,
) -> None:
    """Corrections due while Redis is down wait (up to MAX_PENDING_ARGS, ~100,000 of them), and the first
    call once it is back carries them all in one script run. A minute of a busy gateway's corrections
    keeps Redis busy longer than the timeout: that check times out, Redis is taken for down again (keys
    with budgets refused, 503, for another retry period), and every other gateway's checks wait behind
    the run too."""
    server = redis_client.Redis.from_url(redis.url)
    proxy = _Cuttable(redis.port)
    window = Window("key:q6:tokens", 1_000_000_000, 10)
    budget = Budget("key:q6:day:2026-12-01", 1e9, 0.01, 3600)

    async def main() -> None:
        await proxy.open()
        link = RedisLink(Redis(f"redis://127.0.0.1:{proxy.port}/0", "t", 0.25, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
        verdict = await store.check("r", [window], [budget])
        assert verdict is not None
        # The minute's requests, as their checks counted them.
        server.zadd("t:limit:key:q6:tokens", {f"r{i}:10": verdict.counted_at for i in range(60_000)})
        await proxy.cut()
        assert await store.check("s", [window], [budget]) is None  # Redis is down
        for i in range(60_000):  # a minute of requests ending at 1,000 a second
            correction = Correction(f"r{i}", (("key:q6:tokens", 10, 12),), ((budget.name, 0.001),), 0)
            store.correct(correction._replace(counted_at=verdict.counted_at))
        await proxy.open()
        await asyncio.sleep(0.4)  # Redis is tried again
        assert await store.check("t", [window], [budget]) is not None
        await store.close()
        await link.close()
        await proxy.cut()

    asyncio.run(main())
