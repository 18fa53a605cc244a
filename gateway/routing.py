"""The routing policy, in one place and in order: rules, then the route header, then the score
against the threshold; then the key's scope; then spill-over when the chosen backend is full.

Pure: `plan_route` takes everything it needs in an `Ask` and returns a `Decision`. The server and the
offline tools (`crossover classify`) call the same function, so they decide alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Literal, get_args

from classifier import Features
from gateway.config import Router, Target
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.rules import Rule, first_match
from providers.base import ErrorCode

Route = Literal["local", "api"]  # a router's two targets
ROUTES: tuple[Route, ...] = get_args(Route)
# How a request is labelled in metrics: a router's route, or "direct" for a concrete model.
Path = Literal["local", "api", "direct"]
PATHS: tuple[Path, ...] = get_args(Path)
# Why it went there; "fallback" once the other target answered it.
Reason = Literal["score", "rule", "header", "model", "spill", "scope", "fallback"]

ROUTE_HEADER = "x-crossover-route"
_BY_NAME: dict[str, Route] = {route: route for route in ROUTES}


def other_route(route: Route) -> Route:
    return "local" if route == "api" else "api"


def target_of(router: Router, route: Route) -> Target:
    return router.api if route == "api" else router.local


def forced_route(value: str | None) -> Route | None:
    """The `x-crossover-route` header, checked."""
    if value is None:
        return None
    route = _BY_NAME.get(value)
    if route is not None:
        return route
    raise InvalidRequest(
        f"Invalid value for header '{ROUTE_HEADER}': {value!r}. Use 'local' or 'api'.",
        param=ROUTE_HEADER,
        code=ErrorCode.INVALID_VALUE,
    )


# Read-only through `Final` (mypy), not frozen: built per request, and a frozen __init__ (each field
# through object.__setattr__) cost ~1 us of it. Changed only by `replace`; hashable as before.
@dataclass(slots=True, unsafe_hash=True)
class Decision:
    route: Final[Path]
    target: Final[Target]
    fallback: Final[Target | None]
    reason: Final[Reason]
    score: Final[float | None] = None
    threshold: Final[float | None] = None
    rule: Final[str | None] = None  # the rule's name, when one decided
    features: Final[Features | None] = field(default=None, compare=False)  # computed once, reused after

    @property
    def routed(self) -> bool:
        return self.route != "direct"

    def route_of(self, target: Target) -> Path:
        """The route a target of this decision stands for: its own, or the other for its fallback."""
        if self.route == "direct" or target == self.target:
            return self.route
        return other_route(self.route)

    def answered_by_fallback(self) -> Decision:
        """The other target answered: account the request to the route that served it."""
        if self.route == "direct":
            return self
        return replace(self, route=other_route(self.route), reason="fallback")


@dataclass(slots=True)  # not frozen: built per request, and a frozen __init__ showed in profiles
class Ask:
    """What a routing decision depends on, besides the router and its classifier."""

    features: Features
    forced: Route | None = None  # the route header
    headers: Mapping[str, str] = field(default_factory=dict)  # for rules on headers
    api_key: str | None = None  # for rules on keys
    scope: frozenset[str] | None = None  # the backends the key may reach; None: all
    full: Callable[[Target], bool] = lambda _target: False  # is this target's backend at its limit?


def decide(
    router: Router,
    score: float | None,
    forced: Route | None = None,
    rule: Rule | None = None,
    threshold: float | None = None,
    features: Features | None = None,
) -> Decision:
    """A matching rule decides first, then `forced`, then the score against `threshold` (the router's
    own unless an online one is given).

    Equal to the threshold counts as hard: the threshold is the lowest score sent to the API,
    which is what calibration by quantile produces.
    """
    threshold = router.threshold if threshold is None else threshold
    fallback = router.fallback
    route: Route
    reason: Reason
    if rule is not None:
        route, reason = rule.route, "rule"
        fallback = fallback if rule.fallback is None else rule.fallback
    elif forced is not None:
        route, reason = forced, "header"
    elif score is None:
        raise ValueError("a router decision needs a score, a rule or a forced route")
    else:
        route, reason = ("api" if score >= threshold else "local"), "score"
    target, other = target_of(router, route), target_of(router, other_route(route))
    return Decision(  # positional: keywords cost ~0.3 us more a call
        route,
        target,
        other if fallback and other != target else None,
        reason,
        score,
        threshold if reason == "score" else None,
        rule.name if rule is not None else None,
        features,
    )


def plan_route(
    router: Router, ask: Ask, score: Callable[[Features], float], threshold: float | None = None
) -> Decision:
    """The whole policy for one request to a router model. The classifier is asked only when no
    rule and no header decided."""
    rule = first_match(router.rules, ask.features, ask.headers, ask.api_key) if router.rules else None
    scored = score(ask.features) if rule is None and ask.forced is None else None
    decision = decide(router, scored, ask.forced, rule, threshold, ask.features)
    if ask.scope is not None:  # first: spill-over may then only use a fallback the key may reach
        other = router.local if decision.target == router.api else router.api
        decision = within_scope(decision, ask.scope, other)
    if decision.fallback is not None and ask.full(decision.target) and not ask.full(decision.fallback):
        decision = spilled(decision)
    return decision


def direct(target: Target, scope: frozenset[str] | None = None) -> Decision:
    """A request naming a concrete model; a scoped key may only name models of its backends."""
    decision = Decision(route="direct", target=target, fallback=None, reason="model")
    return decision if scope is None else within_scope(decision, scope, None)


def placed(router: Router, forced: Route | None, scope: frozenset[str] | None = None) -> Decision:
    """A request no classifier can score (embeddings): the router's local target, or the route header's.
    Never a fallback, nor moved by a key's scope: the other target's vectors live in another space, so
    an answer from it would silently not compare with the ones the client already has."""
    route: Route = forced or "local"
    decision = Decision(
        route=route,
        target=target_of(router, route),
        fallback=None,
        reason="header" if forced is not None else "model",
    )
    return decision if scope is None else within_scope(decision, scope, None)


def within_scope(decision: Decision, backends: frozenset[str], other: Target | None) -> Decision:
    """The decision for a key limited to `backends` (`server.key_scopes`): kept when its target is
    allowed (without a fallback that is not), moved to `other` (the router's other target) when that
    one is, refused otherwise. A scope is enforcement, so it wins over rules, the header and the score."""
    fallback = decision.fallback if decision.fallback and decision.fallback.backend in backends else None
    if decision.target.backend in backends:
        return replace(decision, fallback=fallback)
    if other is not None and other.backend in backends and decision.route != "direct":
        route = other_route(decision.route)
        return replace(decision, route=route, target=other, fallback=None, reason="scope", threshold=None)
    allowed = ", ".join(sorted(backends))
    raise PermissionDenied(
        f"This key may not use backend '{decision.target.backend}'; it is limited to: {allowed}.",
        code=ErrorCode.BACKEND_NOT_ALLOWED,
    )


def spilled(decision: Decision) -> Decision:
    """Its target is full (`max_in_flight`): the fallback serves first, and the target becomes the
    fallback. Only for a decision that may fall back at all: a rule's `fallback: false` keeps it."""
    if decision.fallback is None or decision.route == "direct":
        return decision
    return replace(
        decision,
        route=other_route(decision.route),
        target=decision.fallback,
        fallback=decision.target,
        reason="spill",
        threshold=None,
    )
