"""Every Prometheus metric the gateway exports, declared once, with bounded labels.

Labels only ever carry names from the config (router, backend, model) or small fixed sets
(route, reason, status class, token kind): never a user-supplied string.
With several workers, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
`crossover serve`) aggregates the workers' values; see `render`. Gauges describe processes that are
alive (`live*` modes): the supervisor marks a worker that exits dead, and its gauges leave the sums and
maxima (gateway/supervisor.py). The start time stays the first worker's, as the counters cover it.

The request path's writes (Recorder's `decided`, `answered`, `refused`, `serving`, `limit_checked`) are
buffered in plain Python and folded into these metrics in bulk (gateway/metric_buffer.py): before every
reading of this process's registry and every render, so a worker's own /metrics is exact; every
`FOLD_SECONDS` (1 s) from the app, so another worker's render sees this one's values at most ~1 s
old (in multiprocess mode); and at shutdown, so a worker that stops gracefully loses nothing (one
killed with SIGKILL loses its last second of these writes). A child's `_created` is when it was first
folded, up to that second after its first write.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.metric_buffer import FoldFirst, MetricBuffer

# LLM requests span three orders of magnitude: tens of ms for a cached short answer, minutes for a long one.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30)
# Gateway overhead is meant to be well under a millisecond.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2)
SCORE_BUCKETS = tuple(i / 10 for i in range(1, 11))
CLASSIFIER_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        # The request path's writes, folded in before any reading (gateway/metric_buffer.py).
        self.buffer = MetricBuffer()
        r.register(FoldFirst(self.fold))
        self.requests = Counter(
            "crossover_requests",
            "Requests answered, by route and outcome.",
            ["route", "backend", "model", "status_class"],
            registry=r,
        )
        self.decisions = Counter(
            "crossover_routing_decisions",
            "Routing decisions of router models.",
            ["router", "route", "reason"],
            registry=r,
        )
        self.fallbacks = Counter(
            "crossover_fallbacks",
            "Requests moved to another backend after a retryable failure.",
            ["from_backend", "to_backend"],
            registry=r,
        )
        self.latency = Histogram(
            "crossover_request_duration_seconds",
            "Whole request time as the client saw it.",
            ["route", "backend", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "crossover_time_to_first_token_seconds",
            "Time to the first streamed content chunk.",
            ["route", "backend"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "crossover_gateway_overhead_seconds",
            "Time spent in the gateway, not waiting on the upstream.",
            ["route", "stream"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "crossover_tokens",
            "Tokens by kind: input (cached included), cached, output.",
            ["route", "backend", "model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "crossover_cost_usd",
            "Cost in US dollars from the configured prices.",
            ["route", "backend", "model"],
            registry=r,
        )
        self.score = Histogram(
            "crossover_classifier_score",
            "Complexity scores of routed requests.",
            ["router"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.classifier_seconds = Histogram(
            "crossover_classifier_duration_seconds",
            "Time to extract features, match rules and score a request (scored requests only).",
            ["router"],
            buckets=CLASSIFIER_BUCKETS,
            registry=r,
        )
        self.threshold = Gauge(
            "crossover_router_threshold",
            "The score threshold a router uses now (moving when it holds a target API share).",
            ["router"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.retries = Counter(
            "crossover_retries",
            "Calls tried again on the same backend after a retryable failure.",
            ["backend"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "crossover_circuit_open",
            "1 while a backend's circuit breaker is open (calls refused at once), else 0.",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rule_matches = Counter(
            "crossover_rule_matches",
            "Requests whose route a config rule pinned, by rule.",
            ["router", "rule"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "crossover_upstream_errors",
            "Failed upstream calls, by backend and error code.",
            ["backend", "code"],
            registry=r,
        )
        self.in_flight = Gauge(
            "crossover_in_flight_requests",
            "Requests being served now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.baseline_cost = Counter(
            "crossover_baseline_cost_usd",
            "What the same requests would have cost on the baseline API model.",
            ["route", "backend", "model"],
            registry=r,
        )
        self.estimated_usage = Counter(
            "crossover_estimated_usage_requests",
            "Requests whose usage was estimated locally (none came upstream).",
            ["route", "backend"],
            registry=r,
        )
        self.inter_token = Histogram(
            "crossover_inter_token_latency_seconds",
            "Mean time between streamed chunks, one sample per stream.",
            ["route", "backend"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.gpu_idle_cost = Counter(
            "crossover_gpu_idle_cost_usd",
            "GPU cost of self-hosted backends while no request was running.",
            ["backend"],
            registry=r,
        )
        self.gpu_cost_rate = Gauge(
            "crossover_gpu_cost_usd_per_hour",
            "Configured GPU cost of a self-hosted backend.",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.backend_waiting = Gauge(
            "crossover_backend_requests_waiting",
            "Requests queued in a vLLM backend (its vllm:num_requests_waiting).",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.backend_running = Gauge(
            "crossover_backend_requests_running",
            "Requests running in a vLLM backend (vllm:num_requests_running).",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.backend_kv_cache = Gauge(
            "crossover_backend_kv_cache_usage_ratio",
            "KV-cache use of a vLLM backend, 0-1 (vllm:kv_cache_usage_perc).",
            ["backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # Per replica of a backend with `replicas` (gateway/replicas.py); labels bounded by the config.
        self.replica_up = Gauge(
            "crossover_replica_up",
            "1 while a backend replica's health probe passes, else 0.",
            ["backend", "replica"],
            registry=r,
            multiprocess_mode="livemin",  # down in any worker's eyes shows
        )
        self.replica_in_flight = Gauge(
            "crossover_replica_in_flight",
            "Requests the gateway had running on a backend replica at its last health probe.",
            ["backend", "replica"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.replica_waiting = Gauge(
            "crossover_replica_requests_waiting",
            "Requests queued in a vLLM replica (its vllm:num_requests_waiting).",
            ["backend", "replica"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.replica_running = Gauge(
            "crossover_replica_requests_running",
            "Requests running in a vLLM replica (vllm:num_requests_running).",
            ["backend", "replica"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.replica_kv_cache = Gauge(
            "crossover_replica_kv_cache_usage_ratio",
            "KV-cache use of a vLLM replica, 0-1 (vllm:kv_cache_usage_perc).",
            ["backend", "replica"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.pool_wait = Counter(
            "crossover_upstream_pool_wait_seconds",
            "Time requests waited for a free connection of a backend's pool (max_connections).",
            ["backend"],
            registry=r,
        )
        self.pool_queued = Gauge(
            "crossover_upstream_pool_queued",
            "Requests waiting now for a free connection of a backend's pool (read every 5 s).",
            ["backend"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.start_time = Gauge(
            "crossover_start_time_seconds",
            "When the gateway started (Unix time): what its counters cover.",
            registry=r,
            multiprocess_mode="min",
        )
        self.start_time.set(time.time())
        self.shadow_judged = Counter(
            "crossover_shadow_judged",
            "Shadow-judged requests, by the combined verdict and the score's tenth (0.0-0.9, or none).",
            ["router", "verdict", "score_bucket"],
            registry=r,
        )
        self.shadow_cost = Counter(
            "crossover_shadow_cost_usd",
            "What shadow judging spent: the other target's answers and the judge's calls.",
            ["router"],
            registry=r,
        )
        self.shadow_errors = Counter(
            "crossover_shadow_errors",
            "Shadow jobs that ended without an outcome, by what failed.",
            ["router", "kind"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "crossover_shadow_skipped",
            "Sampled requests not shadowed: the day's budget was spent, or max_concurrent jobs ran.",
            ["router", "reason"],
            registry=r,
        )
        self.redis_up = Gauge(
            "crossover_redis_up",
            "1 while shared state in Redis is reachable, 0 while the gateway keeps it locally instead.",
            registry=r,
            multiprocess_mode="livemin",  # any worker cut off from Redis shows
        )
        self.redis_errors = Counter(
            "crossover_redis_errors",
            "Redis calls that failed (each answered from local state instead).",
            registry=r,
        )
        self.policy_enforced = Counter(
            "crossover_policy_enforced",
            "Requests a data policy changed or refused: what it did (route, fallback, shadow, model).",
            ["policy", "what"],
            registry=r,
        )
        # Teams are entries of the keys store, made by an operator: a bounded label set.
        self.team_requests = Counter(
            "crossover_team_requests",
            "Requests by the team of the key that sent them.",
            ["team", "status_class"],
            registry=r,
        )
        self.team_cost = Counter(
            "crossover_team_cost_usd",
            "Cost of a team's requests (API tokens and self-hosted GPU time).",
            ["team"],
            registry=r,
        )
        self.team_baseline_cost = Counter(
            "crossover_team_baseline_cost_usd",
            "What a team's requests would have cost on the baseline API model alone.",
            ["team"],
            registry=r,
        )
        self.request_log_rows = Counter(
            "crossover_request_log_rows",
            "Request log rows, by what became of them (written, dropped: queue full, failed: store error).",
            ["result"],
            registry=r,
        )
        self.limit_checks = Counter(
            "crossover_limit_checks",
            "Rate-limit and budget checks of keys and teams: allowed, limited, or unchecked while Redis"
            " was down (open: admitted, closed: refused).",
            ["kind", "result"],
            registry=r,
        )
        self.config_reloads = Counter(
            "crossover_config_reloads",
            "Config reload attempts, by result.",
            ["result"],
            registry=r,
        )

    def at(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: the labels are config names and small fixed sets, so
        the cache stays small, and the hot path skips prometheus_client's per-call label checks."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def fold(self) -> None:
        """Add the buffered writes into the metrics: before a reading, and every `FOLD_SECONDS`."""
        self.buffer.fold(self.at)
        self.in_flight.set(self.buffer.in_flight)

    def render(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            self.fold()  # the other workers' values are at most FOLD_SECONDS old (the app's tick)
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)
