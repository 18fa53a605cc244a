"""Tokens → US dollars, from the configured per-model prices."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.config import Price
from providers.base import Usage


def cost_usd(usage: Usage, price: Price) -> float:
    """Cached input tokens are billed at the cached rate, never twice."""
    uncached = max(usage.input - usage.cached, 0)
    return uncached * price.input + usage.cached * price.cached_input + usage.output * price.output


class BackendMeter:
    """Counts this worker's requests running on one backend (spill-over reads it) and, for a
    self-hosted deployment, amortises its GPU cost over them by busy-time share.

    At every instant the deployment's cost rate is split evenly among the requests running on it; while
    none runs, the cost accrues as idle (reported, not hidden). One integral per backend keeps it O(1):
    `share(t)` = ∫ rate / running(t) dt, and a request costs share(end) - share(start).
    With N workers each worker meters its own requests at 1/N of the rate, so the totals add up; two
    gateway processes without Redis each meter the whole rate (gateway/shared_meter.py meters once).
    The rate is per live replica of the deployment: `replicas` multiplies it.
    """

    def __init__(self, usd_per_hour: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.usd_per_hour = usd_per_hour
        self.replicas = 1
        self._clock = clock
        self._running = 0
        self._share = 0.0
        self._idle = 0.0
        self._last = clock()

    def _advance(self) -> None:
        now = self._clock()
        cost = self.usd_per_hour * self.replicas / 3600 * (now - self._last)
        self._last = now
        if self._running:
            self._share += cost / self._running
        else:
            self._idle += cost

    @property
    def running(self) -> int:
        return self._running

    def start(self) -> float:
        """A request begins using the deployment; returns its mark."""
        self._advance()
        self._running += 1
        return self._share

    def stop(self, mark: float) -> float:
        """The request with this mark is done; returns its share of the GPU cost in USD."""
        self._advance()
        self._running -= 1
        return self._share - mark

    def take_idle(self) -> float:
        """Idle cost accrued since the last call."""
        self._advance()
        idle, self._idle = self._idle, 0.0
        return idle
