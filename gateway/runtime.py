"""The live objects built from Settings: providers, classifiers and the model catalogue.

A config reload builds a new Runtime and swaps it in; requests already running keep the one they
started with, which is closed once the last of them finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from classifier import Classifier, load_classifier
from gateway.config import Backend, ModelEntry, Price, Settings, Target
from gateway.errors import ModelNotFound
from gateway.online_threshold import OnlineThreshold
from gateway.policy import local_backends
from gateway.replicas import ReplicaSet
from gateway.routing import Decision
from providers.base import ErrorCode, Provider, UpstreamError
from providers.http import HttpConfig
from providers.registry import KINDS

log = logging.getLogger("crossover")

# How long a failed model discovery is trusted before asking the backend again.
DISCOVERY_RETRY_SECONDS = 5.0


# Read-only through `Final` (mypy), not frozen: one is built per call of a backend, and a frozen
# __init__ (each field through object.__setattr__) costs ~3x a plain one. Hashable as before.
@dataclass(slots=True, unsafe_hash=True)
class Resolved:
    """A target made concrete: which provider to call, and with which model names."""

    provider: Final[Provider]
    backend: Final[Backend]
    model: Final[ModelEntry]


def _http(backend: Backend, base_url: str) -> HttpConfig:
    return HttpConfig(
        name=backend.name,
        base_url=base_url,
        headers=backend.headers,
        connect_timeout=backend.connect_timeout,
        read_timeout=backend.read_timeout,
        max_connections=backend.max_connections,
    )


def build_provider(backend: Backend, base_url: str | None = None) -> Provider:
    http = _http(backend, base_url or backend.base_url)
    return KINDS[backend.kind].build(http, backend.api_key, backend.options)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # A replicated backend has a provider per replica; its first stands for the backend where
        # any one will do (model lists, token counts, readiness).
        self.replicas: dict[str, ReplicaSet] = {
            name: ReplicaSet(b, [build_provider(b, url) for url in b.replicas or (b.base_url,)])
            for name, b in settings.backends.items()
            if b.replicated
        }
        self.providers: dict[str, Provider] = {
            name: self.replicas[name].replicas[0].provider if name in self.replicas else build_provider(b)
            for name, b in settings.backends.items()
        }
        self.classifiers: dict[str, Classifier] = {
            name: load_classifier(r.classifier) for name, r in settings.routers.items()
        }
        self.online_thresholds: dict[str, OnlineThreshold] = {
            name: OnlineThreshold(r.target_api_share, r.share_window, r.threshold)
            for name, r in settings.routers.items()
            if r.target_api_share is not None
        }
        self._models: dict[str, list[ModelEntry]] = {
            name: list(b.models) for name, b in settings.backends.items()
        }
        self._discovered_at: dict[str, float] = {}
        self._discovery_locks = {name: asyncio.Lock() for name in settings.backends}
        self.in_flight = 0
        self.local_backends = local_backends(settings)  # where local_only data may go

    def threshold(self, router: str) -> float:
        online = self.online_thresholds.get(router)
        return online.threshold if online is not None else self.settings.routers[router].threshold

    def observe(self, router: str, decision: Decision) -> float | None:
        """Feed a router's decision to its online threshold; the new threshold when it moved."""
        online = self.online_thresholds.get(router)
        if online is None:
            return None
        before = online.threshold
        if decision.score is None:
            online.observe_pinned(decision.route)
        else:
            online.observe(decision.score)
        return online.threshold if online.threshold != before else None

    def carry_over(self, previous: Runtime) -> None:
        """Keep the score history of online thresholds across a reload, unless the classifier changed."""
        for name, online in self.online_thresholds.items():
            old = previous.online_thresholds.get(name)
            old_router = previous.settings.routers.get(name)
            if (
                old is not None
                and old_router is not None
                and old_router.classifier == self.settings.routers[name].classifier
            ):
                online.carry_over(old)

    async def start(self) -> None:
        """Load classifier artifacts off the event loop, so the first request does not pay for it,
        and discover models where asked (a backend that is down now is asked again on demand)."""
        for classifier in self.classifiers.values():
            load = getattr(classifier, "load", None)
            if callable(load):
                await asyncio.to_thread(load)
        await asyncio.gather(
            *(self._discover(name) for name, b in self.settings.backends.items() if b.discover_models)
        )

    async def close(self) -> None:
        providers = {id(p): p for p in self.providers.values()}
        providers.update((id(r.provider), r.provider) for s in self.replicas.values() for r in s.replicas)
        await asyncio.gather(*(p.close() for p in providers.values()))

    async def _discover(self, backend: str) -> None:
        async with self._discovery_locks[backend]:
            last = self._discovered_at.get(backend)
            if last is not None and time.monotonic() - last < DISCOVERY_RETRY_SECONDS:
                return
            self._discovered_at[backend] = time.monotonic()
            try:
                names = await self._list_models(backend)
            except UpstreamError as exc:
                log.warning("model discovery on backend %r failed: %s", backend, exc.message)
                return
            known = {m.name for m in self._models[backend]}
            self._models[backend].extend(ModelEntry(n, n, Price()) for n in names if n not in known)

    async def _list_models(self, backend: str) -> list[str]:
        """The backend's model list; from a replica that answers, the live ones first."""
        replicas = self.replicas.get(backend)
        if replicas is None:
            return await self.providers[backend].list_models()
        failed: UpstreamError | None = None
        for replica in sorted(replicas.replicas, key=lambda r: not r.load.up):
            try:
                return await replica.provider.list_models()
            except UpstreamError as exc:
                failed = exc
        assert failed is not None
        raise failed

    def models(self) -> list[tuple[str, ModelEntry]]:
        return [(backend, m) for backend, entries in self._models.items() for m in entries]

    def _find(self, backend: str, model: str | None) -> ModelEntry | None:
        for entry in self._models[backend]:
            if model is None or entry.name == model:
                return entry
        return None

    def price(self, target: Target) -> Price:
        """The prices of the model a target stands for (free while it is not known yet)."""
        entry = self._find(target.backend, target.model)
        return entry.price if entry is not None else Price()

    def model_name(self, target: Target) -> str:
        """The model a target stands for, without asking the backend ("" when none is known yet)."""
        entry = self._find(target.backend, target.model)
        return entry.name if entry is not None else target.model or ""

    async def resolve(self, target: Target) -> Resolved:
        entry = self._find(target.backend, target.model)
        if entry is None and self.settings.backends[target.backend].discover_models:
            await self._discover(target.backend)
            entry = self._find(target.backend, target.model)
        if entry is None:
            raise UpstreamError(
                503,
                no_model_yet(target.backend, self.settings.backends[target.backend].base_url),
                type="service_unavailable",
                code=ErrorCode.BACKEND_UNAVAILABLE,
                retry_after=DISCOVERY_RETRY_SECONDS,
                retryable=True,
            )
        return Resolved(self.providers[target.backend], self.settings.backends[target.backend], entry)

    async def target_for_model(self, name: str) -> Target:
        """A concrete model, as `model` or `backend/model`."""
        for _ in range(2):
            backend, sep, model = name.partition("/")
            if sep and backend in self._models and self._find(backend, model) is not None:
                return Target(backend, model)
            for backend, entries in self._models.items():
                if any(e.name == name for e in entries):
                    return Target(backend, name)
            discoverable = [n for n, b in self.settings.backends.items() if b.discover_models]
            if not discoverable:
                break
            await asyncio.gather(*(self._discover(n) for n in discoverable))
        raise ModelNotFound(
            # A client's string, echoed: bounded, so a 100 KB name does not come back whole.
            f"The model '{name[:100]}{'…' if len(name) > 100 else ''}' does not exist or you do not have access to it.",
            param="model",
            code=ErrorCode.MODEL_NOT_FOUND,
        )


def no_model_yet(backend: str, base_url: str) -> str:
    """The 503 of a backend with no model yet: where the gateway looked, and how to start one there."""
    parts = urlsplit(base_url)
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never a password in a URL
    return (
        f"backend '{backend}' has no model available yet: nothing listed models at {shown}/models. "
        f"Start an OpenAI-compatible model server there (e.g. `vllm serve MODEL`, or Ollama), "
        f"or let the gateway run vLLM: `crossover serve --with-vllm MODEL`"
    )
