"""Tokens → US dollars, from the configured per-model prices."""

from __future__ import annotations

from gateway.config import Price
from providers.base import Usage


def cost_usd(usage: Usage, price: Price) -> float:
    """Cached input tokens are billed at the cached rate, never twice."""
    uncached = max(usage.input - usage.cached, 0)
    return uncached * price.input + usage.cached * price.cached_input + usage.output * price.output
