"""RouteLLM's measures of a router over a labelled set (see classifier/evaluate.py for their
definitions): the call-performance curve, APGR, CPT, AUROC, and bootstrap intervals. Pure numpy, and
apart from the evaluation command so that training can use them without importing it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Quality = BoolArray | FloatArray  # per prompt: right/wrong, or a grade scaled to [0, 1]

NUM_RESULTS = 10
BOOTSTRAP = 1000


@dataclass(frozen=True, slots=True)
class Curve:
    thresholds: FloatArray
    strong_pct: FloatArray  # ascending
    accuracy: FloatArray  # percent, matching strong_pct
    weak_accuracy: float
    strong_accuracy: float


def call_performance(
    scores: FloatArray, weak_correct: Quality, strong_correct: Quality, num_results: int = NUM_RESULTS
) -> Curve:
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.quantile(scores, np.linspace(0.0, 1.0, num_results + 1))
    if len(np.unique(thresholds)) < len(thresholds):
        # pd.qcut(..., retbins=True) raises on duplicate edges: so does RouteLLM.
        raise ValueError("scores have too many ties for quantile thresholds (as pd.qcut)")
    strong_pct = []
    accuracy = []
    for i, threshold in enumerate(thresholds):
        selection = scores >= threshold if i != len(thresholds) - 1 else scores > threshold
        results = np.where(selection, strong_correct, weak_correct)
        strong_pct.append(float(selection.mean()) * 100)
        accuracy.append(float(results.mean()) * 100)
    order = np.argsort(np.array(strong_pct), kind="stable")
    return Curve(
        thresholds=thresholds,
        strong_pct=np.array(strong_pct)[order],
        accuracy=np.array(accuracy)[order],
        weak_accuracy=float(np.mean(weak_correct)) * 100,
        strong_accuracy=float(np.mean(strong_correct)) * 100,
    )


def apgr(curve: Curve) -> float:
    x = curve.strong_pct / 100
    auc = float(np.trapezoid(curve.accuracy, x))
    weak_auc = float(np.trapezoid(np.full(len(x), curve.weak_accuracy), x))
    strong_auc = float(np.trapezoid(np.full(len(x), curve.strong_accuracy), x))
    return (auc - weak_auc) / (strong_auc - weak_auc)


def cpt(curve: Curve, pct: float) -> float:
    """Strong-model calls (percent) needed to reach `pct` of the gap between weak and strong."""
    target = pct * (curve.strong_accuracy - curve.weak_accuracy) + curve.weak_accuracy
    return float(np.interp(target, curve.accuracy, curve.strong_pct))


def auroc(scores: FloatArray, labels: npt.NDArray[np.int64] | BoolArray) -> float:
    """Mann-Whitney AUROC with ties counted half."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # A tied group's rank is the mean of the positions it spans (1-based).
    ordered = np.sort(scores)
    ranks = (np.searchsorted(ordered, scores, "left") + np.searchsorted(ordered, scores, "right") + 1) / 2
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True, slots=True)
class Metrics:
    apgr: float
    cpt50: float
    cpt80: float
    auroc: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.apgr, self.cpt50, self.cpt80, self.auroc)


def metrics(scores: FloatArray, weak: Quality, strong: Quality) -> Metrics:
    """`weak`/`strong` are each model's result per prompt: right or wrong, or a grade in [0, 1]. The
    AUROC's label is "the strong model did better" (for right/wrong: weak wrong and strong right)."""
    curve = call_performance(scores, weak, strong)
    label = np.asarray(strong, dtype=np.float64) > np.asarray(weak, dtype=np.float64)
    return Metrics(apgr(curve), cpt(curve, 0.5), cpt(curve, 0.8), auroc(scores, label))


def resamples(
    statistic: Callable[[npt.NDArray[np.int64]], Sequence[float]], n: int, reps: int, seed: int
) -> FloatArray:
    """reps x k: `statistic` over `reps` resamples of n items; a resample whose curve cannot be cut
    into quantiles is a row of NaN (the same seed gives the same resamples to every method)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(reps):
        index = rng.integers(0, n, n)
        try:
            rows.append(list(statistic(index)))
        except ValueError:
            rows.append([])
    width = max((len(r) for r in rows), default=0)
    return np.array([r or [np.nan] * width for r in rows], dtype=np.float64)


def percentiles(rows: FloatArray) -> FloatArray:
    """2 x k: the 2.5% and 97.5% percentiles of each column, NaN rows left out."""
    return np.asarray(np.nanpercentile(rows, [2.5, 97.5], axis=0), dtype=np.float64)


def _interval(
    statistic: Callable[[npt.NDArray[np.int64]], Sequence[float]], n: int, reps: int, seed: int
) -> FloatArray:
    return percentiles(resamples(statistic, n, reps, seed))


def bootstrap(
    scores: FloatArray, weak: Quality, strong: Quality, reps: int = BOOTSTRAP, seed: int = 0
) -> FloatArray:
    """2 x 4 array: the 2.5% and 97.5% percentiles of (APGR, CPT50, CPT80, AUROC) over resamples."""
    return _interval(lambda i: metrics(scores[i], weak[i], strong[i]).as_tuple(), len(scores), reps, seed)


def paired_bootstrap(
    scores: FloatArray,
    baseline: FloatArray,
    weak: Quality,
    strong: Quality,
    reps: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[FloatArray, FloatArray]:
    """The difference scores - baseline in (APGR, CPT50, CPT80, AUROC), and its 2 x 4 interval: both
    methods measured on the same resample each time, so shared noise cancels."""

    def difference(i: npt.NDArray[np.int64]) -> Sequence[float]:
        a = metrics(scores[i], weak[i], strong[i]).as_tuple()
        b = metrics(baseline[i], weak[i], strong[i]).as_tuple()
        return [x - y for x, y in zip(a, b, strict=True)]

    point = np.asarray(difference(np.arange(len(scores))), dtype=np.float64)
    return point, _interval(difference, len(scores), reps, seed)
