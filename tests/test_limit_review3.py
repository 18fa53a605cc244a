"""Review 3 of limits' corrections (commit 987ad6e): each test fails on that code. Against a real
redis-server."""

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
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from tests.services import RedisServer


def test_close_sends_every_run_of_a_backlog_not_only_the_first(redis: RedisServer) -> None:
    """More corrections wait than one call carries (CHUNK_ARGS): a backlog after an outage, or every
    lease a reload's close gives back at once. close() flushes once: that call carries one run, and the
    rest is scheduled for later, which a closed store never arms. Those corrections are lost while
    Redis is up and answering."""
    server = redis_client.Redis.from_url(redis.url)
    window = Window("key:v1:tokens", 1_000_000_000, 10)
    count = 1200  # 6 arguments each: ~7,200, two runs

    async def main() -> None:
        link = RedisLink(Redis(redis.url, "t", 1.0, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
        verdict = await store.check("r", [window], [])
        assert verdict is not None
        server.zadd("t:limit:key:v1:tokens", {f"r{i}:10": verdict.counted_at for i in range(count)})
        for i in range(count):  # the requests end: each used 12 tokens
            store.correct(Correction(f"r{i}", (("key:v1:tokens", 10, 12),), (), verdict.counted_at))
        await store.close()
        await link.close()

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
        link = RedisLink(Redis(redis.url, "t", 0.3, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
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
        await store.close()
        await link.close()

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
        link = RedisLink(Redis(redis.url, "t", 1.0, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
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
        await store.close()
        await link.close()

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
        link = RedisLink(Redis(redis.url, "t", 1.0, 0.3), Recorder(Metrics()))
        store = RedisStore(link)
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
        await store.close()
        await link.close()

    asyncio.run(main())
    log: list[bytes] = server.zrange("t:limit:key:v5:tokens", 0, -1)  # type: ignore[assignment]
    assert b"lease:8" in log
