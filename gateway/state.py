"""What the app holds between requests: the metrics, and the current Runtime, swapped on reload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.accounting import BackendMeter
from gateway.breaker import CircuitBreaker
from gateway.config import Settings, Target
from gateway.keyring import Keyring
from gateway.metrics import Metrics
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from gateway.replicas import circuit_names
from gateway.request_log import RequestLog
from gateway.runtime import Runtime
from gateway.shadow import Shadows
from gateway.tracing import Tracing

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
        self.tracing: Tracing | None = None  # set by the app when tracing is configured (start-up only)
        self.shadows = Shadows(
            self.recorder, self.hold, self.unhold, workers
        )  # shadow judging's jobs and stores
        self.redis: RedisLink | None = None  # shared state across workers and replicas; None: local
        self.keyring: Keyring | None = None  # virtual keys (server.keys_store); None: static keys only
        self.request_log: RequestLog | None = None  # None: no request log
        self._sync_redis()
        self._sync_meters()
        self.export_thresholds()

    def _sync_redis(self) -> None:
        """Connect to the configured Redis; a reload that changes it reconnects."""
        wanted = self.runtime.settings.redis
        if self.redis is not None and self.redis.settings == wanted:
            return
        if self.redis is not None:
            self._background(self.redis.close())
        self.redis = RedisLink(wanted, self.recorder) if wanted is not None else None

    async def start(self) -> None:
        """What needs the running loop: the virtual keys, read once before the first request, and the
        request log's writer."""
        await self._sync_keys()

    async def _sync_keys(self) -> None:
        """Open the configured keys store and request log; a reload that changes one reopens it."""
        settings = self.runtime.settings
        if (self.keyring.url if self.keyring is not None else None) != settings.keys_store:
            if self.keyring is not None:
                self._background(self.keyring.close())
            self.keyring = Keyring(settings.keys_store) if settings.keys_store is not None else None
            if self.keyring is not None:
                await self.keyring.start()
        if (self.request_log.settings if self.request_log is not None else None) != settings.request_log:
            if self.request_log is not None:
                self._background(self.request_log.close())
            self.request_log = None
            if settings.request_log is not None:
                self.request_log = RequestLog(settings.request_log, self.recorder)
                self.request_log.start()

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
        URL or kind changed), or without a breaker, starts afresh. A backend with replicas has a
        circuit per replica, named "backend/replica"."""
        backends = self.runtime.settings.backends
        wanted = {
            name: b for b in backends.values() if b.circuit_breaker is not None for name in circuit_names(b)
        }
        for name in list(self.breakers):
            new = wanted.get(name)
            old = previous.backends.get(new.name) if previous is not None and new is not None else None
            moved = (
                old is None
                or new is None
                or (old.kind, old.replicas or old.base_url)
                != (
                    new.kind,
                    new.replicas or new.base_url,
                )
            )
            if new is None or moved:
                del self.breakers[name]
                self.recorder.circuit(name, False, changed=False)
        for name, backend in wanted.items():
            assert backend.circuit_breaker is not None
            if name in self.breakers:
                self.breakers[name].failures, self.breakers[name].cooldown = backend.circuit_breaker
            else:
                self.breakers[name] = CircuitBreaker(*backend.circuit_breaker)
                self.recorder.circuit(name, False, changed=False)

    def export_thresholds(self) -> None:
        for name in self.runtime.settings.routers:
            self.recorder.threshold(name, self.runtime.threshold(name))

    def full(self, settings: Settings, target: Target) -> bool:
        """Is the target's backend at its `max_in_flight`, or its replicas' queues past `spill_when`
        (spill-over)?"""
        backend = settings.backends[target.backend]
        limit = backend.max_in_flight
        if limit is not None and self.meters[target.backend].running >= limit:
            return True
        replicas = self.runtime.replicas.get(target.backend) if backend.spill_when is not None else None
        return replicas is not None and replicas.full()

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
        await self._sync_keys()
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
        if self.request_log is not None:
            await self.request_log.close()
        if self.keyring is not None:
            await self.keyring.close()
        if self.redis is not None:
            await self.redis.close()
        await self.runtime.close()
        for runtime in list(self._retired):
            await runtime.close()
        self._retired.clear()
