"""A circuit breaker whose state every worker and gateway replica shares through Redis.

Redis holds the circuit's failure streak and the time it opened, by its name (a backend, or any
string such as "backend/replica"). Each process keeps a local `CircuitBreaker` that the request path
asks synchronously, as without Redis; it adopts Redis's state from the answer to each of its own
reports and from a refresh every `SYNC_SECONDS` (gateway/shared.py), so a circuit opened by one
process is open in all of them within that, plus a round trip. Failures are always reported; a
success only when it can change something (a streak or an open circuit), so a healthy backend costs
no Redis call per request. Each process lets its own trial call through per cooldown.

When Redis comes back empty (a restart), a process that holds the circuit open writes it back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.breaker import CircuitBreaker
from gateway.pump import Pump
from gateway.redis_link import RedisLink

# KEYS: the circuit's hash (streak, opened). ARGV: reset first (1/0), failures since, failures that
# open it, ttl, age of this process's open circuit to write back if Redis lost it (-1: none).
_REPORT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local existed = redis.call('EXISTS', KEYS[1])
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'streak', 0, 'opened', 0) end
local fails = tonumber(ARGV[2])
local streak = redis.call('HINCRBY', KEYS[1], 'streak', fails)
if fails > 0 and streak >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'opened', string.format('%.6f', now))
end
local held = tonumber(ARGV[5])
if existed == 0 and held >= 0 then
  streak = math.max(streak, tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'opened', string.format('%.6f', now - held), 'streak', streak)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened') or '0')
local age = -1
if opened > 0 then age = now - opened end
return {streak, string.format('%.6f', age)}
"""


class SharedBreaker(CircuitBreaker):
    def __init__(
        self,
        name: str,
        failures: int,
        cooldown: float,
        link: RedisLink,
        on_change: Callable[[str, bool], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(failures, cooldown, clock)
        self.name = name
        self.link = link
        self._on_change = on_change
        self._key = link.key("breaker", name)
        self._report = link.script(_REPORT)
        self._pump = Pump(self._flush)
        self._reset = False  # a success to report, before `_fails`
        self._fails = 0  # failures to report
        self._shared_streak = 0
        self._shared_open = False

    def record(self, ok: bool) -> None:
        super().record(ok)
        if not ok:
            self._fails += 1
        elif self._shared_streak or self._shared_open or self._fails:
            self._reset, self._fails = True, 0
        else:
            return
        self._pump.kick()

    def start_afresh(self) -> None:
        """This circuit's backend moved to another server: clear what Redis holds of the old one."""
        self._reset = True
        self._pump.kick()

    def refresh(self) -> None:
        self._pump.kick()

    async def drained(self) -> None:
        await self._pump.drained()

    async def _flush(self) -> None:
        reset, fails = self._reset, self._fails
        self._reset, self._fails = False, 0
        held = -1.0 if self._opened_at is None else self._clock() - self._opened_at
        args = [int(reset), fails, self.failures, int(self.cooldown * 2 + 60), held]
        answer = await self.link.run(lambda c: self._report(keys=[self._key], args=args), None)
        if answer is None or self._reset or self._fails:
            return  # Redis is away (local state stands), or more of ours is on the way: its answer says
        self._adopt(int(answer[0]), float(answer[1]))

    def _adopt(self, streak: int, age: float) -> None:
        was = self.open
        self._shared_streak, self._shared_open = streak, age >= 0
        if age < 0:
            self._streak, self._opened_at = min(self._streak, streak), None
        else:
            opened = self._clock() - age
            if self._opened_at is None or opened > self._opened_at:  # a local trial may be newer
                self._opened_at = opened
        if self.open != was:
            self._on_change(self.name, self.open)

    async def close(self) -> None:
        await self._pump.close()
