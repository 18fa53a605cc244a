"""A circuit breaker per backend: stop calling a backend that keeps failing, and try it again later.

After `failures` retryable failures in a row (connection refused, timeout, 429, 5xx), the circuit
opens: calls to the backend are refused at once for `cooldown` seconds, so a router request goes
straight to its other target instead of waiting on a dead one first. Then one trial call is let through
per cooldown: a success closes the circuit, a failure keeps it open. A trial that never reports (its
client left) simply leaves the next trial to the next cooldown. Each worker keeps its own circuits,
unless Redis is configured (gateway/shared_breaker.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._streak = 0
        self._opened_at: float | None = None  # None while closed

    @property
    def open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """May a call go now? While open, yes once per cooldown (the trial)."""
        if self._opened_at is None:
            return True
        now = self._clock()
        if now - self._opened_at < self.cooldown:
            return False
        self._opened_at = now  # this call is the trial; the next one waits another cooldown
        return True

    def retry_after(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(self.cooldown - (self._clock() - self._opened_at), 0.0)

    def carry_over(self, other: CircuitBreaker) -> None:
        """Start from another breaker's state (a reload that turned sharing through Redis on or off)."""
        self._streak, self._opened_at = other._streak, other._opened_at

    def record(self, ok: bool) -> None:
        """The outcome of an allowed call: ok when the backend answered (even with a 4xx)."""
        if ok:
            self._streak = 0
            self._opened_at = None
            return
        self._streak += 1
        if self._streak >= self.failures:
            self._opened_at = self._clock()
