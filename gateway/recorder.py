"""Every write to the metrics, in one place: the request path and the housekeeping call these
methods with plain values, and only this module knows metric names and label orders."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.accounting import cost_usd
from gateway.config import ModelEntry, Price
from gateway.errors import error_code
from gateway.metrics import Metrics
from gateway.routing import Decision
from providers.base import UpstreamError, Usage

log = logging.getLogger("crossover")


@dataclass(slots=True)  # not frozen: built per request, and a frozen __init__ showed in profiles
class Outcome:
    """What one answered request comes to, for the metrics."""

    decision: Decision
    backend: str
    model: ModelEntry
    stream: bool
    status_class: str  # "2xx", "4xx", "5xx" or "cancelled"
    seconds: float  # the whole request, as the client saw it
    overhead: float  # of which the gateway's own time
    usage: Usage | None
    gpu_usd: float  # the request's share of a self-hosted backend's GPU time
    first_token: float | None = None  # seconds from arrival
    inter_token: float | None = None  # mean gap between streamed events
    usage_estimated: bool = False
    baseline: Price | None = None  # what it would have cost on the API model alone
    key_id: str | None = None  # the key's id (gateway/principal.py), never its text
    team: str | None = None


class Recorder:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # What every request writes goes through the buffer (gateway/metric_buffer.py): ~1/5 the CPU.
        self.buffer = metrics.buffer

    def decided(self, router: str, decision: Decision, seconds: float | None) -> None:
        """A router decision; `seconds` when the classifier was asked (its time, rules included)."""
        m, b = self.metrics, self.buffer
        b.count(m.decisions, (router, decision.route, decision.reason))
        if decision.rule is not None:
            b.count(m.rule_matches, (router, decision.rule))
        if seconds is not None and decision.score is not None:
            b.observe(m.classifier_seconds, (router,), seconds)
            b.observe(m.score, (router,), decision.score)

    # ---- the gateway's own state ----

    def serving(self, delta: int) -> None:
        """A request began (+1) or ended (-1)."""
        self.buffer.in_flight += delta

    def reloaded(self, applied: bool) -> None:
        self.metrics.at(self.metrics.config_reloads, "applied" if applied else "rejected").inc()

    def gpu_rate(self, backend: str, usd_per_hour: float) -> None:
        self.metrics.at(self.metrics.gpu_cost_rate, backend).set(usd_per_hour)

    def gpu_idle(self, backend: str, usd: float) -> None:
        self.metrics.at(self.metrics.gpu_idle_cost, backend).inc(usd)

    def pool(self, backend: str, waited: float, queued: int) -> None:
        """Waits for a free pooled connection since the last reading, and how many wait now."""
        self.metrics.at(self.metrics.pool_wait, backend).inc(waited)
        self.metrics.at(self.metrics.pool_queued, backend).set(queued)

    def engine(self, backend: str, waiting: float, running: float, kv_cache: float) -> None:
        """A vLLM backend's own queue state, as its /metrics said."""
        m = self.metrics
        m.at(m.backend_waiting, backend).set(waiting)
        m.at(m.backend_running, backend).set(running)
        m.at(m.backend_kv_cache, backend).set(kv_cache)

    def replica_up(self, backend: str, replica: str, up: bool) -> None:
        self.metrics.at(self.metrics.replica_up, backend, replica).set(1 if up else 0)

    def replica(
        self, backend: str, replica: str, in_flight: int, waiting: float, running: float, kv_cache: float
    ) -> None:
        """A backend replica's state at its probe: ours in flight, and its engine's own queue."""
        m = self.metrics
        m.at(m.replica_in_flight, backend, replica).set(in_flight)
        m.at(m.replica_waiting, backend, replica).set(waiting)
        m.at(m.replica_running, backend, replica).set(running)
        m.at(m.replica_kv_cache, backend, replica).set(kv_cache)

    # ---- requests ----

    def threshold(self, router: str, value: float) -> None:
        self.metrics.at(self.metrics.threshold, router).set(value)

    def upstream_failed(self, backend: str, exc: UpstreamError) -> None:
        self.metrics.at(self.metrics.upstream_errors, backend, error_code(exc)).inc()

    def retried(self, backend: str) -> None:
        self.metrics.at(self.metrics.retries, backend).inc()

    def fell_back(self, backend: str, to: str) -> None:
        self.metrics.at(self.metrics.fallbacks, backend, to).inc()

    def circuit(self, backend: str, open: bool, changed: bool = True) -> None:
        self.metrics.at(self.metrics.circuit_open, backend).set(1 if open else 0)
        if changed:
            log.warning("circuit of backend %r %s", backend, "opened" if open else "closed")

    def redis(self, up: bool, failed: bool = False) -> None:
        self.metrics.redis_up.set(1 if up else 0)
        if failed:
            self.metrics.redis_errors.inc()

    def limit_checked(self, kind: str, result: str) -> None:
        """kind: "rate" or "budget"; result: "allowed", "limited", "open" or "closed"."""
        self.buffer.count(self.metrics.limit_checks, (kind, result))

    def refused(
        self, route: str, backend: str, model: str, status_class: str, gpu_usd: float, team: str | None = None
    ) -> None:
        """A request that ended in an error before any answer reached the client."""
        m, b = self.metrics, self.buffer
        b.count(m.requests, (route, backend, model, status_class))
        if gpu_usd:
            b.count(m.cost, (route, backend, model), gpu_usd)
        if team is not None:
            b.count(m.team_requests, (team, status_class))
            if gpu_usd:
                b.count(m.team_cost, (team,), gpu_usd)

    def policy_enforced(self, policy: str, what: str) -> None:
        self.metrics.at(self.metrics.policy_enforced, policy, what).inc()

    def request_log(self, result: str, rows: int) -> None:
        self.metrics.at(self.metrics.request_log_rows, result).inc(rows)

    def answered(self, o: Outcome) -> tuple[float, float | None]:
        """Records the outcome; its cost and baseline cost in USD (None: no baseline or no usage)."""
        m, b, route, backend, model = self.metrics, self.buffer, o.decision.route, o.backend, o.model.name
        stream = "true" if o.stream else "false"
        served = (route, backend, model)
        b.count(m.requests, (*served, o.status_class))
        b.observe(m.latency, (route, backend, stream), o.seconds)
        b.observe(m.overhead, (route, stream), o.overhead)
        if o.first_token is not None:
            b.observe(m.ttft, (route, backend), o.first_token)
        if o.inter_token is not None:
            b.observe(m.inter_token, (route, backend), o.inter_token)
        cost, baseline = o.gpu_usd, None
        u = o.usage
        if u is not None:
            if o.usage_estimated:
                b.count(m.estimated_usage, (route, backend))
            b.count(m.tokens, (*served, "input"), u.input)
            b.count(m.tokens, (*served, "output"), u.output)
            if u.cached:
                b.count(m.tokens, (*served, "cached"), u.cached)
            cost += cost_usd(u, o.model.price)
            if o.baseline is not None:
                baseline = cost_usd(u, o.baseline)
                b.count(m.baseline_cost, served, baseline)
        b.count(m.cost, served, cost)
        if o.team is not None:
            b.count(m.team_requests, (o.team, o.status_class))
            b.count(m.team_cost, (o.team,), cost)
            if baseline is not None:
                b.count(m.team_baseline_cost, (o.team,), baseline)
        return cost, baseline

    def shadow_judged(self, router: str, verdict: str, score: float | None) -> None:
        self.metrics.at(self.metrics.shadow_judged, router, verdict, score_bucket(score)).inc()

    def shadow_spent(self, router: str, usd: float) -> None:
        self.metrics.at(self.metrics.shadow_cost, router).inc(usd)

    def shadow_failed(self, router: str, kind: str) -> None:
        self.metrics.at(self.metrics.shadow_errors, router, kind).inc()

    def shadow_skipped(self, router: str, reason: str) -> None:
        self.metrics.at(self.metrics.shadow_skipped, router, reason).inc()


def score_bucket(score: float | None) -> str:
    """The score's tenth as a bounded label: "0.0" holds [0, 0.1), ..., "0.9" holds [0.9, 1]."""
    if score is None:
        return "none"
    return f"{min(max(int(score * 10), 0), 9) / 10:.1f}"
