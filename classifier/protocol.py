"""The evaluation protocol: which prompts each method is scored on, and by which model.

- Leave one family out: for each source family in turn, learned-v2 is retrained by the full recipe
  (its length prior chosen inside the remaining families) on every prompt of the other families, and
  scored on the held-out family's prompts that carry its evaluation pair (classifier/sources.py RULES).
  learned-v1 is the shipped artifact: it never saw a family but MMLU-Pro, where it has no row.
- In distribution: the shipped artifacts on the hash split's held-out MMLU-Pro questions, Llama-3.1-8B
  vs GPT-4o: the same questions and pair as learned-v1's own table.

Baselines: random, prompt length (total characters) and the heuristic classifier. Every score gets a
jitter far below its resolution, so quantile thresholds never tie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from classifier.sources import FAMILIES, Example

if TYPE_CHECKING:  # classifier.train imports the evaluation: only its type here
    from classifier.train import Recipe

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Held:
    """One evaluation set: the pair's qualities per prompt and each method's scores."""

    name: str
    pair: str
    weak: FloatArray
    strong: FloatArray
    scores: dict[str, FloatArray]


def evaluable(examples: Sequence[Example]) -> list[Example]:
    return [e for e in examples if e.eval_weak is not None and e.eval_strong is not None]


def baselines(examples: Sequence[Example], seed: int) -> dict[str, FloatArray]:
    from classifier.heuristic import HeuristicClassifier

    feats = [e.features() for e in examples]
    heuristic = HeuristicClassifier()
    rng = np.random.default_rng(seed)
    return {
        "heuristic": np.array([heuristic.score(f) for f in feats]) + rng.random(len(feats)) * 1e-9,
        "length": np.array([float(f.total_chars) for f in feats]) + rng.random(len(feats)) * 1e-3,
        "random": rng.random(len(feats)),
    }


def _held(name: str, examples: Sequence[Example], scores: Mapping[str, FloatArray], seed: int) -> Held:
    from classifier.sources import RULES

    rule = RULES[examples[0].family]
    jitter = np.random.default_rng(seed).random(len(examples)) * 1e-9
    return Held(
        name=name,
        pair=f"{rule.eval_weak} vs {rule.eval_strong}",
        weak=np.array([e.eval_weak for e in examples], dtype=np.float64),
        strong=np.array([e.eval_strong for e in examples], dtype=np.float64),
        scores={k: np.asarray(v + jitter, dtype=np.float64) for k, v in scores.items()}
        | baselines(examples, seed),
    )


def _v1_scores(examples: Sequence[Example], v1_artifact: Path) -> FloatArray:
    from classifier.learned import LearnedClassifier

    v1 = LearnedClassifier(v1_artifact)
    return np.array([v1.score(e.features()) for e in examples])


def leave_one_family_out(
    examples: Sequence[Example], v1_artifact: Path | None, seed: int, recipe: Recipe | None = None
) -> list[Held]:
    from classifier.train import RECIPE, dataset, fit

    chosen = recipe or RECIPE
    out = []
    for family in FAMILIES:
        train = dataset([e for e in examples if e.family != family], chosen)
        held = evaluable([e for e in examples if e.family == family])
        model = fit(train, log=False)
        test = dataset(held, chosen)
        scores = {"learned-v2": 1.0 / (1.0 + np.exp(-model.logits(test.x)))}
        if v1_artifact is not None and family != "mmlu_pro":  # learned-v1 was trained on MMLU-Pro
            scores["learned-v1"] = _v1_scores(held, v1_artifact)
        out.append(_held(f"{family} (n={len(held)})", held, scores, seed))
    return out


def in_distribution(
    examples: Sequence[Example], v2_artifact: Path, v1_artifact: Path | None, seed: int
) -> Held:
    from classifier.boosted import BoostedClassifier

    held = evaluable([e for e in examples if e.family == "mmlu_pro" and e.test])
    v2 = BoostedClassifier(v2_artifact)
    scores = {"learned-v2": np.array([v2.score(e.features()) for e in held])}
    if v1_artifact is not None:
        scores["learned-v1"] = _v1_scores(held, v1_artifact)
    return _held(f"mmlu_pro held-out split (n={len(held)})", held, scores, seed)
