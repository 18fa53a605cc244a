"""Request complexity scoring. No HTTP here, and never imports `gateway`."""

from classifier.base import (
    Classifier,
    Explainer,
    classifier_factory,
    default_threshold,
    load_classifier,
    weightiest,
)
from classifier.features import Features, extract_features

__all__ = [
    "Classifier",
    "Explainer",
    "Features",
    "classifier_factory",
    "default_threshold",
    "extract_features",
    "load_classifier",
    "weightiest",
]
