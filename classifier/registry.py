"""Classifiers by name: the shipped ones, `learned:PATH` (learned-v2 from another artifact), or a user's
own `module:attribute`. Apart from base.py so that the classifiers can import the interface without a
loop back through the registry that builds them."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path

from classifier.base import Classifier


def _heuristic() -> Classifier:
    from classifier.heuristic import HeuristicClassifier

    return HeuristicClassifier()


def _learned() -> Classifier:
    from classifier.learned import LearnedClassifier

    return LearnedClassifier()


def _learned_v2() -> Classifier:
    from classifier.boosted import BoostedClassifier

    return BoostedClassifier()


# `learned` is the default model; the versions stay reachable by name. learned-v2 is `learned` because it
# met issue #10's leave-one-family-out targets (classifier/models/learned-v2/MODEL_CARD.md).
REGISTRY: dict[str, Callable[[], Classifier]] = {
    "heuristic": _heuristic,
    "learned": _learned_v2,
    "learned-v1": _learned,
    "learned-v2": _learned_v2,
}


def _artifact(path: str) -> Callable[[], Classifier]:
    """learned-v2 from another artifact: a folder holding model.json (or the file itself), such as
    `crossover classifier train --outcomes` writes."""
    from classifier.boosted import BoostedClassifier

    directory = Path(path)
    if directory.name == "model.json":
        directory = directory.parent
    if not (directory / "model.json").is_file():
        raise ValueError(f"no learned-v2 artifact (model.json) at {path!r}")
    return functools.partial(BoostedClassifier, directory)


def classifier_factory(name: str) -> Callable[[], Classifier]:
    """A registered name, `learned:PATH` (learned-v2 from the artifact at PATH), or a user's own
    `module:attribute` (a class or a factory taking no arguments), resolved without building it:
    config validation uses this, the runtime builds once."""
    if name in REGISTRY:
        return REGISTRY[name]
    module_name, sep, attribute = name.partition(":")
    if sep and module_name in ("learned", "learned-v2") and attribute:
        return _artifact(attribute)
    if not sep or not module_name or not attribute:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown classifier {name!r}; use one of {known} or 'module:attribute'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load classifier {name!r}: {exc}") from None
    if not callable(factory):
        raise ValueError(f"classifier {name!r} is not a class or a factory")
    return factory  # type: ignore[no-any-return]


def load_classifier(name: str) -> Classifier:
    instance = classifier_factory(name)()
    if not isinstance(instance, Classifier):
        raise ValueError(f"classifier {name!r} has no score(features) method")
    return instance
