"""Train learned-v2 on every labelled source in ../shared/data/routing (see its README and
classifier/sources.py for the label rules).

The recipe, each step chosen by leave-one-family-out (the figures are in the model card):

1. Target: the share of a prompt's weak models that failed it (`weak_fails`), minus its family's mean.
   Predicting the weak model's failure transferred better than predicting a pair's disagreement, and
   centring per family keeps a family's label rate (an artefact of its pairs and margins) out of the
   trees.
2. Weights: every prompt weighs 1. Giving each family the same total weight (so MMLU-Pro's 5,000
   questions would not drown the Arena's 650 conversations) transferred worse.
3. Model: gradient-boosted regression trees (depth 3, 200 rounds) over the cues of classifier/cues.py.
   An embedding (the distilled MiniLM of learned-v1, whole or in 8-32 principal components, linear or
   in the trees) did not raise the held-out families' APGR, so none is used.
4. Length prior: the standardised tree output plus `beta` times the standardised log length, `beta`
   chosen by leave-one-family-out inside the training families only.
5. Link: a logistic regression of the target on that sum gives the score its probability scale.

Training uses the hash split of classifier/sources.py (80% of each family) so that the in-distribution
table measures the shipped artifact on prompts it never saw. Deterministic: `crossover classifier
train` rewrites the shipped artifact byte for byte.

    crossover classifier train [--data ../shared/data/routing] [--out classifier/models/learned-v2]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from classifier._fit import fit_head
from classifier.boosted import DEFAULT_ARTIFACT, LEAF, BoostedClassifier
from classifier.cues import CUE_NAMES, cue_vector
from classifier.sources import DEFAULT_DATA, FAMILIES, RULES, SEED, Example, load_all

FloatArray = npt.NDArray[np.float64]

BETAS = (0.0, 0.25, 0.5, 1.0)
TREES = 200
DEPTH = 3
LEARNING_RATE = 0.05
MIN_LEAF = 20
DEFAULT_API_SHARE = 0.3


@dataclass(frozen=True, slots=True)
class Recipe:
    """The modelling decisions that `crossover classifier eval --ablations` measures one at a time."""

    label: str = "weak_fails"  # or "pair": the share of (weak, strong) pairs the strong model won
    weighting: str = "natural"  # every prompt weighs 1; or "family": each family the same in total
    centre: bool = True  # subtract each family's mean target
    betas: tuple[float, ...] = BETAS  # (0.0,): no length prior


RECIPE = Recipe()
ABLATIONS = {
    "shipped recipe": RECIPE,
    "label: pair disagreement": Recipe(label="pair"),
    "weights: each family the same in total": Recipe(weighting="family"),
    "no centring per family": Recipe(centre=False),
    "no length prior": Recipe(betas=(0.0,)),
}


@dataclass(frozen=True, slots=True)
class Dataset:
    """The examples with what training needs of them, as arrays in the same order."""

    examples: list[Example]
    x: FloatArray  # cues
    target: FloatArray  # per the recipe's label
    family: npt.NDArray[np.int64]  # index into FAMILIES
    recipe: Recipe

    def subset(self, mask: npt.NDArray[np.bool_]) -> Dataset:
        kept = [e for e, m in zip(self.examples, mask, strict=True) if m]
        return Dataset(kept, self.x[mask], self.target[mask], self.family[mask], self.recipe)

    def weights(self) -> FloatArray:
        """Each family present weighs the same in total (or every prompt 1); the mean weight is 1."""
        if self.recipe.weighting == "natural":
            return np.ones(len(self.family))
        counts = np.bincount(self.family, minlength=len(FAMILIES)).astype(np.float64)
        present = int((counts > 0).sum())
        return np.asarray(len(self.family) / present / counts[self.family], dtype=np.float64)

    def centred_target(self) -> FloatArray:
        out = self.target.copy()
        if not self.recipe.centre:
            return out
        weights = self.weights()
        for k in np.unique(self.family):
            m = self.family == k
            out[m] -= np.average(self.target[m], weights=weights[m])
        return out


def dataset(examples: Sequence[Example], recipe: Recipe = RECIPE) -> Dataset:
    return Dataset(
        examples=list(examples),
        x=np.array([cue_vector(e.features()) for e in examples], dtype=np.float64),
        target=np.array([e.weak_fails if recipe.label == "weak_fails" else e.label for e in examples]),
        family=np.array([FAMILIES.index(e.family) for e in examples], dtype=np.int64),
        recipe=recipe,
    )


def fit_trees(data: Dataset) -> Any:
    # scikit-learn comes with the `train` extra and ships no type stubs
    regressor = importlib.import_module("sklearn.ensemble").GradientBoostingRegressor
    model = regressor(
        n_estimators=TREES,
        max_depth=DEPTH,
        learning_rate=LEARNING_RATE,
        min_samples_leaf=MIN_LEAF,
        random_state=SEED,
    )
    return model.fit(data.x, data.centred_target(), sample_weight=data.weights())


def evaluable(data: Dataset) -> tuple[npt.NDArray[np.bool_], FloatArray, FloatArray]:
    """Which examples carry the evaluation pair's qualities, and those qualities."""
    mask = np.array([e.eval_weak is not None and e.eval_strong is not None for e in data.examples])
    weak = np.array([e.eval_weak for e, m in zip(data.examples, mask, strict=True) if m], dtype=np.float64)
    strong = np.array(
        [e.eval_strong for e, m in zip(data.examples, mask, strict=True) if m], dtype=np.float64
    )
    return mask, weak, strong


@dataclass(frozen=True, slots=True)
class Blend:
    """z = (raw - raw_mean) / raw_std + beta * (log length - length_mean) / length_std."""

    raw_mean: float
    raw_std: float
    length_mean: float
    length_std: float
    beta: float

    def z(self, raw: FloatArray, log_length: FloatArray) -> FloatArray:
        return np.asarray(
            (raw - self.raw_mean) / self.raw_std
            + self.beta * (log_length - self.length_mean) / self.length_std,
            dtype=np.float64,
        )


def blend(raw: FloatArray, log_length: FloatArray, weights: FloatArray, beta: float) -> Blend:
    def moments(v: FloatArray) -> tuple[float, float]:
        mean = float(np.average(v, weights=weights))
        return mean, float(np.sqrt(np.average((v - mean) ** 2, weights=weights))) or 1.0

    raw_mean, raw_std = moments(raw)
    length_mean, length_std = moments(log_length)
    return Blend(raw_mean, raw_std, length_mean, length_std, beta)


def choose_beta(data: Dataset, log: bool = True) -> float:
    """The length prior's weight with the best mean APGR over the training families, each held out
    in turn from a model fitted on the others (never looking at a family outside `data`)."""
    from classifier.measures import metrics

    betas = data.recipe.betas
    if len(betas) == 1:
        return betas[0]
    families = sorted(set(int(k) for k in data.family))
    totals = np.zeros(len(betas))
    for k in families:
        inside = data.family != k
        trees = fit_trees(data.subset(inside))
        held = data.subset(~inside)
        mask, weak, strong = evaluable(held)
        raw_in = trees.predict(data.x[inside])
        b = blend(raw_in, data.x[inside, 0], data.subset(inside).weights(), 0.0)
        raw, length = trees.predict(held.x[mask]), held.x[mask, 0]
        jitter = np.random.default_rng(SEED).random(len(raw)) * 1e-9  # quantile edges need no ties
        for i, beta in enumerate(betas):
            z = Blend(b.raw_mean, b.raw_std, b.length_mean, b.length_std, beta).z(raw, length)
            totals[i] += metrics(z + jitter, weak, strong).apgr
    best = betas[int(np.argmax(totals))]
    if log:
        cells = ", ".join(f"{beta:g}: {t / len(families):.3f}" for beta, t in zip(betas, totals, strict=True))
        sys.stderr.write(f"length prior, inner leave-one-family-out APGR by beta: {cells} -> {best:g}\n")
    return best


@dataclass(frozen=True, slots=True)
class Fitted:
    trees: Any
    blend: Blend
    scale: float  # the logistic link: logit = scale * z + offset
    offset: float

    def logits(self, x: FloatArray) -> FloatArray:
        return np.asarray(
            self.scale * self.blend.z(self.trees.predict(x), x[:, 0]) + self.offset, dtype=np.float64
        )


def fit(data: Dataset, log: bool = True) -> Fitted:
    """The whole recipe on `data`: the length prior's weight, the trees, the link."""
    beta = choose_beta(data, log)
    trees = fit_trees(data)
    weights = data.weights()
    b = blend(trees.predict(data.x), data.x[:, 0], weights, beta)
    z = b.z(trees.predict(data.x), data.x[:, 0])
    link = fit_head(z[:, None], data.target, 0.0, weights)
    scale = float(link.weights[0] / (link.std[0] or 1.0))
    return Fitted(trees, b, scale, link.bias - scale * float(link.mean[0]))


def export(fitted: Fitted, default_threshold: float, meta: dict[str, object]) -> dict[str, object]:
    """The artifact as JSON: flat trees (values times the learning rate) and the folded blend."""
    trees = []
    for estimator in fitted.trees.estimators_[:, 0]:
        t = estimator.tree_
        leaf = t.children_left == -1
        trees.append(
            {
                "feature": [LEAF if is_leaf else int(f) for f, is_leaf in zip(t.feature, leaf, strict=True)],
                "threshold": [
                    0.0 if is_leaf else float(v) for v, is_leaf in zip(t.threshold, leaf, strict=True)
                ],
                "left": [int(v) for v in t.children_left],
                "right": [int(v) for v in t.children_right],
                "value": [float(v) * LEARNING_RATE for v in t.value[:, 0, 0]],
            }
        )
    b = fitted.blend
    tree_scale = fitted.scale / b.raw_std
    return {
        "format": 2,
        "kind": "boosted-cues",
        "cue_names": list(CUE_NAMES),
        "init": float(fitted.trees.init_.constant_[0][0]),
        "tree_scale": tree_scale,
        "length_weight": fitted.scale * b.beta / b.length_std,
        "length_mean": b.length_mean,
        "bias": fitted.offset - tree_scale * b.raw_mean,
        "default_threshold": default_threshold,
        "meta": meta,
        "trees": trees,
    }


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="crossover classifier train", description=doc.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    args = parser.parse_args(argv)

    examples = load_all(args.data)
    train = dataset([e for e in examples if not e.test])
    print(f"{len(examples)} labelled prompts, {len(train.examples)} in the training split")
    fitted = fit(train)
    scores = 1.0 / (1.0 + np.exp(-fitted.logits(train.x)))
    threshold = round(float(np.quantile(scores, 1 - DEFAULT_API_SHARE)), 4)
    meta: dict[str, object] = {
        "label": "share of the weak models that failed the prompt (RULES in classifier/sources.py)",
        "pairs": {
            f: {"weak": list(r.weak), "strong": list(r.strong), "margin": r.margin} for f, r in RULES.items()
        },
        "families": {f: int((train.family == i).sum()) for i, f in enumerate(FAMILIES)},
        "weights": RECIPE.weighting,
        "beta": fitted.blend.beta,
        "trees": {"n": TREES, "depth": DEPTH, "learning_rate": LEARNING_RATE, "min_samples_leaf": MIN_LEAF},
        "default_threshold": f"{threshold}: sends {DEFAULT_API_SHARE:.0%} of the training prompts to the API",
        "seed": SEED,
    }
    artifact = export(fitted, threshold, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.json").write_text(json.dumps(artifact, indent=1) + "\n", encoding="utf-8")
    served = BoostedClassifier(args.out)
    check = np.array([served.logit(e.features()) for e in train.examples[:500]])
    gap = float(np.abs(check - fitted.logits(train.x[:500])).max())
    if gap > 1e-6:
        raise RuntimeError(f"the served artifact differs from the fitted model by {gap:g} in logit")
    print(f"wrote {args.out / 'model.json'} (beta={fitted.blend.beta:g}, threshold {threshold})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
