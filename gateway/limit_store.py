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
clock: one round trip. Corrections go together in calls of the same script every 20 ms (or with a
lease's ask), one such call at a time, so they reach Redis in the order they were made.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import sha1
from typing import Any, Literal, NamedTuple, Protocol

import hiredis
from redis.exceptions import ResponseError

from gateway.redis_link import RedisLink
from gateway.redis_wire import RedisWire, Unsent

WINDOW_MS = 60_000
CORRECT_AFTER_SECONDS = 0.02
MAX_PENDING_ARGS = 200_000  # corrections kept while Redis is down (~10 arguments each)
CHUNK_ARGS = 4096  # of corrections one call carries at most: a backlog goes in short script runs
CLOSE_SECONDS = 5.0  # how long closing may spend sending the corrections waiting


# Named tuples, not frozen dataclasses: a request makes several, and a frozen dataclass's __init__
# costs twice a tuple's.
class Window(NamedTuple):
    """A rate limit to count against: `name` is its log (e.g. "key:static-ab12:tokens")."""

    name: str
    limit: int
    amount: int  # what this request counts: 1 request, or its estimated tokens


class Budget(NamedTuple):
    name: str  # e.g. "team:ml:day:2026-12-01": a new period starts a new sum
    limit: float  # USD
    reserve: float  # this request's estimated cost
    ttl: int  # seconds the sum is kept after its period's first spend (past the period's end)


class Verdict(NamedTuple):
    over: Literal["rate", "budget"] | None  # None: admitted and counted
    remaining: tuple[int, ...]  # per window: what is left (after this request, when admitted)
    wait_ms: tuple[int, ...]  # per window: until its oldest counted entry leaves the window
    over_at: int = -1  # the window (rate) or budget (budget) that refused
    counted_at: int = 0  # when the store counted it (ms on its clock): where its correction goes
    # A lease's amounts, per window then per budget, counted instead of the request's own (when its
    # check asked for one and there was room: see gateway/limit_lease.py); () without one.
    granted: tuple[float, ...] = ()


class Correction(NamedTuple):
    """A request's real amounts, once it ended: tokens per window, cost per budget."""

    rid: str
    windows: tuple[tuple[str, int, int], ...]  # (window, amount counted, real amount)
    budgets: tuple[tuple[str, float], ...]  # (budget, real cost - reserved)
    counted_at: int = 0  # the check's `Verdict.counted_at`: where the entry stays in its window


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

# One script does a check (or a lease's ask) and the corrections it carries, those first; as few
# commands as the counting allows (Redis's CPU per call is mostly its commands').
# KEYS: per window its log (a sorted set of "rid:amount" by time) and its total; per budget its sum;
#   then the corrections' keys.
# ARGV: rid, window ms, windows, budgets, demand (requests a lease should cover; < 2: no lease),
#   [limit, amount] per window, [limit, reserve, ttl] per budget; then per correction: rid, where its
#   entries stay (ms), windows, [counted, real] per window, budgets, [delta] per budget.
# Returns {over (0, 1 rate, 2 budget), over_at (1-based), now, leased (0 or 1), [remaining, wait ms]
#   per window, and when leased: what was counted per window, then per budget (as strings)}.
# A lease is granted only if every limit has room for it in the first half of its window or period,
# each giving at most 1/16 of what it has left and at least twice the request's own amount.
SCRIPT = """
local rid, span, nw, nb = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local demand = tonumber(ARGV[5])
local k, a = 2 * nw + nb + 1, 6 + 2 * nw + 3 * nb
while a <= #ARGV do
  local id, at, cw = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  for i = 1, cw do
    local counted, real = ARGV[a], ARGV[a + 1]
    -- else it has left the window already; a lease's entry moves to its last use
    if redis.call('ZREM', KEYS[k], id .. ':' .. counted) == 1 then
      if real ~= '0' then redis.call('ZADD', KEYS[k], at, id .. ':' .. real) end
      if counted ~= real then redis.call('INCRBY', KEYS[k + 1], tonumber(real) - tonumber(counted)) end
      -- The log and its total live a window past their newest entry (a log the ZREM emptied was
      -- deleted, and the ZADD made it again without an expiry).
      redis.call('PEXPIRE', KEYS[k], span)
      redis.call('PEXPIRE', KEYS[k + 1], span)
    end
    a, k = a + 2, k + 2
  end
  local cb = tonumber(ARGV[a])
  a = a + 1
  for j = 1, cb do
    if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('INCRBYFLOAT', KEYS[k], ARGV[a]) end
    a, k = a + 1, k + 1
  end
end
if nw + nb == 0 then return {0, 0, 0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local used, first, spent, fresh = {}, {}, {}, {}
for i = 1, nw do
  local log, total = KEYS[2 * i - 1], KEYS[2 * i]
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  local sum = 0
  -- An empty log counts nothing, whatever its total says (the total may outlive it).
  if oldest[2] then
    sum = tonumber(redis.call('GET', total) or '0')
    if tonumber(oldest[2]) <= now - span then
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', log, '-inf', now - span)) do
        sum = sum - tonumber(string.match(m, ':(%-?%d+)$'))
      end
      redis.call('ZREMRANGEBYSCORE', log, '-inf', now - span)
      redis.call('SET', total, sum, 'PX', span)
      oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
    end
  end
  used[i], first[i] = sum, oldest[2]
end
local over, at = 0, 0
for j = 1, nb do
  local b = 3 + 2 * nw + 3 * j  -- its limit, reserve and ttl: ARGV[b], [b + 1], [b + 2]
  local sum = redis.call('GET', KEYS[2 * nw + j])
  spent[j], fresh[j] = tonumber(sum or '0'), not sum
  if spent[j] + tonumber(ARGV[b + 1]) > tonumber(ARGV[b]) then over, at = 2, j break end
end
if over == 0 then
  for i = 1, nw do
    if used[i] + tonumber(ARGV[5 + 2 * i]) > tonumber(ARGV[4 + 2 * i]) then over, at = 1, i break end
  end
end
local counts, leased = {}, 0
if over == 0 then
  for i = 1, nw do counts[i] = tonumber(ARGV[5 + 2 * i]) end
  for j = 1, nb do counts[nw + j] = ARGV[4 + 2 * nw + 3 * j] end  -- USD as sent: exact
  if demand >= 2 then
    leased = 1
    local chunks = {}
    for i = 1, nw + nb do
      local limit, sum, own = 0, 0, tonumber(counts[i])
      if i <= nw then limit, sum = tonumber(ARGV[4 + 2 * i]), used[i]
      else limit, sum = tonumber(ARGV[3 + 2 * nw + 3 * (i - nw)]), spent[i - nw] end
      local chunk = math.min((limit - sum) / 16, own * demand)
      -- whole tokens; whole micro-dollars, which tostring() writes exactly
      if i <= nw then chunk = math.floor(chunk) else chunk = tostring(math.floor(chunk * 1e6) / 1e6) end
      if tonumber(chunk) < 2 * own or sum + tonumber(chunk) > limit / 2 then leased = 0 break end
      chunks[i] = chunk
    end
    if leased == 1 then counts = chunks end
  end
  for i = 1, nw do
    local log = KEYS[2 * i - 1]
    redis.call('ZADD', log, now, rid .. ':' .. counts[i])
    redis.call('PEXPIRE', log, span)
    used[i] = used[i] + counts[i]
    redis.call('SET', KEYS[2 * i], used[i], 'PX', span)
    first[i] = first[i] or now
  end
  for j = 1, nb do
    local b = 3 + 2 * nw + 3 * j
    redis.call('INCRBYFLOAT', KEYS[2 * nw + j], counts[nw + j])
    -- Kept `ttl` from the period's first spend: past the period's end either way.
    if fresh[j] then redis.call('EXPIRE', KEYS[2 * nw + j], ARGV[b + 2]) end
  end
end
local out = {over, at, now, leased}
for i = 1, nw do
  out[#out + 1] = tonumber(ARGV[4 + 2 * i]) - used[i]
  out[#out + 1] = first[i] and (tonumber(first[i]) + span - now) or 0
end
if leased == 1 then
  for i = 1, nw do out[#out + 1] = counts[i] end
  for j = 1, nb do out[#out + 1] = counts[nw + j] end
end
return out
"""
SCRIPT_SHA = sha1(SCRIPT.encode()).hexdigest()


# A call's corrections: (its order, keys, arguments).
_Batch = tuple[int, list[str], list[Any]]
# Error replies by which Redis refuses a command before running any of it.
_REFUSED = ("BUSY", "LOADING", "MASTERDOWN", "MISCONF", "OOM", "READONLY", "NOREPLICAS")


class RedisStore:
    """Counts shared by every process that uses the same Redis.

    Every call goes on one pipelined connection (gateway/redis_wire.py): a connection per request ran
    out of redis-py's pool under a burst."""

    def __init__(self, link: RedisLink, window_ms: int = WINDOW_MS) -> None:
        self.link = link  # its keys' namespace, and what an outage means
        self._wire = RedisWire(link.settings.url, link.settings.timeout)
        self.window_ms = window_ms
        # Corrections not sent yet, as the script's keys and arguments.
        self._pending_keys: list[str] = []
        self._pending_args: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._names: dict[str, tuple[str, str]] = {}
        self._sums: dict[str, str] = {}
        self._later: asyncio.TimerHandle | None = None  # a flush of corrections alone, a little later
        # Corrections whose call failed before anything ran, by age: they go first with the next call.
        self._retry: list[_Batch] = []
        self._batch = itertools.count()
        self._carrying = False  # a call carrying corrections is on its way
        self._closed = False

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

    async def check(
        self, rid: str, windows: Sequence[Window], budgets: Sequence[Budget], demand: int = 0
    ) -> Verdict | None:
        """`demand`: ask for a lease that covers that many requests like this one (see
        gateway/limit_lease.py); the verdict's `granted` says whether one was counted. An ask runs in
        a task of its own, which its client leaving cannot cancel: it carries the corrections waiting
        (a lease's end among them, applied before the next lease is counted)."""
        keys: list[str] = []
        args: list[Any] = [rid, self.window_ms, len(windows), len(budgets), demand]
        for w in windows:
            keys += self._keys(w.name)
            args += (w.limit, w.amount)
        for b in budgets:
            keys.append(self._spent(b.name))
            args += (b.limit, b.reserve, b.ttl)  # hiredis writes a float as repr() does, faster
        reply = await self._run(keys, args, carry=demand > 0)
        if reply is None:
            return None
        code, n = reply[0], 4 + 2 * len(windows)
        over: Literal["rate", "budget"] | None = "rate" if code == 1 else "budget" if code == 2 else None
        granted = (*reply[n : n + len(windows)], *map(float, reply[n + len(windows) :])) if reply[3] else ()
        return Verdict(over, tuple(reply[4:n:2]), tuple(reply[5:n:2]), reply[1] - 1, reply[2], granted)

    def correct(self, correction: Correction) -> None:
        """Corrections wait up to CORRECT_AFTER_SECONDS and go together in one call (or with a lease's
        ask): a few calls a second, not one per request."""
        windows, budgets = correction.windows, correction.budgets
        if not windows and not budgets:
            return  # a key limited in requests only: nothing to replace
        if self._closed:
            return  # later than a reload's drain waits: sending it would reopen a connection for good
        if len(self._pending_args) + sum(len(b[2]) for b in self._retry) > MAX_PENDING_ARGS:
            return  # Redis has been down a while: the estimate stands
        keys, args = self._pending_keys, self._pending_args
        args += (correction.rid, correction.counted_at, len(windows))
        for name, counted, real in windows:
            keys += self._keys(name)
            args += (counted, real)
        args.append(len(budgets))
        for name, delta in budgets:
            keys.append(self._spent(name))
            args.append(delta)
        if len(args) > CHUNK_ARGS:  # a backlog (Redis down): sealed, to go in a call of its own
            self._retry.append((next(self._batch), keys, args))
            self._pending_keys, self._pending_args = [], []
        self._schedule()

    def _schedule(self) -> None:
        """Send the corrections waiting a little later, or once Redis is tried again."""
        if self._later is None and not self._closed:
            wait = max(CORRECT_AFTER_SECONDS, self.link.retry_in())
            self._later = asyncio.get_running_loop().call_later(wait, self._flush)

    async def _run(self, keys: list[str], args: list[Any], carry: bool = False) -> Any:
        """The script's reply, for `keys` and `args`, written at once by the calling task (a hop
        through the event loop per call cost a loaded worker a millisecond); None while Redis is
        unreachable. `carry`: a call in a task of its own (a flush, a lease's ask) also takes the
        corrections waiting, one such call at a time, so they reach Redis in the order they were made
        whatever happens to a call. Those that surely did not reach Redis wait for the next (a lease's
        unused part goes back after an outage); those in a call that failed after it was written may
        have run, so they are dropped: their estimates stand."""
        batches: list[_Batch] = []
        if carry and not self._carrying and not self.link.retry_in():
            room = CHUNK_ARGS
            while self._retry and (not batches or len(self._retry[0][2]) <= room):  # the oldest first
                batches.append(self._retry.pop(0))
                room -= len(batches[-1][2])
            if self._pending_args and not self._retry and (not batches or len(self._pending_args) <= room):
                batches.append((next(self._batch), self._pending_keys, self._pending_args))
                self._pending_keys, self._pending_args = [], []
            for _, more_keys, more_args in batches:
                keys += more_keys
                args += more_args
        self._carrying = self._carrying or bool(batches)
        try:
            return await self.link.run(lambda _: self._eval(keys, args, batches), None)
        finally:
            if batches:
                self._carrying = False
            if self._pending_args or self._retry:  # what this call did not carry goes in the next
                self._schedule()

    async def _eval(self, keys: list[str], args: list[Any], batches: list[_Batch]) -> Any:
        try:
            reply = await self._wire.call("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)
            if type(reply) is hiredis.ReplyError and str(reply).startswith("NOSCRIPT"):
                # A new or restarted Redis: nothing ran. EVAL loads it as it runs: a SCRIPT LOAD first
                # would let a call sent meanwhile run before this one.
                reply = await self._wire.call("EVAL", SCRIPT, len(keys), *keys, *args)
            if type(reply) is hiredis.ReplyError and str(reply).startswith(_REFUSED):
                raise Unsent(str(reply))  # refused before anything ran
        except Unsent:
            for batch in batches:  # they did not run: they go with the next call, in their order
                bisect.insort(self._retry, batch)
            raise
        if type(reply) is hiredis.ReplyError:
            raise ResponseError(str(reply))
        return reply

    def _flush(self) -> None:
        self._later = None
        if (self._pending_args or self._retry) and not self._carrying:
            task = asyncio.get_running_loop().create_task(self._carry())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _carry(self) -> Any:
        """A call of corrections alone."""
        return await self._run([], ["", self.window_ms, 0, 0, 0], carry=True)

    async def close(self) -> None:
        """Send the corrections waiting (in runs, while Redis answers, for CLOSE_SECONDS at most), then
        close the connection."""
        self._closed = True
        if self._later is not None:
            self._later.cancel()
            self._later = None
        deadline = time.monotonic() + CLOSE_SECONDS
        while True:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if not (self._pending_args or self._retry) or self.link.retry_in() or time.monotonic() > deadline:
                break
            await self._carry()
        self._wire.close()
