"""State shared by every worker and gateway replica through Redis, behind the local objects the
request path uses: circuits (gateway/shared_breaker.py), GPU meters and in-flight counts
(gateway/shared_meter.py) and held-API-share windows (gateway/shared_window.py).

The request path never waits on Redis (except a metered request, after its answer was sent, for its
cost): it reads local copies, and this module's loop refreshes them every `SYNC_SECONDS`. That is
the staleness bound of what another process changed: a circuit it opened, requests it started, the
scores it saw. While Redis is unreachable every piece falls back to its local state (the RedisLink
says so once, in the log and `crossover_redis_up`) and rebuilds Redis's copy when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.breaker import CircuitBreaker
from gateway.online_threshold import OnlineThreshold
from gateway.redis_link import RedisLink
from gateway.shared_breaker import SharedBreaker
from gateway.shared_meter import SharedMeter
from gateway.shared_window import SYNC_SECONDS, SharedWindow

log = logging.getLogger("crossover")


class Shared:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.breakers: dict[str, SharedBreaker] = {}
        self.meters: dict[str, SharedMeter] = {}
        self.windows: dict[tuple[str, str], SharedWindow] = {}  # by (router, classifier)
        self._task: asyncio.Task[None] | None = None

    def breaker(
        self, name: str, failures: int, cooldown: float, on_change: Callable[[str, bool], None]
    ) -> CircuitBreaker:
        breaker = SharedBreaker(name, failures, cooldown, self.link, on_change)
        self.breakers[name] = breaker
        return breaker

    def meter(
        self, backend: str, usd_per_hour: float, workers: int, on_idle: Callable[[float], None]
    ) -> SharedMeter:
        meter = SharedMeter(backend, usd_per_hour, workers, self.link, on_idle)
        self.meters[backend] = meter
        return meter

    def forget_breaker(self, name: str) -> None:
        """A circuit the config no longer has (or whose backend moved)."""
        self.breakers.pop(name, None)

    def forget_meter(self, name: str) -> None:
        """A deployment the config no longer has."""
        self.meters.pop(name, None)

    def start(
        self,
        windows: Callable[[], dict[str, tuple[str, OnlineThreshold]]],
        moved: Callable[[str, float], None],
    ) -> None:
        """Sync every `SYNC_SECONDS`; `windows` gives each router's (classifier, online threshold)
        of the current runtime, `moved` hears of a threshold the shared window moved."""
        self._task = asyncio.get_running_loop().create_task(self._run(windows, moved))

    async def _run(
        self,
        windows: Callable[[], dict[str, tuple[str, OnlineThreshold]]],
        moved: Callable[[str, float], None],
    ) -> None:
        while True:
            try:
                await self.sync(windows(), moved)
            except Exception:  # a bug must not end sharing for good (Redis errors never get here)
                log.exception("syncing shared state failed")
            await asyncio.sleep(SYNC_SECONDS)

    async def sync(
        self, windows: dict[str, tuple[str, OnlineThreshold]], moved: Callable[[str, float], None]
    ) -> None:
        for meter in self.meters.values():
            meter.heartbeat()
        for breaker in self.breakers.values():
            breaker.refresh()
        for router, (classifier, online) in windows.items():
            window = self.windows.get((router, classifier))
            if window is None:
                window = self.windows[router, classifier] = SharedWindow(router, classifier, self.link)
            if await window.sync(online):
                moved(router, online.threshold)

    async def settle(self) -> None:
        """Bring the GPU meters' counters up to now (before /metrics is read)."""
        await asyncio.gather(*(meter.settle() for meter in self.meters.values()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for meter in self.meters.values():
            await meter.close()
        for breaker in self.breakers.values():
            await breaker.close()
