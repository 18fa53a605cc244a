"""Corrections reach Redis in the order they were made, once, and none that surely never ran is lost:
across calls that fail before reaching Redis, a check cancelled while the connection is made, replies
by which Redis refuses to run anything (BUSY, LOADING), a script Redis lost (NOSCRIPT), a backlog after
an outage (sent in short runs, all of them on close), a check cancelled while its call waits, and a
limiter closed while a check is in flight (it waits for the request that check admits). Against a
real redis-server; each was found by an independent review."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

import hiredis
import pytest
import redis as redis_client

from gateway.config import Redis
from gateway.limit_store import SCRIPT, Budget, Correction, RedisStore, Window
from gateway.limits import Limiter
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from tests.services import RedisServer
from tests.test_limit_edges import _Cuttable
from tests.test_limit_lease import _admit


def _store(url: str, timeout: float) -> RedisStore:
    """A store with a link of its own to `url`, trying Redis again 0.3 s after a failure."""
    return RedisStore(RedisLink(Redis(url, "t", timeout, 0.3), Recorder(Metrics())))


async def _close(store: RedisStore) -> None:
    await store.close()
    await store.link.close()


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
        store = _store(f"redis://127.0.0.1:{proxy.port}/0", 1.0)
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
        await _close(store)
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
        store = _store(f"redis://127.0.0.1:{proxy.port}/0", 1.0)
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
        await _close(store)
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
        store = _store(redis.url, 2.0)
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
        await _close(store)

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
        store = _store(redis.url, 1.0)
        limiter = Limiter(store, Recorder(Metrics()), lease_seconds=0)
        admitting = asyncio.ensure_future(_admit(limiter, key))
        await asyncio.sleep(0)  # its check is in flight
        closing = asyncio.ensure_future(limiter.close(wait=5.0))
        ticket = await admitting
        assert ticket is not None
        await asyncio.sleep(0.3)  # the request runs
        assert not closing.done()  # its store stays open for its correction
        ticket.settle(20, 0.0)
        await closing
        await store.link.close()

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
        store = _store(redis.url, 1.0)
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
        await _close(store)

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
        store = _store(f"redis://127.0.0.1:{proxy.port}/0", 0.25)
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
        await _close(store)
        await proxy.cut()

    asyncio.run(main())


def test_close_sends_every_run_of_a_backlog_not_only_the_first(redis: RedisServer) -> None:
    """More corrections wait than one call carries (CHUNK_ARGS): a backlog after an outage, or every
    lease a reload's close gives back at once. close() flushes once: that call carries one run, and the
    rest is scheduled for later, which a closed store never arms. Those corrections are lost while
    Redis is up and answering."""
    server = redis_client.Redis.from_url(redis.url)
    window = Window("key:v1:tokens", 1_000_000_000, 10)
    count = 1200  # 6 arguments each: ~7,200, two runs

    async def main() -> None:
        store = _store(redis.url, 1.0)
        verdict = await store.check("r", [window], [])
        assert verdict is not None
        server.zadd("t:limit:key:v1:tokens", {f"r{i}:10": verdict.counted_at for i in range(count)})
        for i in range(count):  # the requests end: each used 12 tokens
            store.correct(Correction(f"r{i}", (("key:v1:tokens", 10, 12),), (), verdict.counted_at))
        await _close(store)

    asyncio.run(main())
    log: list[bytes] = server.zrange("t:limit:key:v1:tokens", 0, -1)  # type: ignore[assignment]
    assert sum(m.endswith(b":12") for m in log) == count  # each request's entry corrected


def test_a_check_cancelled_while_its_call_is_held_unwritten_does_not_lose_its_corrections(
    redis: RedisServer,
) -> None:
    """A check's call waits, unwritten, behind one whose reply is awaited (`RedisWire._held`); its
    client leaves and its task is cancelled. That call then fails unsent (the one ahead timed out, or
    the connection dropped): `_fail` skips its cancelled future, and `_eval` re-queues only on `Unsent`,
    which never reaches it. The corrections it carried surely never ran, yet are lost."""
    server = redis_client.Redis.from_url(redis.url)
    budget = Budget("key:v3:day:2026-12-01", 100.0, 0.5, 3600)
    none = Budget(budget.name, 100.0, 0.0, 3600)

    async def main() -> None:
        store = _store(redis.url, 0.3)
        verdict = await store.check("r", [], [budget])  # 0.5 reserved
        assert verdict is not None and verdict.over is None
        server.client_pause(700)  # Redis holds its answers
        first = asyncio.ensure_future(store.check("a", [], [none]))
        await asyncio.sleep(0.05)  # written; its reply awaited
        store.correct(Correction("r", (), ((budget.name, -0.4),), verdict.counted_at))  # it cost 0.1
        second = asyncio.ensure_future(store.check("b", [], [none]))
        await asyncio.sleep(0)  # it took the correction; its call is held behind the first
        second.cancel()  # its client left
        assert await first is None  # timed out: the held call was never written
        await asyncio.sleep(1.0)  # the pause ends; Redis is tried again
        assert await store.check("c", [], [none]) is not None
        await asyncio.sleep(0.1)
        await _close(store)

    asyncio.run(main())
    assert float(server.get("t:spent:key:v3:day:2026-12-01") or 0) == pytest.approx(0.1)


def test_a_check_cancelled_between_noscript_and_its_eval_does_not_lose_its_corrections(
    redis: RedisServer,
) -> None:
    """Redis lost its scripts: a check carrying a correction gets NOSCRIPT (nothing ran) and would send
    itself again as EVAL when its task resumes. Its client leaves in that round trip: the task resumes
    cancelled, the EVAL never goes, and `_eval` re-queues only on `Unsent`: the correction is lost."""
    server = redis_client.Redis.from_url(redis.url)
    budget = Budget("key:v4:day:2026-12-01", 100.0, 0.5, 3600)
    none = Budget(budget.name, 100.0, 0.0, 3600)

    async def main() -> None:
        store = _store(redis.url, 1.0)
        verdict = await store.check("r", [], [budget])  # 0.5 reserved
        assert verdict is not None and verdict.over is None
        server.script_flush()
        wire, leaving = store._wire, list[asyncio.Future[Any]]()
        call = wire.call

        def watched(*command: Any) -> Awaitable[Any]:
            """Redis's own connection, watched: its client leaves as the NOSCRIPT reply comes."""
            reply = asyncio.ensure_future(call(*command))
            if command[0] == "EVALSHA" and leaving:
                task = leaving.pop()
                reply.add_done_callback(
                    lambda done: task.cancel() if isinstance(done.result(), hiredis.ReplyError) else None
                )
            return reply

        wire.call = watched  # type: ignore[method-assign]
        store.correct(Correction("r", (), ((budget.name, -0.4),), verdict.counted_at))  # it cost 0.1
        check = asyncio.ensure_future(store.check("s", [], [none]))
        leaving.append(check)
        with pytest.raises(asyncio.CancelledError):
            await check
        wire.call = call  # type: ignore[method-assign]
        assert await store.check("t", [], [none]) is not None
        await asyncio.sleep(0.1)
        await _close(store)

    asyncio.run(main())
    assert float(server.get("t:spent:key:v4:day:2026-12-01") or 0) == pytest.approx(0.1)


def test_a_correction_resent_after_noscript_does_not_go_after_a_newer_one_another_worker_loaded(
    redis: RedisServer,
) -> None:
    """Redis lost its scripts (restarted, failed over): every worker's next call gets NOSCRIPT. This
    worker's call carrying a lease's end gets it and will resend itself as EVAL; the check behind it on
    the same connection, carrying the lease's later settle, is written when that reply arrives. Another
    worker's EVAL loaded the script in between: the newer call runs at once, before the EVAL, finds no
    entry to move and is skipped (the NOSCRIPT fix of 987ad6e covers only this worker's own load)."""
    server = redis_client.Redis.from_url(redis.url)
    window = Window("key:v5:tokens", 1000, 10)

    async def main() -> None:
        store = _store(redis.url, 1.0)
        verdict = await store.check("lease", [window], [])  # "lease:10" in the log
        assert verdict is not None
        server.script_flush()
        store.correct(Correction("lease", (("key:v5:tokens", 10, 5),), (), verdict.counted_at))  # its end
        first = asyncio.ensure_future(store.check("a", [window], []))
        await asyncio.sleep(0)  # written: Redis answers NOSCRIPT
        time.sleep(0.1)  # noqa: ASYNC251 - the loop must not read that NOSCRIPT yet: Redis has sent it
        server.script_load(SCRIPT)  # another worker's EVAL
        store.correct(Correction("lease", (("key:v5:tokens", 5, 8),), (), verdict.counted_at))  # a settle
        second = asyncio.ensure_future(store.check("b", [window], []))
        assert await first is not None and await second is not None
        await _close(store)

    asyncio.run(main())
    log: list[bytes] = server.zrange("t:limit:key:v5:tokens", 0, -1)  # type: ignore[assignment]
    assert b"lease:8" in log
