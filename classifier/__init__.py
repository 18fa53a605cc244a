"""Request complexity scoring. No HTTP here, and never imports `gateway`."""

from classifier.base import Classifier, load_classifier
from classifier.features import Features, extract_features

__all__ = ["Classifier", "Features", "extract_features", "load_classifier"]
