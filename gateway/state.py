"""What the app holds between requests: the metrics, and the current Runtime, swapped on reload."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.accounting import BackendMeter
from gateway.breaker import CircuitBreaker
from gateway.config import Settings, Target
from gateway.keyring import Keyring
from gateway.limit_store import LocalStore, RedisStore
from gateway.limits import DRAIN_SECONDS, Limiter
from gateway.metrics import Metrics
from gateway.online_threshold import OnlineThreshold
from gateway.recorder import Recorder
from gateway.redis_link import RedisLink
from gateway.replicas import circuit_names
from gateway.request_log import RequestLog
from gateway.runtime import Runtime
from gateway.shadow import Shadows
from gateway.shared import Shared
from gateway.shared_breaker import SharedBreaker
from gateway.shared_meter import SharedMeter
from gateway.tracing import Tracing

log = logging.getLogger("crossover")


class GatewayState:
    def __init__(
        self, runtime: Runtime, metrics: Metrics, loader: Callable[[], Settings] | None, *, workers: int = 1
    ) -> None:
        self.runtime = runtime
        self.workers = workers  # processes serving: without Redis each meters its requests at 1/workers
        self.metrics = metrics
        self.recorder = Recorder(metrics)
        self._loader = loader  # re-reads the config file; None for the embedded default
        self._retired: set[Runtime] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Meters outlive reloads, so a request that started before one is counted and charged correctly.
        self.meters: dict[str, BackendMeter | SharedMeter] = {}
        self.breakers: dict[str, CircuitBreaker] = {}  # backends with a circuit_breaker; kept on reload
        self.tracing: Tracing | None = None  # set by the app when tracing is configured (start-up only)
        self.shadows = Shadows(
            self.recorder, self.hold, self.unhold, workers
        )  # shadow judging's jobs and stores
        self.redis: RedisLink | None = None  # shared state across workers and replicas; None: local
        self.keyring: Keyring | None = None  # virtual keys (server.keys_store); None: static keys only
        self.request_log: RequestLog | None = None  # None: no request log
        self.shared: Shared | None = None  # what is shared through it (gateway/shared.py)
        self.limiter = Limiter(LocalStore(), self.recorder)  # keys' and teams' limits (gateway/limits.py)
        self._sync_redis()
        self._sync_meters()
        self.export_thresholds()

    def _sync_redis(self) -> None:
        """Connect to the configured Redis; a reload that changes it reconnects."""
        wanted = self.runtime.settings.redis
        if (self.redis.settings if self.redis is not None else None) == wanted:
            return
        if self.redis is not None:
            self._background(self._disconnect(self.redis, self.shared, self.limiter))
        self.redis = RedisLink(wanted, self.recorder) if wanted is not None else None
        self.shared = Shared(self.redis) if self.redis is not None else None
        if self.shared is not None:
            self.shared.start(self._windows, self.recorder.threshold)
        store = RedisStore(self.redis) if self.redis is not None else LocalStore()
        self.limiter = Limiter(store, self.recorder)

    @staticmethod
    async def _disconnect(
        link: RedisLink, shared: Shared | None, limiter: Limiter, wait: float = DRAIN_SECONDS
    ) -> None:
        if shared is not None:
            await shared.close()
        await limiter.close(wait=wait)  # the requests it admitted settle first (at most `wait`)
        await link.close()

    def _windows(self) -> dict[str, tuple[str, OnlineThreshold]]:
        """Each router's online threshold, with the classifier its scores come from."""
        routers = self.runtime.settings.routers
        return {name: (routers[name].classifier, o) for name, o in self.runtime.online_thresholds.items()}

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
        """With Redis, a deployment whose cost or in-flight count matters is metered once across all
        processes (gateway/shared_meter.py); without, each worker meters 1/workers of its rate."""
        backends, shared = self.runtime.settings.backends, self.shared
        for name, backend in backends.items():
            meter = self.meters.get(name)
            if shared is not None and (backend.gpu_usd_per_hour > 0 or backend.max_in_flight is not None):
                if not isinstance(meter, SharedMeter) or meter.link is not shared.link:
                    on_idle = functools.partial(self.recorder.gpu_idle, name)
                    meter = self.meters[name] = shared.meter(name, 0.0, self.workers, on_idle)
                meter.usd_per_hour = backend.gpu_usd_per_hour
            else:
                rate = backend.gpu_usd_per_hour / self.workers
                if isinstance(meter, BackendMeter):
                    meter.usd_per_hour = rate
                else:
                    self.meters[name] = BackendMeter(rate)
            meter = self.meters[name]
            if backend.replicas and meter.replicas == 1:  # until the first probe: all assumed live
                meter.replicas = len(backend.replicas)
            if backend.gpu_usd_per_hour > 0:
                self.recorder.gpu_rate(name, backend.gpu_usd_per_hour * meter.replicas)
        if shared is not None:
            for name in self.meters.keys() - backends.keys():
                shared.forget_meter(name)  # its requests still end on it, but it reports no more idle time
        self._sync_breakers(previous)

    def _sync_breakers(self, previous: Settings | None) -> None:
        """A circuit outlives a reload that leaves its backend as it was; a backend now elsewhere (its
        URL or kind changed), or without a breaker, starts afresh. A backend with replicas has a
        circuit per replica, named "backend/replica"."""
        backends = self.runtime.settings.backends
        wanted = {
            name: b for b in backends.values() if b.circuit_breaker is not None for name in circuit_names(b)
        }
        afresh = set()  # circuits of a backend that moved: their shared state is another server's
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
                if self.shared is not None:
                    self.shared.forget_breaker(name)
                self.recorder.circuit(name, False, changed=False)
                if new is not None:
                    afresh.add(name)
        for name, backend in wanted.items():
            assert backend.circuit_breaker is not None
            old_breaker = self.breakers.get(name)
            if old_breaker is not None and self._shares(old_breaker):
                old_breaker.failures, old_breaker.cooldown = backend.circuit_breaker
                continue
            breaker = self.breakers[name] = self.breaker(name, *backend.circuit_breaker)
            if isinstance(breaker, SharedBreaker) and name in afresh:
                breaker.start_afresh()
            if old_breaker is not None:  # Redis was turned on or off: the circuit goes on as it was
                breaker.carry_over(old_breaker)
            else:
                self.recorder.circuit(name, False, changed=False)

    def live_replicas(self, name: str, live: int) -> None:
        """With `replicas`, `gpu_usd_per_hour` is per replica: the cost follows the live ones (an
        autoscaled or failing deployment), as the health probes find them."""
        meter, backend = self.meters.get(name), self.runtime.settings.backends.get(name)
        if meter is None or backend is None or meter.replicas == live:
            return
        meter.replicas = live
        if backend.gpu_usd_per_hour > 0:
            self.recorder.gpu_rate(name, backend.gpu_usd_per_hour * live)

    def breaker(self, name: str, failures: int, cooldown: float) -> CircuitBreaker:
        """A circuit by any name (a backend, or "backend/replica"): shared through Redis when it is
        configured, else this process's own."""
        if self.shared is not None:
            return self.shared.breaker(name, failures, cooldown, self.recorder.circuit)
        return CircuitBreaker(failures, cooldown)

    def _shares(self, breaker: CircuitBreaker) -> bool:
        """Is this breaker shared as the config now says (through the current link, or not at all)?"""
        if self.shared is None:
            return not isinstance(breaker, SharedBreaker)
        return isinstance(breaker, SharedBreaker) and breaker.link is self.shared.link

    def export_thresholds(self) -> None:
        for name in self.runtime.settings.routers:
            self.recorder.threshold(name, self.runtime.threshold(name))

    def full(self, settings: Settings, target: Target) -> bool:
        """Is the target's backend at its `max_in_flight`, or its replicas' queues past `spill_when`
        (spill-over)? `max_in_flight` counts with Redis over every worker and gateway replica (as of
        their last report, at most `SYNC_SECONDS` old); else per worker."""
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
        # No await before the new backends' meters and circuits exist: a request may use them at once.
        self._sync_redis()
        self._sync_meters(old.settings)
        await self._sync_keys()
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
            # At shutdown the server has already waited for its requests: a straggler gets 5 s.
            await self._disconnect(self.redis, self.shared, self.limiter, wait=5.0)
        await self.runtime.close()
        for runtime in list(self._retired):
            await runtime.close()
        self._retired.clear()
