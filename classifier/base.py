"""The classifier interface: one method returning a score in [0, 1] (the registry by name is
classifier/registry.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from classifier.features import Features


@runtime_checkable
class Classifier(Protocol):
    """score() is the estimated probability that the local model fails where the API model succeeds.

    A classifier may also have a `default_threshold` attribute: the threshold a router uses when its
    config sets none (otherwise DEFAULT_THRESHOLD)."""

    def score(self, features: Features) -> float: ...


DEFAULT_THRESHOLD = 0.5


def default_threshold(factory: Callable[[], Classifier]) -> float:
    """The classifier's `default_threshold`. A class that has none, or has it as a plain class
    attribute, is not built to find out; a property (read from an artifact, say) needs an instance."""
    value = getattr(factory, "default_threshold", DEFAULT_THRESHOLD)
    if isinstance(value, property) or not isinstance(factory, type):
        value = getattr(factory(), "default_threshold", DEFAULT_THRESHOLD)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"default_threshold must be a number in [0, 1], not {value!r}")
    return float(value)


@runtime_checkable
class Explainer(Protocol):
    """Optional: the named terms of the score's logit (signed; larger magnitude weighed more), for the
    `x-crossover-explain` header and `crossover classify --explain`. Their sum need not be the logit:
    constant parts (a bias) are left out."""

    def explain(self, features: Features) -> list[tuple[str, float]]: ...


def weightiest(explainer: Explainer, features: Features, n: int) -> list[tuple[str, float]]:
    """The n terms of the score's logit with the largest magnitude, largest first."""
    return sorted(explainer.explain(features), key=lambda term: -abs(term[1]))[:n]
