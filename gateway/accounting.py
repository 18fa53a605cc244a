"""Tokens → US dollars, from the configured per-model prices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config import Price


@dataclass(frozen=True, slots=True)
class Usage:
    input: int  # prompt tokens, cached ones included (OpenAI's `prompt_tokens`)
    output: int
    cached: int = 0


def usage_from(body: Mapping[str, Any]) -> Usage | None:
    """OpenAI's `usage` object, from a response or a stream's final chunk."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return Usage(
        input=prompt if isinstance(prompt, int) else 0,
        output=completion if isinstance(completion, int) else 0,
        cached=cached if isinstance(cached, int) else 0,
    )


def cost_usd(usage: Usage, price: Price) -> float:
    """Cached input tokens are billed at the cached rate, never twice."""
    uncached = max(usage.input - usage.cached, 0)
    return uncached * price.input + usage.cached * price.cached_input + usage.output * price.output
