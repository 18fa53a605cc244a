"""The two limit stores, in this process and in a real redis-server, pass the same tests: sliding
windows admit exactly their limit, a refused request counts nowhere, budgets reserve and are corrected."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
import redis as redis_client

from gateway.config import Redis
from gateway.limit_store import Budget, Correction, LimitStore, LocalStore, RedisStore, Window
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from gateway.redis_wire import RedisWire
from tests.services import RedisServer, redis_server


@pytest.fixture(params=["local", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def _run(
    kind: str, redis_url: str | None, window_ms: int, scenario: Callable[[LimitStore], Awaitable[None]]
) -> None:
    async def main() -> None:
        if kind == "local":
            await scenario(LocalStore(window_ms=window_ms))
            return
        assert redis_url is not None
        link = RedisLink(Redis(redis_url, "t", 1.0, 1.0), Recorder(Metrics()))
        store = RedisStore(link, window_ms=window_ms)
        try:
            await scenario(store)
        finally:
            await store.close()
            await link.close()

    asyncio.run(main())


@pytest.fixture
def run(store_kind: str, request: pytest.FixtureRequest) -> Callable[..., None]:
    url = None
    if store_kind == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        url = server.url

    def go(scenario: Callable[[LimitStore], Awaitable[None]], window_ms: int = 60_000) -> None:
        _run(store_kind, url, window_ms, scenario)

    return go


def test_a_window_admits_exactly_its_limit_and_counts_down(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        window = Window("key:a:requests", 5, 1)
        verdicts = await asyncio.gather(*(store.check(f"r{i}", [window], []) for i in range(12)))
        admitted = [v for v in verdicts if v is not None and v.over is None]
        refused = [v for v in verdicts if v is not None and v.over == "rate"]
        assert len(admitted) == 5 and len(refused) == 7
        assert sorted(v.remaining[0] for v in admitted) == [0, 1, 2, 3, 4]
        assert all(v.remaining == (0,) and v.over_at == 0 for v in refused)
        assert all(0 < v.wait_ms[0] <= 60_000 for v in refused)

    run(scenario)


def test_a_refused_request_counts_in_no_window_or_budget(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        key, team = Window("key:a:requests", 10, 1), Window("team:t:requests", 2, 1)
        budget = Budget("team:t:day:2026-12-01", 1.0, 0.3, 60)
        first = await store.check("r1", [key, team], [budget])
        second = await store.check("r2", [key, team], [budget])
        third = await store.check("r3", [key, team], [budget])  # over the team's window
        assert first is not None and second is not None and third is not None
        assert (first.over, second.over, third.over, third.over_at) == (None, None, "rate", 1)
        assert third.remaining == (8, 0)  # the key's window did not count the refused request
        other_key = await store.check("r4", [Window("key:b:requests", 10, 1)], [budget])
        assert other_key is not None and other_key.over is None  # reserved: 0.9 of 1.0
        over = await store.check("r5", [Window("key:b:requests", 10, 1)], [budget])
        assert over is not None and (over.over, over.over_at, over.remaining) == ("budget", 0, (9,))

    run(scenario)


def test_corrections_replace_estimates(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        tokens = Window("key:a:tokens", 100, 60)
        budget = Budget("key:a:day:2026-12-01", 1.0, 0.6, 60)
        first = await store.check("r1", [tokens], [budget])
        assert first is not None and first.over is None and first.remaining == (40,)
        refused = await store.check("r2", [tokens], [budget])
        assert refused is not None and refused.over == "budget"
        store.correct(
            Correction(
                "r1", (("key:a:tokens", 60, 10),), (("key:a:day:2026-12-01", 0.1 - 0.6),), first.counted_at
            )
        )
        await asyncio.sleep(0.05)  # Redis's corrections go out in the next event-loop turn
        second = await store.check("r3", [tokens], [budget])  # 10 + 60 tokens, 0.1 + 0.6 USD
        assert second is not None and second.over is None and second.remaining == (30,)
        third = await store.check("r4", [tokens], [budget])
        assert third is not None and third.over == "budget"

    run(scenario)


def test_the_window_slides(run: Callable[..., None]) -> None:
    async def scenario(store: LimitStore) -> None:
        window = Window("key:a:requests", 2, 1)
        assert [(await store.check(f"a{i}", [window], [])) is not None for i in range(2)] == [True, True]
        full = await store.check("a3", [window], [])
        assert full is not None and full.over == "rate" and 0 < full.wait_ms[0] <= 300
        await asyncio.sleep(0.35)
        again = await store.check("a4", [window], [])
        assert again is not None and again.over is None and again.remaining == (1,)

    run(scenario, window_ms=300)


def test_a_log_that_expired_counts_nothing_though_its_total_outlived_it(run: Callable[..., None]) -> None:
    """A refused check that drops old entries keeps the window's total a window longer than its log:
    once the log has expired, what is left of that total must not count."""

    async def scenario(store: LimitStore) -> None:
        def tokens(amount: int) -> list[Window]:
            return [Window("key:a:tokens", 10, amount)]

        started = time.monotonic()
        assert (await store.check("a1", tokens(5), [])) is not None
        await asyncio.sleep(0.3)
        assert (await store.check("a2", tokens(5), [])) is not None  # leaves the window at ~1.3 s
        await asyncio.sleep(1.05 - (time.monotonic() - started))
        refused = await store.check("a3", tokens(9), [])  # a1 has left: 5 + 9 > 10
        assert refused is not None and refused.over == "rate" and refused.remaining == (5,)
        await asyncio.sleep(1.5 - (time.monotonic() - started))  # a2 has left too
        assert time.monotonic() - started < 2.0  # before the total set by a3's check expires
        again = await store.check("a4", tokens(9), [])
        assert again is not None and again.over is None and again.remaining == (1,)

    run(scenario, window_ms=1000)


def test_a_script_redis_does_not_know_yet_is_loaded_and_nothing_runs_twice(redis: RedisServer) -> None:
    async def scenario(store: LimitStore) -> None:
        window = Window("key:a:tokens", 100, 60)
        first = await store.check("r1", [window], [])
        assert first is not None and first.remaining == (40,)
        redis_client.Redis.from_url(redis.url).script_flush()  # as a restarted Redis
        # The correction goes a little later: Redis does not know the script, so it did not run; it runs
        # once, as the script is loaded.
        store.correct(Correction("r1", (("key:a:tokens", 60, 10),), (), first.counted_at))
        await asyncio.sleep(0.1)
        second = await store.check("r2", [Window("key:a:tokens", 100, 5)], [])
        assert second is not None and second.remaining == (85,)

    _run("redis", redis.url, 60_000, scenario)


def test_corrections_wait_and_all_go_in_one_call_on_close(redis: RedisServer) -> None:
    """Settling does not delay a response: corrections go together a little later, and closing the
    store sends those still waiting."""
    server = redis_client.Redis.from_url(redis.url)

    def evalsha_calls() -> int:
        stats: dict[str, int] = server.info("commandstats").get("cmdstat_evalsha", {"calls": 0})
        return stats["calls"]

    async def scenario(store: LimitStore) -> None:
        budget = Budget("team:t:day:2026-12-01", 100.0, 0.5, 60)
        verdicts = [
            await store.check(f"r{i}", [Window("key:a:tokens", 1000, 60)], [budget]) for i in range(5)
        ]
        server.config_resetstat()
        for i, verdict in enumerate(verdicts):
            assert verdict is not None and verdict.over is None
            real = (("key:a:tokens", 60, 10 + i),)
            store.correct(
                Correction(f"r{i}", real, (("team:t:day:2026-12-01", 0.25 - 0.5),), verdict.counted_at)
            )
        assert evalsha_calls() == 0  # nothing sent yet
        await store.close()
        assert evalsha_calls() == 1

    _run("redis", redis.url, 60_000, scenario)
    assert server.get("t:limit:key:a:tokens:total") == str(10 + 11 + 12 + 13 + 14).encode()
    assert float(server.get("t:spent:team:t:day:2026-12-01") or 0) == pytest.approx(5 * 0.25)
    members = {m.decode() for m in server.zrange("t:limit:key:a:tokens", 0, -1)}
    assert members == {f"r{i}:{10 + i}" for i in range(5)}


def test_a_correction_after_the_store_closed_opens_no_connection(redis: RedisServer) -> None:
    """A request that outlived a reload's drain settles after its store closed: dropped, not sent on
    a new connection that nothing would ever close."""
    server = redis_client.Redis.from_url(redis.url)

    async def scenario(store: LimitStore) -> None:
        verdict = await store.check("r1", [Window("key:a:tokens", 100, 60)], [])
        assert verdict is not None
        await store.close()
        store.correct(Correction("r1", (("key:a:tokens", 60, 10),), (), verdict.counted_at))
        await asyncio.sleep(0.1)
        assert len(server.client_list()) == 1  # this test's own

    _run("redis", redis.url, 60_000, scenario)
    assert server.get("t:limit:key:a:tokens:total") == b"60"  # the estimate stands


def test_the_wire_authenticates_selects_the_database_and_takes_a_refusal_for_an_outage() -> None:
    with redis_server(password="s3cret") as server:

        async def scenario(store: LimitStore) -> None:
            verdict = await store.check("r1", [Window("key:a:requests", 3, 1)], [])
            assert verdict is not None and verdict.remaining == (2,)

        _run("redis", server.url.replace("/0", "/2"), 60_000, scenario)
        database = redis_client.Redis(port=server.port, password="s3cret", db=2)
        assert database.zcard("t:limit:key:a:requests") == 1  # in database 2, as the URL said

        async def refused(store: LimitStore) -> None:
            assert await store.check("r2", [Window("key:a:requests", 3, 1)], []) is None

        _run("redis", server.url.replace("s3cret", "wrong"), 60_000, refused)


def test_a_redis_that_does_not_answer_counts_as_down_after_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"

        async def scenario() -> tuple[object, float]:
            link = RedisLink(Redis(url, "t", 0.2, 5.0), Recorder(Metrics()))
            store = RedisStore(link)
            started = time.monotonic()
            try:
                return await store.check(
                    "r1", [Window("key:a:requests", 3, 1)], []
                ), time.monotonic() - started
            finally:
                await store.close()
                await link.close()

        verdict, waited = asyncio.run(scenario())
    assert verdict is None and waited < 5.0


def test_a_caller_cancelled_while_connecting_is_cancelled_not_told_of_an_outage() -> None:
    with socket.socket() as silent:  # accepts, never answers the AUTH
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        wire = RedisWire(f"redis://:pw@127.0.0.1:{silent.getsockname()[1]}/0", 5.0)

        async def scenario() -> None:
            call = asyncio.ensure_future(wire.call("PING"))
            await asyncio.sleep(0.1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            wire.close()

        asyncio.run(scenario())
