"""learned-v2 fitted to a deployment's own judged outcomes, with the public data as its prior
(`crossover classifier train --outcomes STORE`; the rows come from classifier/outcomes.py).

The prior is the shipped artifact itself, the function the public data taught: boosting starts from
its logit and adds trees that fit what the outcomes say it gets wrong (logistic loss, Newton steps
with an L2 penalty on each node, as XGBoost does), after moving its intercept to the outcomes' base
rate (which ranks nothing). How far the outcomes move it is decided by them: the number of trees is
chosen among ROUNDS by k-fold cross-validation on the outcomes, zero trees (the prior as it was)
included, so it moves only as far as held-out outcomes confirm; a hundred with a clear signal already
move it (tests/test_retrain.py).

Why not refit on the public rows plus the outcome rows at some weight: the public data (3 MB of
benchmark outcomes beside the repository) is not where a gateway is installed, a fixed weight would
say in advance how much a deployment's outcomes count, and a refit takes minutes where this takes
seconds. Deterministic for a given store and seed.

The new trees are appended to the prior's, their values divided by its `tree_scale`, so the artifact
keeps its format: it is served, explained and loaded (`learned:PATH`) like the shipped one.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from classifier.boosted import LEAF, BoostedClassifier, load_boosted
from classifier.outcomes import Outcome

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ROUNDS = (0, 10, 25, 50, 100, 200)
LEARNING_RATE = 0.1
DEPTH = 3
MIN_LEAF = 10
L2 = 1.0  # added to each node's hessian: where the prior is sure (p near 0 or 1) a step stays finite
FOLDS = 5
DEFAULT_API_SHARE = 0.3
SEED = 20240701


@dataclass(frozen=True, slots=True)
class Grown:
    """One tree in logit units: flat arrays, as classifier/boosted.py Tree, values per node."""

    feature: IntArray
    threshold: FloatArray
    left: IntArray
    right: IntArray
    value: FloatArray

    def paths(self, x: FloatArray) -> IntArray:
        """n x (DEPTH + 1): the node each row is at, level by level (a leaf repeats), compared in
        float64 as serving compares."""
        node = np.zeros(len(x), dtype=np.int64)
        out = [node]
        for _ in range(DEPTH):
            inner = self.feature[node] != LEAF
            f = np.where(inner, self.feature[node], 0)
            go_left = x[np.arange(len(x)), f] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
            out.append(node)
        return np.stack(out, axis=1)

    def predict(self, x: FloatArray) -> FloatArray:
        return np.asarray(self.value[self.paths(x)[:, -1]], dtype=np.float64)


def grow(x: FloatArray, y: FloatArray, logit: FloatArray, seed: int) -> Grown:
    """One round: a regression tree on the residual, then each node's value the penalised Newton step
    of the rows that reach it (the inner nodes' values serve the explanations)."""
    regressor = importlib.import_module("sklearn.tree").DecisionTreeRegressor  # the `train` extra
    p = 1.0 / (1.0 + np.exp(-logit))
    residual, hessian = y - p, p * (1.0 - p)
    t = regressor(max_depth=DEPTH, min_samples_leaf=MIN_LEAF, random_state=seed).fit(x, residual).tree_
    leaf = t.children_left == -1
    tree = Grown(
        feature=np.where(leaf, LEAF, t.feature).astype(np.int64),
        threshold=np.where(leaf, 0.0, t.threshold).astype(np.float64),
        left=t.children_left.astype(np.int64),
        right=t.children_right.astype(np.int64),
        value=np.zeros(t.node_count),
    )
    visits = np.zeros((len(x), t.node_count))
    for level in tree.paths(x).T:
        visits[np.arange(len(x)), level] = 1.0  # a leaf seen twice still counts once
    step = (visits.T @ residual) / (visits.T @ hessian + L2)
    return Grown(tree.feature, tree.threshold, tree.left, tree.right, LEARNING_RATE * step)


def log_loss(y: FloatArray, logit: FloatArray) -> float:
    return float(np.mean(np.logaddexp(0.0, logit) - y * logit))


def shift(y: FloatArray, logit: FloatArray) -> float:
    """The constant added to every logit that fits the outcomes' base rate best (Newton's method): how
    often this deployment's local answers fall short is its own, and ranks nothing."""
    b = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(logit + b)))
        step = float(np.sum(p - y) / max(float(np.sum(p * (1.0 - p))), 1e-9))
        b -= step
        if abs(step) < 1e-10:
            break
    return b


def boost(x: FloatArray, y: FloatArray, prior: FloatArray, rounds: int, seed: int) -> list[Grown]:
    trees: list[Grown] = []
    logit = prior.copy()
    for _ in range(rounds):
        trees.append(grow(x, y, logit, seed))
        logit += trees[-1].predict(x)
    return trees


def choose_rounds(x: FloatArray, y: FloatArray, prior: FloatArray, seed: int) -> dict[int, float]:
    """Each candidate number of trees' mean held-out log loss over FOLDS folds of the outcomes."""
    fold = np.random.default_rng(seed).permutation(len(y)) % FOLDS
    losses = np.zeros(len(ROUNDS))
    for k in range(FOLDS):
        inside, held = fold != k, fold == k
        logit = prior[held].copy()
        trees = boost(x[inside], y[inside], prior[inside], max(ROUNDS), seed)
        for i, n in enumerate(ROUNDS):
            done = ROUNDS[i - 1] if i else 0
            for tree in trees[done:n]:
                logit += tree.predict(x[held])
            losses[i] += log_loss(y[held], logit) / FOLDS
    return dict(zip(ROUNDS, (float(v) for v in losses), strict=True))


@dataclass(frozen=True, slots=True)
class Retrained:
    artifact: dict[str, Any]  # model.json's content: the prior's trees and the outcomes' own
    logits: FloatArray  # of the outcome rows, as fitted
    rounds: int
    losses: dict[int, float]  # cross-validated log loss by number of trees added


def retrain(prior_dir: Path, rows: Sequence[Outcome], seed: int = SEED) -> Retrained:
    """The prior (an artifact's folder) fitted further to `rows`."""
    if len(rows) < 2 * FOLDS:
        raise ValueError(f"{len(rows)} judged outcomes are too few to retrain on (at least {2 * FOLDS})")
    y = np.array([r.needs_api for r in rows], dtype=np.float64)
    if y.min() == y.max():
        raise ValueError(
            "every judged outcome has the same label: nothing to learn which requests need the API"
        )
    artifact: dict[str, Any] = json.loads((prior_dir / "model.json").read_text(encoding="utf-8"))
    model = load_boosted(prior_dir)
    if not model.tree_scale:
        raise ValueError(f"{prior_dir}: the prior's tree_scale is 0")
    x = np.array([r.cues for r in rows], dtype=np.float64)
    base_rate = shift(y, np.array([model.logit(r.cues) for r in rows]))
    prior = np.array([model.logit(r.cues) for r in rows]) + base_rate
    losses = choose_rounds(x, y, prior, seed)
    rounds = min(losses, key=lambda n: (losses[n], n))
    trees = boost(x, y, prior, rounds, seed)
    logit = prior + sum((t.predict(x) for t in trees), np.zeros(len(y)))
    scores = 1.0 / (1.0 + np.exp(-logit))
    threshold = round(float(np.quantile(scores, 1 - DEFAULT_API_SHARE)), 4)
    artifact["trees"] = artifact["trees"] + [_flat(t, model.tree_scale) for t in trees]
    artifact["bias"] = float(artifact["bias"]) + base_rate
    artifact["default_threshold"] = threshold
    artifact["meta"] = {
        "prior": artifact.get("meta", {}),
        "outcomes": {
            "n": len(rows),
            "needs_api": int(y.sum()),
            "label": "the local answer was not good enough: verdict api_better or both_bad",
            "bias_shift": base_rate,
            "trees_added": rounds,
            "cross_validated_log_loss": {str(n): round(v, 5) for n, v in losses.items()},
            "learning_rate": LEARNING_RATE,
            "depth": DEPTH,
            "min_samples_leaf": MIN_LEAF,
            "l2": L2,
            "seed": seed,
        },
        "default_threshold": f"{threshold}: sends {DEFAULT_API_SHARE:.0%} of the judged requests to the API",
    }
    return Retrained(artifact, logit, rounds, losses)


def _flat(tree: Grown, tree_scale: float) -> dict[str, list[float] | list[int]]:
    return {
        "feature": [int(v) for v in tree.feature],
        "threshold": [float(v) for v in tree.threshold],
        "left": [int(v) for v in tree.left],
        "right": [int(v) for v in tree.right],
        "value": [float(v) / tree_scale for v in tree.value],
    }


def write(retrained: Retrained, out: Path, rows: Sequence[Outcome]) -> None:
    """Writes model.json into `out`, then checks that the served artifact scores what was fitted."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").write_text(json.dumps(retrained.artifact, indent=1) + "\n", encoding="utf-8")
    served = BoostedClassifier(out).load()
    check = np.array([served.logit(r.cues) for r in rows[:500]])
    gap = float(np.abs(check - retrained.logits[:500]).max())
    if not gap <= 1e-6:
        raise RuntimeError(f"the served artifact differs from the fitted model by {gap:g} in logit")
