"""A deployment's own judged outcomes as plain rows, and any classifier measured on them with the public
evaluation's metrics (classifier/evaluate.py: APGR, CPT(50%), CPT(80%), AUROC, bootstrap intervals).

The rows come from the gateway's outcome store (gateway/learn.py reads it; this package never imports
the gateway). Each carries the request's cues, which is all learned-v2 reads; classifiers that read the
text (learned-v1, heuristic) need the prompt, kept only with `shadow.store_prompts: true`.

    crossover classifier eval --outcomes STORE [--classifier NAME ...]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from classifier.boosted import BoostedClassifier, sigmoid
from classifier.features import Features
from classifier.registry import load_classifier

FloatArray = npt.NDArray[np.float64]

CLASSIFIERS = ("learned", "learned-v1", "heuristic")
BASELINES = ("served", "length", "random")  # served: the score the router logged when it was judged


@dataclass(frozen=True, slots=True)
class Outcome:
    """One judged request: its cues, the training label, and each answer's quality for the metrics."""

    cues: list[float]  # in the order of classifier/cues.py CUE_NAMES
    needs_api: float  # the training label: 1 when the local answer was not good enough
    local: float  # the local answer's quality, 0 or 1
    api: float  # the API answer's quality, 0 or 1
    score: float | None = None  # what the router's classifier scored when the request was routed
    features: Features | None = None  # from the stored prompt, for classifiers that read the text


def scores(name: str, rows: Sequence[Outcome], seed: int) -> FloatArray | None:
    """`name`'s score for every row; None when it needs what the rows lack (the prompt, a logged
    score). learned-v2 artifacts score the stored cues, exactly what they computed when serving."""
    if name == "random":
        return np.random.default_rng(seed).random(len(rows))
    if name == "length":  # total characters, from log1p(total_chars)
        return np.array([math.expm1(r.cues[0]) for r in rows])
    if name == "served":
        logged = [r.score for r in rows]
        return None if any(s is None for s in logged) else np.array(logged, dtype=np.float64)
    classifier = load_classifier(name)
    if isinstance(classifier, BoostedClassifier):
        model = classifier.load()
        return np.array([sigmoid(model.logit(r.cues)) for r in rows])
    texts = [r.features for r in rows]
    if any(f is None for f in texts):
        return None
    return np.array([classifier.score(f) for f in texts if f is not None])


def table(
    rows: Sequence[Outcome], names: Sequence[str], reps: int, seed: int
) -> tuple[list[str], list[str], dict[str, object]]:
    """The evaluation table's lines, the names left out (and why), and the same figures as JSON. The
    first classifier is compared, paired, with the second (when given) and with prompt length."""
    from classifier.evaluate import report
    from classifier.protocol import Held

    found: dict[str, FloatArray] = {}
    skipped = []
    for name in names:
        s = scores(name, rows, seed)
        if s is None:
            why = "no logged score" if name == "served" else "reads prompts, not kept for every outcome"
            skipped.append(f"{name}: {why}")
        else:
            found[name] = s
    jitter = np.random.default_rng(seed).random(len(rows)) * 1e-9  # quantile edges need no ties
    held = Held(
        name=f"outcomes (n={len(rows)})",
        pair="local vs API, as judged",
        weak=np.array([r.local for r in rows], dtype=np.float64),
        strong=np.array([r.api for r in rows], dtype=np.float64),
        scores={k: np.asarray(v + jitter, dtype=np.float64) for k, v in found.items()},
    )
    lead = next(iter(found))
    against = tuple(n for n in [*list(found)[1:2], "length"] if n != lead and n in found)
    lines, record = report(
        [held], reps, seed, average=False, methods=tuple(found), lead=lead, against=against
    )
    return lines, skipped, record
