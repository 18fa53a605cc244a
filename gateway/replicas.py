"""The replicas of one backend: a provider per replica, what is known of each (in flight here, health,
vLLM's queue), the choice of one per call (gateway/balance.py), and the probe that keeps it current.

Built by the Runtime for a backend with `replicas` (or `spill_when`); a backend with one `base_url` has
none of this, so its requests pay nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.balance import Load, Ring, by_affinity, candidates, least_loaded, prefix_key, saturated
from gateway.config import Backend
from gateway.recorder import Recorder
from providers.base import Provider, UnsupportedRequest, UpstreamError

log = logging.getLogger("crossover")

PROBE_TIMEOUT_SECONDS = 5.0


def labels_of(urls: Sequence[str]) -> list[str]:
    """Each replica's metrics label: its host:port, or its index where two share one."""
    hosts = [urlsplit(url).netloc.rpartition("@")[2] for url in urls]
    return hosts if len(set(hosts)) == len(hosts) else [str(i) for i in range(len(urls))]


def circuit_names(backend: Backend) -> list[str]:
    """The circuit breakers a backend has: one per replica ("backend/replica"), or its own."""
    if not backend.replicated:
        return [backend.name]
    return [f"{backend.name}/{label}" for label in labels_of(backend.replicas or (backend.base_url,))]


@dataclass(slots=True)
class Replica:
    index: int
    label: str
    url: str
    circuit: str  # its circuit breaker's name in GatewayState.breakers
    provider: Provider
    load: Load


class ReplicaSet:
    def __init__(self, backend: Backend, providers: Sequence[Provider]) -> None:
        self.backend = backend
        urls = backend.replicas or (backend.base_url,)
        self.replicas = [
            Replica(i, label, url, circuit, provider, Load())
            for i, (label, url, circuit, provider) in enumerate(
                zip(labels_of(urls), urls, circuit_names(backend), providers, strict=True)
            )
        ]
        self._loads = [r.load for r in self.replicas]
        self._ring = Ring([r.label for r in self.replicas]) if backend.affinity == "prefix" else None
        self._turn = 0
        self.next_probe = 0.0  # monotonic time; due at once

    def choose(self, body: dict[str, Any], avoid: frozenset[int]) -> Replica:
        """The replica for this call, never one in `avoid` while another may serve."""
        among = candidates(self._loads, avoid)
        self._turn += 1
        if len(among) == 1:
            return self.replicas[among[0]]
        key = prefix_key(body, self.backend.affinity_prefix_chars) if self._ring is not None else None
        if self._ring is not None and key is not None:
            index = by_affinity(
                self._ring, key, self._loads, among, self.backend.affinity_max_load, self._turn
            )
        else:
            index = least_loaded(self._loads, among, self._turn)
        return self.replicas[index]

    def full(self) -> bool:
        """`spill_when`: is every live replica's queue (or KV cache) over its limit?"""
        spill = self.backend.spill_when
        if spill is None:
            return False
        live = [load for load in self._loads if load.up]
        return all(saturated(load, spill.waiting_over, spill.kv_cache_over) for load in live)

    def mark(self, replica: Replica, up: bool, recorder: Recorder, why: str = "") -> None:
        recorder.replica_up(self.backend.name, replica.label, up)
        if replica.load.up != up:
            replica.load.up = up
            state = "up" if up else "down"
            log.warning("replica %s of backend %r is %s%s", replica.label, self.backend.name, state, why)

    async def probe(self, recorder: Recorder) -> None:
        """Every replica's health, and its engine's queue when scraped; then the gauges."""
        self.next_probe = time.monotonic() + self.backend.health_check_seconds
        await asyncio.gather(*(self._probe_one(r, recorder) for r in self.replicas))
        scraped = [r.load for r in self.replicas if r.load.up]
        if self.backend.scrape_metrics:
            recorder.engine(
                self.backend.name,
                sum(load.waiting for load in scraped),
                sum(load.running for load in scraped),
                max((load.kv_cache for load in scraped), default=0.0),
            )

    async def _probe_one(self, replica: Replica, recorder: Recorder) -> None:
        timeout = min(PROBE_TIMEOUT_SECONDS, self.backend.health_check_seconds)
        load = replica.load
        try:
            up = await asyncio.wait_for(_healthy(replica.provider), timeout)
        except TimeoutError:
            up = False
        self.mark(replica, up, recorder, "" if up else " (its health probe failed)")
        if up and self.backend.scrape_metrics:
            engine_state = getattr(replica.provider, "engine_state", None)
            try:
                engine = await asyncio.wait_for(engine_state(), timeout) if engine_state else None
            except (UpstreamError, UnsupportedRequest, TimeoutError) as exc:
                log.debug("scraping replica %s of %r failed: %s", replica.label, self.backend.name, exc)
                engine = None
            if engine is not None:
                load.waiting = engine["vllm:num_requests_waiting"]
                load.running = engine["vllm:num_requests_running"]
                load.kv_cache = engine["vllm:kv_cache_usage_perc"]
                load.ours_at_scrape = load.in_flight
        if not load.up:  # a dead replica's last queue must not hold spill-over or balance
            load.waiting = load.running = load.kv_cache = 0.0
        recorder.replica(
            self.backend.name, replica.label, load.in_flight, load.waiting, load.running, load.kv_cache
        )

    def states(self) -> dict[str, str]:
        """For /readyz: each replica's health."""
        return {r.label: "up" if r.load.up else "down" for r in self.replicas}


async def _healthy(provider: Provider) -> bool:
    """vLLM's `GET /health` when the provider has it; else whether it lists its models."""
    health = getattr(provider, "health", None)
    try:
        if health is not None:
            ok: bool = await health()
            return ok
        await provider.list_models()
    except (UpstreamError, UnsupportedRequest):
        return False
    return True
