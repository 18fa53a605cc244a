"""Which replica of a backend takes a request: the least loaded, or by prefix affinity with bounded load.

Pure: everything a choice depends on is in the `Load` of each replica; no I/O, no clocks. A replica's
load is this process's requests in flight there, plus the requests vLLM reported beyond ours at the last
scrape (other workers' and other gateways'), with the KV-cache use (0-1) as a tie-breaker smaller
than one request.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

RING_POINTS = 64  # points per replica on the hash ring: spreads keys within a few % with 2-8 replicas


@dataclass(slots=True)
class Load:
    """One replica's state, as the gateway knows it."""

    in_flight: int = 0  # this process's requests there now
    up: bool = True  # its health probe (or a refused connection) said so
    waiting: float = 0.0  # vllm:num_requests_waiting at the last scrape
    running: float = 0.0  # vllm:num_requests_running at the last scrape
    kv_cache: float = 0.0  # vllm:kv_cache_usage_perc at the last scrape, 0-1
    ours_at_scrape: int = 0  # our in-flight count when it was scraped: what of its queue was ours

    @property
    def score(self) -> float:
        others = max(self.waiting + self.running - self.ours_at_scrape, 0.0)
        return self.in_flight + others + self.kv_cache


def candidates(loads: Sequence[Load], avoid: frozenset[int] = frozenset()) -> list[int]:
    """Replicas worth trying: live ones not tried yet; else live ones; else all (a probe can be wrong
    or stale, and a request tried somewhere beats one refused)."""
    live = [i for i, load in enumerate(loads) if load.up]
    fresh = [i for i in live if i not in avoid]
    return fresh or live or [i for i in range(len(loads)) if i not in avoid] or list(range(len(loads)))


def least_loaded(loads: Sequence[Load], among: Sequence[int], turn: int) -> int:
    """The lowest score among `among`; ties go round-robin by `turn`, so even sequential traffic
    (every replica idle at each arrival) spreads out."""
    best = min(loads[i].score for i in among)
    tied = [i for i in among if loads[i].score <= best]
    return tied[turn % len(tied)]


class Ring:
    """A consistent-hash ring over replica labels: a key maps to the same replica while the set of
    replicas is unchanged, and only the keys of a removed replica move."""

    __slots__ = ("_owners", "_points")

    def __init__(self, labels: Sequence[str], points: int = RING_POINTS) -> None:
        placed = sorted((_hash(f"{label}#{n}"), i) for i, label in enumerate(labels) for n in range(points))
        self._points = [p for p, _ in placed]
        self._owners = [i for _, i in placed]

    def walk(self, key: int) -> list[int]:
        """Replica indexes in ring order from `key`, each once."""
        start = bisect.bisect_left(self._points, key)
        seen: list[int] = []
        n = len(self._owners)
        for step in range(n):
            owner = self._owners[(start + step) % n]
            if owner not in seen:
                seen.append(owner)
        return seen


def by_affinity(
    ring: Ring, key: int, loads: Sequence[Load], among: Sequence[int], max_load: float, turn: int
) -> int:
    """The key's replica on the ring, unless it carries more than `max_load` x the mean load (consistent
    hashing with bounded load): then the next one on the ring that does not."""
    allowed = set(among)
    total = sum(loads[i].score for i in among)
    capacity = math.ceil(max_load * (total + 1) / len(among))
    for i in ring.walk(key):
        if i in allowed and loads[i].score + 1 <= capacity:
            return i
    return least_loaded(loads, among, turn)


def prefix_key(body: dict[str, Any], chars: int) -> int | None:
    """A hash of the first `chars` characters of a request's conversation (roles and texts, in order,
    after Anthropic's top-level `system` or a Responses request's `instructions`; a Responses `input`
    as its items), or of its prompt; None when it has neither. Requests that share this prefix share
    vLLM's prefix cache on one replica."""
    messages = body.get("messages", body.get("input"))
    if isinstance(messages, str):  # a Responses input: one user message
        messages = [{"role": "user", "content": messages}]
    system = _text(body.get("system", body.get("instructions")))
    parts: list[str] = [f"system\x1f{system}\x1e"] if system else []
    size = len(parts[0]) if parts else 0
    if isinstance(messages, list):
        for message in messages:
            if size >= chars or not isinstance(message, dict):
                break
            text = f"{message.get('role')}\x1f{_text(message.get('content'))}\x1e"
            parts.append(text)
            size += len(text)
    elif isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
    if not parts:
        return None
    return _hash("".join(parts)[:chars])


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _hash(text: str) -> int:
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def saturated(load: Load, waiting_over: int | None, kv_cache_over: float | None) -> bool:
    """Is this replica's own queue (or KV cache) past the `spill_when` limits?"""
    return (waiting_over is not None and load.waiting > waiting_over) or (
        kv_cache_over is not None and load.kv_cache > kv_cache_over
    )
