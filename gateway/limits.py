"""Rate limits and budgets of a request's key and team: admit it or refuse it (429), and once it ended,
correct the estimates it was admitted with by what it really used.

Before the call, a request counts as 1 request and as its estimated tokens, as its door measures the
body: the prompt's characters / 4 plus its output cap (`max_tokens`, a Responses request's
`max_output_tokens`, none for embeddings; `limits.default_max_tokens` without one). It reserves its
estimated cost at the decided model's prices; after, its real tokens and cost (the one the metrics
count) replace them. A budget is therefore overrun only by requests in flight when it ran out, and only
by what they cost beyond their reservation. The counting itself is in gateway/limit_store.py.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from classifier import Features
from classifier.features import estimate_tokens
from gateway.config import LimitsPolicy, Price
from gateway.errors import GatewayError
from gateway.limit_lease import LEASE_SECONDS, Lease, Leases
from gateway.limit_store import Budget, Correction, LimitStore, RedisStore, Verdict, Window
from gateway.principal import Principal
from gateway.recorder import Recorder
from providers.base import Dialect, ErrorCode

_NONE: tuple[tuple[str, float, int], ...] = ()
DAY_TTL = 2 * 86_400  # a day's sum outlives its day (reports, late corrections)
MONTH_TTL = 32 * 86_400
# How long a limiter a reload replaced waits for the requests it admitted before closing its store:
# their corrections go to the store that counted them (a stream may run this long).
DRAIN_SECONDS = 600.0


class RateLimited(GatewayError):
    status = 429

    def __init__(self, message: str, *, type: str, code: str, headers: dict[str, str]) -> None:
        super().__init__(message, code=code)
        self.type = type
        self.headers = headers


class LimitsUnavailable(GatewayError):
    """Limits that must hold could not be checked (Redis is down and `on_redis_down` says closed)."""

    status = 503
    type = "service_unavailable"


@dataclass(frozen=True, slots=True, eq=False)
class _Plan:
    """A principal's limits as names in the store, built once per principal."""

    requests: tuple[Window, ...]  # each request counts 1
    tokens: tuple[tuple[str, int], ...]
    budgets: tuple[tuple[str, str, float], ...]  # (scope, "day" or "month", USD)
    token_names: tuple[str, ...]
    limits: tuple[int, ...]  # per window: the requests ones, then the tokens ones
    limit_texts: tuple[str, ...]  # as the headers write them
    shown: tuple[tuple[str, int, int], ...]  # per kind of window it has: (kind, first, how many)
    # The budgets' names in the store for a second: (second, ((name, USD, ttl), ...)), the last one.
    named: list[tuple[int, tuple[tuple[str, float, int], ...]]] = field(default_factory=list)

    def budget_names(self, second: int) -> tuple[tuple[str, float, int], ...]:
        """(name, USD, ttl) per budget: a new UTC day or month starts a new sum."""
        if not self.named or self.named[0][0] != second:
            stamps = _stamps(second)
            self.named[:] = [
                (
                    second,
                    tuple(
                        (f"{scope}:{period}:{stamps[period]}", usd, DAY_TTL if period == "day" else MONTH_TTL)
                        for scope, period, usd in self.budgets
                    ),
                )
            ]
        return self.named[0][1]

    @staticmethod
    def of(principal: Principal) -> _Plan:
        scopes = [(f"key:{principal.key_id}", principal.key_limits)]
        if principal.team is not None:
            scopes.append((f"team:{principal.team}", principal.team_limits))
        requests, tokens, budgets = [], [], []
        for scope, limits in scopes:
            if limits.requests_per_minute is not None:
                requests.append((f"{scope}:requests", limits.requests_per_minute))
            if limits.tokens_per_minute is not None:
                tokens.append((f"{scope}:tokens", limits.tokens_per_minute))
            if limits.usd_per_day is not None:
                budgets.append((scope, "day", limits.usd_per_day))
            if limits.usd_per_month is not None:
                budgets.append((scope, "month", limits.usd_per_month))
        n, t = len(requests), len(tokens)
        shown = tuple(kind for kind in (("requests", 0, n), ("tokens", n, t)) if kind[2])
        return _Plan(
            tuple(Window(name, limit, 1) for name, limit in requests),
            tuple(tokens),
            tuple(budgets),
            tuple(name for name, _ in tokens),
            tuple(limit for _, limit in requests + tokens),
            tuple(str(limit) for _, limit in requests + tokens),
            shown,
        )


@dataclass(slots=True)
class Ticket:
    """An admitted request's entries in the store, to correct when it ends, and what its response says."""

    limiter: Limiter  # the one that admitted it: a reload may have replaced it (and its store) since
    rid: str
    tokens: tuple[str, ...]  # its token windows, each counting `estimate`
    budgets: tuple[str, ...]  # its budgets, each reserving `reserve`
    estimate: int
    reserve: float
    headers: dict[str, str]
    counted_at: int  # the store's `Verdict.counted_at`
    lease: Lease | None = None  # the lease that admitted it, instead

    def settle(self, tokens: int, usd: float) -> None:
        """The request ended having used `tokens` (prompt + completion) and cost `usd`: corrected in
        the store that counted it."""
        self.limiter.settle(self, tokens, usd)


def limited(principal: Principal | None) -> bool:
    return principal is not None and principal.limited


class Limiter:
    def __init__(self, store: LimitStore, recorder: Recorder, lease_seconds: float = LEASE_SECONDS) -> None:
        """`lease_seconds`: how long a lease lasts (gateway/limit_lease.py), with a store a round trip
        away; 0: none, every request is checked in the store."""
        self.store = store
        self.leases = (
            Leases(store, lease_seconds) if isinstance(store, RedisStore) and lease_seconds else None
        )
        self._recorder = recorder
        self._plans: dict[Principal, _Plan] = {}
        self._open = 0  # checks in flight and tickets not settled yet: the store stays open for them
        # A request's name in the store: this limiter's, then a count (unique across processes).
        self._rids, self._counted = os.urandom(6).hex() + "-", itertools.count()
        self._drained: asyncio.Event | None = None  # set once they are, while closing

    def _plan(self, principal: Principal) -> _Plan:
        plan = self._plans.get(principal)
        if plan is None:
            if len(self._plans) > 10_000:  # principals of a reloaded config, or rotated keys
                self._plans.clear()
            plan = self._plans[principal] = _Plan.of(principal)
        return plan

    async def admit(
        self,
        principal: Principal,
        policy: LimitsPolicy,
        measured: Callable[[], Features],
        price: Price,
        dialect: Dialect,
    ) -> Ticket | None:
        """Count the request against its limits, or raise `RateLimited`; `measured`: the body as its
        door measures it (called only when tokens or budgets are limited). None: admitted unchecked
        (Redis down, `open`)."""
        plan = self._plan(principal)
        tokens, reserve, named, day = 0, 0.0, _NONE, ""
        if plan.tokens or plan.budgets:
            features = measured()
            prompt = estimate_tokens(features.total_chars)
            most = features.max_tokens  # 0: no output (embeddings)
            output = most if most is not None and most >= 0 else policy.default_max_tokens
            tokens, reserve = prompt + output, prompt * price.input + output * price.output
            if plan.budgets:
                second = int(time.time())
                named, day = plan.budget_names(second), _stamps(second)["day"]
        # Its lease's key: a new UTC day starts new budget sums (a new month is a new day), a new lease.
        key: Hashable = (plan, day) if named else plan
        leases = self.leases
        if leases is not None:
            lease = leases.take(key, tokens, reserve)
            if lease is not None:
                self._open += 1
                return self._leased(plan, lease, tokens, reserve, dialect)
        # Loops, not comprehensions: once a request, and in Python 3.11 a comprehension is a call.
        windows = list(plan.requests)
        for name, limit in plan.tokens:
            windows.append(Window(name, limit, tokens))
        budgets = []
        for name, usd, ttl in named:
            budgets.append(Budget(name, usd, reserve, ttl))
        self._open += 1  # the check holds the store open; the ticket it yields keeps the hold
        try:
            ticket = await self._check(plan, key, windows, budgets, tokens, reserve, policy, dialect)
        except BaseException:
            self._release()
            raise
        if ticket is None:
            self._release()
        return ticket

    async def _check(
        self,
        plan: _Plan,
        key: Hashable,
        windows: list[Window],
        budgets: list[Budget],
        tokens: int,
        reserve: float,
        policy: LimitsPolicy,
        dialect: Dialect,
    ) -> Ticket | None:
        """Without a lease at hand: from one asked for, or checked alone. `tokens` and `reserve`: what
        each tokens window counts and each budget reserves."""
        rid = f"{self._rids}{next(self._counted)}"
        if self.leases is not None:
            result = await self.leases.check(key, rid, windows, budgets, len(plan.requests), tokens, reserve)
            if isinstance(result, Lease):
                return self._leased(plan, result, tokens, reserve, dialect)
            verdict = result
        else:
            verdict = await self.store.check(rid, windows, budgets)
        if verdict is None:
            self._unchecked(policy, bool(windows), bool(budgets))
            return None
        if verdict.over == "budget":
            self._count(plan, "budget")
            raise _over_budget(plan.budgets[verdict.over_at])
        headers = _headers(plan, verdict.remaining, verdict.wait_ms, dialect)
        if verdict.over == "rate":
            self._count(plan, "rate")
            raise _over_rate(windows, verdict, headers)
        self._count(plan, None)
        names = tuple(b.name for b in budgets)
        return Ticket(self, rid, plan.token_names, names, tokens, reserve, headers, verdict.counted_at)

    def _leased(self, plan: _Plan, lease: Lease, tokens: int, reserve: float, dialect: Dialect) -> Ticket:
        """The ticket of a request `lease` admitted."""
        headers = _headers(plan, *lease.shown(), dialect)
        self._count(plan, None)
        return Ticket(self, lease.rid, (), (), tokens, reserve, headers, lease.counted_at, lease)

    def settle(self, ticket: Ticket, tokens: int, usd: float) -> None:
        """Correct `ticket`, one of this limiter's, by what its request used (see `Ticket.settle`)."""
        assert ticket.limiter is self
        if ticket.lease is not None:
            assert self.leases is not None
            self.leases.settle(ticket.lease, tokens - ticket.estimate, usd - ticket.reserve)
        elif ticket.tokens or ticket.budgets:
            windows, budgets = [], []
            for name in ticket.tokens:
                windows.append((name, ticket.estimate, tokens))
            for name in ticket.budgets:
                budgets.append((name, usd - ticket.reserve))
            self.store.correct(Correction(ticket.rid, tuple(windows), tuple(budgets), ticket.counted_at))
        self._release()

    def _release(self) -> None:
        self._open -= 1
        if self._open == 0 and self._drained is not None:
            self._drained.set()

    async def close(self, wait: float = DRAIN_SECONDS) -> None:
        """Close the store once every check in flight has ended and every request this limiter admitted
        has settled (or after `wait` seconds): a reload that replaced the limiter must not fail the
        first or lose the corrections of the others."""
        if self._open:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), wait)
        if self.leases is not None:
            await self.leases.close()
        await self.store.close()

    def _unchecked(self, policy: LimitsPolicy, rates: bool, budgets: bool) -> None:
        refuse = (rates and not policy.rate_limits_open) or (budgets and not policy.budgets_open)
        for kind, present, open_ in (
            ("rate", rates, policy.rate_limits_open),
            ("budget", budgets, policy.budgets_open),
        ):
            if present:
                self._recorder.limit_checked(kind, "open" if open_ else "closed")
        if refuse:
            raise LimitsUnavailable(
                "The gateway cannot check this key's limits right now; try again shortly.",
                code=ErrorCode.LIMITS_UNAVAILABLE,
            )

    def _count(self, plan: _Plan, over: str | None) -> None:
        if plan.limits:
            self._recorder.limit_checked("rate", "limited" if over == "rate" else "allowed")
        if plan.budgets:
            self._recorder.limit_checked("budget", "limited" if over == "budget" else "allowed")


@functools.lru_cache(maxsize=2)
def _stamps(second: int) -> dict[str, str]:
    """The UTC day and month of a second: the names of its budget periods (formatted once a second)."""
    now = time.gmtime(second)
    return {"day": time.strftime("%Y-%m-%d", now), "month": time.strftime("%Y-%m", now)}


# ---- what the client is told --------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # a window's waits repeat from request to request
def _duration(ms: int) -> str:
    """OpenAI's form of a reset time: "20ms", "1.5s", "6m0s"."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s"
    return f"{int(seconds // 60)}m{int(seconds % 60)}s"


def _binding(plan: _Plan, remaining: Sequence[int], first: int, count: int) -> int:
    """Of the windows first..first+count, the one with the least left."""
    return min(range(first, first + count), key=lambda i: remaining[i] / max(plan.limits[i], 1))


# Per kind: (limit, remaining, reset) header names in OpenAI's and in Anthropic's form; named once.
_HEADER_NAMES = {
    kind: (
        (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}"),
        tuple(f"anthropic-ratelimit-{kind}-{part}" for part in ("limit", "remaining", "reset")),
    )
    for kind in ("requests", "tokens")
}


def _headers(
    plan: _Plan, remaining: Sequence[int], wait_ms: Sequence[int], dialect: Dialect
) -> dict[str, str]:
    """OpenAI's x-ratelimit-* (or Anthropic's anthropic-ratelimit-*) for requests and tokens, from what
    is left in each window and the wait until its oldest entry leaves it."""
    headers: dict[str, str] = {}
    anthropic = dialect == "anthropic"
    now = time.time() if anthropic else 0.0
    for kind, first, count in plan.shown:
        at = first if count == 1 else _binding(plan, remaining, first, count)
        limit, left, reset = _HEADER_NAMES[kind][anthropic]
        wait, rest = wait_ms[at], remaining[at]
        headers[limit] = plan.limit_texts[at]
        headers[left] = str(rest) if rest > 0 else "0"
        if anthropic:
            at_time = now + (wait if wait > 0 else 0) / 1000
            headers[reset] = datetime.fromtimestamp(at_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            headers[reset] = _duration(wait)
    return headers


def _over_rate(windows: Sequence[Window], verdict: Verdict, headers: dict[str, str]) -> RateLimited:
    at = verdict.over_at
    window = windows[at]
    scope, _, kind = window.name.rpartition(":")
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    used = window.limit - verdict.remaining[at]
    wait = max(verdict.wait_ms[at], 0)
    owner = "team " + scope.split(":", 1)[1] if scope.startswith("team:") else "this key"
    headers = {**headers, "retry-after": str(max(1, math.ceil(wait / 1000)))}
    if window.amount > window.limit:  # it would never fit: waiting does not help (the SDKs read this)
        headers["x-should-retry"] = "false"
        message = (
            f"Request too large for {owner} on {unit}: Limit {window.limit}, Requested {window.amount}. "
            "Send a shorter prompt or a lower max_tokens."
        )
    else:
        message = (
            f"Rate limit reached for {owner} on {unit}: Limit {window.limit}, Used {used}, "
            f"Requested {window.amount}. Please try again in {_duration(wait)}."
        )
    return RateLimited(message, type=kind, code=ErrorCode.RATE_LIMIT_EXCEEDED, headers=headers)


def _period_end(period: str, now: float) -> float:
    """Unix time when the current UTC day or month ends."""
    t = time.gmtime(now)
    if period == "day":
        return calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86_400
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0))


def _over_budget(budget: tuple[str, str, float]) -> RateLimited:
    scope, period, usd = budget
    owner = "team " + scope.split(":", 1)[1] if scope.startswith("team:") else "this key"
    now = time.time()
    message = (
        f"You exceeded your current quota: the budget of {owner} (${usd:g} per {period}) is spent. "
        "It renews at the start of the next UTC " + period + "."
    )
    # No use retrying before the period ends: the SDKs honour x-should-retry.
    headers = {
        "retry-after": str(max(1, math.ceil(_period_end(period, now) - now))),
        "x-should-retry": "false",
    }
    return RateLimited(message, type="insufficient_quota", code=ErrorCode.INSUFFICIENT_QUOTA, headers=headers)
