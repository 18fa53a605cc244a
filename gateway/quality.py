"""Quality from judged outcomes, as pure functions: the share of local answers retained (judged at least
as good as the API's) with its Wilson interval, and the threshold that keeps a quality target.

The model behind the threshold: each judged request stands for one the router may send either way.
Sent to the API, its answer is the API's (quality 1, relative to all-API); sent local, it keeps the
API's quality when the judge found the local answer at least as good (RETAINED), else it loses it.
The estimated quality of all answers at a threshold is then the share of requests whose answer would
be retained, and it can only fall as the threshold rises (more requests local), as the API's share does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RETAINED = frozenset({"local_better", "tie"})  # "both_bad" is not: the local answer was not good
Z95 = 1.959963984540054


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) without observations."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


@dataclass(frozen=True, slots=True)
class Retained:
    judged: float
    retained: float

    @property
    def share(self) -> float | None:
        return self.retained / self.judged if self.judged else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.retained, self.judged) if self.judged else None


def retained(verdict_counts: Iterable[tuple[str, float]]) -> Retained:
    """From (verdict, count) pairs: how many were judged, and how many kept the API's quality."""
    judged = kept = 0.0
    for verdict, count in verdict_counts:
        judged += count
        kept += count if verdict in RETAINED else 0.0
    return Retained(judged, kept)


@dataclass(frozen=True, slots=True)
class Choice:
    threshold: float
    api_share: float  # of the judged requests, sent to the API at this threshold
    api_spend_share: float  # of what sending them all to the API cost
    quality: float  # estimated, relative to all-API
    interval: tuple[float, float]  # 95% Wilson interval of `quality`
    n: int


def quality_threshold(
    outcomes: Sequence[tuple[float, bool, float]], target: float, *, sure: bool = False
) -> Choice | None:
    """The highest threshold (least API traffic and spend) whose estimated quality is ≥ `target`, from
    (score, local answer retained, API answer's cost) per judged request; with `sure`, whose 95% lower
    bound is. None without outcomes, or when not even all-API is sure enough.
    Candidates are the scores seen and 1.0 (everything local)."""
    if not outcomes:
        return None
    n = len(outcomes)
    total_spend = sum(cost for _, _, cost in outcomes)
    best: Choice | None = None
    for threshold in sorted({score for score, _, _ in outcomes} | {1.0}):
        to_api = [o for o in outcomes if o[0] >= threshold]
        kept = len(to_api) + sum(1 for score, ok, _ in outcomes if score < threshold and ok)
        if (wilson(kept, n)[0] if sure else kept / n) < target:
            break  # quality only falls from here on
        spend = sum(cost for _, _, cost in to_api)
        best = Choice(
            threshold=threshold,
            api_share=len(to_api) / n,
            api_spend_share=spend / total_spend if total_spend else len(to_api) / n,
            quality=kept / n,
            interval=wilson(kept, n),
            n=n,
        )
    return best
