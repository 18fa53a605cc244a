"""The per-request metric writes, held in plain Python and added into prometheus_client in bulk.

A request writes about a dozen metric children (decision, classifier time and score, request, latency,
overhead, tokens, cost, in flight +1/-1, a team's counters). Through prometheus_client each write takes a
lock (an mmap write with several workers) and checks its metric: ~11 us per request, 21 us in
multiprocess mode; here a write is a dict update, ~4 us per request in both (bench/recorder_cpu.py,
cost computation included). `fold` adds what accumulated to the children: counters by their sums,
histograms by their bucket counts and sum, the in-flight gauge set to the count. `Metrics` folds before
every reading of its registry (`FoldFirst` is the registry's first collector) and before every render,
and the app folds every `FOLD_SECONDS` and at shutdown, so other workers' renders see this one's values
at most that old (gateway/metrics.py).

Writes and folds run on the event loop's thread: a fold swaps the dicts out, so a write from another
thread at that instant could be lost.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric

FOLD_SECONDS = 1.0  # the staleness bound of a worker's values in another worker's render

Key = tuple[Any, tuple[str, ...]]  # (the metric, its label values)


class MetricBuffer:
    def __init__(self) -> None:
        self.counts: dict[Key, float] = {}
        # per (histogram, labels): the count of each bucket (its own, not cumulative), then the sum
        self.observed: dict[Key, list[float]] = {}
        self.in_flight = 0  # the gauge's value: kept here, set at each fold
        self._bounds: dict[Any, list[float]] = {}

    def count(self, metric: Any, labels: tuple[str, ...], amount: float = 1.0) -> None:
        key = (metric, labels)
        counts = self.counts
        counts[key] = counts.get(key, 0.0) + amount

    def observe(self, metric: Histogram, labels: tuple[str, ...], value: float) -> None:
        key = (metric, labels)
        pending = self.observed.get(key)
        if pending is None:
            bounds = self._bounds.get(metric)
            if bounds is None:
                bounds = self._bounds[metric] = _upper_bounds(metric)
            pending = self.observed[key] = [0.0] * (len(bounds) + 1)
        else:
            bounds = self._bounds[metric]
        # prometheus_client's own rule: the first bucket whose upper bound is >= the value (+Inf last)
        pending[bisect_left(bounds, value)] += 1
        pending[-1] += value

    def fold(self, at: Callable[..., Any]) -> None:
        """Add what accumulated to the children (`at(metric, *labels)`: Metrics.at) and start afresh."""
        counts, self.counts = self.counts, {}
        observed, self.observed = self.observed, {}
        for (metric, labels), amount in counts.items():
            at(metric, *labels).inc(amount)
        for (metric, labels), pending in observed.items():
            _add_observations(at(metric, *labels), pending)


class FoldFirst:
    """A registry's first collector, which yields nothing: it folds before the metrics are read, so every
    reading of the registry (a render, `get_sample_value`, the dashboard) is exact."""

    def __init__(self, fold: Callable[[], None]) -> None:
        self._fold = fold

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        self._fold()
        return ()


# prometheus_client has no public way to add many observations to a histogram at once; these private
# attributes are pinned by tests/test_metric_buffer.py, which fails if a release changes them.
def _upper_bounds(metric: Histogram) -> list[float]:
    bounds: list[float] = metric._upper_bounds
    return bounds


def _add_observations(child: Histogram, pending: list[float]) -> None:
    buckets = child._buckets
    for i in range(len(buckets)):
        if pending[i]:
            buckets[i].inc(pending[i])
    child._sum.inc(pending[-1])
