"""A backend's GPU meter and in-flight count shared by every worker and gateway replica through Redis.

The deployment's cost is metered once: one integral in Redis, `share` = ∫ rate / running dt over the
requests running on it in all processes, and `idle` = the rate's integral while none runs. Each
process reports its own count of running requests (an absolute number with an expiry, so a crashed
process stops counting after `PROCESS_TTL`), and every report advances the integral by Redis's clock
and hands back the idle cost accrued since the last report, whoever made it: each USD of idle is
counted by exactly one process. A request's share is what the integral gained per slot between the
report that counted it in and the one that counted it out, so busy + idle = rate x wall time exactly,
whatever the number of processes.

Reports go through one `Pump` per meter: a request's start or stop only changes a local count and
kicks the pump. Its cost is known when the report that counted it out comes back, which the request
awaits after its answer was sent. While Redis is unreachable the meter counts locally, as without
Redis (its process's share of the rate, 1/workers), and resumes sharing at the next report.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from gateway.accounting import BackendMeter
from gateway.pump import Pump
from gateway.redis_link import RedisLink

PROCESS_TTL = 5.0  # seconds a process's reported count outlives its last report (heartbeat: 0.5 s)

# KEYS: the meter's hash (share, idle, last, epoch), each process's count, each process's expiry.
# ARGV: process, its count, USD per hour, ttl, since (when this process began metering), new epoch id.
_REPORT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[4])
local function num(x) return string.format('%.17g', x) end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not last or not epoch then
  -- a new integral starts at the first reporter's own start (at most a ttl ago)
  last = math.max(math.min(tonumber(ARGV[5]), now), now - ttl)
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'share', '0', 'idle', '0')
end
local running, mine = 0, 0
local seen = redis.call('HGETALL', KEYS[3])
for i = 1, #seen, 2 do
  if tonumber(seen[i + 1]) < now then
    redis.call('HDEL', KEYS[3], seen[i])
    redis.call('HDEL', KEYS[2], seen[i])
  else
    local n = tonumber(redis.call('HGET', KEYS[2], seen[i]) or '0')
    running = running + n
    if seen[i] == ARGV[1] then mine = n end
  end
end
local dt = now - last
if dt > ttl then dt = 0 end  -- nobody reported for that long: no gateway was metering it
local cost = tonumber(ARGV[3]) / 3600 * dt
local share = tonumber(redis.call('HGET', KEYS[1], 'share'))
local idle = tonumber(redis.call('HGET', KEYS[1], 'idle'))
if running > 0 then share = share + cost / running else idle = idle + cost end
redis.call('HSET', KEYS[1], 'last', num(now), 'share', num(share), 'idle', '0')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], num(now + ttl))
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], 86400) end
return {epoch, num(share), num(idle), running - mine + tonumber(ARGV[2])}
"""


class Slot:
    """A request's place on a shared meter, from `start` to `stop`."""

    __slots__ = ("counted_in", "meter")

    def __init__(self, meter: SharedMeter, counted_in: asyncio.Future[float]) -> None:
        self.meter = meter
        self.counted_in = counted_in  # the local share after the report that counted it in

    def stop(self) -> asyncio.Future[float]:
        """Frees the slot at once; the future is the local share once the request is counted out."""
        return self.meter.leave()

    async def cost(self, counted_out: asyncio.Future[float]) -> float:
        """The request's share of the GPU cost in USD."""
        end = await counted_out
        return end - self.counted_in.result()  # reports complete in order: counted in before out


class SharedMeter:
    def __init__(
        self,
        backend: str,
        usd_per_hour: float,
        workers: int,
        link: RedisLink,
        on_idle: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.usd_per_hour = usd_per_hour  # the whole deployment's, per live replica
        self.replicas = 1  # live replicas of the deployment: its cost follows them
        self.workers = workers  # while Redis is away, this process meters 1/workers of the rate
        self.link = link
        self._on_idle = on_idle
        self._clock = clock
        self._since = time.time()
        self._process = uuid.uuid4().hex
        self._keys = [link.key("meter", backend, part) for part in ("integral", "running", "seen")]
        self._report = link.script(_REPORT)
        self._pump = Pump(self._flush)
        self._open: asyncio.Future[float] | None = None  # the next report's batch
        self._local = 0  # this process's running requests
        self._reported = 0  # of which the last report counted
        self._others = 0  # other processes' running requests, as the last report said
        self._share = 0.0  # the local mirror of the integral, per slot
        self._last: float | None = None  # when the last report returned (None: never)
        self._shared: tuple[str, float] | None = None  # (epoch, share) at the last report through Redis

    @property
    def running(self) -> int:
        """Requests running on the deployment across all processes, for spill-over (as of the last
        report; this process's own changes are counted at once)."""
        return self._local + self._others

    def start(self) -> Slot:
        self._local += 1
        return Slot(self, self._batch())

    def leave(self) -> asyncio.Future[float]:
        self._local -= 1
        return self._batch()

    def heartbeat(self) -> None:
        """Report the count again: keeps this process's count alive and `running` fresh."""
        self._pump.kick()

    async def settle(self) -> None:
        """Report now and wait for the answer: the idle cost up to now is recorded when it returns."""
        await self._batch()

    def take_idle(self) -> float:
        return 0.0  # idle is recorded by the report that finds it (`on_idle`)

    def _batch(self) -> asyncio.Future[float]:
        if self._open is None:
            self._open = asyncio.get_running_loop().create_future()
        self._pump.kick()
        return self._open

    async def _flush(self) -> None:
        batch, self._open = self._open, None
        count = self._local
        rate = self.usd_per_hour * self.replicas
        args: list[str | int | float] = [
            self._process,
            count,
            rate,
            PROCESS_TTL,
            self._since,
            uuid.uuid4().hex,
        ]
        try:
            answer = await self.link.run(lambda c: self._report(keys=self._keys, args=args), None)
            self._apply(answer, count, self._clock())
        finally:
            if batch is not None:
                batch.set_result(self._share)

    def _apply(self, answer: list[bytes | int] | None, count: int, now: float) -> None:
        if answer is None:
            self._advance_locally(now)
            self._shared = None
            self._others = 0  # unknown: spill-over counts this process's own, as without Redis
        else:
            epoch, share, idle, running = (
                bytes(answer[0]).decode(),
                float(answer[1]),
                float(answer[2]),
                int(answer[3]),
            )
            if idle > 0:
                self._on_idle(idle)
            if self._shared is not None and self._shared[0] == epoch:
                if self._reported:
                    self._share += share - self._shared[1]
            else:  # Redis did not know of our slots since the last report: this process meters it
                self._advance_locally(now)
            self._shared = (epoch, share)
            self._others = max(running - count, 0)
        self._reported = count
        self._last = now

    def _advance_locally(self, now: float) -> None:
        if self._last is None:
            return
        cost = self.usd_per_hour * self.replicas / self.workers / 3600 * (now - self._last)
        if self._reported:
            self._share += cost / self._reported
        elif cost > 0:
            self._on_idle(cost)

    async def close(self) -> None:
        await self._pump.close()
        if self._open is not None and not self._open.done():
            self._open.set_result(self._share)
        self._open = None


def release(meter: BackendMeter | SharedMeter, mark: float | Slot) -> None:
    """Free a slot without charging it."""
    if isinstance(mark, Slot):
        mark.stop()
    elif isinstance(meter, BackendMeter):
        meter.stop(mark)
