"""The request path's buffered metric writes (gateway/metric_buffer.py): exported exactly as if each had
gone to prometheus_client at once, in every reading of a worker's registry, in other workers' /metrics
within the fold tick, and after a worker's graceful shutdown."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import ModelEntry, Price, Target
from gateway.metric_buffer import FOLD_SECONDS
from gateway.metrics import (
    CLASSIFIER_BUCKETS,
    INTER_TOKEN_BUCKETS,
    LATENCY_BUCKETS,
    OVERHEAD_BUCKETS,
    SCORE_BUCKETS,
    TTFT_BUCKETS,
    Metrics,
)
from gateway.recorder import Outcome, Recorder
from gateway.routing import Decision
from providers.base import Usage
from tests.conftest import SIM_KEY, sim_backend
from tests.servers import Server, start_gateway

DECISION = Decision("api", Target("openai", "gpt-4o"), Target("local", "llama"), "score", 0.7, 0.5)
PRICE = Price(2.5e-6, 1.25e-6, 10e-6)


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A family's samples but `_created` (the time a child was made, which differs between registries)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        if family.name == name
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_histogram_folded_in_bulk_equals_one_observed_value_by_value() -> None:
    """Also pins the private attributes of prometheus_client's Histogram that a bulk fold needs
    (`_upper_bounds`, `_buckets`, `_sum`): a release that changes them fails here."""
    metrics = Metrics()
    buffer = metrics.buffer
    for metric, bounds in (
        (metrics.latency, LATENCY_BUCKETS),
        (metrics.ttft, TTFT_BUCKETS),
        (metrics.overhead, OVERHEAD_BUCKETS),
        (metrics.inter_token, INTER_TOKEN_BUCKETS),
        (metrics.score, SCORE_BUCKETS),
        (metrics.classifier_seconds, CLASSIFIER_BUCKETS),
    ):
        labels = ("x",) * len(metric._labelnames)
        reference = Histogram(metric._name, "reference", metric._labelnames, buckets=bounds, registry=None)
        registry = CollectorRegistry()
        registry.register(reference)
        # each bound exactly (it belongs to its own bucket), just above it, below the first, past the last
        values = [0.0, -1.0, bounds[0] / 2, *bounds, *(b * 1.001 for b in bounds), bounds[-1] * 10, 1e9]
        for round_ in range(2):  # a second fold adds to the first
            for v in values[round_:]:
                buffer.observe(metric, labels, v)
                reference.labels(*labels).observe(v)
            got, want = samples(metrics.registry, metric._name), samples(registry, metric._name)
            assert got == want, metric._name


def test_every_reading_of_the_registry_sees_every_write() -> None:
    metrics = Metrics()
    recorder = Recorder(metrics)
    get = metrics.registry.get_sample_value
    outcome = Outcome(
        decision=DECISION,
        backend="openai",
        model=ModelEntry("gpt-4o", "gpt-4o", PRICE),
        stream=False,
        status_class="2xx",
        seconds=0.2,
        overhead=0.0003,
        usage=Usage(100, 20),
        gpu_usd=0.0,
        baseline=PRICE,
        team="blue",
    )
    for n in (1, 2, 3):
        for _ in range(n):
            recorder.serving(+1)
        recorder.decided("auto", DECISION, 0.00004)
        recorder.answered(outcome)
        recorder.limit_checked("rate", "allowed")
        recorder.refused("none", "", "", "4xx", 0.0, "blue")
        # 1, 2 then 3 of each so far: 1, 3, 6
        done = n * (n + 1) // 2
        assert get("crossover_in_flight_requests") == done
        assert (
            get("crossover_routing_decisions_total", {"router": "auto", "route": "api", "reason": "score"})
            == n
        )
        served = {"route": "api", "backend": "openai", "model": "gpt-4o"}
        assert get("crossover_requests_total", {**served, "status_class": "2xx"}) == n
        assert get("crossover_tokens_total", {**served, "kind": "input"}) == 100 * n
        assert get("crossover_tokens_total", {**served, "kind": "output"}) == 20 * n
        assert get("crossover_cost_usd_total", served) == pytest.approx(n * (100 * 2.5e-6 + 20 * 10e-6))
        assert get("crossover_team_requests_total", {"team": "blue", "status_class": "2xx"}) == n
        assert get("crossover_team_requests_total", {"team": "blue", "status_class": "4xx"}) == n
        assert get("crossover_limit_checks_total", {"kind": "rate", "result": "allowed"}) == n
        latency = {"route": "api", "backend": "openai", "stream": "false"}
        assert get("crossover_request_duration_seconds_bucket", {**latency, "le": "0.1"}) == 0
        assert get("crossover_request_duration_seconds_bucket", {**latency, "le": "0.25"}) == n
        assert get("crossover_request_duration_seconds_sum", latency) == pytest.approx(0.2 * n)
        assert get("crossover_classifier_score_count", {"router": "auto"}) == n
    for _ in range(6):
        recorder.serving(-1)
    assert get("crossover_in_flight_requests") == 0


# ---- served by `crossover serve`, with the metrics in files (multiprocess mode) ----


def config(sim: Server) -> dict[str, Any]:
    return {"backends": {"openai": sim_backend(sim, {"name": "gpt-4o-mini"})}}


def post_many(server: Server, count: int) -> None:
    """`count` requests from 8 clients, each on a connection of its own: both workers get some."""

    def post(_: int) -> int:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(post, range(count))) == [200] * count


def requests_scraped(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    families = text_string_to_metric_families(text)
    return sum(s.value for f in families for s in f.samples if s.name == "crossover_requests_total")


def requests_in_files(metrics_dir: Path) -> float:
    """What the workers left in the metrics directory: what a restarted gateway would report."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    return sum(s.value for f in registry.collect() for s in f.samples if s.name == "crossover_requests_total")


def test_a_scrape_in_multiprocess_mode_sees_its_own_worker_at_once(
    tmp_path: Path, openai_sim: Server
) -> None:
    env = {"SIM_OPENAI_KEY": SIM_KEY, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    server = start_gateway(tmp_path, config(openai_sim), env=env)  # one worker, reading the files
    try:
        for done in (8, 16):
            post_many(server, 8)
            assert requests_scraped(server) == done
    finally:
        server.stop()


def test_other_workers_values_reach_a_scrape_within_the_fold_tick(tmp_path: Path, openai_sim: Server) -> None:
    server = start_gateway(tmp_path, config(openai_sim), workers=2, env={"SIM_OPENAI_KEY": SIM_KEY})
    try:
        post_many(server, 24)
        time.sleep(3 * FOLD_SECONDS)  # the bound, with room for a busy machine
        # One scrape, answered by one worker: the other's requests are there from its own fold.
        assert requests_scraped(server) == 24
    finally:
        server.stop()


def test_a_worker_that_stops_gracefully_keeps_every_value(tmp_path: Path, openai_sim: Server) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"SIM_OPENAI_KEY": SIM_KEY, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    server = start_gateway(tmp_path, config(openai_sim), workers=2, env=env)
    try:
        post_many(server, 24)
    finally:
        server.stop()  # at once: the last requests' writes are folded at shutdown, not by the tick
    assert server.process.returncode == 0
    assert requests_in_files(metrics_dir) == 24
