"""Leases: a busy key's requests admitted from a slice of its limits that this process counted in
Redis beforehand, instead of one round trip to Redis each (gateway/limits.py asks for them).

A request that finds no lease asks for one in its own check, sized by how many requests with the same
limits this process saw in the last second (twice that many requests' amounts). The script counts the
lease instead of the request only if every limit keeps it within the first half of its window or
budget, and gives at most 1/16 of what a limit has left; otherwise it counts the request alone, as
without leases. Requests that arrive while a lease is being asked for wait for it.

What holds, and what it costs:
- *Never over a limit.* Every admitted request is counted in Redis before it is admitted, alone or in
  a lease. A lease's entries stay where Redis counted them until it ends, then move to its last use, so
  no request leaves a window before it would have alone.
- *A limit is still reached exactly.* Past half a window (or budget) every request is checked alone.
- *Units a lease holds and does not use come back when it ends*: when a request no longer fits in it,
  or LEASE_SECONDS after it was taken. Until then another gateway may be refused what this one holds:
  each lease at most 1/16 of what was left, for at most a second, and all of them (the leases of a
  team's several keys, of several gateways) only within the first half of a window or budget.
- Tokens and cost are corrected into the lease while it lasts, and into its entries after.
- The headers of a request admitted from a lease say what was left when the lease was counted, less
  what this process admitted from it since; other gateways' requests since then are not in them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import operator
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from gateway.limit_store import Budget, Correction, RedisStore, Verdict, Window

LEASE_SECONDS = 1.0


@dataclass(slots=True, eq=False)
class Lease:
    """A slice of one set of limits: per window (the requests ones, then the tokens ones), then per
    budget, what Redis counts for it and what is left of it here."""

    rid: str  # the request whose check counted it: its entries' name in Redis
    slot: _Slot
    names: tuple[str, ...]  # its windows', then its budgets'
    requests: range  # the positions of its windows that count requests (1 each)
    tokens: range  # of those that count tokens
    budgets: range
    granted: list[float]  # what Redis counts for it (whole tokens and requests in windows)
    remaining: tuple[int, ...]  # per window, once Redis counted it
    wait_ms: tuple[int, ...]
    counted_at: int  # Redis's ms; once it ended, where its entries are
    sent: float  # monotonic, when its check was sent: no later than Redis counted it
    # What is left: what its requests took comes off, corrected by what they used. (Loops, not
    # comprehensions: this runs once a request, and in Python 3.11 a comprehension is a call.)
    room: list[float] = field(init=False)
    last: float = field(init=False)  # monotonic, its last use
    takes: int = 0  # requests it admitted
    open: bool = True
    timer: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.room, self.last = list(self.granted), self.sent

    def take(self, tokens: int, reserve: float) -> bool:
        """Admit a request of `tokens` estimated tokens and `reserve` USD, if it fits in what is left."""
        room = self.room
        for i in self.requests:
            if room[i] < 1:
                return False
        for i in self.tokens:
            if room[i] < tokens:
                return False
        for i in self.budgets:
            if room[i] < reserve:
                return False
        for i in self.requests:
            room[i] -= 1
        for i in self.tokens:
            room[i] -= tokens
        for i in self.budgets:
            room[i] -= reserve
        self.last = time.monotonic()
        self.takes += 1
        return True

    def shown(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per window, what is left (as Redis counted it with the lease, plus what this process has
        not taken of it) and the wait until its oldest entry leaves."""
        ms = int((self.last - self.sent) * 1000)
        # map() stops at the shorter: `room` goes on with the budgets.
        remaining = tuple(map(operator.add, self.remaining, self.room))
        return remaining, tuple(map(operator.sub, self.wait_ms, itertools.repeat(ms)))


@dataclass(slots=True, eq=False)
class _Slot:
    """The lease of one set of limits, and their demand."""

    lease: Lease | None = None
    asking: asyncio.Task[Verdict | None] | None = None  # the check asking for the next lease
    since: float = -math.inf  # when the current second began (monotonic)
    seen: int = 0  # requests checked without a lease in it
    rate: float = 0.0  # requests a second the last lease admitted
    ended: float = -math.inf  # when it ended

    def demand(self, now: float, second: float) -> float:
        """Count a request checked without a lease; how many a second this process sees: counted
        here in this second, or admitted by the lease that ended less than a second ago."""
        if now - self.since >= second:
            self.seen, self.since = 0, now
        self.seen += 1
        return max(self.seen, self.rate if now - self.ended < second else 0.0)


def _granted(task: asyncio.Task[Verdict | None]) -> bool:
    if task.cancelled() or task.exception() is not None:
        return False
    verdict = task.result()
    return verdict is not None and bool(verdict.granted)


class Leases:
    """The leases of one limiter's store, one per set of limits (`key`: the same for the same set)."""

    def __init__(self, store: RedisStore, lifetime: float = LEASE_SECONDS) -> None:
        self.store = store
        self.lifetime = lifetime
        self._slots: dict[Hashable, _Slot] = {}

    def take(self, key: Hashable, tokens: int, reserve: float) -> Lease | None:
        """The lease that admitted the request, if there is one for `key` and the request fits."""
        slot = self._slots.get(key)
        if slot is not None:
            lease = slot.lease
            if lease is not None and lease.take(tokens, reserve):
                return lease
        return None

    async def check(
        self,
        key: Hashable,
        rid: str,
        windows: Sequence[Window],
        budgets: Sequence[Budget],
        requests: int,
        tokens: int,
        reserve: float,
    ) -> Verdict | Lease | None:
        """Admit the request from a lease (asking for one, or waiting for one being asked for), or check
        it alone. `windows`: the `requests` that count requests first, then those that count `tokens`;
        every budget reserves `reserve`."""
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) > 10_000:  # a new day's budget names, or principals gone
                self._slots = {k: s for k, s in self._slots.items() if s.lease or s.asking}
            slot = self._slots[key] = _Slot()
        now = time.monotonic()
        demand = slot.demand(now, self.lifetime)
        while True:
            lease = slot.lease
            if lease is not None:
                if lease.take(tokens, reserve):
                    return lease
                self._end(lease)  # what it has left goes back with the next ask, or a little later
            asking = slot.asking
            if asking is None:
                if demand < 2:
                    return await self.store.check(rid, windows, budgets)
                asking = slot.asking = asyncio.ensure_future(
                    self.store.check(rid, windows, budgets, math.ceil(2 * demand))
                )
                names = tuple([w.name for w in windows] + [b.name for b in budgets])
                sizes = (requests, len(windows), len(names))
                asking.add_done_callback(functools.partial(self._asked, slot, rid, names, sizes, now))
                # Shielded: a lease counted for a client that left still serves the others.
                verdict = await asyncio.shield(asking)
                if verdict is None or not verdict.granted:
                    return verdict  # counted alone, refused, or unchecked (Redis down)
                rid += "+"  # that name is the lease's entries' now: another check needs another
            else:
                await asyncio.wait((asking,))
                if not _granted(asking):  # no room for a lease: checked alone
                    return await self.store.check(rid, windows, budgets)

    def _asked(
        self,
        slot: _Slot,
        rid: str,
        names: tuple[str, ...],
        sizes: tuple[int, int, int],
        sent: float,
        task: asyncio.Task[Verdict | None],
    ) -> None:
        """Runs before any waiter resumes: a granted lease is in place when they look."""
        slot.asking = None
        if not _granted(task):
            return
        verdict = task.result()
        assert verdict is not None
        requests, windows, counters = sizes
        lease = Lease(
            rid,
            slot,
            names,
            range(requests),
            range(requests, windows),
            range(windows, counters),
            list(verdict.granted),
            verdict.remaining,
            verdict.wait_ms,
            verdict.counted_at,
            sent,
        )
        if slot.lease is not None:
            self._end(slot.lease)
        slot.lease = lease
        lease.timer = asyncio.get_running_loop().call_later(self.lifetime, self._end, lease)

    def _end(self, lease: Lease) -> None:
        """Give back what the lease did not use, and move its entries to its last use."""
        if not lease.open:
            return
        lease.open = False
        if lease.timer is not None:
            lease.timer.cancel()
        slot = lease.slot
        if slot.lease is lease:
            slot.lease = None
            slot.ended = time.monotonic()
            # Its requests a second, from at least a tenth of a second of them.
            slot.rate = lease.takes * self.lifetime / max(slot.ended - lease.sent, self.lifetime / 10)
        # Its last use on Redis's clock, or later: measured from before Redis counted the lease.
        lease.counted_at += math.ceil((lease.last - lease.sent) * 1000)
        used = list(map(operator.sub, lease.granted, lease.room))
        names, granted = lease.names, lease.granted
        windows = tuple([(names[i], int(granted[i]), int(used[i])) for i in range(lease.budgets.start)])
        budgets = tuple([(names[i], used[i] - granted[i]) for i in lease.budgets])
        self.store.correct(Correction(lease.rid, windows, budgets, lease.counted_at))
        lease.granted = used  # what Redis counts now

    def settle(self, lease: Lease, tokens: int, usd: float) -> None:
        """A request admitted from `lease` used `tokens` more tokens than it was counted for and cost
        `usd` more than it reserved: corrected into the lease while it lasts, into its entries after."""
        if lease.open:
            room = lease.room
            for i in lease.tokens:
                room[i] -= tokens
            for i in lease.budgets:
                room[i] -= usd
            return
        granted, names = lease.granted, lease.names
        windows = []
        for i in lease.tokens if tokens else ():
            windows.append((names[i], int(granted[i]), int(granted[i]) + tokens))
            granted[i] += tokens
        budgets = tuple([(names[i], usd) for i in lease.budgets]) if usd else ()
        if windows or budgets:
            self.store.correct(Correction(lease.rid, tuple(windows), budgets, lease.counted_at))

    async def close(self) -> None:
        """Give every lease back, after those being asked for are in place."""
        asking = [s.asking for s in self._slots.values() if s.asking is not None]
        if asking:
            await asyncio.wait(asking)
        for slot in self._slots.values():
            if slot.lease is not None:
                self._end(slot.lease)
