"""Review of leases (gateway/limit_lease.py) and the script's corrections (gateway/limit_store.py):
each test here shows a way a limit is exceeded, or under-admitted for good, against a real
redis-server, driving the Limiter as tests/test_limit_lease.py does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis as redis_client

from gateway.limit_store import Window
from gateway.limits import Limiter
from gateway.principal import Limits, Principal
from tests.services import RedisServer
from tests.test_limit_lease import ESTIMATE, _admit, _run


def test_a_window_whose_only_entry_was_corrected_still_admits_only_its_limit(redis: RedisServer) -> None:
    """A correction removes a log's only entry (Redis deletes the emptied key) and adds it again: the
    log comes back without its expiry, outlives its total, and the next check after the window subtracts
    the entry from a total of 0: a negative total admits the limit and more."""
    key = Principal("r1", key_limits=Limits(tokens_per_minute=2 * ESTIMATE))

    async def scenario(make: Callable[..., Limiter]) -> None:
        limiter = make(window_ms=1000)
        ticket = await _admit(limiter, key)
        assert ticket is not None
        ticket.settle(2 * ESTIMATE, 0.0)  # it used twice its estimate: the window is full
        await asyncio.sleep(0.1)  # the correction went
        await asyncio.sleep(1.0)  # the window has passed: its entry leaves
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
