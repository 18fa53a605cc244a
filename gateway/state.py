"""What the app holds between requests: the metrics, and the current Runtime, swapped on reload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.accounting import BackendMeter
from gateway.breaker import CircuitBreaker
from gateway.config import Settings, Target
from gateway.limit_store import LocalStore, RedisStore
from gateway.limits import Limiter
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from gateway.runtime import Runtime
from gateway.shadow import Shadows

log = logging.getLogger("crossover")


class GatewayState:
    def __init__(
        self, runtime: Runtime, metrics: Metrics, loader: Callable[[], Settings] | None, *, workers: int = 1
    ) -> None:
        self.runtime = runtime
        self.workers = workers  # processes serving: each meters its own requests at 1/workers of a GPU
        self.metrics = metrics
        self.recorder = Recorder(metrics)
        self._loader = loader  # re-reads the config file; None for the embedded default
        self._retired: set[Runtime] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Meters outlive reloads, so a request that started before one is counted and charged correctly.
        self.meters: dict[str, BackendMeter] = {}
        self.breakers: dict[str, CircuitBreaker] = {}  # backends with a circuit_breaker; kept on reload
        self.shadows = Shadows(
            self.recorder, self.hold, self.unhold, workers
        )  # shadow judging's jobs and stores
        self.redis: RedisLink | None = None  # shared state across workers and replicas; None: local
        self.limiter = Limiter(LocalStore(), self.recorder)  # keys' and teams' limits (gateway/limits.py)
        self._sync_redis()
        self._sync_meters()
        self.export_thresholds()

    def _sync_redis(self) -> None:
        """Connect to the configured Redis; a reload that changes it reconnects."""
        wanted = self.runtime.settings.redis
        if self.redis is not None and self.redis.settings == wanted:
            return
        if self.redis is not None:
            self._background(self._close_redis(self.limiter, self.redis))
        self.redis = RedisLink(wanted, self.recorder) if wanted is not None else None
        store = RedisStore(self.redis) if self.redis is not None else LocalStore()
        self.limiter = Limiter(store, self.recorder)

    @staticmethod
    async def _close_redis(limiter: Limiter, link: RedisLink) -> None:
        await limiter.store.close()  # its last corrections first
        await link.close()

    def _sync_meters(self, previous: Settings | None = None) -> None:
        backends = self.runtime.settings.backends
        for name, backend in backends.items():
            rate = backend.gpu_usd_per_hour / self.workers
            if name in self.meters:
                self.meters[name].usd_per_hour = rate
            else:
                self.meters[name] = BackendMeter(rate)
            if rate > 0:
                self.recorder.gpu_rate(name, backend.gpu_usd_per_hour)
        self._sync_breakers(previous)

    def _sync_breakers(self, previous: Settings | None) -> None:
        """A circuit outlives a reload that leaves its backend as it was; a backend now elsewhere (its
        URL or kind changed), or without a breaker, starts afresh."""
        backends = self.runtime.settings.backends
        for name in list(self.breakers):
            old = previous.backends.get(name) if previous is not None else None
            new = backends.get(name)
            moved = old is None or new is None or (old.kind, old.base_url) != (new.kind, new.base_url)
            if new is None or new.circuit_breaker is None or moved:
                del self.breakers[name]
                self.recorder.circuit(name, False, changed=False)
        for name, backend in backends.items():
            if backend.circuit_breaker is None:
                continue
            if name in self.breakers:
                self.breakers[name].failures, self.breakers[name].cooldown = backend.circuit_breaker
            else:
                self.breakers[name] = CircuitBreaker(*backend.circuit_breaker)
                self.recorder.circuit(name, False, changed=False)

    def export_thresholds(self) -> None:
        for name in self.runtime.settings.routers:
            self.recorder.threshold(name, self.runtime.threshold(name))

    def full(self, settings: Settings, target: Target) -> bool:
        """Is the target's backend at its `max_in_flight` (spill-over)?"""
        limit = settings.backends[target.backend].max_in_flight
        return limit is not None and self.meters[target.backend].running >= limit

    def acquire(self) -> Runtime:
        """The runtime a request uses from start to last byte, even if a reload swaps it meanwhile.
        Every acquire is paired with one `release`."""
        runtime = self.runtime
        self.hold(runtime)
        self.recorder.serving(+1)
        return runtime

    def release(self, runtime: Runtime) -> None:
        self.recorder.serving(-1)
        self.unhold(runtime)

    def hold(self, runtime: Runtime) -> None:
        """Keep a runtime open for background work that is not a request (a shadow job)."""
        runtime.in_flight += 1

    def unhold(self, runtime: Runtime) -> None:
        runtime.in_flight -= 1
        if runtime.in_flight == 0 and runtime in self._retired:
            self._retired.discard(runtime)
            self._background(runtime.close())

    def schedule_reload(self) -> None:
        """For a signal handler: reload soon, in a task the state keeps until it is done."""
        self._background(self.reload())

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in a task the state keeps until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Build a runtime from the file again. A bad file is logged and the old one keeps serving."""
        if self._loader is None:
            return False
        try:
            new = Runtime(self._loader())
            await new.start()
        except Exception as exc:  # a bad file, or a user's classifier failing to load: keep serving
            log.error("config reload rejected, still serving the previous config: %s", exc)
            self.recorder.reloaded(False)
            return False
        new.carry_over(self.runtime)
        old, self.runtime = self.runtime, new
        self._sync_redis()
        self._sync_meters(old.settings)
        self.export_thresholds()
        self.recorder.reloaded(True)
        log.info("config reloaded")
        if old.in_flight == 0:
            await old.close()
        else:
            self._retired.add(old)  # closed by the last request that still holds it
        return True

    async def close(self) -> None:
        await self.shadows.close()
        if self.redis is not None:
            await self._close_redis(self.limiter, self.redis)
        await self.runtime.close()
        for runtime in list(self._retired):
            await runtime.close()
        self._retired.clear()
