"""Holding a target API share online: the threshold follows the recent scores.

Over the last `window` routed requests, the threshold is the score above which the target share of
them would have gone to the API, counting the requests rules and the route header already sent there
(and those they kept local). It is a quantile of recent scores, as `crossover calibrate` computes
offline, recomputed on every request in O(window) memory moves: a few microseconds for 1,000.
Until `warmup` requests have been seen, the configured threshold holds.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Sequence

# (score, False) for a scored request, (None, True/False) for one a rule or the route header pinned to
# the API or kept local.
Entry = tuple[float | None, bool]


def threshold_for(ordered: Sequence[float], api_count: int) -> float:
    """The threshold (the decision is score >= threshold) that sends as close to `api_count` of these
    ascending scores to the API as ties allow: a run of equal scores goes one way, so the threshold is
    either the tied score or the next score above it, whichever lands nearer (fewer on a draw).
    0 sends all; a value above every score sends none."""
    n = len(ordered)
    if api_count >= n:
        return 0.0
    top = ordered[-1] if ordered else 0.0
    above_all = 1.0 if top < 1.0 else math.nextafter(top, math.inf)
    if api_count <= 0:
        return above_all
    tied = ordered[n - api_count]
    with_ties = n - bisect.bisect_left(ordered, tied)  # sent when the tied score is the threshold
    first_above = bisect.bisect_right(ordered, tied)
    without = n - first_above  # sent when the next distinct score is
    if with_ties - api_count < api_count - without:
        return tied
    return ordered[first_above] if first_above < n else above_all


def share_threshold(scores: Sequence[float], total: int, pinned_api: int, share: float) -> float:
    """The threshold that sends `share` of `total` requests to the API, counting the `pinned_api` that
    rules or the route header already sent there; `scores` (ascending) are the rest's."""
    return threshold_for(scores, round(share * total) - pinned_api)


class OnlineThreshold:
    def __init__(self, target_api_share: float, window: int, initial: float, warmup: int = 100) -> None:
        self.target = target_api_share
        self.window = window
        self.warmup = min(warmup, window)
        self.threshold = initial
        self._recent: deque[Entry] = deque()
        self._scores: list[float] = []  # the window's scores, ascending
        self._pinned_api = 0
        # Set while the window shared by every gateway holds the threshold (gateway/shared_window.py):
        # requests wait here, with the time they were seen, for the next sync instead of moving this
        # process's threshold alone.
        self.outbox: list[tuple[float, float | None, bool]] | None = None

    def observe(self, score: float) -> None:
        """A request the score decided."""
        if self.outbox is not None:
            self.outbox.append((time.time(), score, False))
            return
        self._push(score, False)
        bisect.insort(self._scores, score)
        self._update()

    def observe_pinned(self, route: str) -> None:
        """A request a rule or the route header decided: it counts towards the share all the same."""
        to_api = route == "api"
        if self.outbox is not None:
            self.outbox.append((time.time(), None, to_api))
            return
        self._push(None, to_api)
        self._pinned_api += to_api
        self._update()

    def _push(self, score: float | None, to_api: bool) -> None:
        if len(self._recent) == self.window:
            old, old_api = self._recent.popleft()
            if old is None:
                self._pinned_api -= old_api
            else:
                del self._scores[bisect.bisect_left(self._scores, old)]
        self._recent.append((score, to_api))

    def _update(self) -> None:
        if len(self._recent) < self.warmup or not self._scores:
            return
        self.threshold = share_threshold(self._scores, len(self._recent), self._pinned_api, self.target)

    def carry_over(self, previous: OnlineThreshold) -> None:
        """Start from another window's most recent requests (a config reload keeps the history)."""
        self.adopt(list(previous._recent))

    def latest(self, count: int) -> list[Entry]:
        """The last `count` requests seen (fewer if the window holds fewer), oldest first."""
        count = min(count, len(self._recent))
        return list(itertools.islice(reversed(self._recent), count))[::-1]

    def adopt(self, entries: Sequence[Entry]) -> None:
        """Hold these requests (oldest first) as the window: a reload's history, or the window shared
        by every gateway (gateway/shared_window.py). Rebuilt in one sort, not replayed, so a large
        window does not stall the caller."""
        self._recent = deque(entries[len(entries) - min(self.window, len(entries)) :])
        self._scores = sorted(score for score, _ in self._recent if score is not None)
        self._pinned_api = sum(to_api for score, to_api in self._recent if score is None)
        self._update()
