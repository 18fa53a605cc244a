"""Leases: a busy key's requests admitted from a slice of its limits that this process counted in
Redis beforehand, instead of one round trip to Redis each.

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
  at most 1/16 of what was left, for at most a second, and only in a window's first half.
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
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.limit_store import Budget, Correction, RedisStore, Verdict, Window

LEASE_SECONDS = 1.0


@dataclass(slots=True, eq=False)
class _Lease:
    rid: str  # the request whose check counted it: its entries' name in Redis
    slot: _Slot
    names: tuple[str, ...]  # its windows', then its budgets'
    granted_w: list[int]  # per window: what Redis counts for it
    granted_b: list[float]  # per budget
    remaining: tuple[int, ...]  # per window, once Redis counted it
    wait_ms: tuple[int, ...]
    counted_at: int  # Redis's ms; once it ended, where its entries are
    sent: float  # monotonic, when its check was sent: no later than Redis counted it
    # What is left of it, per window and budget: what its requests took comes off, corrected by what
    # they used. (Loops, not comprehensions: this runs once a request, and in Python 3.11 a
    # comprehension is a function call.)
    room_w: list[int] = field(init=False)
    room_b: list[float] = field(init=False)
    last: float = field(init=False)  # monotonic, its last use
    takes: int = 0  # requests it admitted
    open: bool = True
    timer: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.room_w, self.room_b, self.last = list(self.granted_w), list(self.granted_b), self.sent

    def take(self, windows: Sequence[Window], budgets: Sequence[Budget]) -> Verdict | None:
        """The request's verdict if it fits in what is left, counted; None if it does not."""
        room_w, room_b = self.room_w, self.room_b
        for i, w in enumerate(windows):
            if w.amount > room_w[i]:
                return None
        for j, b in enumerate(budgets):
            if b.reserve > room_b[j]:
                return None
        for i, w in enumerate(windows):
            room_w[i] -= w.amount
        for j, b in enumerate(budgets):
            room_b[j] -= b.reserve
        self.last = time.monotonic()
        self.takes += 1
        ms = int((self.last - self.sent) * 1000)
        # What was left when Redis counted the lease, and what of it this process has not taken.
        return Verdict(
            None,
            tuple(map(operator.add, self.remaining, room_w)),
            tuple(map(operator.sub, self.wait_ms, itertools.repeat(ms))),
            -1,
            self.counted_at,
        )

    def used(self) -> tuple[list[int], list[float]]:
        """Per window and budget, what its requests took, corrected by what they used."""
        return (
            list(map(operator.sub, self.granted_w, self.room_w)),
            list(map(operator.sub, self.granted_b, self.room_b)),
        )


@dataclass(slots=True, eq=False)
class _Slot:
    """The lease of one set of limits (a principal's windows and budgets), and their demand."""

    lease: _Lease | None = None
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
    """A RedisStore that admits from leases where it can (a LimitStore, as RedisStore is)."""

    def __init__(self, store: RedisStore, lifetime: float = LEASE_SECONDS) -> None:
        self.store = store
        self.lifetime = lifetime
        self._slots: dict[tuple[str, ...], _Slot] = {}
        self._tickets: dict[str, _Lease] = {}  # requests admitted from a lease, until corrected

    def take(self, rid: str, windows: Sequence[Window], budgets: Sequence[Budget]) -> Verdict | None:
        """Admitted from the lease of these limits, if there is one and the request fits in it."""
        slot = self._slots.get(tuple([w.name for w in windows] + [b.name for b in budgets]))
        if slot is not None and slot.lease is not None:
            verdict = slot.lease.take(windows, budgets)
            if verdict is not None:
                self._tickets[rid] = slot.lease
                return verdict
        return None

    async def check(self, rid: str, windows: Sequence[Window], budgets: Sequence[Budget]) -> Verdict | None:
        """From a lease; else ask for one, wait for one being asked for, or check alone."""
        verdict = self.take(rid, windows, budgets)
        if verdict is not None:
            return verdict
        names = tuple([w.name for w in windows] + [b.name for b in budgets])
        slot = self._slots.get(names)
        if slot is None:
            if len(self._slots) > 10_000:  # a new day's budget names, or principals gone
                self._slots = {k: s for k, s in self._slots.items() if s.lease or s.asking}
            slot = self._slots[names] = _Slot()
        now = time.monotonic()
        demand = slot.demand(now, self.lifetime)
        while True:
            lease = slot.lease
            if lease is not None:
                verdict = lease.take(windows, budgets)
                if verdict is not None:
                    self._tickets[rid] = lease
                    return verdict
                self._end(lease)  # what it has left goes back with the next call
            asking = slot.asking
            if asking is None:
                if demand < 2:
                    return await self.store.check(rid, windows, budgets)
                asking = slot.asking = asyncio.ensure_future(
                    self.store.check(rid, windows, budgets, math.ceil(2 * demand))
                )
                asking.add_done_callback(functools.partial(self._asked, slot, rid, names, len(windows), now))
                # Shielded: a lease counted for a client that left still serves the others.
                verdict = await asyncio.shield(asking)
                if verdict is None or not verdict.granted:
                    return verdict  # counted alone, refused, or unchecked (Redis down)
            else:
                await asyncio.wait((asking,))
                if not _granted(asking):  # no room for a lease: checked alone
                    return await self.store.check(rid, windows, budgets)

    def _asked(
        self,
        slot: _Slot,
        rid: str,
        names: tuple[str, ...],
        nw: int,
        sent: float,
        task: asyncio.Task[Verdict | None],
    ) -> None:
        """Runs before any waiter resumes: a granted lease is in place when they look."""
        slot.asking = None
        if not _granted(task):
            return
        verdict = task.result()
        assert verdict is not None
        granted = verdict.granted
        lease = _Lease(
            rid,
            slot,
            names,
            [int(g) for g in granted[:nw]],
            list(granted[nw:]),
            verdict.remaining,
            verdict.wait_ms,
            verdict.counted_at,
            sent,
        )
        if slot.lease is not None:
            self._end(slot.lease)
        slot.lease = lease
        lease.timer = asyncio.get_running_loop().call_later(self.lifetime, self._end, lease)

    def _end(self, lease: _Lease) -> None:
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
        used_w, used_b = lease.used()
        nw = len(used_w)
        self.store.correct(
            Correction(
                lease.rid,
                tuple(zip(lease.names[:nw], lease.granted_w, used_w, strict=True)),
                tuple(zip(lease.names[nw:], map(operator.sub, used_b, lease.granted_b), strict=True)),
                lease.counted_at,
            )
        )
        lease.granted_w, lease.granted_b = used_w, used_b  # what Redis counts now

    def correct(self, correction: Correction) -> None:
        lease = self._tickets.pop(correction.rid, None)
        if lease is None:
            self.store.correct(correction)
            return
        # A request admitted from `lease`: corrected into it while it lasts, into its entries after.
        if lease.open:
            for name, counted, real in correction.windows:
                lease.room_w[lease.names.index(name)] -= real - counted
            nw = len(lease.room_w)
            for name, delta in correction.budgets:
                lease.room_b[lease.names.index(name, nw) - nw] -= delta
            return
        windows = []
        for name, counted, real in correction.windows:
            i = lease.names.index(name)
            before = lease.granted_w[i]
            lease.granted_w[i] += real - counted
            windows.append((name, before, lease.granted_w[i]))
        self.store.correct(Correction(lease.rid, tuple(windows), correction.budgets, lease.counted_at))

    async def close(self) -> None:
        """Give every lease back (after the leases being asked for), then close the store."""
        asking = [s.asking for s in self._slots.values() if s.asking is not None]
        if asking:
            await asyncio.wait(asking)
        for slot in self._slots.values():
            if slot.lease is not None:
                self._end(slot.lease)
        await self.store.close()
