"""The figures behind `GET /dashboard`, computed from the gateway's own Prometheus metrics.

Pure functions, no HTTP: `snapshot` reads cumulative values (from a registry, or from the text that
`Metrics.render()` returns, which merges the workers in multiprocess mode) and sums them by the few
labels the dashboard shows; a `History` keeps timestamped snapshots so that `summary` can give the
last hour as the difference between now and the oldest snapshot within the hour, and the totals
since start as the values themselves. Quantiles come from histogram buckets as Prometheus'
`histogram_quantile` computes them (linear interpolation within a bucket).

Only aggregates leave this module: route (local, api, direct), status class, token kind, and the
team (a name of the keys store, never a key).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.exposition import Key, read_totals
from gateway.quality import retained
from gateway.routing import PATHS

HOUR = 3600.0
SNAPSHOT_INTERVAL = 30.0  # seconds between kept snapshots
HISTORY_SECONDS = 65 * 60.0  # a little more than the hour, so the hour stays covered

# sample name -> (short name, labels kept, in this order); every other label is summed over.
_SAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "crossover_requests_total": ("requests", ("route", "status_class")),
    "crossover_cost_usd_total": ("cost", ("route",)),
    "crossover_baseline_cost_usd_total": ("baseline", ("route",)),
    "crossover_gpu_idle_cost_usd_total": ("gpu_idle", ()),
    "crossover_tokens_total": ("tokens", ("route", "kind")),
    "crossover_fallbacks_total": ("fallbacks", ()),
    "crossover_request_duration_seconds_bucket": ("latency", ("route", "le")),
    "crossover_time_to_first_token_seconds_bucket": ("ttft", ("route", "le")),
    "crossover_shadow_judged_total": ("judged", ("verdict", "score_bucket")),
    "crossover_shadow_cost_usd_total": ("shadow_cost", ()),
    "crossover_team_requests_total": ("team_requests", ("team", "status_class")),
    "crossover_team_cost_usd_total": ("team_cost", ("team",)),
    "crossover_team_baseline_cost_usd_total": ("team_baseline", ("team",)),
}


@dataclass(frozen=True)
class Snapshot:
    """Cumulative values at time `at` (seconds on any clock the History also uses), keyed by
    (short name, *kept label values), e.g. ("requests", "local", "2xx") or ("latency", "api", "0.5").
    `present` names the metrics that had at least one sample."""

    at: float
    values: Mapping[Key, float] = field(default_factory=dict)
    present: frozenset[str] = frozenset()

    def total(self, name: str, **match: str) -> float:
        """Sum of the values of `name` whose kept labels equal `match` (label names as in _SAMPLES)."""
        labels = _labels_of(name)
        wanted = [(labels.index(k), v) for k, v in match.items()]
        return sum(
            v for k, v in self.values.items() if k[0] == name and all(k[1 + i] == x for i, x in wanted)
        )

    def routes(self) -> list[str]:
        seen = {k[1] for k in self.values if k[0] in ("requests", "cost", "latency")}
        return [*PATHS, *sorted(seen - set(PATHS))]

    def buckets(self, name: str, route: str) -> list[tuple[float, float]]:
        """The cumulative buckets of histogram `name` for `route`, as (upper bound, count)."""
        return [(float(k[2]), v) for k, v in self.values.items() if k[0] == name and k[1] == route]


def _labels_of(name: str) -> tuple[str, ...]:
    for short, labels in _SAMPLES.values():
        if short == name:
            return labels
    raise KeyError(name)


def snapshot(source: CollectorRegistry | str | bytes, at: float) -> Snapshot:
    """Read the metrics the dashboard needs. Metrics that are absent (not declared yet, or no
    sample yet) count as 0."""
    values, present = read_totals(source, _SAMPLES)
    return Snapshot(at, values, present)


def delta(now: Snapshot, then: Snapshot) -> Snapshot:
    """What happened between two snapshots. A value that went down was reset (a restarted worker):
    its whole current value is the increase, as in Prometheus' `increase`."""
    values = {}
    for key, value in now.values.items():
        before = then.values.get(key, 0.0)
        values[key] = value - before if value >= before else value
    return Snapshot(now.at, values, now.present)


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative buckets (upper bound, count), as Prometheus' histogram_quantile:
    linear interpolation within the bucket holding the rank, 0 as the lower bound of the first bucket
    (when its bound is positive), and the highest finite bound when the rank falls in +Inf. None where
    Prometheus gives NaN: no observations, no +Inf bucket, fewer than two buckets."""
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[bound] = merged.get(bound, 0.0) + count  # same bound twice: added, as Prometheus does
    ordered = sorted(merged.items())
    if not ordered or ordered[-1][0] != math.inf:
        return None
    bounds = [b for b, _ in ordered]
    counts = [c for _, c in ordered]
    for i in range(1, len(counts)):  # buckets are cumulative: force them to be monotonic
        counts[i] = max(counts[i], counts[i - 1])
    if len(counts) < 2:
        return None
    observations = counts[-1]
    if observations == 0:
        return None
    rank = q * observations
    b = next((i for i in range(len(counts) - 1) if counts[i] >= rank), len(counts) - 1)
    if b == len(counts) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count == 0:  # only for rank 0 in an empty first bucket: 0/0, NaN in Prometheus too
        return None
    return start + (end - start) * (rank / count)


class History:
    """Snapshots at least `interval` seconds apart, none older than `keep` seconds.

    `started` is when the gateway started (on the snapshots' clock): its counters were all 0 then.
    """

    def __init__(
        self, started: float, *, interval: float = SNAPSHOT_INTERVAL, keep: float = HISTORY_SECONDS
    ) -> None:
        self.started = started
        self.interval = interval
        self.keep = keep
        self._snapshots: deque[Snapshot] = deque()

    def __len__(self) -> int:
        return len(self._snapshots)

    def record(self, snap: Snapshot) -> bool:
        """Keep `snap` if the last kept one is at least `interval` old; drop those older than `keep`."""
        kept = not self._snapshots or snap.at - self._snapshots[-1].at >= self.interval
        if kept:
            self._snapshots.append(snap)
        while self._snapshots and self._snapshots[0].at < snap.at - self.keep:
            self._snapshots.popleft()
        return kept

    def oldest_within(self, now: float, window: float = HOUR) -> Snapshot | None:
        return next((s for s in self._snapshots if now - window <= s.at <= now), None)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def figures(d: Snapshot) -> dict[str, Any]:
    """The dashboard's numbers for one increase (or for cumulative values: the totals)."""
    requests = d.total("requests")
    errors = sum(v for k, v in d.values.items() if k[0] == "requests" and k[2][:1] in ("4", "5"))
    request_cost = d.total("cost")
    gpu_idle = d.total("gpu_idle")
    actual = request_cost + gpu_idle
    baseline = d.total("baseline")
    routes = {}
    for route in d.routes():
        count = d.total("requests", route=route)
        routes[route] = {
            "requests": count,
            "share": _ratio(count, requests),
            "errors": sum(
                v for k, v in d.values.items() if k[:2] == ("requests", route) and k[2][:1] in ("4", "5")
            ),
            "cost_usd": d.total("cost", route=route),
            "baseline_cost_usd": d.total("baseline", route=route),
            "input_tokens": d.total("tokens", route=route, kind="input"),
            "output_tokens": d.total("tokens", route=route, kind="output"),
            "latency_p50_seconds": histogram_quantile(0.5, d.buckets("latency", route)),
            "latency_p95_seconds": histogram_quantile(0.95, d.buckets("latency", route)),
            "ttft_p50_seconds": histogram_quantile(0.5, d.buckets("ttft", route)),
        }
    savings = baseline - actual
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": _ratio(errors, requests),
        "fallbacks": d.total("fallbacks"),
        "request_cost_usd": request_cost,
        "gpu_idle_cost_usd": gpu_idle,
        "actual_cost_usd": actual,
        "baseline_cost_usd": baseline,
        "savings_usd": savings,
        "savings_ratio": _ratio(savings, baseline),
        "cost_per_request_usd": _ratio(actual, requests),
        "input_tokens": d.total("tokens", kind="input"),
        "output_tokens": d.total("tokens", kind="output"),
        "routes": routes,
        "teams": teams(d),
        "quality": quality(d),
    }


def teams(d: Snapshot) -> dict[str, dict[str, Any]]:
    """Per team of the keys store: its requests' cost (API tokens and GPU time while busy; idle GPU
    time is nobody's), what they would have cost on the API alone, and the difference."""
    names = sorted({k[1] for k in d.values if k[0] in ("team_requests", "team_cost")})
    out = {}
    for name in names:
        cost, baseline = d.total("team_cost", team=name), d.total("team_baseline", team=name)
        out[name] = {
            "requests": d.total("team_requests", team=name),
            "errors": sum(
                v for k, v in d.values.items() if k[:2] == ("team_requests", name) and k[2][:1] in ("4", "5")
            ),
            "cost_usd": cost,
            "baseline_cost_usd": baseline,
            "savings_usd": baseline - cost,
            "savings_ratio": _ratio(baseline - cost, baseline),
        }
    return out


def quality(d: Snapshot) -> dict[str, Any]:
    """Quality retained: the share of local answers shadow judging found at least as good as the API's
    (gateway/quality.py), overall with its 95% interval, and by the score's tenth."""

    def of(bucket: str | None) -> dict[str, Any]:
        found = [(k[1], v) for k, v in d.values.items() if k[0] == "judged" and bucket in (None, k[2])]
        r = retained(found)
        return {"judged": r.judged, "retained": r.retained, "share": r.share, "interval": r.interval}

    buckets = sorted({k[2] for k in d.values if k[0] == "judged"})
    return {**of(None), "shadow_cost_usd": d.total("shadow_cost"), "by_score": {b: of(b) for b in buckets}}


def summary(now: Snapshot, history: History, *, window: float = HOUR) -> dict[str, Any]:
    """Figures for the last hour and since start. The hour is the difference between `now` and the
    oldest snapshot in `history` within the hour; while the gateway is younger than `window`, it is
    everything since start. If the history does not reach back (kept only while the dashboard is
    asked), the window is what it covers, and `window.kind` says "partial"."""
    uptime = max(now.at - history.started, 0.0)
    if uptime <= window:
        kind, since = "since_start", Snapshot(history.started)
    else:
        oldest = history.oldest_within(now.at, window)
        since = oldest if oldest is not None else now
        covered = now.at - since.at
        kind = "hour" if covered >= window - 2 * history.interval else "partial"
    return {
        "window": {"kind": kind, "seconds": now.at - since.at, "target_seconds": window},
        "uptime_seconds": uptime,
        "baseline_available": "baseline" in now.present,
        "last_hour": figures(delta(now, since)),
        "since_start": figures(now),
    }
