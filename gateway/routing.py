"""The routing decision, a pure function of the router, the score and any override."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import Router, Target

ROUTES = ("local", "api")


@dataclass(frozen=True, slots=True)
class Decision:
    route: str  # "local", "api", or "direct" for a request naming a concrete model
    target: Target
    fallback: Target | None
    reason: str  # "score", "header", "model", or "fallback" once the other target answered
    score: float | None = None
    threshold: float | None = None


def decide(router: Router, score: float | None, forced: str | None = None) -> Decision:
    """`forced` is "local" or "api" from the `x-crossover-route` header; otherwise the score decides.

    Equal to the threshold counts as hard: the threshold is the lowest score sent to the API,
    which is what calibration by quantile produces.
    """
    if forced is not None:
        route, reason = forced, "header"
    elif score is None:
        raise ValueError("a router decision needs a score or a forced route")
    else:
        route, reason = ("api" if score >= router.threshold else "local"), "score"
    target, other = (router.api, router.local) if route == "api" else (router.local, router.api)
    return Decision(
        route=route,
        target=target,
        fallback=other if router.fallback and other != target else None,
        reason=reason,
        score=score,
        threshold=router.threshold,
    )


def direct(target: Target) -> Decision:
    return Decision(route="direct", target=target, fallback=None, reason="model")
