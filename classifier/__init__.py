"""Request complexity scoring. No HTTP here, and never imports `gateway`."""

from classifier.base import Classifier, Explainer, default_threshold, weightiest
from classifier.features import Features, extract_features
from classifier.registry import classifier_factory, load_classifier

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
