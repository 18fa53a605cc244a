"""Where rate-limit windows and budget spend are counted: in Redis (shared by every worker and
replica) or in this process. Both give the same answers, and the same tests run against both.

A rate limit is a sliding-window log: every admitted request is an entry (time, amount) in the
window's log, and a request is admitted while the amounts of the last 60 s plus its own stay within
the limit. Unlike a token bucket, which refills as it goes and so admits its capacity plus the refill
during a burst (up to ~2N in a minute), the log admits at most N in any 60 s, exactly: "N per minute"
means what it says. It costs one entry per request in the window (~100 bytes in Redis); a request's
entry is corrected once its real token count is known. A budget is a running sum per UTC day or month:
an estimate is reserved when a request is admitted and corrected with the real cost when it ends.

In Redis one Lua script checks and records a request's windows and budgets atomically, on Redis's
clock; a request's check carries the corrections of requests that ended before it: one round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from typing import Any, Literal, Protocol

import hiredis
from redis.exceptions import ResponseError

from gateway.redis_link import RedisLink
from gateway.redis_wire import RedisWire

WINDOW_MS = 60_000
CORRECT_AFTER_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class Window:
    """A rate limit to count against: `name` is its log (e.g. "key:static-ab12:tokens")."""

    name: str
    limit: int
    amount: int  # what this request counts: 1 request, or its estimated tokens


@dataclass(frozen=True, slots=True)
class Budget:
    name: str  # e.g. "team:ml:day:2026-12-01": a new period starts a new sum
    limit: float  # USD
    reserve: float  # this request's estimated cost
    ttl: int  # seconds the sum is kept after its last change (past the period's end)


@dataclass(frozen=True, slots=True)
class Verdict:
    over: Literal["rate", "budget"] | None  # None: admitted and counted
    remaining: tuple[int, ...]  # per window: what is left (after this request, when admitted)
    wait_ms: tuple[int, ...]  # per window: until its oldest counted entry leaves the window
    over_at: int = -1  # the window (rate) or budget (budget) that refused


@dataclass(frozen=True, slots=True)
class Correction:
    """A request's real amounts, once it ended: tokens per window, cost per budget."""

    rid: str
    windows: tuple[tuple[str, int, int], ...]  # (window, amount counted, real amount)
    budgets: tuple[tuple[str, float], ...]  # (budget, real cost - reserved)


class LimitStore(Protocol):
    async def check(self, rid: str, windows: Sequence[Window], budgets: Sequence[Budget]) -> Verdict | None:
        """Admit and count the request, or say which limit it is over; None: the store is unreachable."""

    def correct(self, correction: Correction) -> None:
        """Replace the request's estimates by its real amounts (soon, not necessarily now)."""

    async def close(self) -> None: ...


# ---- in this process ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Log:
    entries: deque[list[Any]] = field(default_factory=deque)  # [time ms, rid, amount], oldest first
    by_rid: dict[str, list[Any]] = field(default_factory=dict)
    total: int = 0

    def trim(self, now: float, span: int) -> None:
        while self.entries and self.entries[0][0] <= now - span:
            _, rid, amount = self.entries.popleft()
            self.by_rid.pop(rid, None)
            self.total -= amount


class LocalStore:
    """Each process counts its own requests: with N processes, N times the limits are admitted."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_ms: int = WINDOW_MS) -> None:
        self._clock = clock
        self.window_ms = window_ms
        self._logs: dict[str, _Log] = {}
        self._spent: dict[str, tuple[float, float]] = {}  # budget -> (USD, kept until)

    async def check(self, rid: str, windows: Sequence[Window], budgets: Sequence[Budget]) -> Verdict:
        now = self._clock() * 1000
        logs = [self._logs.setdefault(w.name, _Log()) for w in windows]
        for log in logs:
            log.trim(now, self.window_ms)
        over: Literal["rate", "budget"] | None = None
        at = -1
        for i, b in enumerate(budgets):
            if self._sum(b.name, now) + b.reserve > b.limit:
                over, at = "budget", i
                break
        else:
            for i, (w, log) in enumerate(zip(windows, logs, strict=True)):
                if log.total + w.amount > w.limit:
                    over, at = "rate", i
                    break
        if over is None:
            for w, log in zip(windows, logs, strict=True):
                entry = [now, rid, w.amount]
                log.entries.append(entry)
                log.by_rid[rid] = entry
                log.total += w.amount
            for b in budgets:
                self._spent[b.name] = (self._sum(b.name, now) + b.reserve, now + b.ttl * 1000)
        remaining = tuple(w.limit - log.total for w, log in zip(windows, logs, strict=True))
        wait = tuple(int(log.entries[0][0] + self.window_ms - now) if log.entries else 0 for log in logs)
        return Verdict(over, remaining, wait, at)

    def _sum(self, name: str, now: float) -> float:
        spent, until = self._spent.get(name, (0.0, 0.0))
        return spent if until > now else 0.0

    def correct(self, correction: Correction) -> None:
        for name, counted, real in correction.windows:
            log = self._logs.get(name)
            entry = log.by_rid.get(correction.rid) if log is not None else None
            if log is not None and entry is not None:  # else it has left the window already
                entry[2] = real
                log.total += real - counted
        now = self._clock() * 1000
        for name, delta in correction.budgets:
            spent, until = self._spent.get(name, (0.0, 0.0))
            if until > now:
                self._spent[name] = (spent + delta, until)

    async def close(self) -> None:
        return None


# ---- in Redis -----------------------------------------------------------------------------------

# KEYS: per window its log (a sorted set of "rid:amount" by time) and its total; then per budget its sum.
# ARGV: rid, window ms, windows, [limit, amount] per window, budgets, [limit, reserve, ttl] per budget.
# Returns {over (0, 1 rate, 2 budget), over_at (1-based), [remaining, wait ms] per window}.
CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, span, nw = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local nb = tonumber(ARGV[4 + 2 * nw])
local used = {}
for i = 1, nw do
  local log, total = KEYS[2 * i - 1], KEYS[2 * i]
  local gone = redis.call('ZRANGEBYSCORE', log, '-inf', now - span)
  local sum = tonumber(redis.call('GET', total) or '0')
  if #gone > 0 then
    for _, m in ipairs(gone) do sum = sum - tonumber(string.match(m, ':(%-?%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - span)
    redis.call('SET', total, sum, 'PX', span)
  end
  used[i] = sum
end
local over, at = 0, 0
for j = 1, nb do
  local k = 4 + 2 * nw + 3 * j
  local spent = tonumber(redis.call('GET', KEYS[2 * nw + j]) or '0')
  if spent + tonumber(ARGV[k - 1]) > tonumber(ARGV[k - 2]) then over, at = 2, j break end
end
if over == 0 then
  for i = 1, nw do
    if used[i] + tonumber(ARGV[4 + 2 * i - 1]) > tonumber(ARGV[4 + 2 * i - 2]) then over, at = 1, i break end
  end
end
if over == 0 then
  for i = 1, nw do
    local log, total, amount = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[4 + 2 * i - 1])
    redis.call('ZADD', log, now, rid .. ':' .. amount)
    redis.call('PEXPIRE', log, span)
    used[i] = redis.call('INCRBY', total, amount)
    redis.call('PEXPIRE', total, span)
  end
  for j = 1, nb do
    local k = 4 + 2 * nw + 3 * j
    redis.call('INCRBYFLOAT', KEYS[2 * nw + j], ARGV[k - 1])
    redis.call('EXPIRE', KEYS[2 * nw + j], ARGV[k])
  end
end
local out = {over, at}
for i = 1, nw do
  local first = redis.call('ZRANGE', KEYS[2 * i - 1], 0, 0, 'WITHSCORES')
  out[#out + 1] = tonumber(ARGV[4 + 2 * i - 2]) - used[i]
  out[#out + 1] = first[2] and (tonumber(first[2]) + span - now) or 0
end
return out
"""

# A request's corrections. KEYS: its window logs and totals, then its budget sums.
# ARGV: rid, windows, [counted, real] per window, budgets, [delta] per budget.
CORRECT = """
local a, k = 1, 1
while a <= #ARGV do
  local rid, nw = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for i = 1, nw do
    local log, total, counted, real = KEYS[k], KEYS[k + 1], ARGV[a], ARGV[a + 1]
    local at = redis.call('ZSCORE', log, rid .. ':' .. counted)
    if at then
      redis.call('ZREM', log, rid .. ':' .. counted)
      redis.call('ZADD', log, at, rid .. ':' .. real)
      redis.call('INCRBY', total, tonumber(real) - tonumber(counted))
    end
    a, k = a + 2, k + 2
  end
  local nb = tonumber(ARGV[a])
  a = a + 1
  for j = 1, nb do
    if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('INCRBYFLOAT', KEYS[k], ARGV[a]) end
    a, k = a + 1, k + 1
  end
end
return 0
"""


class RedisStore:
    """Counts shared by every process that uses the same Redis.

    Every call is pipelined on one connection (gateway/redis_wire.py): a connection per request ran
    out of redis-py's pool under a burst."""

    def __init__(self, link: RedisLink, window_ms: int = WINDOW_MS) -> None:
        self.link = link  # its keys' namespace, and what an outage means
        self._wire = RedisWire(link.settings.url, link.settings.timeout)
        self.window_ms = window_ms
        self._scripts = {CHECK: sha1(CHECK.encode()).hexdigest(), CORRECT: sha1(CORRECT.encode()).hexdigest()}
        self._pending: list[tuple[str, list[str], list[Any]]] = []  # corrections not sent yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._names: dict[str, tuple[str, str]] = {}
        self._sums: dict[str, str] = {}
        self._later: asyncio.TimerHandle | None = None  # a flush of corrections alone, a little later

    def _spent(self, name: str) -> str:
        """A budget's sum in Redis."""
        key = self._sums.get(name)
        if key is None:
            if len(self._sums) > 10_000:  # a new day's names
                self._sums.clear()
            key = self._sums[name] = self.link.key("spent", name)
        return key

    def _keys(self, name: str) -> tuple[str, str]:
        """A window's log and total in Redis."""
        keys = self._names.get(name)
        if keys is None:
            if len(self._names) > 10_000:
                self._names.clear()
            log = self.link.key("limit", name)
            keys = self._names[name] = (log, log + ":total")
        return keys

    async def check(self, rid: str, windows: Sequence[Window], budgets: Sequence[Budget]) -> Verdict | None:
        keys: list[str] = []
        args: list[Any] = [rid, self.window_ms, len(windows)]
        for w in windows:
            keys += self._keys(w.name)
            args += (w.limit, w.amount)
        args.append(len(budgets))
        for b in budgets:
            keys.append(self._spent(b.name))
            args += (repr(b.limit), repr(b.reserve), b.ttl)
        reply = await self._call(CHECK, keys, args)
        if reply is None:
            return None
        code, at, rest = int(reply[0]), int(reply[1]) - 1, reply[2:]
        over: Literal["rate", "budget"] | None = "rate" if code == 1 else "budget" if code == 2 else None
        return Verdict(over, tuple(int(x) for x in rest[::2]), tuple(int(x) for x in rest[1::2]), at)

    def correct(self, correction: Correction) -> None:
        keys: list[str] = []
        args: list[Any] = [correction.rid, len(correction.windows)]
        for name, counted, real in correction.windows:
            keys += self._keys(name)
            args += (counted, real)
        args.append(len(correction.budgets))
        for name, delta in correction.budgets:
            keys.append(self._spent(name))
            args.append(repr(delta))
        self._enqueue(CORRECT, keys, args)

    async def _call(self, lua: str, keys: list[str], args: list[Any]) -> Any:
        """Written at once by the calling task, with the corrections waiting (a hop through the event
        loop per call cost a loaded worker a millisecond); None while Redis is unreachable."""
        batch, self._pending = [*self._pending, (lua, keys, args)], []
        if self._later is not None:
            self._later.cancel()
            self._later = None
        replies = await self.link.run(lambda _: self._pipeline(batch), None)
        return None if replies is None else replies[-1]

    def _enqueue(self, lua: str, keys: list[str], args: list[Any]) -> None:
        """A correction waits up to CORRECT_AFTER_SECONDS for a check to ride with (under load most
        do: one round trip per request, not two)."""
        self._pending.append((lua, keys, args))
        if self._later is None:
            self._later = asyncio.get_running_loop().call_later(CORRECT_AFTER_SECONDS, self._flush)

    def _flush(self) -> None:
        self._later = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, list[str], list[Any]]]) -> None:
        # Lost while Redis is down: the reserved estimates stand (on the safe side for budgets).
        await self.link.run(lambda _: self._pipeline(batch), None)

    async def _pipeline(self, batch: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        replies = await self._execute(batch)
        missing = [i for i, reply in enumerate(replies) if _noscript(reply)]
        if missing:  # a new or restarted Redis: load the scripts, then send again only what did not run
            await self._wire.execute([("SCRIPT", "LOAD", lua) for lua in self._scripts])
            again = await self._execute([batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
        return replies

    def _execute(self, batch: list[tuple[str, list[str], list[Any]]]) -> Awaitable[list[Any]]:
        return self._wire.execute(
            [("EVALSHA", self._scripts[lua], len(keys), *keys, *args) for lua, keys, args in batch]
        )

    async def close(self) -> None:
        if self._later is not None:
            self._later.cancel()
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._wire.close()


def _noscript(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")
