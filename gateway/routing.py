"""The routing decision, a pure function of the router, the score, the threshold and any override."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.config import Router, Target
from gateway.errors import PermissionDenied
from gateway.rules import Rule

ROUTES = ("local", "api")


def other_route(route: str) -> str:
    """The router's other route: "api" for "local", "local" for "api"."""
    return "local" if route == "api" else "api"


def target_of(router: Router, route: str) -> Target:
    return router.api if route == "api" else router.local


@dataclass(frozen=True, slots=True)
class Decision:
    route: str  # "local", "api", or "direct" for a request naming a concrete model
    target: Target
    fallback: Target | None
    # "score", "rule", "header", "model", "spill", "scope", or "fallback" once the other target answered
    reason: str
    score: float | None = None
    threshold: float | None = None
    rule: str | None = None  # the rule's name, when one decided


def decide(
    router: Router,
    score: float | None,
    forced: str | None = None,
    rule: Rule | None = None,
    threshold: float | None = None,
) -> Decision:
    """A matching rule decides first, then `forced` ("local" or "api" from the `x-crossover-route`
    header), then the score against `threshold` (the router's own unless an online one is given).

    Equal to the threshold counts as hard: the threshold is the lowest score sent to the API,
    which is what calibration by quantile produces.
    """
    threshold = router.threshold if threshold is None else threshold
    fallback = router.fallback
    route: str
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
    return Decision(
        route=route,
        target=target,
        fallback=other if fallback and other != target else None,
        reason=reason,
        score=score,
        threshold=threshold if reason == "score" else None,
        rule=rule.name if rule is not None else None,
    )


def direct(target: Target) -> Decision:
    return Decision(route="direct", target=target, fallback=None, reason="model")


def within_scope(decision: Decision, backends: frozenset[str], other: Target | None) -> Decision:
    """The decision for a key limited to `backends` (`server.key_scopes`): kept when its target is
    allowed (without a fallback that is not), moved to `other` (the router's other target) when that
    one is, refused otherwise. A scope is enforcement, so it wins over rules, the header and the score."""
    fallback = decision.fallback if decision.fallback and decision.fallback.backend in backends else None
    if decision.target.backend in backends:
        return replace(decision, fallback=fallback)
    if other is not None and other.backend in backends:
        route = other_route(decision.route)
        return replace(decision, route=route, target=other, fallback=None, reason="scope", threshold=None)
    allowed = ", ".join(sorted(backends))
    raise PermissionDenied(
        f"This key may not use backend '{decision.target.backend}'; it is limited to: {allowed}.",
        code="backend_not_allowed",
    )


def spilled(decision: Decision) -> Decision:
    """Its target is full (`max_in_flight`): the fallback serves first, and the target becomes the
    fallback. Only for a decision that may fall back at all: a rule's `fallback: false` keeps it."""
    if decision.fallback is None:
        return decision
    route = other_route(decision.route)
    return replace(
        decision,
        route=route,
        target=decision.fallback,
        fallback=decision.target,
        reason="spill",
        threshold=None,
    )
