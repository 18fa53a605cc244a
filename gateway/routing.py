"""The routing decision, a pure function of the router, the score, the threshold and any override."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Router, Target
from gateway.rules import Rule

ROUTES = ("local", "api")


@dataclass(frozen=True, slots=True)
class Decision:
    route: str  # "local", "api", or "direct" for a request naming a concrete model
    target: Target
    fallback: Target | None
    reason: str  # "score", "rule", "header", "model", or "fallback" once the other target answered
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
    if rule is not None:
        route, reason = rule.route, "rule"
        fallback = fallback if rule.fallback is None else rule.fallback
    elif forced is not None:
        route, reason = forced, "header"
    elif score is None:
        raise ValueError("a router decision needs a score, a rule or a forced route")
    else:
        route, reason = ("api" if score >= threshold else "local"), "score"
    target, other = (router.api, router.local) if route == "api" else (router.local, router.api)
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
